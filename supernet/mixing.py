"""Composite (mixed) weights: one matmul per layer whatever the number of candidates.

Bit-widths (EdMIPS "composite weight"): one latent float weight W, candidate b uses ``Q_b(W)`` =
``models.quantizers.fake_quant(W, b, ...)``; the layer uses ``W_mix = sum_b w_b Q_b(W)``.

Bottleneck ranks (nested): the max-rank factor pair (linear ``L``: (r_max, k*D_in), affine ``A``:
(D, k*r_max), Kaldi column layout offset-major) is shared; candidate d uses the first d rows of ``L`` and
the first d columns of every offset block of ``A``. The affine composite is

    A_mix = sum_d w_d pad_d( sum_b w_b Q_b(A[:, cols(d)]) )

(zero-padded back to r_max columns). For float candidates this is exactly ``A . diag(m)`` with the rank
mask ``m_r = sum_k w_k 1[r < d_k]`` (computed that way); with a per-output-channel quantizer the row
scales of candidate d are computed on its own columns, which is what the standalone network of rank d
does, so one-hot weights reproduce it exactly. Rows of ``L`` beyond d meet zero columns of ``A``, so ``L``
needs no mask when its quantizer is per row; a per-tensor ``L`` quantizer is mixed the same way over rows
(:func:`mix_rank_rows`).

Two per-candidate flags save work without changing any value or gradient:

* ``skip[j]``: the candidate's weight is a constant 0 (fixed one-hot weights, or no gradient wanted):
  the candidate is not computed at all;
* ``frozen[j]``: the candidate's weight *value* is 0 but it carries a gradient (a hard straight-through
  Gumbel sample): its quantized copy is computed without autograd (the gradient to the latent weight
  through it is ``0 * G``), so only the logits' gradient ``<G, Q_b(W)>`` flows.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from models.layout import slice_cols  # the affine factor's layout lives with the model
from models.quantizers import fake_quant

Flags = Optional[Sequence[bool]]


def _flag(flags: Flags, j: int) -> bool:
    return bool(flags[j]) if flags is not None else False


def quantize(w: torch.Tensor, bits: int, *, per_channel: bool = True, scale: str = "maxabs", quant: bool = True,
             frozen: bool = False) -> torch.Tensor:
    """``fake_quant(w, bits, ...)`` (``w`` itself when ``quant`` is False); detached when ``frozen``."""
    if frozen:
        with torch.no_grad():
            return (fake_quant(w, int(bits), per_channel, scale) if quant else w).detach()
    return fake_quant(w, int(bits), per_channel, scale) if quant else w


def mix_bits(w: torch.Tensor, bits: Sequence[int], wb: torch.Tensor, *, per_channel: bool = True,
             scale: str = "maxabs", skip: Flags = None, quant: bool = True, frozen: Flags = None) -> torch.Tensor:
    """``sum_b wb[b] * fake_quant(w, bits[b])``. ``quant=False`` treats every candidate as float."""
    out = None
    for j, b in enumerate(bits):
        if _flag(skip, j):
            continue
        term = wb[j] * quantize(w, b, per_channel=per_channel, scale=scale, quant=quant, frozen=_flag(frozen, j))
        out = term if out is None else out + term
    if out is None:
        raise ValueError("every candidate skipped")
    return out


def slice_rows(w: torch.Tensor, d: int) -> torch.Tensor:
    return w if d == w.shape[0] else w[:d]


def _pad_cols(w: torch.Tensor, k: int, r: int) -> torch.Tensor:
    rows, cols = w.shape
    d = cols // k
    if d == r:
        return w
    return F.pad(w.reshape(rows, k, d), (0, r - d)).reshape(rows, k * r)


def rank_masks(r: int, k: int, dims: Sequence[int], device=None, dtype=torch.float32) -> torch.Tensor:
    """``(n_dims, k*r)``: row i is ``1[c < dims[i]]`` over each of the k offset blocks."""
    ar = torch.arange(r, device=device)
    return torch.stack([(ar < int(d)).to(dtype) for d in dims]).repeat(1, k)


def mix_rank_cols(w: torch.Tensor, k: int, dims: Sequence[int], wd: torch.Tensor, bits: Sequence[int],
                  wb: torch.Tensor, *, per_channel: bool = True, scale: str = "maxabs", skip_d: Flags = None,
                  skip_b: Flags = None, quant: bool = True, frozen_d: Flags = None,
                  frozen_b: Flags = None) -> torch.Tensor:
    """Affine-factor composite ``sum_d wd[d] pad(sum_b wb[b] Q_b(w[:, cols(d)]))`` (shape of ``w``).

    Per-channel quantizer, b >= 2: ``pad(Q_b(w[:, cols(d)])) == Q_b(w * colmask_d)`` because a symmetric
    uniform quantizer's row scale (max-abs, or the MSE search over fractions of it) ignores zero entries
    and codes them as 0; so the masked copies of all candidate ranks are stacked along the channel axis
    and quantized in one call per bit-width. The 1-bit quantizer's scale (mean |w| of the row) does depend
    on the zeros, so 1 bit (and any per-tensor quantizer) slices each rank. The one-hot equivalence tests
    check every path.
    """
    r = w.shape[1] // k
    act_d = [j for j in range(len(dims)) if not _flag(skip_d, j)]
    act_b = [j for j in range(len(bits)) if not _flag(skip_b, j)]
    if not act_d or not act_b:
        raise ValueError("every candidate skipped")
    masks = rank_masks(r, k, [dims[j] for j in act_d], w.device, w.dtype)  # (nd, k*r)
    wd_a = wd[act_d]
    if not quant or all(int(bits[j]) == 32 for j in act_b):  # float: the plain rank mask
        sb = wb[act_b].sum() if len(act_b) > 1 else wb[act_b[0]]
        return w * (sb * (wd_a @ masks))[None, :]
    stacked = None
    out = None
    for j in act_b:
        b = int(bits[j])
        fb = _flag(frozen_b, j)
        if b == 32:
            m = w * (wd_a @ masks)[None, :]
        elif b == 1 or not per_channel:
            m = None
            for jd in act_d:
                q = quantize(slice_cols(w, k, int(dims[jd])), b, per_channel=per_channel, scale=scale,
                             frozen=fb or _flag(frozen_d, jd))
                t = wd[jd] * _pad_cols(q, k, r)
                m = t if m is None else m + t
        else:
            if stacked is None:
                stacked = (w[None] * masks[:, None, :]).reshape(len(act_d) * w.shape[0], w.shape[1])
            q = quantize(stacked, b, per_channel=True, scale=scale, frozen=fb).reshape(len(act_d), w.shape[0], w.shape[1])
            m = q[0] * wd_a[0] if len(act_d) == 1 else torch.einsum("d,dhc->hc", wd_a, q)
        term = wb[j] * m
        out = term if out is None else out + term
    return out


def mix_rank_rows(w: torch.Tensor, dims: Sequence[int], wd: torch.Tensor, bits: Sequence[int],
                  wb: torch.Tensor, *, per_channel: bool = True, scale: str = "maxabs", skip_d: Flags = None,
                  skip_b: Flags = None, quant: bool = True, frozen_d: Flags = None,
                  frozen_b: Flags = None) -> torch.Tensor:
    """Linear-factor composite over row prefixes (needed only when the quantizer is per tensor)."""
    r = w.shape[0]
    out = None
    for jd, d in enumerate(dims):
        if _flag(skip_d, jd):
            continue
        fr = None if frozen_b is None and frozen_d is None else \
            [_flag(frozen_b, j) or _flag(frozen_d, jd) for j in range(len(bits))]
        m = mix_bits(slice_rows(w, int(d)), bits, wb, per_channel=per_channel, scale=scale, skip=skip_b, quant=quant,
                     frozen=fr)
        if m.shape[0] != r:
            m = F.pad(m, (0, 0, 0, r - m.shape[0]))
        term = wd[jd] * m
        out = term if out is None else out + term
    if out is None:
        raise ValueError("every candidate skipped")
    return out
