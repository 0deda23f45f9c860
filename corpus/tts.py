"""Offline text-to-speech engines and the voice variants ("speakers") of the synthetic corpus.

Engines (all deterministic for a fixed input, checked on these machines):

* ``flite`` (Debian ``flite``): voices kal16, awb, rms, slt; rate via ``duration_stretch``.
* ``festival`` (Debian ``festival`` + ``festvox-kallpc16k``, ``festvox-kdlpc16k``,
  ``festvox-us-slt-hts``): voices kal_diphone, ked_diphone, cmu_us_slt_arctic_hts; rate via
  ``Duration_Stretch``.  Run in batch: one festival process synthesises a whole chunk of utterances.
* ``espeak-ng``: formant synthesis, acoustically far from human speech, so weighted low.

A :class:`Speaker` is a base voice plus a rate (duration stretch) and a pitch shift (sox ``pitch``, in
cents; espeak-ng uses its own ``-p``).  Post-processing with ``sox -R`` (repeatable) converts to mono
16-bit at the target rate and normalises the level.
"""
from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BaseVoice:
    engine: str  # flite | festival | espeak
    voice: str
    weight: float  # relative share of utterances


BASE_VOICES: Tuple[BaseVoice, ...] = (
    BaseVoice("flite", "kal16", 1.0),
    BaseVoice("flite", "awb", 1.0),
    BaseVoice("flite", "rms", 1.0),
    BaseVoice("flite", "slt", 1.0),
    BaseVoice("festival", "kal_diphone", 1.0),
    BaseVoice("festival", "ked_diphone", 1.0),
    BaseVoice("festival", "cmu_us_slt_arctic_hts", 1.0),
    BaseVoice("espeak", "en-us", 0.3),
)

# (duration stretch, pitch shift in cents); variant 0 -> test, 1 -> dev, the rest -> train.
VARIANTS: Tuple[Tuple[float, int], ...] = (
    (1.05, 150),   # test
    (0.95, -150),  # dev
    (1.00, 0),
    (0.90, 250),
    (1.10, -250),
    (0.95, 100),
    (1.15, -100),
    (0.88, -50),
)
N_HELD_OUT = 2  # variants 0 and 1


@dataclass(frozen=True)
class Speaker:
    base: BaseVoice
    variant: int
    stretch: float
    pitch_cents: int

    @property
    def id(self) -> str:
        short = self.base.voice.replace("cmu_us_", "").replace("_arctic_hts", "hts").replace("_diphone", "")
        return "%s-%s-v%d" % (self.base.engine, short.replace("_", ""), self.variant)

    @property
    def split(self) -> str:
        return {0: "test", 1: "dev"}.get(self.variant, "train")


def all_speakers() -> List[Speaker]:
    return [Speaker(b, i, s, p) for b in BASE_VOICES for i, (s, p) in enumerate(VARIANTS)]


def speakers_for_split(split: str) -> List[Speaker]:
    spk = [s for s in all_speakers() if s.split == split]
    return sorted(spk, key=lambda s: (s.variant, BASE_VOICES.index(s.base)))  # interleave base voices


def check_engines() -> None:
    """Fail with a clear message when a TTS program is missing."""
    missing = [p for p in ("flite", "festival", "espeak-ng", "sox") if shutil.which(p) is None]
    if missing:
        raise RuntimeError(
            "TTS programs missing: %s. Install the Debian packages: flite festival festvox-kallpc16k "
            "festvox-kdlpc16k festvox-us-slt-hts espeak-ng sox" % ", ".join(missing)
        )
    flite_voices = subprocess.run(["flite", "-lv"], capture_output=True, text=True).stdout.split()
    fest_dirs = {p.name for p in Path("/usr/share/festival/voices").glob("*/*")}
    lacking = [b.voice for b in BASE_VOICES if (b.engine == "flite" and b.voice not in flite_voices)
               or (b.engine == "festival" and b.voice not in fest_dirs)]
    if lacking:
        raise RuntimeError(
            "TTS voices missing: %s. Install the Debian packages flite festvox-kallpc16k festvox-kdlpc16k "
            "festvox-us-slt-hts" % ", ".join(lacking)
        )


