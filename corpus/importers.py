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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import soundfile as sf

from corpus.text import number_to_words
from corpus.validate import DataError, Problem, SkipLog
from lang.lexicon import Lexicon

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
        raise DataError("only %d speaker/conversation group(s) after checking the input: holding out whole "
                        "speakers for dev and test needs at least 3; give the held-out data explicitly "
                        "(prepare_data.py --corpus kaldi ... --dev-dir DEV --test-dir TEST)" % len(order))
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
MAX_SEGMENT_OVERSHOOT = 0.5  # seconds a segment may end past its recording (clamped), as Kaldi's extract-segments


@dataclass
class KaldiTable:
    """One Kaldi table file (``id value``), read line by line so that every line is accounted for.

    ``entries``: id -> (value, line number) of the first line of each id; ``duplicates``: (id, line) of
    every later line with an id already seen; ``undecodable``: (id, line) of lines that are not UTF-8."""

    path: Path
    entries: Dict[str, Tuple[str, int]] = field(default_factory=dict)
    duplicates: List[Tuple[str, int]] = field(default_factory=list)
    undecodable: List[Tuple[str, int]] = field(default_factory=list)

    @classmethod
    def read(cls, path: Path) -> "KaldiTable":
        t = cls(Path(path))
        if not t.path.is_file():
            return t
        for n, raw in enumerate(t.path.read_bytes().splitlines(), start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                key = raw.split(maxsplit=1)[0].decode("utf-8", errors="replace") if raw.split() else ""
                if key:
                    t.undecodable.append((key, n))
                continue
            parts = line.strip().split(maxsplit=1)
            if not parts:
                continue
            if parts[0] in t.entries:
                t.duplicates.append((parts[0], n))
                continue
            t.entries[parts[0]] = (parts[1] if len(parts) > 1 else "", n)
        return t

    def get(self, key: str, default: str = "") -> str:
        return self.entries[key][0] if key in self.entries else default

    def where(self, key: str) -> str:
        return "%s line %d" % (self.path, self.entries[key][1])


def _wav_truncation(path: Path) -> Optional[str]:
    """For a RIFF/WAVE file: a description if its data chunk claims more bytes than the file holds."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return None
            size = path.stat().st_size
            while True:
                ch = f.read(8)
                if len(ch) < 8:
                    return None
                cid, clen = ch[:4], int.from_bytes(ch[4:8], "little")
                if cid == b"data":
                    have = size - f.tell()
                    if clen not in (0, 0xFFFFFFFF) and clen > have:
                        return "WAV data chunk declares %d bytes, the file holds %d (truncated file)" % (clen, have)
                    return None
                f.seek(clen + (clen & 1), 1)
    except OSError:
        return None


def _recording_problem(src: str, channel: int) -> Tuple[Optional[Tuple[str, str]], Optional[object]]:
    """``(problem, info)``: problem ``(reason, detail)`` or None; info the soundfile header when readable."""
    prob = _file_problem(src)
    if prob:
        return prob, None
    info = sf.info(src)
    if info.frames == 0:
        return ("unreadable_audio", "audio file has no samples (header only)"), info
    trunc = _wav_truncation(Path(src))
    if trunc:
        return ("truncated_audio", trunc), info
    if info.channels > 1 and channel >= info.channels:  # mono files have one channel to give
        return ("bad_channel", "--channel %d, but the file has %d channels" % (channel, info.channels)), info
    return None, info


def _segment_problem(value: str, duration: Optional[float]) -> Tuple[Optional[str], Optional[Tuple[str, float, float]]]:
    """Check a segments value ``rec start end``: ``(problem detail, None)`` or ``(None, (rec, start, end))``
    with ``end`` clamped to the recording when it overshoots by at most MAX_SEGMENT_OVERSHOOT."""
    parts = value.split()
    if len(parts) != 3:
        return "segments line must be 'utt rec start end', got %r" % value, None
    try:
        start, end = float(parts[1]), float(parts[2])
    except ValueError:
        return "start/end are not numbers: %r" % value, None
    if not (start >= 0 and end > start):
        return "segment %.3f-%.3f s is empty or inverted" % (start, end), None
    if duration is not None:
        if start >= duration or end > duration + MAX_SEGMENT_OVERSHOOT:
            return "segment %.3f-%.3f s lies outside its %.3f s recording" % (start, end, duration), None
        end = min(end, duration)
    return None, (parts[0], start, end)


def load_kaldi_dir(data_dir: Path, split: str, sample_rate: int, log: SkipLog, channel: int = 0):
    """One Kaldi data dir (wav.scp, text, utt2spk, optional segments) -> CutSet via lhotse.

    Every utterance named in ``text``, ``utt2spk`` or ``segments`` (and every duplicate line) ends up
    either in the returned cuts or in ``log`` with a reason, checked *before* lhotse sees it: missing,
    unreadable, header-only or truncated audio, a ``channel`` the file lacks, a segment that is inverted
    or outside its recording (an end up to MAX_SEGMENT_OVERSHOOT past it is clamped), a text line that is
    not UTF-8 (file and line named), no speaker, no transcript, a repeated id (the first line is used).
    Multi-channel files give channel ``channel`` (default 0; each such utterance is noted in the summary;
    a multi-channel file without that channel is a skip); mono files give their one channel.
    The number of input entries is recorded with ``log.count_input``.
    """
    from lhotse import Recording, RecordingSet, SupervisionSet
    from lhotse.kaldi import load_kaldi_data_dir
    from lhotse.utils import fastcopy

    data_dir = Path(data_dir)
    for name in ("wav.scp", "text", "utt2spk"):
        if not (data_dir / name).is_file():
            raise FileNotFoundError("Kaldi data dir %s has no %s (needs wav.scp, text, utt2spk; segments optional)"
                                    % (data_dir, name))
    wav = KaldiTable.read(data_dir / "wav.scp")
    text = KaldiTable.read(data_dir / "text")
    utt2spk = KaldiTable.read(data_dir / "utt2spk")
    segments = KaldiTable.read(data_dir / "segments")
    has_segments = (data_dir / "segments").is_file()
    tables = (text, utt2spk, segments)
    utts = sorted(set().union(*(t.entries for t in tables), *({k for k, _ in t.undecodable} for t in tables)))
    n_dup = sum(len(t.duplicates) for t in tables)
    log.count_input(split, len(utts) + n_dup)
    for t in tables:
        for key, n in t.duplicates:
            log.skip(Problem("duplicate_id", key, "", "%s line %d repeats id %s (its first line is used)"
                             % (t.path, n, key), split))
    bad_line = {}
    for t in tables:
        for key, n in t.undecodable:
            bad_line.setdefault(key, "%s line %d is not valid UTF-8" % (t.path, n))

    rec_problem: Dict[str, Tuple[str, str]] = {}
    rec_info: Dict[str, object] = {}
    for rec, (src, _) in wav.entries.items():
        if src.rstrip().endswith("|"):
            continue  # a command: checked when decoded
        prob, info = _recording_problem(src, channel)
        if prob:
            rec_problem[rec] = prob
        if info is not None:
            rec_info[rec] = info

    keep: List[str] = []
    seg_out: Dict[str, Tuple[str, float, float]] = {}
    multichannel = 0
    for utt in utts:
        if utt in bad_line:
            log.skip(Problem("bad_text", utt, "", bad_line[utt], split))
            continue
        if has_segments:
            if utt not in segments.entries:
                log.skip(Problem("bad_segment", utt, "", "no line in %s" % segments.path, split))
                continue
            rec = segments.get(utt).split()[0] if segments.get(utt).split() else ""
        else:
            rec = utt
        src = wav.get(rec)
        if rec not in wav.entries:
            log.skip(Problem("missing_audio", utt, "", "recording %s not in %s" % (rec, wav.path), split))
            continue
        if rec in rec_problem:
            log.skip(Problem(rec_problem[rec][0], utt, src, rec_problem[rec][1], split))
            continue
        if has_segments:
            info = rec_info.get(rec)
            dur = info.frames / info.samplerate if info is not None else None
            why, seg = _segment_problem(segments.get(utt), dur)
            if why:
                log.skip(Problem("bad_segment", utt, src, "%s: %s" % (segments.where(utt), why), split))
                continue
            seg_out[utt] = seg
        if utt not in utt2spk.entries or not utt2spk.get(utt).strip():
            log.skip(Problem("missing_speaker", utt, src, "no speaker in %s" % utt2spk.path, split))
            continue
        if not text.get(utt).strip():
            why = "empty transcript in %s" % text.where(utt) if utt in text.entries else "no line in %s" % text.path
            log.skip(Problem("empty_transcript", utt, src, why, split))
            continue
        info = rec_info.get(rec)
        if info is not None and info.channels > 1:
            multichannel += 1
            log.note_channel(Problem("channel", utt, src, "channel %d of %d" % (channel, info.channels), split))
        keep.append(utt)
    if multichannel:
        logger.info("%s: %d utterance(s) from multi-channel audio use channel %d (--channel)", split,
                    multichannel, channel)
    if not keep:
        from lhotse import CutSet
        return CutSet.from_cuts([])
    with tempfile.TemporaryDirectory(prefix="kaldi_dir_") as tmp:
        tmp = Path(tmp)
        recs = sorted({seg_out[u][0] if has_segments else u for u in keep})
        with open(tmp / "wav.scp", "w") as f:
            for r in recs:
                f.write("%s %s\n" % (r, wav.get(r)))
        with open(tmp / "text", "w") as f:
            for u in keep:
                f.write("%s %s\n" % (u, text.get(u)))
        with open(tmp / "utt2spk", "w") as f:
            for u in keep:
                f.write("%s %s\n" % (u, utt2spk.get(u).split()[0]))
        if has_segments:
            with open(tmp / "segments", "w") as f:
                for u in keep:
                    r, a, b = seg_out[u]
                    f.write("%s %s %.4f %.4f\n" % (u, r, a, b))
        recordings, supervisions, _ = load_kaldi_data_dir(tmp, sampling_rate=sample_rate, use_reco2dur=False)
    recordings = _fix_sampling_rates(recordings)
    # multi-channel files: a recording with all its channels, the supervision on the chosen one
    multi = {r for r, i in rec_info.items() if i.channels > 1}
    if multi:
        recordings = RecordingSet.from_recordings(
            Recording.from_file(r.sources[0].source, recording_id=r.id) if r.id in multi else r
            for r in recordings)
        supervisions = SupervisionSet.from_segments(
            fastcopy(s, channel=channel) if s.recording_id in multi else s for s in supervisions)
    cuts = _one_sup_per_cut(recordings, supervisions)
    return _with_text(cuts, normalise_transcript)


def import_kaldi(data_dir: Path, sample_rate: int, log: SkipLog, seed: int = 0,
                 dev_dir: Optional[Path] = None, test_dir: Optional[Path] = None,
                 channel: int = 0) -> Dict[str, object]:
    """train/dev/test CutSets from Kaldi data dirs; without dev/test dirs, speakers are held out."""
    train = load_kaldi_dir(data_dir, "train", sample_rate, log, channel)
    if dev_dir is None and test_dir is None:
        return split_by_group(train, lambda c: c.supervisions[0].speaker, seed)
    from lhotse import CutSet

    dev = load_kaldi_dir(dev_dir, "dev", sample_rate, log, channel) if dev_dir else CutSet.from_cuts([])
    test = load_kaldi_dir(test_dir, "test", sample_rate, log, channel) if test_dir else CutSet.from_cuts([])
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
