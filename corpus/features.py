"""Fbank features (lhotse), stored with LilcomChunkyWriter, global CMVN stats; 2-process extraction.

Each worker process handles a contiguous shard of cuts and writes its own ``feats/<name>_<k>.lca``, so
the output is deterministic and the cut order is kept.  Per-cut failures (corrupt audio discovered when
decoding) are returned as problems, never silently dropped.
"""
from __future__ import annotations

import json
import logging
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

logger = logging.getLogger(__name__)


def _extract_shard(args) -> Tuple[list, list, Optional[np.ndarray], Optional[np.ndarray], int]:
    cuts, storage_path, num_mel_bins, sample_rate, shard, show_progress = args
    import torch
    from lhotse import Fbank, FbankConfig, LilcomChunkyWriter
    from lhotse.utils import fastcopy
    from tqdm import tqdm

    torch.set_num_threads(1)
    extractor = Fbank(FbankConfig(num_filters=num_mel_bins, dither=0.0, sampling_rate=sample_rate))
    done, failed = [], []
    s1 = np.zeros(num_mel_bins, dtype=np.float64)
    s2 = np.zeros(num_mel_bins, dtype=np.float64)
    n = 0
    with LilcomChunkyWriter(storage_path) as writer:
        for cut in tqdm(cuts, desc="fbank shard %d" % shard, disable=not show_progress, leave=False):
            try:
                samples = cut.load_audio()
            except Exception as e:  # corrupt or truncated audio: report, don't crash the whole build
                msg = " ".join(l.strip() for l in str(e).splitlines() if l.strip())
                failed.append((cut.id, "%s: %s" % (type(e).__name__, msg[:400])))
                continue
            bad = int(np.size(samples) - np.isfinite(samples).sum())
            if bad:  # NaN/inf samples (a float WAV can hold them) would poison CMVN and every batch
                failed.append((cut.id, "%d non-finite audio sample(s)" % bad))
                continue
            info = extractor.extract_from_samples_and_store(
                samples=samples, storage=writer, sampling_rate=cut.sampling_rate, offset=cut.start,
                channel=cut.channel)
            done.append(fastcopy(cut, features=info))
    kept = []
    for c in done:
        f = c.load_features().astype(np.float64)
        if not np.isfinite(f).all():
            failed.append((c.id, "%d non-finite feature value(s)" % int(np.size(f) - np.isfinite(f).sum())))
            continue
        kept.append(c)
        s1 += f.sum(0)
        s2 += (f * f).sum(0)
        n += f.shape[0]
    return kept, failed, s1, s2, n


def compute_features(
    cuts: Sequence,
    feats_dir: Path,
    name: str,
    num_mel_bins: int = 40,
    num_jobs: int = 2,
    sample_rate: int = 16000,
    show_progress: bool = True,
):
    """Compute and store Fbank for ``cuts``; returns ``(cuts_with_feats, failures, stats)``.

    ``failures`` is a list of ``(cut_id, message)`` (unreadable audio, non-finite samples or features: the
    caller counts them as skips); ``stats`` is ``(sum, sum_sq, frames)`` over the kept cuts.
    """
    feats_dir = Path(feats_dir)
    feats_dir.mkdir(parents=True, exist_ok=True)
    cuts = list(cuts)
    num_jobs = max(1, min(num_jobs, len(cuts)))
    bounds = np.linspace(0, len(cuts), num_jobs + 1).astype(int)
    jobs = [
        (cuts[bounds[k]:bounds[k + 1]], str(feats_dir / ("%s_%d.lca" % (name, k))), num_mel_bins, sample_rate, k,
         show_progress and k == 0)
        for k in range(num_jobs)
    ]
    if num_jobs == 1:
        results = [_extract_shard(jobs[0])]
    else:
        with ProcessPoolExecutor(num_jobs) as ex:
            results = list(ex.map(_extract_shard, jobs))
    out, failed = [], []
    s1 = np.zeros(num_mel_bins)
    s2 = np.zeros(num_mel_bins)
    n = 0
    for done, fail, a, b, m in results:
        out += done
        failed += fail
        s1 += a
        s2 += b
        n += m
    return out, failed, (s1, s2, n)


def cmvn_from_stats(stats) -> Dict[str, List[float]]:
    s1, s2, n = stats
    if n == 0:
        raise ValueError("no training frames: cannot compute CMVN statistics")
    mean = s1 / n
    var = np.maximum(s2 / n - mean * mean, 1e-10)
    return {"mean": [float(x) for x in mean], "std": [float(x) for x in np.sqrt(var)], "frames": int(n)}


def save_cmvn(cmvn: Dict[str, List[float]], path: Path) -> None:
    Path(path).write_text(json.dumps(cmvn, indent=1) + "\n")


def load_cmvn(path: Path) -> Tuple[np.ndarray, np.ndarray]:
    d = json.loads(Path(path).read_text())
    return np.asarray(d["mean"], dtype=np.float32), np.asarray(d["std"], dtype=np.float32)
