"""SpecAugment (Park et al., 2019) without time warping: bands of frequency channels and runs of frames
of the training features set to zero, which after global CMVN is each channel's mean.

YAML ``train: spec_augment: {freq_masks: 2, freq_width: 8, time_masks: 2, time_width: 20}``: per
utterance, ``freq_masks`` bands of ``w ~ U{0..freq_width}`` channels and ``time_masks`` runs of ``w ~
U{0..time_width}`` frames (never wider than the utterance), each at a uniform position inside the
utterance's own frames; padding frames are left alone. Every draw comes from a generator seeded with
(the run's seed, the optimizer step), so a resumed run masks the same way as an uninterrupted one.
Training only: validation and decoding see the features as they are.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Dict, Optional

import torch


def check_option_keys(d: Any, cls, key: str) -> None:
    """Refuse, naming ``key``, a value that is not a mapping or has keys that are not fields of ``cls``."""
    if not isinstance(d, dict):
        raise ValueError(f"{key} must be a mapping or null, got {d!r}")
    known = {f.name for f in fields(cls)}
    bad = sorted(set(d) - known)
    if bad:
        raise ValueError(f"unknown {key} option(s) {bad}; known: {sorted(known)}")


@dataclass(frozen=True)
class SpecAugment:
    freq_masks: int = 2
    freq_width: int = 8
    time_masks: int = 2
    time_width: int = 20

    @classmethod
    def from_dict(cls, d: Optional[Dict[str, Any]]) -> Optional["SpecAugment"]:
        """None for None; else the options, rejecting unknown keys and values that are not integers >= 0."""
        if d is None:
            return None
        check_option_keys(d, cls, "train.spec_augment")
        for k, v in d.items():
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"train.spec_augment.{k} must be an integer >= 0, got {v!r}")
        return cls(**d)

    def __call__(self, feats: torch.Tensor, lengths: torch.Tensor, seed: int, step: int) -> torch.Tensor:
        """feats (B, T, F), lengths (B,) -> a masked copy (B, T, F); ``feats`` is not changed."""
        g = torch.Generator().manual_seed((int(seed) * 1_000_003 + int(step)) % (2 ** 63))
        out = feats.clone()
        B, _, F = feats.shape

        def draw(hi: int) -> int:  # uniform on 0..hi
            return int(torch.randint(0, hi + 1, (1,), generator=g))

        for b in range(B):
            n = int(lengths[b])
            for _ in range(self.freq_masks):
                w = min(draw(self.freq_width), F)
                f0 = draw(F - w)
                out[b, :n, f0:f0 + w] = 0.0
            for _ in range(self.time_masks):
                w = min(draw(self.time_width), n)
                t0 = draw(n - w)
                out[b, t0:t0 + w, :] = 0.0
        return out
