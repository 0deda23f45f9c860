"""Vocal tract length perturbation (VTLP, Jaitly & Hinton, 2013) on log-mel features.

YAML ``train: vtlp: {low: 0.9, high: 1.1}``: per training utterance a warp factor ``alpha ~ U[low, high]``
scales the frequency axis, ``f -> alpha * f``: formants move up by alpha (a shorter vocal tract) or down.
On the precomputed Fbank features this is done by interpolation: output channel k, centred at frequency
``c_k``, takes the (un-normalised) log energy the utterance has at ``c_k / alpha``, linearly interpolated
between the two channels around it on the mel scale, and clamped to the first or last channel outside
the band. The channel centres are those of lhotse's ``Fbank`` (``num_mel_bins`` triangles equally spaced
in mel between ``low_hz`` and ``high_hz``; the defaults are its 20 Hz and 16 kHz / 2 - 400 Hz).

The batch arrives CMVN-normalised; the warp undoes the global CMVN, warps, and normalises again, so a
warped utterance is normalised like any other. Every draw comes from a generator seeded with (the run's
seed, the optimizer step), so a resumed run warps the same way as an uninterrupted one. Padding frames
are left alone. Training only: validation and decoding see the features as they are.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Optional

import numpy as np
import torch

from training.specaugment import check_option_keys


def mel(f):
    return 1127.0 * np.log1p(np.asarray(f, dtype=np.float64) / 700.0)


def inverse_mel(m):
    return 700.0 * np.expm1(np.asarray(m, dtype=np.float64) / 1127.0)


def channel_centres_mel(num_bins: int, low_hz: float, high_hz: float) -> np.ndarray:
    """(num_bins,) centre of each Fbank triangle on the mel scale (lhotse / Kaldi layout)."""
    return np.linspace(mel(low_hz), mel(high_hz), num_bins + 2)[1:-1]


def warp_matrix(alpha: float, num_bins: int, low_hz: float, high_hz: float) -> torch.Tensor:
    """(F, F) matrix W with ``warped = feats @ W`` for feats (..., F): column k interpolates the input
    at frequency ``centre_k / alpha``."""
    centres = channel_centres_mel(num_bins, low_hz, high_hz)
    src = mel(np.clip(inverse_mel(centres) / alpha, inverse_mel(centres[0]), inverse_mel(centres[-1])))
    pos = np.interp(src, centres, np.arange(num_bins, dtype=np.float64))  # fractional input channel
    i0 = np.minimum(np.floor(pos).astype(int), num_bins - 1)
    i1 = np.minimum(i0 + 1, num_bins - 1)
    w1 = pos - i0
    W = np.zeros((num_bins, num_bins))
    k = np.arange(num_bins)
    np.add.at(W, (i0, k), 1.0 - w1)
    np.add.at(W, (i1, k), w1)
    return torch.from_numpy(W.astype(np.float32))


@dataclass(frozen=True)
class Vtlp:
    low: float = 0.9
    high: float = 1.1
    low_hz: float = 20.0
    high_hz: float = 7600.0

    @classmethod
    def from_dict(cls, d: Optional[Dict[str, Any]]) -> Optional["Vtlp"]:
        """None for None; else the options, rejecting unknown keys and bad ranges."""
        if d is None:
            return None
        check_option_keys(d, cls, "train.vtlp")
        for k, v in d.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"train.vtlp.{k} must be a finite number > 0, got {v!r}")
        out = cls(**{k: float(v) for k, v in d.items()})
        if out.low > out.high:
            raise ValueError(f"train.vtlp: low ({out.low}) must not exceed high ({out.high})")
        if out.low_hz >= out.high_hz:
            raise ValueError(f"train.vtlp: low_hz ({out.low_hz}) must be below high_hz ({out.high_hz})")
        return out

    def __call__(self, feats: torch.Tensor, lengths: torch.Tensor, seed: int, step: int,
                 mean: Optional[torch.Tensor] = None, std: Optional[torch.Tensor] = None) -> torch.Tensor:
        """feats (B, T, F) (CMVN-normalised with ``mean``/``std`` (F,), when given), lengths (B,) -> a
        warped copy (B, T, F); ``feats`` is not changed."""
        g = torch.Generator().manual_seed((int(seed) * 1_000_003 + int(step) + 7_919) % (2 ** 63))
        out = feats.clone()
        B, _, F = feats.shape
        for b in range(B):
            alpha = self.low + (self.high - self.low) * float(torch.rand((), generator=g, dtype=torch.float64))
            n = int(lengths[b])
            W = warp_matrix(alpha, F, self.low_hz, self.high_hz).to(feats.dtype)
            x = feats[b, :n]
            if mean is not None:
                raw = x * std + mean
                out[b, :n] = (raw @ W - mean) / std
            else:
                out[b, :n] = x @ W
        return out
