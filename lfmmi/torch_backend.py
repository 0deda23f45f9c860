"""Pure-PyTorch LF-MMI forward-backward (device-agnostic, Python 3.9 / torch >= 1.13).

Denominator: probability domain, leaky HMM, per-frame renormalisation (Kaldi chain-denominator.h):
    alpha(0) = init;  c(t) = sum_i alpha(t,i);  alpha'(t,i) = alpha(t,i) + eta c(t) init(i)
    alpha(t+1,i) = sum_{arcs j->i (p, n)} alpha'(t,j) p x(t,n) / c(t),   x = exp(clamp(y, -30, 30))
    log Z = log sum_i alpha'(T,i) + sum_{t<T} log c(t)
    beta'(T,i) = 1/sum_i alpha'(T,i);  beta(t,i) = beta'(t,i) + eta sum_k init(k) beta'(t,k)
    beta'(t,j) = sum_{arcs j->i} beta(t+1,i) p x(t,n) / c(t)
    gamma(t,n) = sum_{arcs with pdf n} alpha'(t,j) beta(t+1,i) p x(t,n) / c(t) = d logZ / d y(t,n)
One den graph is shared by the whole batch (arcs gathered per frame, never copied per sequence);
only alpha' (T+1, S, B) and c (T+1, B) are stored, per-arc messages are recomputed in the backward
pass (memory O(T*B*S), not O(T*B*E)).

Numerator: log domain over the block-diagonal union of the batch's graphs.

As in Kaldi, gamma is returned as the derivative w.r.t. y even where |y| > 30 (the den clamps there;
the loss module's out-of-range penalty pulls such outputs back).
"""
from __future__ import annotations

import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .fsa import Fsa, concat_fsas

__all__ = ["den_forward_backward", "DenominatorFunction", "NumeratorFunction", "den_log_z", "num_log_z",
           "NumBatch", "OUTPUT_LIMIT"]

OUTPUT_LIMIT = 30.0

# torch 1.13 warns that scatter_reduce is beta (stable since 2.0, same API): silence it there only.
_QUIET_SCATTER = int(torch.__version__.split(".")[0]) < 2


