"""Input validation: every bad utterance is either a clear error or a counted skip listed in the summary.

Checks (per cut, one supervision per cut): missing or unreadable audio file, empty transcript, words
outside the lexicon, duration below ``min_duration``, wrong sample rate (resampled and logged).
Corrupt audio that only shows when the samples are decoded is caught during feature extraction and
recorded here too (reason ``corrupt_audio``).
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import soundfile as sf

from lang.lexicon import Lexicon, OOVError

logger = logging.getLogger(__name__)

REASONS = ("missing_audio", "unreadable_audio", "truncated_audio", "corrupt_audio", "bad_channel", "bad_segment",
           "bad_text", "duplicate_id", "missing_speaker", "empty_transcript", "oov", "too_short",
           "non_speech", "ambiguous_text")


class DataError(RuntimeError):
    """Bad input found while ``on_bad='error'``; the message names every file and utterance."""


@dataclass
class Problem:
    reason: str
    utterance: str
    file: str = ""
    detail: str = ""
    split: str = ""

    def describe(self) -> str:
        where = (" (file %s)" % self.file) if self.file else ""
        return "[%s] %s utterance %s%s: %s" % (self.split, self.reason, self.utterance, where, self.detail)


@dataclass
class SkipLog:
    """All skipped utterances and all repairs (resampling), for summary.json."""

    skipped: List[Problem] = field(default_factory=list)
    resampled: List[Problem] = field(default_factory=list)
    channel_selected: List[Problem] = field(default_factory=list)
    inputs: Dict[str, int] = field(default_factory=dict)  # input entries per split, where an importer counts them
    unindexed: List[str] = field(default_factory=list)  # audio files no transcript names (not used)

    def skip(self, p: Problem) -> None:
        logger.warning("skipping %s", p.describe())
        self.skipped.append(p)

    def count_input(self, split: str, n: int) -> None:
        self.inputs[split] = self.inputs.get(split, 0) + int(n)

    def note_unindexed(self, files: List[str]) -> None:
        self.unindexed.extend(files)

    def note_channel(self, p: Problem) -> None:
        self.channel_selected.append(p)

    def note_resample(self, p: Problem) -> None:
        logger.info("resampling %s", p.describe())
        self.resampled.append(p)

    def raise_if_any(self, on_bad: str) -> None:
        if on_bad == "error" and self.skipped:
            lines = "\n  ".join(p.describe() for p in self.skipped[:30])
            more = "" if len(self.skipped) <= 30 else "\n  ... and %d more" % (len(self.skipped) - 30)
            raise DataError(
                "%d bad utterance(s); fix them, or pass --on-bad skip to skip and count them:\n  %s%s"
                % (len(self.skipped), lines, more)
            )

    def to_dict(self) -> Dict[str, object]:
        counts = Counter(p.reason for p in self.skipped)
        return {
            "skipped_total": len(self.skipped),
            "skipped_by_reason": {r: counts.get(r, 0) for r in REASONS},
            "skipped": [asdict(p) for p in self.skipped],
            "resampled_total": len(self.resampled),
            "resampled": [asdict(p) for p in self.resampled],
            "channel_selected_total": len(self.channel_selected),
            "channel_selected": [asdict(p) for p in self.channel_selected],
            "input_entries": dict(self.inputs),
            "unindexed_audio_total": len(self.unindexed),
            "unindexed_audio": list(self.unindexed),
        }


def ensure_resampler() -> None:
    """Make lhotse resample with libsox (Debian ``libsox3``, beside ``sox``) when torchaudio is absent.

    lhotse's default resampler needs torchaudio or scipy, neither of which the toolkit requires.  The
    environment variable is inherited by the feature-extraction worker processes.
    """
    import os

    from lhotse.utils import is_torchaudio_available

    if is_torchaudio_available() or os.environ.get("LHOTSE_RESAMPLING_BACKEND"):
        return
    from lhotse.audio.resampling_backend import set_current_resampling_backend
    from lhotse.tools.libsox import libsox_available

    if libsox_available():
        os.environ["LHOTSE_RESAMPLING_BACKEND"] = "sox"
        set_current_resampling_backend("sox")
        return
    try:
        import scipy.signal  # noqa: F401
    except ImportError:
        raise RuntimeError("resampling (speed perturbation, other sample rates) needs libsox (Debian package "
                           "libsox3, installed with sox), torchaudio or scipy; none was found") from None


def audio_file(cut) -> str:
    """Path (or command) of a cut's first audio source, for messages."""
    rec = getattr(cut, "recording", None)
    if rec is None or not rec.sources:
        return ""
    return str(rec.sources[0].source)


