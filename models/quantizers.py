"""Weight quantizers (symmetric uniform, per output channel by default) with straight-through rounding.

They live in ``models`` because the network's forward pass applies them (``models.tdnnf``); everything
built on them (cost model, packed format, ADMM) is in ``quant``, one layer up (docs/ARCHITECTURE.md).
``quant.quantizers`` still names the same functions.

Conventions (shared by fake_quant, quantize_to_codes / dequantize, the packer and the cost model):

* ``bits`` is one of ``{1, 2, 3, 4, 8, 32}``; 32 means "float, not quantized".
* The *channel* axis is dim 0 (the output rows of a weight matrix, Kaldi layout ``(out, in * offsets)``).
  ``per_channel=False`` uses one scale for the whole tensor.
* b >= 2 bits: integer codes ``q`` in ``[-qmax, qmax]`` with ``qmax = 2**(b-1) - 1`` (narrow symmetric range:
  2 bits = ternary {-1, 0, 1}, 3 bits = -3..3, 4 bits = -7..7, 8 bits = -127..127); value = ``q * s``.
  ``s = clip / qmax`` where ``clip = max|W|`` (``scale='maxabs'``) or the clipping value that minimises the
  per-channel squared error over a grid of clipping ratios (``scale='mse'``).
* 1 bit: ``q = sign(W)`` in {-1, +1} (sign(0) := +1), ``s = mean|W|`` per channel (the MSE-optimal scale
  for a sign quantizer, so ``scale`` is ignored).
* Scales are rounded to float16 *before* use (the packed file stores fp16 scales), so
  ``dequantize(*quantize_to_codes(w, b), b) == fake_quant(w, b)`` bit-exactly.
* Gradient (STE): identity for ``|w| <= clip`` and 0 outside (with max-abs scaling nothing is outside);
  1 bit: identity everywhere. Scales are treated as constants.
"""
from __future__ import annotations

from typing import Tuple

import torch

SUPPORTED_BITS = (1, 2, 3, 4, 8, 32)
QUANTIZED_BITS = tuple(b for b in SUPPORTED_BITS if b != 32)  # the widths that have integer codes
SCALE_MODES = ("maxabs", "mse")
MSE_CLIP_RATIOS = tuple(1.0 - 0.05 * i for i in range(15))  # 1.00, 0.95, ..., 0.30

_FP16_TINY = 2.0 ** -24  # smallest positive float16 (subnormal)
_FP16_MAX = 65504.0


def check_bits(bits) -> int:
    """Return ``bits`` as int, or raise ValueError naming the allowed set."""
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in SUPPORTED_BITS:
        raise ValueError(f"unsupported bit-width {bits!r}: choose one of {SUPPORTED_BITS} (32 = float)")
    return int(bits)


def qmax_for(bits: int) -> int:
    """Largest code magnitude for ``bits`` (1 for the 1-bit sign quantizer)."""
    bits = check_bits(bits)
    if bits == 32:
        raise ValueError("bits=32 is float: it has no integer codes")
    return 1 if bits == 1 else 2 ** (bits - 1) - 1


def _to_fp16_grid(s: torch.Tensor) -> torch.Tensor:
    """Round positive scales to float16-representable values (kept in fp32), never 0 or inf."""
    s = s.clamp(min=_FP16_TINY, max=_FP16_MAX)
    s = s.to(torch.float16).to(torch.float32)
    return s.clamp(min=_FP16_TINY)


def _rows(w: torch.Tensor, per_channel: bool) -> torch.Tensor:
    """View ``w`` as (channels, elements) in float32."""
    w = w.detach().to(torch.float32)
    if per_channel:
        return w.reshape(w.shape[0], -1) if w.dim() > 0 else w.reshape(1, 1)
    return w.reshape(1, -1)


def _round_codes(r: torch.Tensor, s: torch.Tensor, qmax: int) -> torch.Tensor:
    """Integer codes (as float) for rows r and per-row scales s (shape (R,1))."""
    return torch.round(r / s).clamp_(-qmax, qmax)


def compute_scales(w: torch.Tensor, bits: int, per_channel: bool = True, scale: str = "maxabs") -> torch.Tensor:
    """Per-channel (shape ``(rows,)``) or per-tensor (shape ``(1,)``) fp16-representable scales (fp32 dtype)."""
    bits = check_bits(bits)
    if scale not in SCALE_MODES:
        raise ValueError(f"unknown scale mode {scale!r}: choose one of {SCALE_MODES}")
    if bits == 32:
        raise ValueError("bits=32 is float: it has no scale")
    r = _rows(w, per_channel)
    if bits == 1:
        return _to_fp16_grid(r.abs().mean(dim=1))
    qmax = qmax_for(bits)
    maxabs = r.abs().amax(dim=1)
    if scale == "maxabs":
        return _to_fp16_grid(maxabs / qmax)
    best_s = None
    best_err = None
    for ratio in MSE_CLIP_RATIOS:
        s = _to_fp16_grid(maxabs * ratio / qmax)
        err = ((_round_codes(r, s[:, None], qmax) * s[:, None] - r) ** 2).sum(dim=1)
        if best_s is None:
            best_s, best_err = s, err
        else:
            better = err < best_err
            best_s = torch.where(better, s, best_s)
            best_err = torch.where(better, err, best_err)
    return best_s


