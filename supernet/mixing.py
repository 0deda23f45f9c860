"""Composite (mixed) weights: one matmul per layer whatever the number of candidates.

Bit-widths (EdMIPS "composite weight"): one latent float weight W, candidate b uses ``Q_b(W)`` =
``quant.quantizers.fake_quant(W, b, ...)``; the layer uses ``W_mix = sum_b w_b Q_b(W)``.

Bottleneck ranks (nested): the max-rank factor pair (linear ``L``: (r_max, k*D_in), affine ``A``:
(D, k*r_max), Kaldi column layout offset-major) is shared; candidate d uses the first d rows of ``L`` and
the first d columns of every offset block of ``A``. The affine composite is

    A_mix = sum_d w_d pad_d( sum_b w_b Q_b(A[:, cols(d)]) )

(zero-padded back to r_max columns). When ``Q_b`` does not depend on the columns kept (float, or any
per-tensor-free quantizer) this is exactly ``A_q . diag(m)`` with the rank mask
``m_r = sum_k w_k 1[r < d_k]``; with a per-output-channel quantizer the row scales of candidate d are
computed on its own columns, which is what the standalone network of rank d does, so one-hot weights
reproduce it exactly. Rows of ``L`` beyond d meet zero columns of ``A``, so ``L`` needs no mask when its
quantizer is per row; a per-tensor ``L`` quantizer is mixed the same way over rows (:func:`mix_rank_rows`).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from quant.quantizers import fake_quant


def mix_bits(w: torch.Tensor, bits: Sequence[int], wb: torch.Tensor, per_channel: bool = True,
             scale: str = "maxabs", skip: Optional[Sequence[bool]] = None, quant: bool = True) -> torch.Tensor:
    """``sum_b wb[b] * fake_quant(w, bits[b])``. ``skip[j]`` True drops candidate j (its weight is a
    constant 0: fixed one-hot weights). ``quant=False`` treats every candidate as float (``sum_b wb[b] * w``)."""
    out = None
    for j, b in enumerate(bits):
        if skip is not None and skip[j]:
            continue
        q = fake_quant(w, int(b), per_channel, scale) if quant else w
        term = wb[j] * q
        out = term if out is None else out + term
    if out is None:
        raise ValueError("every candidate skipped")
    return out


def slice_cols(w: torch.Tensor, k: int, d: int) -> torch.Tensor:
    """First ``d`` columns of each of the ``k`` offset blocks of a Kaldi-layout (out, k*r) weight."""
    rows, cols = w.shape
    r = cols // k
    if d == r:
        return w
    return w.reshape(rows, k, r)[:, :, :d].reshape(rows, k * d)


def slice_rows(w: torch.Tensor, d: int) -> torch.Tensor:
    return w if d == w.shape[0] else w[:d]


def _pad_cols(w: torch.Tensor, k: int, r: int) -> torch.Tensor:
    rows, cols = w.shape
    d = cols // k
    if d == r:
        return w
    return F.pad(w.reshape(rows, k, d), (0, r - d)).reshape(rows, k * r)


def mix_rank_cols(w: torch.Tensor, k: int, dims: Sequence[int], wd: torch.Tensor, bits: Sequence[int],
                  wb: torch.Tensor, per_channel: bool = True, scale: str = "maxabs",
                  skip_d: Optional[Sequence[bool]] = None, skip_b: Optional[Sequence[bool]] = None,
                  quant: bool = True) -> torch.Tensor:
    """Affine-factor composite ``sum_d wd[d] pad(sum_b wb[b] Q_b(w[:, cols(d)]))`` (shape of ``w``)."""
    r = w.shape[1] // k
    if not quant or all(int(b) == 32 for b in bits):  # float: the plain rank mask, one elementwise product
        ar = torch.arange(r, device=w.device)
        mask = sum(wd[j] * (ar < int(d)).to(w.dtype) for j, d in enumerate(dims)
                   if not (skip_d is not None and skip_d[j]))
        sb = sum(wb[j] for j in range(len(bits)) if not (skip_b is not None and skip_b[j]))
        return w * (sb * mask).repeat(k)[None, :]
    out = None
    for j, d in enumerate(dims):
        if skip_d is not None and skip_d[j]:
            continue
        m = mix_bits(slice_cols(w, k, int(d)), bits, wb, per_channel, scale, skip_b, quant)
        term = wd[j] * _pad_cols(m, k, r)
        out = term if out is None else out + term
    if out is None:
        raise ValueError("every candidate skipped")
    return out


def mix_rank_rows(w: torch.Tensor, dims: Sequence[int], wd: torch.Tensor, bits: Sequence[int],
                  wb: torch.Tensor, per_channel: bool = True, scale: str = "maxabs",
                  skip_d: Optional[Sequence[bool]] = None, skip_b: Optional[Sequence[bool]] = None,
                  quant: bool = True) -> torch.Tensor:
    """Linear-factor composite over row prefixes (needed only when the quantizer is per tensor)."""
    r = w.shape[0]
    out = None
    for j, d in enumerate(dims):
        if skip_d is not None and skip_d[j]:
            continue
        m = mix_bits(slice_rows(w, int(d)), bits, wb, per_channel, scale, skip_b, quant)
        if m.shape[0] != r:
            m = F.pad(m, (0, 0, 0, r - m.shape[0]))
        term = wd[j] * m
        out = term if out is None else out + term
    if out is None:
        raise ValueError("every candidate skipped")
    return out
