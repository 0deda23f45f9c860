"""Batches of precomputed features for LF-MMI training and decoding.

A batch is a dict::

    feats    (B, T_max, F) float32, CMVN-normalised, zero padded on the right
    lengths  (B,) int64, valid input frames per sequence
    texts    list[str] of length B (normalised transcripts, see docs/INTERFACES.md)
    cut_ids  list[str] of length B

Sequences are sorted by decreasing length (the k2 backend requires it; the torch backend does not care).
Cuts come from a lhotse sampler (:class:`lhotse.dataset.DynamicBucketingSampler`), which also shards
batches across ranks under DistributedDataParallel. Resumption is exact: an epoch's batch order is a
function of (seed, epoch) only, and :class:`ResumableBatches` skips the batches already trained on
without loading their features.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Dict, Iterator, Optional
import warnings

warnings.filterwarnings("ignore", message="You are using DynamicBucketingSampler with an eagerly read CutSet")

import numpy as np
import torch

log = logging.getLogger(__name__)


class Cmvn:
    """Global mean/variance normalisation from ``cmvn.json`` ({"mean": [F], "std": [F]})."""

    def __init__(self, mean, std):
        self.mean = torch.as_tensor(np.asarray(mean, dtype=np.float32))
        self.std = torch.as_tensor(np.asarray(std, dtype=np.float32)).clamp_min(1e-5)

    @classmethod
    def load(cls, path) -> "Cmvn":
        with open(path) as f:
            d = json.load(f)
        return cls(d["mean"], d["std"])

    def __call__(self, feats: torch.Tensor) -> torch.Tensor:
        """feats (..., F) -> normalised (..., F)."""
        if feats.shape[-1] != self.mean.numel():
            raise ValueError(
                f"feature dim {feats.shape[-1]} does not match CMVN dim {self.mean.numel()}"
            )
        return (feats - self.mean) / self.std


def load_cuts(data_dir, split: str):
    """Load ``cuts_<split>.jsonl.gz`` from a prepared corpus directory with a clear error."""
    from lhotse import CutSet

    path = Path(data_dir) / f"cuts_{split}.jsonl.gz"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: prepare the corpus first (python prepare_data.py --out {data_dir} ...)"
        )
    return CutSet.from_file(path)


def collate(cuts, cmvn: Optional[Cmvn] = None) -> Dict[str, object]:
    """Load features of ``cuts`` (a CutSet or list of cuts) and pad them into a batch dict."""
    cuts = sorted(list(cuts), key=lambda c: -c.num_frames)
    feats = []
    for c in cuts:
        try:
            f = torch.from_numpy(np.asarray(c.load_features(), dtype=np.float32))
        except Exception as e:  # pragma: no cover - depends on a broken file on disk
            raise RuntimeError(f"cannot load features of cut {c.id}: {e}") from e
        if cmvn is not None:
            f = cmvn(f)
        feats.append(f)
    lengths = torch.tensor([f.shape[0] for f in feats], dtype=torch.int64)
    dim = feats[0].shape[1]
    out = torch.zeros(len(feats), int(lengths.max()), dim)
    for i, f in enumerate(feats):
        out[i, : f.shape[0]] = f
    texts = []
    for c in cuts:
        if len(c.supervisions) != 1:
            raise ValueError(f"cut {c.id} has {len(c.supervisions)} supervisions; expected exactly 1")
        texts.append(c.supervisions[0].text or "")
    return {"feats": out, "lengths": lengths, "texts": texts, "cut_ids": [c.id for c in cuts]}


def make_sampler(cuts, max_duration: float, shuffle: bool, seed: int, world_size: int = 1,
                 rank: int = 0, num_buckets: int = 10):
    """A lhotse dynamic bucketing sampler; shards batches over ``world_size`` ranks."""
    from lhotse.dataset import DynamicBucketingSampler

    cuts = cuts.to_eager()
    if len(cuts) == 0:
        raise ValueError("no cuts to sample from (empty split?)")
    if len(cuts) < 4 * num_buckets:  # too few cuts to estimate duration buckets
        from lhotse.dataset import SimpleCutSampler

        return SimpleCutSampler(cuts, max_duration=max_duration, shuffle=shuffle, seed=seed,
                                world_size=world_size, rank=rank, drop_last=world_size > 1 and shuffle)
    return DynamicBucketingSampler(
        cuts, max_duration=max_duration, shuffle=shuffle, seed=seed,
        num_buckets=num_buckets,
        world_size=world_size, rank=rank, drop_last=world_size > 1 and shuffle,
    )


class ResumableBatches:
    """Iterate the batches of one epoch, optionally skipping the first ``skip`` of them.

    The skipped batches' cuts are drawn from the sampler (so the order of the rest is unchanged)
    but their features are never loaded.
    """

    def __init__(self, sampler, cmvn: Optional[Cmvn]):
        self.sampler = sampler
        self.cmvn = cmvn

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[Dict[str, object]]:
        self.sampler.set_epoch(epoch)
        for i, cuts in enumerate(self.sampler):
            if i < skip:
                continue
            yield collate(cuts, self.cmvn)

    def num_batches(self, epoch: int = 0) -> int:
        """Count the batches of an epoch (cheap: no features are loaded)."""
        self.sampler.set_epoch(epoch)
        n = sum(1 for _ in self.sampler)
        return n
