"""Common last stage of every corpus: validate, speed-perturb, extract features, write the prepared dir.

Input: ``{"train": CutSet, "dev": CutSet, "test": CutSet}`` (one supervision per cut, normalised text)
and a lexicon that covers the words.  Output (docs/INTERFACES.md): ``cuts_<split>.jsonl.gz`` with
features, ``feats/``, ``lang/lexicon.txt``, ``lang/phones.txt``, ``lm_train_text.txt`` (the training
transcripts: the phone LM of the den graph), ``lm_text.txt`` (the decoding LM's text: the training
transcripts plus any extra LM sentences), ``cmvn.json``, ``summary.json``.  Manifests are written with a
fixed gzip header (mtime 0) so equal inputs give byte-identical files.
"""
from __future__ import annotations

import gzip
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence

from corpus.features import cmvn_from_stats, compute_features, save_cmvn
from corpus.validate import Problem, SkipLog, audio_file, duration_check, ensure_resampler, validate_cuts
from lang.lexicon import Lexicon

logger = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test")


@dataclass
class PrepareOptions:
    sample_rate: int = 16000
    num_mel_bins: int = 40
    speed_perturb: Sequence[float] = (0.9, 1.1)
    min_duration: float = 0.3
    oov: str = "error"  # error | skip
    on_bad: str = "skip"  # skip | error (missing/corrupt audio, empty transcript, too short)
    num_jobs: int = 2
    progress: bool = True


def write_cuts(cuts, path: Path) -> None:
    """Write a CutSet as gzipped JSONL with a deterministic gzip header."""
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
        for c in cuts:
            gz.write((json.dumps(c.to_dict(), ensure_ascii=False) + "\n").encode("utf-8"))


def split_stats(cuts) -> Dict[str, object]:
    texts = [c.supervisions[0].text for c in cuts]
    return {
        "hours": round(sum(c.duration for c in cuts) / 3600.0, 4),
        "utterances": len(cuts),
        "speakers": len({c.supervisions[0].speaker for c in cuts}),
        "vocabulary": len({w for t in texts for w in t.split()}),
        "words": sum(len(t.split()) for t in texts),
        "example": texts[0] if texts else "",
        "speaker_ids": sorted({c.supervisions[0].speaker for c in cuts})[:200],
    }


def _filter_lm_extra(sentences: Sequence[str], featured: Dict[str, object], lexicon: Lexicon):
    """Extra LM sentences that are neither a dev/test transcript nor outside the lexicon, and counts."""
    held = {c.supervisions[0].text for name in ("dev", "test") for c in featured[name]}
    kept, heldout, oov = [], 0, 0
    for s in sentences:
        s = " ".join(s.split())
        if not s:
            continue
        if s in held:
            heldout += 1
        elif not all(w in lexicon for w in s.split()):
            oov += 1
        else:
            kept.append(s)
    if heldout or oov:
        logger.info("extra LM text: kept %d sentences, dropped %d equal to a dev/test transcript and %d "
                    "with words outside the lexicon", len(kept), heldout, oov)
    return kept, {"extra_sentences": len(kept), "extra_dropped_heldout": heldout, "extra_dropped_oov": oov}


