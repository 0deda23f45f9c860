"""The LF-MMI loss the trainers use (docs/INTERFACES.md):

    loss, stats = LFMMILoss(den_graph, opts)(chain_out, xent_out, out_lengths, num_graphs)

Per sequence b (T_b output frames): objf_b = log Z_num,b - den_scale * log Z_den,b. The loss for
backward is per-frame normalised (divided by the number of frames of the sequences kept):

    loss = -(sum_b objf_b) / F
           - xent_regularize * sum_{b,t,n} xent_out * gamma_num(detached) / F
           + 0.5 * l2_regularize * sum y^2 / F
           + out_of_range_regularize * sum relu(|y| - 30)^2 / F

A sequence is skipped (excluded from loss and gradient, and counted) when its length is < 1, its
network output is not finite, its numerator is infeasible (too short for the transcript) or its
objective is not finite, or (torch backend) the Kaldi invariants sum_i alpha' beta' = 1 and
sum_n gamma = 1 fail by more than ``invariant_tolerance`` on some frame.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import torch

from .fsa import Fsa
from .k2_backend import den_log_z_k2, k2_available, num_log_z_k2  # k2 itself is imported only when called
from .torch_backend import OUTPUT_LIMIT, NumBatch, NumeratorFunction, den_forward_backward

__all__ = ["LFMMIOptions", "LFMMILoss"]


@dataclass
class LFMMIOptions:
    backend: str = "torch"                  # 'torch' (default, pure PyTorch) or 'k2'
    leaky_hmm_coefficient: float = 0.1      # eta; ignored (0) by the k2 backend
    xent_regularize: float = 0.1
    l2_regularize: float = 0.0
    out_of_range_regularize: float = 0.01
    den_scale: float = 1.0
    check_invariants: bool = True           # torch backend only
    invariant_tolerance: float = 0.01
    k2_output_beam: float = 1.0e4           # k2 only; 1e4 = exact, icefall trains with 6-8


class _GradFromGamma(torch.autograd.Function):
    """Returns precomputed log Z (B,); backward = grad_logZ[b] * gamma[b] (NaN-safe for zero grads)."""

    @staticmethod
    def forward(ctx, y: torch.Tensor, logz: torch.Tensor, gamma: torch.Tensor):  # type: ignore[override]
        ctx.save_for_backward(gamma)
        return logz.clone()

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # type: ignore[override]
        (gamma,) = ctx.saved_tensors
        grad = gamma * g.view(-1, 1, 1)
        grad = torch.where((g != 0).view(-1, 1, 1), grad, torch.zeros_like(grad))
        return grad, None, None


class LFMMILoss(torch.nn.Module):
    def __init__(self, den_graph, opts: Optional[LFMMIOptions] = None, **overrides) -> None:
        super().__init__()
        opts = LFMMIOptions() if opts is None else opts
        for k, v in overrides.items():
            if not hasattr(opts, k):
                raise TypeError(f"unknown LF-MMI option {k!r}")
            setattr(opts, k, v)
        if opts.backend not in ("torch", "k2"):
            raise ValueError(f"backend must be 'torch' or 'k2', not {opts.backend!r}")
        if opts.backend == "k2":
            if not k2_available():
                raise ImportError("LFMMILoss(backend='k2') needs k2 (pip install k2); use backend='torch'")
            if opts.leaky_hmm_coefficient != 0:
                warnings.warn("k2 backend has no leaky HMM: leaky_hmm_coefficient is ignored (eta = 0)")
        self.den_graph = den_graph
        self.opts = opts
        self.total_skipped = 0      # sequences skipped since construction
        self.total_sequences = 0

    # -------------------------------------------------------------------------------- pieces
    def _num(self, y: torch.Tensor, lengths: torch.Tensor, num_graphs: Sequence[Fsa]
             ) -> Tuple[torch.Tensor, torch.Tensor]:
        if self.opts.backend == "k2":
            yd = y.detach().requires_grad_(True)
            with torch.enable_grad():
                lz = num_log_z_k2(yd, lengths, num_graphs, self.opts.k2_output_beam)
                ok = torch.isfinite(lz)
                gamma, = torch.autograd.grad(torch.where(ok, lz, torch.zeros_like(lz)).sum(), yd)
            gamma = torch.where(ok.view(-1, 1, 1), gamma, torch.zeros_like(gamma))
            return _GradFromGamma.apply(y, lz.detach(), gamma), gamma
        nb = NumBatch(num_graphs, y.shape[-1], y.device, y.dtype)
        return NumeratorFunction.apply(y, lengths, nb)

    def _den(self, y: torch.Tensor, lengths: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Returns differentiable log Z_den (B,) and per-sequence invariant flags (B,) bool."""
        if self.opts.backend == "k2":
            lz = den_log_z_k2(y, lengths, self.den_graph, self.opts.k2_output_beam)
            return lz, torch.ones_like(lz, dtype=torch.bool)
        need_grad = y.requires_grad and torch.is_grad_enabled()
        logz, gamma, e1, e2 = den_forward_backward(
            y, lengths, self.den_graph, self.opts.leaky_hmm_coefficient,
            compute_grad=need_grad or self.opts.check_invariants)
        if gamma is None:
            return logz, torch.ones_like(logz, dtype=torch.bool)
        ok = torch.ones_like(logz, dtype=torch.bool)
        if self.opts.check_invariants:
            tol = self.opts.invariant_tolerance
            ok = (e1 <= tol) & (e2 <= tol)  # NaN compares False -> not ok
        if need_grad:
            logz = _GradFromGamma.apply(y, logz, gamma)
        return logz, ok

    # ------------------------------------------------------------------------------- forward
    def forward(self, chain_out: torch.Tensor, xent_out: Optional[torch.Tensor], out_lengths: torch.Tensor,
                num_graphs: Sequence[Fsa]) -> Tuple[torch.Tensor, Dict[str, float]]:
        opts = self.opts
        B, T, N = chain_out.shape
        if N != self.den_graph.num_pdfs:
            raise ValueError(f"chain_out has {N} pdfs, den graph has {self.den_graph.num_pdfs}")
        if len(num_graphs) != B:
            raise ValueError(f"{len(num_graphs)} numerator graphs for a batch of {B}")
        if chain_out.dtype in (torch.float16, torch.bfloat16):  # AMP: exp(30) overflows fp16
            chain_out = chain_out.float()
        dev = chain_out.device
        lengths = out_lengths.to(device=dev, dtype=torch.long).clamp(0, T)
        frame_mask = torch.arange(T, device=dev).unsqueeze(0) < lengths.unsqueeze(1)  # (B, T)
        fm3 = frame_mask.unsqueeze(-1)
        finite_in = torch.where(fm3, torch.isfinite(chain_out), torch.ones_like(fm3)).flatten(1).all(1)
        # sanitise: padding frames and non-finite outputs become 0 (gradient flows only where kept)
        y = torch.where(fm3 & torch.isfinite(chain_out), chain_out, torch.zeros_like(chain_out))

        num_lz, gamma_num = self._num(y, lengths, num_graphs)
        den_lz, den_ok = self._den(y, lengths)

        num_d = num_lz.detach()
        den_d = den_lz.detach()
        valid = (lengths >= 1) & finite_in & torch.isfinite(num_d) & torch.isfinite(den_d) & den_ok
        valid = valid & torch.isfinite(gamma_num).flatten(1).all(1)
        n_valid = int(valid.sum())
        skipped = B - n_valid
        self.total_skipped += skipped
        self.total_sequences += B

        frames = float((lengths * valid.long()).sum())
        denom = max(frames, 1.0)
        zero = torch.zeros_like(num_lz)
        objf_seq = torch.where(valid, num_lz - opts.den_scale * den_lz, zero)
        objf = objf_seq.sum()
        keep = (frame_mask & valid.unsqueeze(1)).unsqueeze(-1)  # (B, T, 1)
        yk = torch.where(keep, y, torch.zeros_like(y))
        loss = -objf / denom
        xent_obj = torch.zeros((), dtype=y.dtype, device=dev)
        if xent_out is not None and opts.xent_regularize != 0:
            xo = torch.where(keep & torch.isfinite(xent_out), xent_out, torch.zeros_like(xent_out))
            xent_obj = (xo * gamma_num.detach().to(xo.dtype)).sum()
            loss = loss - opts.xent_regularize * xent_obj / denom
        l2 = (yk * yk).sum()
        if opts.l2_regularize != 0:
            loss = loss + 0.5 * opts.l2_regularize * l2 / denom
        oor = torch.relu(yk.abs() - OUTPUT_LIMIT).pow(2).sum()
        if opts.out_of_range_regularize != 0:
            loss = loss + opts.out_of_range_regularize * oor / denom
        if n_valid == 0:
            loss = loss + yk.sum() * 0.0
            if xent_out is not None:
                loss = loss + 0.0 * torch.where(torch.isfinite(xent_out), xent_out, torch.zeros_like(xent_out)).sum()

        num_sum = float(torch.where(valid, num_d, torch.zeros_like(num_d)).sum())
        den_sum = float(torch.where(valid, den_d, torch.zeros_like(den_d)).sum())
        stats = {
            "objf_per_frame": (num_sum - opts.den_scale * den_sum) / denom,
            "num_per_frame": num_sum / denom,
            "den_per_frame": den_sum / denom,
            "xent_per_frame": float(xent_obj.detach()) / denom,
            "l2_per_frame": float(l2.detach()) / denom,
            "out_of_range_per_frame": float(oor.detach()) / denom,
            "frames": frames,
            "sequences": float(B),
            "skipped": float(skipped),
        }
        return loss, stats
