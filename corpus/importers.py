"""Importers for existing corpora: Switchboard (lhotse's ``switchboard`` recipe) and any Kaldi data dir.

Both return ``{"train", "dev", "test"}`` CutSets (one supervision per cut, normalised text) and the
problems found before lhotse reads anything (missing or unreadable audio), so that nothing is dropped
silently; the common stage (corpus.prepare) does the rest.  When no dev/test data is given, speakers
(Kaldi) or conversations (Switchboard) are held out, so the splits are speaker-disjoint.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import zlib
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import soundfile as sf

from corpus.text import number_to_words
from corpus.validate import Problem, SkipLog

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- text normalisation
def normalise_transcript(text: Optional[str]) -> str:
    """Generic transcript clean-up: UPPERCASE, digits spelled out, ``[noise]``/``<unk>`` tokens dropped,
    punctuation (other than in-word apostrophes and hyphens) removed, single spaces."""
    if not text:
        return ""
    words: List[str] = []
    for tok in text.split():
        if re.fullmatch(r"[\[<{].*[\]>}]", tok):
            continue  # non-speech / markup token
        tok = re.sub(r"[^A-Za-z0-9'\-]", "", tok).strip("'-")
        if not tok:
            continue
        for part in re.findall(r"\d+|[A-Za-z'\-]+", tok):
            if part.isdigit():
                words += number_to_words(part)
            else:
                words.append(part.upper())
    return " ".join(words)


def normalise_swbd(text: Optional[str]) -> str:
    """Switchboard MS98 conventions: ``[laughter-yes]`` -> YES, ``[bocket/bucket]`` -> BUCKET, partial
    words (``th[e]-``) and noise tokens dropped, ``{uh}``-style braces and ``_1`` suffixes removed."""
    if not text:
        return ""
    out = []
    for tok in text.split():
        m = re.fullmatch(r"\[laughter-(.+)\]", tok)
        if m:
            tok = m.group(1)
        m = re.fullmatch(r"\[[^\]/]+/([^\]]+)\]", tok)
        if m:
            tok = m.group(1)
        if "[" in tok or tok.startswith("-") or tok.endswith("-"):
            continue  # noise token or partial word
        tok = re.sub(r"_\d+$", "", tok.replace("{", "").replace("}", ""))
        out.append(tok.replace("_", " "))
    return normalise_transcript(" ".join(out))


# ----------------------------------------------------------------------------- splitting
def split_by_group(cuts, group: Callable[[object], str], seed: int, held_fraction: float = 0.05
                   ) -> Dict[str, object]:
    """Hold out whole groups (speakers, conversations) for dev and test, about ``held_fraction`` of the
    utterances each (at least one group each when there are 3 or more groups)."""
    from lhotse import CutSet

    groups: Dict[str, List] = {}
    for c in cuts:
        groups.setdefault(group(c), []).append(c)
    order = sorted(groups, key=lambda g: (zlib.crc32(("%d:%s" % (seed, g)).encode()), g))
    total = sum(len(v) for v in groups.values())
    target = max(1, int(round(held_fraction * total)))
    out: Dict[str, List] = {"dev": [], "test": [], "train": []}
    names = {"dev": [], "test": [], "train": []}
    i = 0
    for split in ("test", "dev"):
        while i < len(order) - 1 and (not out[split] or len(out[split]) < target) and len(order) >= 3:
            out[split] += groups[order[i]]
            names[split].append(order[i])
            i += 1
    for g in order[i:]:
        out["train"] += groups[g]
    if len(order) < 3:
        logger.warning("only %d speaker/conversation group(s): dev and test are empty (give dev/test data "
                       "explicitly, e.g. --dev-dir/--test-dir for Kaldi dirs)", len(order))
    logger.info("held out %d test and %d dev groups", len(names["test"]), len(names["dev"]))
    return {k: CutSet.from_cuts(v) for k, v in out.items()}


def _with_text(cuts, norm: Callable[[Optional[str]], str]):
    from lhotse import CutSet
    from lhotse.utils import fastcopy

    out = []
    for c in cuts:
        sup = c.supervisions[0]
        out.append(fastcopy(c, supervisions=[fastcopy(sup, text=norm(sup.text))]))
    return CutSet.from_cuts(out)


def _fix_sampling_rates(recordings):
    """Recordings whose file has another rate than lhotse assumed get their true rate (resampled later)."""
    from lhotse import Recording, RecordingSet

    fixed = []
    for r in recordings:
        src = r.sources[0]
        if src.type == "file" and Path(src.source).is_file():
            info = sf.info(src.source)
            if info.samplerate != r.sampling_rate:
                r = Recording(id=r.id, sources=r.sources, sampling_rate=info.samplerate,
                              num_samples=info.frames, duration=info.frames / info.samplerate)
        fixed.append(r)
    return RecordingSet.from_recordings(fixed)


def _one_sup_per_cut(recordings, supervisions):
    from lhotse import CutSet

    cuts = CutSet.from_manifests(recordings=recordings, supervisions=supervisions)
    return cuts.trim_to_supervisions(keep_overlapping=False)


def _file_problem(path: str) -> Optional[Tuple[str, str]]:
    p = Path(path)
    if not p.is_file():
        return "missing_audio", "audio file does not exist"
    try:
        sf.info(str(p))
    except Exception as e:
        return "unreadable_audio", "cannot read audio header: %s" % str(e).strip().splitlines()[-1]
    return None


# ----------------------------------------------------------------------------- Kaldi data dirs
def _read_map(path: Path) -> Dict[str, str]:
    out: Dict[str, str] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            parts = line.strip().split(maxsplit=1)
            if parts:
                out[parts[0]] = parts[1] if len(parts) > 1 else ""
    return out


def load_kaldi_dir(data_dir: Path, split: str, sample_rate: int, log: SkipLog):
    """One Kaldi data dir (wav.scp, text, utt2spk, optional segments) -> CutSet via lhotse.

    Entries whose audio file is missing or unreadable are skipped and logged *before* lhotse sees them
    (lhotse would drop them with only a warning).
    """
    from lhotse.kaldi import load_kaldi_data_dir

    data_dir = Path(data_dir)
    for name in ("wav.scp", "text", "utt2spk"):
        if not (data_dir / name).is_file():
            raise FileNotFoundError("Kaldi data dir %s has no %s (needs wav.scp, text, utt2spk; segments optional)"
                                    % (data_dir, name))
    wav = _read_map(data_dir / "wav.scp")
    segments = _read_map(data_dir / "segments")
    text = _read_map(data_dir / "text")
    utt2spk = _read_map(data_dir / "utt2spk")
    utt2rec = {u: v.split()[0] for u, v in segments.items()} if segments else {u: u for u in utt2spk}
    bad_recs = set()
    for rec, src in wav.items():
        if src.rstrip().endswith("|"):
            continue  # a command: checked when decoded
        prob = _file_problem(src)
        if prob:
            bad_recs.add(rec)
            for utt in sorted(u for u, r in utt2rec.items() if r == rec):
                log.skip(Problem(prob[0], utt, src, prob[1], split))
    for utt in sorted(utt2spk):
        if utt2rec.get(utt) in bad_recs:
            continue
        if utt2rec.get(utt) not in wav:
            log.skip(Problem("missing_audio", utt, "", "recording %s not in wav.scp" % utt2rec.get(utt), split))
        elif not text.get(utt, "").strip():
            why = "empty transcript in text" if utt in text else "no line in text"
            log.skip(Problem("empty_transcript", utt, wav[utt2rec[utt]], why, split))
    keep_utts = [u for u in utt2spk if utt2rec.get(u) in wav and utt2rec[u] not in bad_recs
                 and text.get(u, "").strip()]
    with tempfile.TemporaryDirectory(prefix="kaldi_dir_") as tmp:
        tmp = Path(tmp)
        recs = {utt2rec[u] for u in keep_utts}
        with open(tmp / "wav.scp", "w") as f:
            for r in sorted(recs):
                f.write("%s %s\n" % (r, wav[r]))
        for name, mapping in (("text", text), ("utt2spk", utt2spk), ("segments", segments)):
            if name == "segments" and not segments:
                continue
            with open(tmp / name, "w") as f:
                for u in sorted(keep_utts):
                    f.write(("%s %s\n" % (u, mapping[u])).rstrip() + "\n")
        if not keep_utts:
            from lhotse import CutSet
            return CutSet.from_cuts([])
        recordings, supervisions, _ = load_kaldi_data_dir(tmp, sampling_rate=sample_rate, use_reco2dur=False)
    recordings = _fix_sampling_rates(recordings)
    cuts = _one_sup_per_cut(recordings, supervisions)
    return _with_text(cuts, normalise_transcript)


def import_kaldi(data_dir: Path, sample_rate: int, log: SkipLog, seed: int = 0,
                 dev_dir: Optional[Path] = None, test_dir: Optional[Path] = None) -> Dict[str, object]:
    """train/dev/test CutSets from Kaldi data dirs; without dev/test dirs, speakers are held out."""
    train = load_kaldi_dir(data_dir, "train", sample_rate, log)
    if dev_dir is None and test_dir is None:
        return split_by_group(train, lambda c: c.supervisions[0].speaker, seed)
    from lhotse import CutSet

    dev = load_kaldi_dir(dev_dir, "dev", sample_rate, log) if dev_dir else CutSet.from_cuts([])
    test = load_kaldi_dir(test_dir, "test", sample_rate, log) if test_dir else CutSet.from_cuts([])
    return {"train": train, "dev": dev, "test": test}


# ----------------------------------------------------------------------------- Switchboard
def find_swbd_lexicon(transcripts_dir: Path) -> Path:
    """The MS98 lexicon shipped with the transcripts (``sw-ms98-dict.text``)."""
    hits = sorted(Path(transcripts_dir).rglob("sw-ms98-dict.text"))
    if not hits:
        raise FileNotFoundError("no sw-ms98-dict.text under %s (the Switchboard lexicon of the MS98 "
                                "transcripts); use --lexicon cmudict or a Kaldi lexicon.txt" % transcripts_dir)
    return hits[0]


def load_swbd_lexicon(path: Path):
    """Read ``sw-ms98-dict.text`` (``word ph ph ...``, ``#`` comments) as a Lexicon: words and phones
    upper-cased, noise entries (``[laughter]`` ...) left out (the normaliser drops those tokens)."""
    from lang.lexicon import Lexicon

    prons: Dict[str, List[Tuple[str, ...]]] = {}
    for line in Path(path).read_text(errors="replace").splitlines():
        parts = line.split()
        if not parts or line.startswith("#") or parts[0].startswith("[") or len(parts) < 2:
            continue
        word = parts[0].upper()
        pron = tuple(p.upper() for p in parts[1:])
        if "SIL" in pron:
            continue
        lst = prons.setdefault(word, [])
        if pron not in lst:
            lst.append(pron)
    if not prons:
        raise ValueError("%s holds no pronunciations" % path)
    return Lexicon(prons)


def import_switchboard(audio_dir: Path, transcripts_dir: Path, sample_rate: int, log: SkipLog,
                       seed: int = 0) -> Dict[str, object]:
    """Switchboard-1 (LDC97S62 audio, MS98 transcripts) via ``lhotse.recipes.prepare_switchboard``.

    Conversations are held out for dev/test (each conversation side is its own speaker).  Without the
    ``sph2pipe`` program, SPHERE files are read with libsndfile (uncompressed SPHERE only; LDC's
    shorten-compressed files then fail with an error naming the file).
    """
    from lhotse import SupervisionSet
    from lhotse.recipes import prepare_switchboard
    from lhotse.utils import fastcopy

    if transcripts_dir is None or not Path(transcripts_dir).is_dir():
        raise FileNotFoundError("Switchboard transcripts dir %s not found (swb_ms98_transcriptions)" % transcripts_dir)
    audio_dir, transcripts_dir = Path(audio_dir), Path(transcripts_dir)
    if not audio_dir.is_dir():
        raise FileNotFoundError("Switchboard audio dir %s not found (LDC97S62)" % audio_dir)
    if shutil.which("sph2pipe") is None and "LHOTSE_AUDIO_BACKEND" not in os.environ:
        from lhotse.audio.backend import set_current_audio_backend

        logger.warning("sph2pipe not found: reading SPHERE audio with libsndfile (uncompressed SPHERE only)")
        os.environ["LHOTSE_AUDIO_BACKEND"] = "LibsndfileBackend"  # inherited by feature workers
        set_current_audio_backend("LibsndfileBackend")
    for sph in sorted(audio_dir.rglob("*.sph")):
        prob = _file_problem(str(sph))
        if prob:
            raise RuntimeError("Switchboard audio %s: %s (lhotse's recipe cannot skip single files; "
                               "remove or replace it)" % (sph, prob[1]))
    names = {p.stem.replace("sw0", "sw") for p in audio_dir.rglob("*.sph")}
    texts = {p.stem.split("-")[0] for p in transcripts_dir.rglob("*trans.text")}
    missing = sorted(n + side for n in names for side in "AB" if n + side not in texts)
    if missing:
        raise FileNotFoundError("Switchboard transcripts missing for conversation sides: %s (looked for "
                                "<side>-ms98-a-trans.text under %s)" % (" ".join(missing), transcripts_dir))
    manifests = prepare_switchboard(audio_dir, transcripts_dir, absolute_paths=True)
    recordings = manifests["recordings"]
    # lhotse names both channels' speaker "<rec>A"; give each side its own speaker id
    sups = SupervisionSet.from_segments(
        fastcopy(s, speaker="%s%s" % (s.recording_id, "AB"[s.channel])) for s in manifests["supervisions"]
    )
    cuts = _one_sup_per_cut(recordings, sups)
    cuts = _with_text(cuts, normalise_swbd)
    return split_by_group(cuts, lambda c: c.recording.id, seed)
