"""The embedded read-speech corpus: real English sentences (corpus.text) spoken by offline TTS voices.

* Sentences: shuffled with the seed; training sentences first, then dev and test from the rest (so
  the three are disjoint), preferring held-out sentences whose words all occur in the training text
  (the LM text), so WER measures recognition rather than out-of-vocabulary words.
* Speakers: voice variants (corpus.tts); variant 0 of each base voice is a test speaker, variant 1 a
  dev speaker, the rest train: test/dev speakers never occur in training.
* Augmentation (training utterances only; corpus.augment, configured by an ``AugmentConfig``): by
  default half of them get additive noise (white, pink or brown) at an SNR from {5, 10, 15, 20} dB;
  a config may add reverberation, a telephone channel (8 kHz, 300-3400 Hz, mu-law/GSM) and a level
  change.  Which effects apply is drawn in ``plan`` (recorded in the supervision's ``custom``), the
  signals from a numpy generator seeded by (seed, utterance id); speed perturbation 0.9/1.1 is added
  later on the cuts (corpus.prepare).
* LM text: besides the training transcripts, the decoding LM may use up to ``SizeSpec.lm_extra`` more
  sentences of the text source that are in no split (never a dev or test sentence), the way a
  Switchboard system's LM also reads Fisher transcripts; the acoustic model never sees them.
* Synthesis runs in 2 processes over chunks of utterances (one festival process per chunk).
Same seed -> byte-identical audio and manifests.
"""
from __future__ import annotations

import logging
import os
import time
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import soundfile as sf

from corpus import tts
from corpus.augment import (AugmentConfig, _noise, add_noise, apply_augmentation,  # noqa: F401 (re-exported)
                            effect_counts, plan_augmentation)
from corpus.text import load_sentences
from lang.lexicon import cmudict_prons

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SizeSpec:
    train: int
    dev: int
    test: int
    lm_extra: int = 0  # at most this many unused text-source sentences join the decoding LM's text


SIZES: Dict[str, SizeSpec] = {
    "tiny": SizeSpec(train=24, dev=8, test=8, lm_extra=200),
    "demo": SizeSpec(train=1150, dev=150, test=150, lm_extra=100000),
    "full": SizeSpec(train=11200, dev=400, test=400, lm_extra=100000),
}
NOISE_FRACTION = AugmentConfig.noise_prob  # the defaults of AugmentConfig (kept for existing imports)
NOISE_SNRS = AugmentConfig.noise_snrs_db
NOISE_TYPES = AugmentConfig.noise_types
CHUNK = 40


def split_sentences(sentences: Sequence[str], size: SizeSpec, seed: int) -> Dict[str, List[str]]:
    """Disjoint train/dev/test sentence lists, and ``lm_extra``: sentences in none of them (module docstring)."""
    need = size.train + size.dev + size.test
    if len(sentences) < need:
        raise ValueError("text source has %d usable sentences, size needs %d" % (len(sentences), need))
    order = np.random.default_rng(seed).permutation(len(sentences))
    shuffled = [sentences[i] for i in order]
    train = shuffled[: size.train]
    vocab = {w for s in train for w in s.split()}
    rest = shuffled[size.train:]
    def rank(s: str) -> int:  # 0: covered, >= 5 words; 1: covered; 2: has words unseen in training
        if not all(w in vocab for w in s.split()):
            return 2
        return 0 if s.count(" ") >= 4 else 1

    held = sorted(rest, key=rank)[: size.dev + size.test]  # stable sort keeps the shuffled order
    # interleave so dev and test get the same mix
    dev, test = held[0::2][: size.dev], held[1::2][: size.test]
    if len(dev) < size.dev or len(test) < size.test:
        extra = held[len(dev) + len(test):]
        dev += extra[: size.dev - len(dev)]
    held_set = set(dev) | set(test)
    lm_extra = [s for s in rest if s not in held_set][: size.lm_extra]
    return {"train": train, "dev": dev, "test": test, "lm_extra": lm_extra}


def _utt_rng(seed: int, utt_id: str) -> np.random.Generator:
    """The generator of an utterance's augmentation signals (noise, room impulse response)."""
    return np.random.default_rng([seed, zlib.crc32(utt_id.encode())])


def _effect_rng(seed: int, utt_id: str) -> np.random.Generator:
    """The generator of an utterance's non-noise augmentation draws (``plan_augmentation``'s
    ``effect_rng``): kept apart from the shared plan generator, so that enabling reverb, telephone or
    gain changes no speaker, sentence or noise draw of the corpus."""
    return np.random.default_rng([seed, zlib.crc32(utt_id.encode()), 1])


@dataclass(frozen=True)
class Job:
    items: Tuple[tts.SynthItem, ...]
    paths: Tuple[str, ...]
    plans: Tuple[Dict[str, Any], ...]  # per item, corpus.augment.plan_augmentation's dict ({}: clean)
    sample_rate: int
    seed: int
    augment: AugmentConfig = AugmentConfig()  # the config the plans were drawn from


def _run_job(job: Job) -> int:
    """Synthesise one chunk and augment its planned items; each file appears atomically (written as
    ``*.part.wav``, then renamed)."""
    job.augment.check_tools()
    parts = {it.utt_id: Path(p).with_suffix(".part.wav") for it, p in zip(job.items, job.paths)}
    tts.synthesize(job.items, parts, job.sample_rate)
    for it, aug, final in zip(job.items, job.plans, job.paths):
        path = parts[it.utt_id]
        if aug:
            x, sr = sf.read(str(path), dtype="float64")
            y = apply_augmentation(x, sr, aug, _utt_rng(job.seed, it.utt_id))
            sf.write(str(path), y, sr, subtype="PCM_16")
        os.replace(path, final)
    return len(job.items)