def _codes_and_scales(w: torch.Tensor, bits: int, per_channel: bool, scale: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """(codes as float32 with w's shape, scales (C,)). Shared by fake_quant and quantize_to_codes."""
    s = compute_scales(w, bits, per_channel, scale)
    r = _rows(w, per_channel)
    if bits == 1:
        q = torch.where(r >= 0, torch.ones_like(r), -torch.ones_like(r))
    else:
        q = _round_codes(r, s[:, None], qmax_for(bits))
    return q.reshape(w.shape), s


def _expand_scales(s: torch.Tensor, shape, per_channel: bool) -> torch.Tensor:
    if per_channel and len(shape) > 0:
        return s.reshape((shape[0],) + (1,) * (len(shape) - 1))
    return s.reshape((1,) * len(shape)) if len(shape) > 0 else s.reshape(())


class _FakeQuantSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w, wq, clip):
        ctx.save_for_backward(w, clip)
        return wq

    @staticmethod
    def backward(ctx, grad):
        w, clip = ctx.saved_tensors
        if clip.numel() == 0:  # 1 bit: pure identity
            return grad, None, None
        mask = (w.abs() <= clip).to(grad.dtype)
        return grad * mask, None, None


def fake_quant(w: torch.Tensor, bits: int, per_channel: bool = True, scale: str = "maxabs") -> torch.Tensor:
    """Quantize-dequantize ``w`` at ``bits`` with a straight-through gradient; bits=32 returns ``w``.

    The forward value equals ``dequantize(*quantize_to_codes(w, bits, per_channel, scale), bits)`` exactly.
    """
    bits = check_bits(bits)
    if bits == 32:
        return w
    q, s = _codes_and_scales(w, bits, per_channel, scale)
    se = _expand_scales(s, w.shape, per_channel)
    wq = (q * se).to(w.dtype)
    if bits == 1:
        clip = torch.empty(0)
    else:
        # gradient range: the clipping value; the 2**-10 slack absorbs the fp16 rounding of the scale so
        # the row maximum under max-abs scaling still passes its gradient
        clip = (se * qmax_for(bits) * (1.0 + 2.0 ** -10)).to(w.dtype)
    return _FakeQuantSTE.apply(w, wq, clip)


def quantize_to_codes(w: torch.Tensor, bits: int, per_channel: bool = True,
                      scale: str = "maxabs") -> Tuple[torch.Tensor, torch.Tensor]:
    """Integer codes (int8, shape of ``w``; 1 bit: {-1,+1}) and fp32 scales (``(rows,)`` or ``(1,)``, all
    exactly representable in float16)."""
    bits = check_bits(bits)
    if bits == 32:
        raise ValueError("bits=32 is float: nothing to quantize")
    q, s = _codes_and_scales(w, bits, per_channel, scale)
    return q.to(torch.int8), s


def dequantize(codes: torch.Tensor, scales: torch.Tensor, bits: int) -> torch.Tensor:
    """Inverse of :func:`quantize_to_codes`: ``codes * scale`` per row (float32). Per-tensor when
    ``scales`` has one element."""
    bits = check_bits(bits)
    if bits == 32:
        raise ValueError("bits=32 is float: nothing to dequantize")
    qmax = qmax_for(bits)
    c = codes.to(torch.float32)
    if c.numel() and (c.abs().max() > qmax):
        raise ValueError(f"codes outside [-{qmax}, {qmax}] for {bits}-bit weights")
    if bits == 1 and c.numel() and bool((c == 0).any()):
        raise ValueError("1-bit codes must be -1 or +1")
    s = scales.to(torch.float32).reshape(-1)
    per_channel = s.numel() != 1 or (codes.dim() > 0 and codes.shape[0] == 1)
    if per_channel and codes.dim() > 0 and s.numel() != codes.shape[0]:
        raise ValueError(f"{s.numel()} scales for {codes.shape[0]} rows")
    return c * _expand_scales(s, codes.shape, per_channel)


def num_levels(bits: int) -> int:
    """Number of distinct values a channel can take (2 for 1 bit, 2**b - 1 otherwise)."""
    return 2 if bits == 1 else 2 * qmax_for(bits) + 1