# ------------------------------------------------------------------------------------ denominator
def _den_alpha(xT: torch.Tensor, lengths: torch.Tensor, g: Dict[str, torch.Tensor], eta: float
               ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """xT: (T, N, B) = exp(clamped y), frame-major, pdf rows. Returns alpha' (T+1,S,B), c (T+1,B), logZ (B,)."""
    T, N, B = xT.shape
    src, dst, pdf, prob, init = g["src"], g["dst"], g["pdf"], g["prob"], g["init"]
    S = init.shape[0]
    alpha_p = xT.new_empty((T + 1, S, B))
    c = xT.new_empty((T + 1, B))
    alpha = init.unsqueeze(1).expand(S, B).clone()
    prob_col = prob.unsqueeze(1)
    init_col = init.unsqueeze(1)
    structured = "Pt" in g
    for t in range(T + 1):
        ct = alpha.sum(0)
        c[t] = ct
        ap = alpha + eta * ct.unsqueeze(0) * init_col if eta != 0.0 else alpha
        alpha_p[t] = ap
        if t == T:
            break
        scaled = ap / ct.unsqueeze(0)  # 1/c(t) folded into the state vector
        if structured:
            # chain structure: every arc into state i has pdf entry_pdf[i] (or is i's self-loop), so
            # alpha(t+1) = x_entry * (Pt @ scaled) + x_loop * loop_prob * scaled
            xt = xT[t]
            new = xt.index_select(0, g["entry_pdf"]) * (g["Pt"] @ scaled)
            new = new + xt.index_select(0, g["loop_pdf"]) * g["loop_prob"] * scaled
        else:
            # per-arc messages (E, B)
            msg = scaled.index_select(0, src) * xT[t].index_select(0, pdf) * prob_col
            new = alpha.new_zeros((S, B)).index_add_(0, dst, msg)
        # sequences already finished keep their state (values after T_b are never used)
        done = (lengths <= t).unsqueeze(0)
        alpha = torch.where(done, alpha, new)
    # log Z_b = log sum_i alpha'(T_b, i) + sum_{t<T_b} log c(t)
    tidx = torch.arange(T + 1, device=xT.device).unsqueeze(1)
    logc = torch.where(tidx < lengths.unsqueeze(0), torch.log(c), torch.zeros_like(c))
    bidx = torch.arange(B, device=xT.device)
    tot = alpha_p[lengths, :, bidx].sum(1)  # (B,)
    logz = torch.log(tot) + logc.sum(0)
    return alpha_p, c, logz


def _den_beta(xT: torch.Tensor, lengths: torch.Tensor, g: Dict[str, torch.Tensor], eta: float,
              alpha_p: torch.Tensor, c: torch.Tensor, check_frames: str = "all"
              ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns gamma (T, N, B) and the worst invariant errors per sequence:
    max_t |sum_i alpha'(t,i) beta'(t,i) - 1| and max_t |sum_n gamma(t,n) - 1| (t < T_b)."""
    T, N, B = xT.shape
    src, dst, pdf, prob, init = g["src"], g["dst"], g["pdf"], g["prob"], g["init"]
    S = init.shape[0]
    bidx = torch.arange(B, device=xT.device)
    tot = alpha_p[lengths, :, bidx].sum(1)  # (B,)
    betap = xT.new_zeros((S, B))
    gamma = xT.new_zeros((T, N, B))
    prob_col = prob.unsqueeze(1)
    init_col = init.unsqueeze(1)
    err_ab = xT.new_zeros(B)
    structured = "Pt" in g
    for t in range(T - 1, -1, -1):
        inject = (lengths == t + 1).unsqueeze(0)
        betap = torch.where(inject, (1.0 / tot).unsqueeze(0).expand(S, B), betap)
        beta = betap + eta * (betap * init_col).sum(0, keepdim=True) if eta != 0.0 else betap
        if structured:
            xt = xT[t]
            inv_c = 1.0 / c[t].unsqueeze(0)
            be = beta * xt.index_select(0, g["entry_pdf"]) * inv_c       # (S, B)
            bl = beta * xt.index_select(0, g["loop_pdf"]) * g["loop_prob"] * inv_c
            new_betap = g["P"] @ be + bl
            gamma[t].index_add_(0, g["entry_pdf"], (g["Pt"] @ alpha_p[t]) * be)
            gamma[t].index_add_(0, g["loop_pdf"], alpha_p[t] * bl)
        else:
            w = xT[t].index_select(0, pdf) * prob_col / c[t].unsqueeze(0)  # (E, B)
            bw = beta.index_select(0, dst) * w
            new_betap = betap.new_zeros((S, B)).index_add_(0, src, bw)
            post = alpha_p[t].index_select(0, src) * bw
            gamma[t].index_add_(0, pdf, post)
        valid = (lengths > t).unsqueeze(0)
        betap = torch.where(valid, new_betap, torch.zeros_like(new_betap))
        if check_frames == "all" or t == 0:
            e = ((alpha_p[t] * betap).sum(0) - 1.0).abs()
            err_ab = torch.maximum(err_ab, torch.where(valid[0], e, torch.zeros_like(e)))
    gsum = gamma.sum(1)  # (T, B)
    tmask = torch.arange(T, device=xT.device).unsqueeze(1) < lengths.unsqueeze(0)
    err_g = torch.where(tmask, (gsum - 1.0).abs(), torch.zeros_like(gsum)).amax(0) if T > 0 else xT.new_zeros(B)
    return gamma, err_ab, err_g


def _prep_x(y: torch.Tensor) -> torch.Tensor:
    """(B, T, N) -> x (T, N, B) = exp(clamp(y, -30, 30)), contiguous."""
    return torch.exp(y.detach().clamp(-OUTPUT_LIMIT, OUTPUT_LIMIT)).permute(1, 2, 0).contiguous()


def den_forward_backward(y: torch.Tensor, lengths: torch.Tensor, den_graph, eta: float = 0.1,
                         compute_grad: bool = True):
    """Eager den computation: (logZ (B,), gamma (B,T,N) or None, err_alpha_beta (B,), err_gamma (B,))."""
    g = den_graph.tensors(y.device, y.dtype)
    lengths = lengths.to(device=y.device, dtype=torch.long)
    with torch.no_grad():
        xT = _prep_x(y)
        alpha_p, c, logz = _den_alpha(xT, lengths, g, float(eta))
        if not compute_grad:
            return logz, None, None, None
        gamma, e1, e2 = _den_beta(xT, lengths, g, float(eta), alpha_p, c)
        del alpha_p
        return logz, gamma.permute(2, 0, 1), e1, e2


class DenominatorFunction(torch.autograd.Function):
    """log Z_den per sequence; saves alpha' and c, recomputes per-arc messages in backward."""

    @staticmethod
    def forward(ctx, y: torch.Tensor, lengths: torch.Tensor, den_graph, eta: float):  # type: ignore[override]
        g = den_graph.tensors(y.device, y.dtype)
        lengths = lengths.to(device=y.device, dtype=torch.long)
        xT = _prep_x(y)
        alpha_p, c, logz = _den_alpha(xT, lengths, g, float(eta))
        ctx.save_for_backward(xT, lengths, alpha_p, c)
        ctx.den_graph = den_graph
        ctx.eta = float(eta)
        return logz

    @staticmethod
    def backward(ctx, grad_logz: torch.Tensor):  # type: ignore[override]
        xT, lengths, alpha_p, c = ctx.saved_tensors
        g = ctx.den_graph.tensors(xT.device, xT.dtype)
        gamma, _, _ = _den_beta(xT, lengths, g, ctx.eta, alpha_p, c, check_frames="none")
        gamma = gamma.permute(2, 0, 1)
        grad = gamma * grad_logz.view(-1, 1, 1)
        grad = torch.where((grad_logz != 0).view(-1, 1, 1), grad, torch.zeros_like(grad))
        return grad, None, None, None


def den_log_z(y: torch.Tensor, lengths: torch.Tensor, den_graph, eta: float = 0.1) -> torch.Tensor:
    """Differentiable log Z_den (B,) of y (B, T, N)."""
    return DenominatorFunction.apply(y, lengths, den_graph, eta)


# -------------------------------------------------------------------------------------- numerator
class NumBatch:
    """Block-diagonal union of per-sequence numerator graphs as tensors on one device."""

    def __init__(self, fsas: Sequence[Fsa], num_pdfs: int, device, dtype) -> None:
        src, dst, lab, lw, seq, final, starts, offsets = concat_fsas(list(fsas))
        if len(lab) and lab.max() >= num_pdfs:
            raise ValueError("numerator graph has a pdf id >= num_pdfs")
        self.B = len(fsas)
        self.num_states = int(offsets[-1])
        self.src = torch.as_tensor(src, device=device)
        self.dst = torch.as_tensor(dst, device=device)
        self.logw = torch.as_tensor(lw, dtype=dtype, device=device)
        self.arc_seq = torch.as_tensor(seq, device=device)
        self.col = torch.as_tensor(seq * num_pdfs + lab, device=device)  # index into y_t.reshape(B*N)
        self.final = torch.as_tensor(final, dtype=dtype, device=device)
        self.starts = torch.as_tensor(starts, device=device)
        state_seq = np.repeat(np.arange(self.B), np.diff(offsets))
        self.state_seq = torch.as_tensor(state_seq, device=device)


def _scatter_logsumexp(values: torch.Tensor, index: torch.Tensor, size: int) -> torch.Tensor:
    neg_inf = torch.tensor(float("-inf"), dtype=values.dtype, device=values.device)
    m = torch.full((size,), float("-inf"), dtype=values.dtype, device=values.device)
    if _QUIET_SCATTER:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = m.scatter_reduce(0, index, values, reduce="amax", include_self=True)
    else:
        m = m.scatter_reduce(0, index, values, reduce="amax", include_self=True)
    m_safe = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    s = values.new_zeros(size).index_add_(0, index, torch.exp(values - m_safe.index_select(0, index)))
    out = torch.log(s) + m_safe
    return torch.where(s > 0, out, neg_inf)


def num_forward_backward(y: torch.Tensor, lengths: torch.Tensor, nb: NumBatch, compute_grad: bool = True):
    """Log-domain forward-backward. Returns logZ (B,) (-inf if infeasible) and gamma (B, T, N)
    (zeros for infeasible sequences)."""
    B, T, N = y.shape
    lengths = lengths.to(device=y.device, dtype=torch.long)
    S = nb.num_states
    with torch.no_grad():
        yf = y.detach().reshape(B, T * N) if T > 0 else y.detach().reshape(B, 0)
        yt = y.detach().permute(1, 0, 2).reshape(T, B * N)  # frame-major
        la = y.new_full((T + 1, S), float("-inf"))
        la[0].index_fill_(0, nb.starts, 0.0)
        for t in range(T):
            msg = la[t].index_select(0, nb.src) + nb.logw + yt[t].index_select(0, nb.col)
            la[t + 1] = _scatter_logsumexp(msg, nb.dst, S)
        st_len = lengths.index_select(0, nb.state_seq)  # (S,)
        la_end = la.gather(0, st_len.unsqueeze(0)).squeeze(0) + nb.final  # (S,)
        logz = _scatter_logsumexp(la_end, nb.state_seq, B)
        if not compute_grad:
            return logz, None
        feasible = torch.isfinite(logz)
        logz_safe = torch.where(feasible, logz, torch.zeros_like(logz))
        arc_logz = logz_safe.index_select(0, nb.arc_seq)
        arc_len = lengths.index_select(0, nb.arc_seq)
        gamma = y.new_zeros((T, B * N))
        lb = y.new_full((S,), float("-inf"))
        for t in range(T - 1, -1, -1):
            lb = torch.where(st_len == t + 1, nb.final, lb)
            score = nb.logw + yt[t].index_select(0, nb.col)
            lbd = lb.index_select(0, nb.dst)
            post = torch.exp(la[t].index_select(0, nb.src) + score + lbd - arc_logz)
            post = torch.where(arc_len > t, post, torch.zeros_like(post))
            gamma[t].index_add_(0, nb.col, post)
            lb = _scatter_logsumexp(score + lbd, nb.src, S)
        gamma = gamma.view(T, B, N).permute(1, 0, 2)
        gamma = torch.where(feasible.view(B, 1, 1), gamma, torch.zeros_like(gamma))
        return logz, gamma.contiguous()


class NumeratorFunction(torch.autograd.Function):
    """(log Z_num (B,), gamma_num (B,T,N) non-differentiable). Forward-backward is done eagerly
    (numerator graphs are skinny: cheap), the gradient is grad_logZ * gamma."""

    @staticmethod
    def forward(ctx, y: torch.Tensor, lengths: torch.Tensor, nb: NumBatch):  # type: ignore[override]
        logz, gamma = num_forward_backward(y, lengths, nb)
        ctx.save_for_backward(gamma)
        ctx.mark_non_differentiable(gamma)
        return logz, gamma

    @staticmethod
    def backward(ctx, grad_logz: torch.Tensor, grad_gamma: Optional[torch.Tensor] = None):  # type: ignore[override]
        (gamma,) = ctx.saved_tensors
        grad = gamma * grad_logz.view(-1, 1, 1)
        grad = torch.where((grad_logz != 0).view(-1, 1, 1), grad, torch.zeros_like(grad))
        return grad, None, None


def num_log_z(y: torch.Tensor, lengths: torch.Tensor, fsas: Sequence[Fsa], num_pdfs: Optional[int] = None
              ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Differentiable log Z_num (B,) and detached numerator posteriors gamma (B, T, N)."""
    nb = NumBatch(fsas, y.shape[-1] if num_pdfs is None else num_pdfs, y.device, y.dtype)
    return NumeratorFunction.apply(y, lengths, nb)
