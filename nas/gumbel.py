"""Gumbel-softmax sampling (soft, and hard with a straight-through gradient).

``torch.nn.functional.gumbel_softmax`` does the same but takes no ``torch.Generator``; this version
accepts one so that tests and resumed runs can draw reproducible samples.
"""
from __future__ import annotations

from typing import Optional

import torch


def one_hot_like(logits: torch.Tensor, index: int) -> torch.Tensor:
    """A one-hot vector with ``logits``' shape (last dim), dtype and device."""
    y = torch.zeros_like(logits)
    y[..., index] = 1.0
    return y


def gumbel_softmax(logits: torch.Tensor, tau: float = 1.0, hard: bool = False,
                   generator: Optional[torch.Generator] = None, noise: bool = True) -> torch.Tensor:
    """Sample ``softmax((logits + g) / tau)`` with ``g ~ Gumbel(0, 1)`` over the last dimension.

    ``hard=True`` returns the one-hot argmax in the forward pass and the soft sample's gradient in the
    backward pass (straight-through: ``y_hard + (y_soft - y_soft.detach())``, whose value is exactly
    one-hot: the sampled candidate's weight is exactly 1, the others exactly 0). ``noise=False`` drops the
    Gumbel noise (a tempered softmax, or a straight-through argmax when ``hard``).
    """
    if tau <= 0:
        raise ValueError(f"temperature must be > 0, got {tau}")
    if noise:
        dev = generator.device if generator is not None else logits.device
        u = torch.rand(logits.shape, generator=generator, device=dev).to(logits.device, logits.dtype)
        tiny = torch.finfo(logits.dtype).tiny
        e = -torch.log(u.clamp_min(tiny))  # Exp(1)
        g = -torch.log(e.clamp_min(tiny))
        y_soft = torch.softmax((logits + g) / tau, dim=-1)
    else:
        y_soft = torch.softmax(logits / tau, dim=-1)
    if not hard:
        return y_soft
    idx = y_soft.argmax(dim=-1, keepdim=True)
    y_hard = torch.zeros_like(y_soft).scatter_(-1, idx, 1.0)
    return y_hard + (y_soft - y_soft.detach())