def prepare_dir(
    splits: Dict[str, object],
    lexicon: Lexicon,
    out_dir: Path,
    opts: PrepareOptions,
    log: Optional[SkipLog] = None,
    extra_summary: Optional[Dict[str, object]] = None,
    t_start: Optional[float] = None,
    lm_extra_text: Sequence[str] = (),
) -> Dict[str, object]:
    """Validate, featurise and write everything; returns the summary dict (also in summary.json).

    ``lm_extra_text``: normalised sentences added to the decoding LM's text (``lm_text.txt``); a
    sentence equal to a dev or test transcript, or with a word the lexicon lacks, is dropped (counted
    in summary.json under ``lm_text``).
    """
    from lhotse import CutSet

    t0 = time.time() if t_start is None else t_start
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    log = log or SkipLog()
    timings: Dict[str, float] = {}

    ensure_resampler()
    t = time.time()
    valid = {}
    for name in SPLITS:
        valid[name] = validate_cuts(splits[name], name, lexicon, log, opts.sample_rate, opts.min_duration, opts.oov)
    log.raise_if_any(opts.on_bad)
    timings["validate_s"] = round(time.time() - t, 2)

    t = time.time()
    featured = {}
    cmvn = None
    is_orig = {c.id for c in valid["train"]}  # training cuts that are not speed-perturbed copies
    for name in SPLITS:
        cuts = list(valid[name])
        origin = {c.id: c.supervisions[0].id for c in cuts}  # cut id -> original utterance id
        if name == "train":
            for f in opts.speed_perturb:
                for c in valid[name]:
                    p = c.perturb_speed(f)
                    origin[p.id] = c.supervisions[0].id
                    cuts.append(p)
        done, failed, stats = compute_features(cuts, out_dir / "feats", name, opts.num_mel_bins, opts.num_jobs,
                                                 opts.sample_rate, opts.progress)
        by_id = {c.id: c for c in cuts}
        bad_base = set()
        for cut_id, msg in failed:
            base = origin[cut_id]
            if base in bad_base:
                continue
            bad_base.add(base)
            log.skip(Problem("corrupt_audio", base, audio_file(by_id[cut_id]), "decoding failed: " + msg, name))
        if bad_base:  # drop every copy (speed-perturbed too) of an utterance whose audio is corrupt
            done = [c for c in done if origin[c.id] not in bad_base]
        featured[name] = CutSet.from_cuts(done)
        if name == "train" and cuts:  # an evaluation-only corpus (no train split) has no CMVN of its own
            cmvn = cmvn_from_stats(stats)
    log.raise_if_any(opts.on_bad)
    timings["features_s"] = round(time.time() - t, 2)

    for name in SPLITS:
        write_cuts(featured[name], out_dir / ("cuts_%s.jsonl.gz" % name))
    if cmvn is not None:
        save_cmvn(cmvn, out_dir / "cmvn.json")
    else:
        logger.info("no training utterances: evaluation-only corpus, no cmvn.json (models carry their own)")
    train_orig = [c for c in featured["train"] if c.id in is_orig]
    train_text = [c.supervisions[0].text for c in train_orig]
    extra, lm_stats = _filter_lm_extra(lm_extra_text, featured, lexicon)
    words = {w for name in SPLITS for c in featured[name] for w in c.supervisions[0].text.split()}
    words |= {w for s in extra for w in s.split()}
    lexicon.subset(words).save(out_dir / "lang" / "lexicon.txt")
    with open(out_dir / "lm_train_text.txt", "w", encoding="utf-8") as f:
        f.writelines(t + "\n" for t in train_text)
    lm_sentences = train_text + extra
    lm_vocab = {w for t in lm_sentences for w in t.split()}
    with open(out_dir / "lm_text.txt", "w", encoding="utf-8") as f:
        f.writelines(t + "\n" for t in lm_sentences)
    lm_stats.update({"sentences": len(lm_sentences), "words": sum(len(t.split()) for t in lm_sentences),
                     "vocabulary": len(lm_vocab)})

    summary: Dict[str, object] = {}
    if extra_summary:
        summary.update(extra_summary)
    summary["splits"] = {}
    for name in SPLITS:
        cuts = [c for c in featured[name] if name != "train" or c.id in is_orig]
        st = split_stats(cuts)
        if name == "train":
            st["hours_with_speed_perturbation"] = round(sum(c.duration for c in featured[name]) / 3600.0, 4)
            st["utterances_with_speed_perturbation"] = len(featured[name])
        summary["splits"][name] = st
    train_words = {w for c in train_orig for w in c.supervisions[0].text.split()}
    for name in ("dev", "test"):
        toks = [w for c in featured[name] for w in c.supervisions[0].text.split()]
        summary["splits"][name]["oov_rate_vs_train_vocab"] = round(
            sum(w not in train_words for w in toks) / max(1, len(toks)), 4)
        summary["splits"][name]["oov_rate_vs_lm_text"] = round(
            sum(w not in lm_vocab for w in toks) / max(1, len(toks)), 4)
    summary["lm_text"] = lm_stats
    summary["duration_check"] = {name: duration_check(featured[name], lexicon) for name in SPLITS}
    summary["lexicon_words"] = len(words)
    summary["phones"] = len(lexicon.subset(words).phones)
    summary["features"] = {"type": "fbank", "num_mel_bins": opts.num_mel_bins, "frame_shift": 0.01,
                           "storage": "LilcomChunkyWriter", "sample_rate": opts.sample_rate,
                           "speed_perturb": list(opts.speed_perturb)}
    summary.update(log.to_dict())
    timings["total_s"] = round(time.time() - t0, 2)
    summary["build_time"] = timings
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    if log.skipped:
        logger.warning("%d utterance(s) skipped, listed in %s", len(log.skipped), out_dir / "summary.json")
    logger.info("prepared %s in %.1f s", out_dir, timings["total_s"])
    return summary