def check_audio_source(cut) -> Optional[Tuple[str, str]]:
    """``(reason, detail)`` if a file source is missing or its header is unreadable; ``None`` if fine."""
    rec = cut.recording
    for src in rec.sources:
        if src.type != "file":
            continue
        path = Path(src.source)
        if not path.is_file():
            return "missing_audio", "audio file does not exist"
        try:
            info = sf.info(str(path))
        except Exception as e:  # soundfile raises RuntimeError/LibsndfileError with a short message
            return "unreadable_audio", "cannot read audio header: %s" % str(e).strip().splitlines()[-1]
        if info.frames == 0:
            return "unreadable_audio", "audio file has no samples"
    return None


def validate_cuts(
    cuts,
    split: str,
    lexicon: Lexicon,
    log: SkipLog,
    sample_rate: int,
    min_duration: float = 0.3,
    oov: str = "error",
):
    """Return the CutSet of usable cuts; bad ones are recorded in ``log`` (or raise, see ``oov``).

    ``oov='error'`` raises :class:`OOVError` listing every missing word (and where they occur);
    ``oov='skip'`` drops those utterances, counted and listed.
    """
    from lhotse import CutSet

    keep = []
    oov_utts: Dict[str, List[str]] = {}
    for cut in cuts:
        sup = cut.supervisions[0] if cut.supervisions else None
        utt = sup.id if sup is not None else cut.id
        fname = audio_file(cut)
        bad = check_audio_source(cut)
        if bad:
            log.skip(Problem(bad[0], utt, fname, bad[1], split))
            continue
        text = (sup.text or "").strip() if sup is not None else ""
        if not text:
            log.skip(Problem("empty_transcript", utt, fname, "transcript is empty", split))
            continue
        missing = lexicon.oov(text.split())
        if missing:
            oov_utts[utt] = missing
            if oov == "skip":
                log.skip(Problem("oov", utt, fname, "words not in lexicon: " + " ".join(missing), split))
            continue
        if cut.duration < min_duration:
            log.skip(Problem("too_short", utt, fname, "duration %.3f s < min_duration %.3f s" % (cut.duration, min_duration), split))
            continue
        if cut.sampling_rate != sample_rate:
            log.note_resample(Problem("resampled", utt, fname, "%d Hz -> %d Hz" % (cut.sampling_rate, sample_rate), split))
            cut = cut.resample(sample_rate)
        keep.append(cut)
    if oov_utts and oov != "skip":
        words = sorted({w for ws in oov_utts.values() for w in ws})
        examples = "; ".join("%s: %s" % (u, " ".join(ws)) for u, ws in list(oov_utts.items())[:10])
        raise OOVError(words, "%s split (%d utterances, e.g. %s); pass --oov skip to drop them, or --lexicon "
                       "with a lexicon that has them" % (split, len(oov_utts), examples))
    return CutSet.from_cuts(keep)


DURATION_OUTLIER_Z = 3.5


def duration_check(cuts, lexicon: Lexicon, z_max: float = DURATION_OUTLIER_Z) -> Dict[str, object]:
    """Does each transcript fit its audio's length?  A least-squares line ``duration = a + b * phones``
    over the split (``a``: the leading and trailing silence, ``b``: seconds per phone; phones of each
    word's first pronunciation), and the outliers: cuts whose residual's robust z-score
    ``(r - median) / (1.4826 * MAD)`` exceeds ``z_max`` in size, a sign of a transcript that does not
    belong to the audio (or of long pauses); residuals are log ratios of duration to the line.  Nothing is dropped; the list is for reading."""
    import numpy as np

    rows = []
    for c in cuts:
        words = c.supervisions[0].text.split()
        n = sum(len(lexicon.pronunciations(w)[0]) for w in words if w in lexicon)
        if n:
            rows.append((c.id, float(c.duration), n))
    if len(rows) < 3:
        return {"utterances": len(rows)}
    dur = np.array([d for _, d, _ in rows])
    nph = np.array([n for _, _, n in rows], dtype=np.float64)
    if np.ptp(nph) > 0:
        b, a = np.polyfit(nph, dur, 1)
    else:
        a, b = 0.0, float(np.median(dur / nph))
    res = np.log(dur / np.maximum(a + b * nph, 1e-3))  # relative: long prompts vary more in seconds
    med = float(np.median(res))
    mad = float(np.median(np.abs(res - med))) or 1e-9
    z = (res - med) / (1.4826 * mad)
    out = [{"utterance": u, "duration_s": round(d, 3), "phones": n, "expected_s": round(float(a + b * n), 3),
            "z": round(float(zz), 2)} for (u, d, n), zz in zip(rows, z) if abs(zz) > z_max]
    out.sort(key=lambda r: -abs(r["z"]))
    return {"utterances": len(rows), "silence_s": round(float(a), 4), "s_per_phone": round(float(b), 4),
            "log_ratio_mad": round(mad, 4), "z_max": z_max, "outliers_total": len(out), "outliers": out}