@dataclass(frozen=True)
class SynthItem:
    utt_id: str
    text: str  # normalised UPPERCASE words
    speaker: Speaker


def _run(cmd: Sequence[str], what: str) -> None:
    r = subprocess.run(list(cmd), capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError("%s failed (exit %d): %s\ncommand: %s" % (what, r.returncode, r.stderr.strip()[-800:], " ".join(cmd)))


def _scheme_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def synthesize_raw(items: Sequence[SynthItem], workdir: Path) -> Dict[str, Path]:
    """Synthesise ``items`` (all of one engine) to raw wav files in ``workdir``; one festival process per call."""
    out: Dict[str, Path] = {}
    engines = {it.speaker.base.engine for it in items}
    if len(engines) != 1:
        raise ValueError("synthesize_raw expects one engine per call, got %s" % sorted(engines))
    engine = engines.pop()
    if engine == "festival":
        script = workdir / "batch.scm"
        lines = []
        for it in items:
            wav = workdir / (it.utt_id + ".raw.wav")
            lines.append("(voice_%s)" % it.speaker.base.voice)
            lines.append("(Parameter.set 'Duration_Stretch %.3f)" % it.speaker.stretch)
            lines.append("(utt.save.wave (SynthText %s) %s 'riff)" % (_scheme_string(it.text.lower()), _scheme_string(str(wav))))
            out[it.utt_id] = wav
        script.write_text("\n".join(lines) + "\n")
        _run(["festival", "-b", str(script)], "festival batch of %d utterances" % len(items))
    elif engine == "flite":
        for it in items:
            wav = workdir / (it.utt_id + ".raw.wav")
            _run(["flite", "-voice", it.speaker.base.voice, "-t", it.text.lower(), "-o", str(wav),
                  "--setf", "duration_stretch=%.3f" % it.speaker.stretch], "flite (%s)" % it.utt_id)
            out[it.utt_id] = wav
    elif engine == "espeak":
        for it in items:
            wav = workdir / (it.utt_id + ".raw.wav")
            speed = int(round(165 / it.speaker.stretch))
            pitch = max(0, min(99, 50 + it.speaker.pitch_cents // 10))
            _run(["espeak-ng", "-v", it.speaker.base.voice, "-s", str(speed), "-p", str(pitch), "-w", str(wav),
                  it.text.lower()], "espeak-ng (%s)" % it.utt_id)
            out[it.utt_id] = wav
    else:
        raise ValueError("unknown TTS engine %r" % engine)
    for utt, wav in out.items():
        if not wav.is_file() or wav.stat().st_size < 100:
            raise RuntimeError("%s produced no audio for utterance %s" % (engine, utt))
    return out


def postprocess(raw: Path, out: Path, speaker: Speaker, sample_rate: int) -> None:
    """sox -R: mono, pitch shift, resample, 16-bit, peak-normalise to -3 dBFS (no dither)."""
    effects: List[str] = ["remix", "-"]
    if speaker.pitch_cents and speaker.base.engine != "espeak":
        effects += ["pitch", str(speaker.pitch_cents)]
    effects += ["rate", "-h", str(sample_rate), "gain", "-n", "-3"]
    _run(["sox", "-R", "-D", "-V1", str(raw), "-b", "16", "-e", "signed-integer", str(out)] + effects,
         "sox post-processing of %s" % raw.name)


def synthesize(items: Sequence[SynthItem], out_paths: Dict[str, Path], sample_rate: int) -> None:
    """Synthesise and post-process ``items`` into ``out_paths[utt_id]`` (16-bit mono wav)."""
    with tempfile.TemporaryDirectory(prefix="synth_") as tmp:
        raw = synthesize_raw(items, Path(tmp))
        for it in items:
            postprocess(raw[it.utt_id], out_paths[it.utt_id], it.speaker, sample_rate)