def plan(size: str, seed: int, augment: AugmentConfig = AugmentConfig()
         ) -> Tuple[Dict[str, List[tts.SynthItem]], Dict[str, Dict[str, Any]], List[str]]:
    """Sentences, speakers and augmentation plans for every utterance (no audio yet), and the extra LM
    sentences.  Plans (``{utt_id: plan}``) are drawn for training utterances only and listed only when
    not empty; with the default ``augment`` they are today's noise plans, draw for draw."""
    cmu = cmudict_prons()
    sentences = load_sentences(lambda w: w in cmu)
    by_split = split_sentences(sentences, SIZES[size], seed)
    rng = np.random.default_rng(seed + 1)
    items: Dict[str, List[tts.SynthItem]] = {}
    plans: Dict[str, Dict[str, Any]] = {}
    for split in ("train", "dev", "test"):
        spk = tts.speakers_for_split(split)
        w = np.array([s.base.weight for s in spk], dtype=np.float64)
        # round-robin over speakers first (every voice gets used even at tiny size), then weighted
        lst = []
        for i, text in enumerate(by_split[split]):
            s = spk[i] if i < len(spk) else spk[int(rng.choice(len(spk), p=w / w.sum()))]
            utt = "%s_%s%05d" % (s.id, split, i)
            lst.append(tts.SynthItem(utt, text, s))
            if split == "train":  # the noise draws share ``rng`` with the speaker draws, as always
                aug = plan_augmentation(augment, rng, effect_rng=_effect_rng(seed, utt))
                if aug:
                    plans[utt] = aug
        items[split] = lst
    return items, plans, by_split["lm_extra"]


def build_audio(size: str, out_dir: Path, seed: int = 0, sample_rate: int = 16000, num_jobs: int = 2,
                progress: bool = True, resume: bool = False, augment: AugmentConfig = AugmentConfig()):
    """Synthesise the corpus audio under ``out_dir/audio``; return ``{split: CutSet}`` (no features) and an
    info dict (``synthesis_s``, ``lm_extra_text``: the extra LM sentences, ``augment``: the config and
    ``counts``, training utterances per effect, see ``corpus.augment.effect_counts``).

    With ``resume``, chunks whose audio files all exist already are not synthesised again (files are
    written atomically, so an interrupted build leaves no half-written audio).
    """
    from lhotse import CutSet, MonoCut, Recording, SupervisionSegment
    from tqdm import tqdm

    tts.check_engines()
    augment.check_tools()
    out_dir = Path(out_dir).resolve()
    items, plans, lm_extra = plan(size, seed, augment)
    audio_dir = out_dir / "audio"
    audio_dir.mkdir(parents=True, exist_ok=True)
    jobs: List[Job] = []
    for split in ("train", "dev", "test"):
        by_engine: Dict[str, List[tts.SynthItem]] = {}
        for it in items[split]:
            by_engine.setdefault(it.speaker.base.engine, []).append(it)
        for engine in sorted(by_engine):
            lst = sorted(by_engine[engine], key=lambda it: (it.speaker.base.voice, it.utt_id))
            for k in range(0, len(lst), CHUNK):
                chunk = tuple(lst[k:k + CHUNK])
                jobs.append(Job(chunk, tuple(str(audio_dir / (it.utt_id + ".wav")) for it in chunk),
                                tuple(plans.get(it.utt_id, {}) for it in chunk), sample_rate, seed, augment))
    if resume:
        n_before = len(jobs)
        jobs = [j for j in jobs if not all(Path(p).is_file() for p in j.paths)]
        logger.info("resume: %d of %d synthesis chunks already done", n_before - len(jobs), n_before)
    t = time.time()
    total = sum(len(j.items) for j in jobs)
    with tqdm(total=total, desc="synthesising", unit="utt", disable=not progress) as bar:
        if num_jobs <= 1:
            for j in jobs:
                bar.update(_run_job(j))
        else:
            with ProcessPoolExecutor(num_jobs) as ex:
                for n in ex.map(_run_job, jobs):
                    bar.update(n)
    logger.info("synthesised %d utterances in %.1f s", total, time.time() - t)

    splits = {}
    for split in ("train", "dev", "test"):
        cuts = []
        for it in items[split]:
            rec = Recording.from_file(audio_dir / (it.utt_id + ".wav"), recording_id=it.utt_id)
            custom = {"engine": it.speaker.base.engine, "voice": it.speaker.base.voice,
                      "stretch": it.speaker.stretch, "pitch_cents": it.speaker.pitch_cents}
            custom.update(plans.get(it.utt_id, {}))  # noise, snr_db, rt60_s, drr_db, telephone, gain_db
            sup = SupervisionSegment(id=it.utt_id, recording_id=it.utt_id, start=0.0, duration=rec.duration,
                                     channel=0, text=it.text, speaker=it.speaker.id, language="English",
                                     custom=custom)
            cuts.append(MonoCut(id=it.utt_id, start=0.0, duration=rec.duration, channel=0,
                                recording=rec, supervisions=[sup]))
        splits[split] = CutSet.from_cuts(cuts)
    counts = effect_counts(plans.get(it.utt_id, {}) for it in items["train"])
    return splits, {"synthesis_s": round(time.time() - t, 2), "lm_extra_text": lm_extra,
                    "augment": {"config": augment.to_dict(), "counts": counts}}
