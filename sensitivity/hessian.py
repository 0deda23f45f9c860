"""Hessian-trace sensitivity (HAWQ-V2): Hutchinson trace per genotype layer times quantization error.

For genotype layer ``l`` with weights ``W_l`` (all the weight matrices sharing its bit-width, ``n_l`` entries)::

    Tr(H_l) = E_v[v_l^T H_ll v_l]          v Rademacher (+-1), Hutchinson's estimator
    Omega(l, b) = Tr(H_l) / n_l * ||Q_b(W_l) - W_l||^2                (HAWQ-V2)

where ``H_ll`` is the diagonal block of the loss Hessian for ``W_l`` and ``Q_b`` the model's quantizer
(``models.quantizers.fake_quant`` with the model's per-channel / scale settings); ``Omega(l, 32) = 0``.

One Rademacher vector ``v`` is drawn over *all* layers at once and one Hessian-vector product gives every
layer's ``v_l^T (H v)_l`` (as PyHessian / HAWQ-V2 do): the cross terms ``v_l^T H_lk v_k`` (k != l) have zero
mean, so each layer's estimate stays unbiased, at the cost of one Hv per iteration for the whole model.
``blockwise=True`` instead perturbs one layer at a time (no cross terms, lower variance, L times the cost).

Hessian-vector products, ``method`` (``"auto"``: ``"fd_output"`` when every closure is a :class:`SplitLoss`,
such as :func:`lfmmi_closures` gives, else ``"fd"``):

* ``"fd"`` (works with any loss, the LF-MMI one included, whose backward is a custom autograd Function
  without double backward): central finite differences of weight gradients
  ``H u ~ (g(w + u) - g(w - u)) / 2`` with ``u = s v``, then ``v_l^T (H v)_l ~ v_l^T [(g(w+u) - g(w-u)) / 2]_l / s``.
  The step is relative to the weights: ``fd_step="global"`` (default) ``s = rel_eps * ||W|| / sqrt(n)`` over
  all the layers' weights (so ``||u|| = rel_eps * ||W||``; per sample it equals the autograd estimate up to
  the finite-difference error); ``fd_step="layer"`` ``s_l = rel_eps * ||W_l|| / sqrt(n_l)`` per layer
  (``u_l = s_l v_l``; still unbiased, but in the joint mode the cross terms are scaled by ``s_k / s_l``,
  which adds variance when layer scales differ). Exact for a quadratic loss. For ReLU networks a step that
  moves pre-activations across 0 also picks up the kinks (autograd sees a zero second derivative there):
  rare but large contributions, i.e. variance. A small step limits that; float32 gradients cannot resolve
  very small steps, so ``rel_eps=None`` picks 1e-5 for float64 weights and 1e-3 for float32 (run the
  model in float64 on CPU for the most accurate estimate; :func:`lfmmi_closures` takes a ``dtype``).
* ``"fd_output"``: finite differences in the *network-output* space only, double backward through the
  network. With outputs ``y = f(w)`` and loss ``L(y)``: ``H v = J^T H_y (J v) + d/dw[(J^T g_y) . v]|_{g_y fixed}``;
  ``J v`` and both ``J^T`` products come from autograd through the network (which is twice differentiable),
  and ``H_y (J v) ~ (grad L(y + d Jv) - grad L(y - d Jv)) / 2d`` needs only the loss's first derivative (so it
  works with LF-MMI), with ``||d Jv|| = rel_eps * ||y||``. Unlike ``"fd"`` it never moves ReLU
  pre-activations, so it has no kink noise: it equals ``"autograd"`` wherever that is valid. Needs the loss
  split as :class:`SplitLoss` (``forward() -> outputs``, ``loss(*outputs) -> scalar``; :func:`lfmmi_closures`
  returns those). Per Hv: 1 forward and 4 backward network passes (two of them double backward) and 3 loss
  gradients; about 4x the time of ``"fd"`` on the demo model.
* ``"autograd"``: double backward, ``Hv = d/dw (g(w) . v)``. Only valid when every op of the loss has a true
  second derivative (a simple differentiable loss, not LF-MMI: its gamma-based backward would silently drop
  the second-order term).

The running mean per layer stops when, after at least ``min_iters`` iterations, every layer's mean moved by at
most ``tol`` relative to its previous value (``|m_i - m_{i-1}| <= tol * |m_{i-1}|``), or at ``max_iters``.
Each iteration's Hv is averaged over all the loss closures given (e.g. one per held-out batch).
The model is evaluated in eval mode at full precision (its weight bits are restored afterwards).

    from sensitivity.hessian import hessian_sensitivity, lfmmi_closures
    sens = hessian_sensitivity(model, space, lfmmi_closures(model, batches, loss_fn, compiler))
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Union

import torch

from models.quantizers import fake_quant
from sensitivity.kl import layer_specs

LossClosure = Callable[[], torch.Tensor]
METHODS = ("fd", "fd_output", "autograd")
log = logging.getLogger(__name__)


class SplitLoss:
    """A loss closure in two parts: ``forward() -> tuple of network outputs`` (with graph) and
    ``loss(*outputs) -> scalar``. Calling it gives ``loss(*forward())``, so it also serves ``fd``/``autograd``."""

    def __init__(self, forward: Callable[[], Sequence[torch.Tensor]], loss: Callable[..., torch.Tensor]):
        self.forward = forward
        self.loss = loss

    def __call__(self) -> torch.Tensor:
        return self.loss(*self.forward())


@dataclass
class HutchinsonResult:
    trace: Dict[str, float]                  # estimated Tr(H_l) per group
    numel: Dict[str, int]                    # n_l
    iters: int
    converged: bool
    history: Dict[str, List[float]] = field(default_factory=dict)   # running mean after each iteration
    method: str = "fd"
    steps: Dict[str, float] = field(default_factory=dict)            # fd step per group (fd only)
    stderr: Dict[str, float] = field(default_factory=dict)           # standard error of each trace

    @property
    def avg_trace(self) -> Dict[str, float]:
        return {k: self.trace[k] / max(self.numel[k], 1) for k in self.trace}

    def to_dict(self) -> dict:
        return {"trace": dict(self.trace), "avg_trace": self.avg_trace, "numel": dict(self.numel),
                "stderr": dict(self.stderr), "iters": self.iters, "converged": self.converged, "method": self.method,
                "fd_steps": dict(self.steps)}


def _as_list(losses) -> List[LossClosure]:
    if callable(losses):
        return [losses]
    losses = list(losses)
    if not losses:
        raise ValueError("no loss closures given")
    return losses


def _flat_params(groups: Dict[str, Sequence[torch.Tensor]]):
    names, params = [], []
    for g, ps in groups.items():
        for p in ps:
            names.append(g)
            params.append(p)
    return names, params


def _grads(losses: List[LossClosure], params: List[torch.Tensor], create_graph: bool = False) -> List[torch.Tensor]:
    """Mean over closures of d loss / d params (zeros for unused params)."""
    acc = [torch.zeros_like(p) for p in params]
    for fn in losses:
        loss = fn()
        gs = torch.autograd.grad(loss, params, allow_unused=True, create_graph=create_graph)
        for a, g in zip(acc, gs):
            if g is not None:
                a.add_(g.detach())
    return [a / len(losses) for a in acc]


def _hvp_autograd(losses: List[LossClosure], params: List[torch.Tensor], vs: List[torch.Tensor]) -> List[torch.Tensor]:
    acc = [torch.zeros_like(p) for p in params]
    for fn in losses:
        loss = fn()
        gs = torch.autograd.grad(loss, params, allow_unused=True, create_graph=True)
        pairs = [(g, p, v) for g, p, v in zip(gs, params, vs) if g is not None and g.requires_grad]
        if not pairs:
            raise RuntimeError("method='autograd': the gradient has no graph (the loss is not twice "
                               "differentiable here); use method='fd'")
        dot = sum((g * v).sum() for g, _, v in pairs)
        hv = torch.autograd.grad(dot, params, allow_unused=True)
        for a, h in zip(acc, hv):
            if h is not None:
                a.add_(h.detach())
    return [a / len(losses) for a in acc]


def _loss_grad(split: "SplitLoss", outs: Sequence) -> List[Optional[torch.Tensor]]:
    """d loss / d output for every floating-point tensor output (None for the others)."""
    def diffable(o):
        return torch.is_tensor(o) and o.is_floating_point()

    xs = [o.detach().requires_grad_(True) if diffable(o) else o for o in outs]
    diff = [x for x in xs if diffable(x)]
    with torch.enable_grad():
        loss = split.loss(*xs)
        gs = iter(torch.autograd.grad(loss, diff, allow_unused=True))
    out: List[Optional[torch.Tensor]] = []
    for x in xs:
        if diffable(x):
            g = next(gs)
            out.append(torch.zeros_like(x) if g is None else g.detach())
        else:
            out.append(None)
    return out


def _hvp_fd_output(losses: List[LossClosure], params: List[torch.Tensor], vs: List[torch.Tensor],
                   rel_eps: float) -> List[torch.Tensor]:
    acc = [torch.zeros_like(p) for p in params]
    for split in losses:
        if not isinstance(split, SplitLoss):
            raise TypeError("method='fd_output' needs SplitLoss closures (forward + loss), e.g. from lfmmi_closures")
        outs = list(split.forward())
        idx = [i for i, o in enumerate(outs) if torch.is_tensor(o) and o.is_floating_point() and o.requires_grad]
        if not idx:
            raise RuntimeError("fd_output: no network output depends on the weights")
        ys = [outs[i] for i in idx]
        gy_all = _loss_grad(split, outs)
        gy = [gy_all[i] for i in idx]
        # J v by the double-backward trick: d/du [(J^T u) . v] = J v
        us = [torch.zeros_like(y, requires_grad=True) for y in ys]
        jtu = torch.autograd.grad(ys, params, grad_outputs=us, create_graph=True, allow_unused=True)
        dot = sum((g * v).sum() for g, v in zip(jtu, vs) if g is not None)
        jv = torch.autograd.grad(dot, us, retain_graph=True, allow_unused=True)
        jv = [torch.zeros_like(y) if j is None else j.detach() for y, j in zip(ys, jv)]
        # H_y (J v) by central differences of the loss gradient in output space
        jn = math.sqrt(sum(float(j.double().pow(2).sum()) for j in jv))
        hy = [torch.zeros_like(y) for y in ys]
        if jn > 0:
            yn = math.sqrt(sum(float(y.detach().double().pow(2).sum()) for y in ys))
            d = rel_eps * (yn if yn > 0 else 1.0) / jn
            plus, minus = list(o.detach() if torch.is_tensor(o) else o for o in outs), list(
                o.detach() if torch.is_tensor(o) else o for o in outs)
            for i, j in zip(idx, jv):
                plus[i] = plus[i] + d * j
                minus[i] = minus[i] - d * j
            gp, gm = _loss_grad(split, plus), _loss_grad(split, minus)
            hy = [(gp[i] - gm[i]) / (2 * d) for i in idx]
        # J^T hy  +  d/dw [(J^T g_y) . v] with g_y held fixed
        t1 = torch.autograd.grad(ys, params, grad_outputs=hy, retain_graph=True, allow_unused=True)
        jtg = torch.autograd.grad(ys, params, grad_outputs=gy, create_graph=True, allow_unused=True)
        dot2 = [(g * v).sum() for g, v in zip(jtg, vs) if g is not None and g.requires_grad]
        t2 = torch.autograd.grad(sum(dot2), params, allow_unused=True) if dot2 else [None] * len(params)
        for a, x, y in zip(acc, t1, t2):
            if x is not None:
                a.add_(x.detach())
            if y is not None:
                a.add_(y.detach())
    return [a / len(losses) for a in acc]


def _hvp_fd(losses: List[LossClosure], params: List[torch.Tensor], us: List[torch.Tensor]) -> List[torch.Tensor]:
    """(g(w + u) - g(w - u)) / 2 ~ H u, restoring the weights exactly afterwards."""
    saved = [p.detach().clone() for p in params]
    try:
        with torch.no_grad():
            for p, u in zip(params, us):
                p.add_(u)
        gp = _grads(losses, params)
        with torch.no_grad():
            for p, s, u in zip(params, saved, us):
                p.copy_(s).sub_(u)
        gm = _grads(losses, params)
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.copy_(s)
    return [(a - b) / 2 for a, b in zip(gp, gm)]


def resolve_method(method: str, losses) -> str:
    if method == "auto":
        return "fd_output" if all(isinstance(f, SplitLoss) for f in _as_list(losses)) else "fd"
    if method not in METHODS:
        raise ValueError(f"method must be 'auto' or one of {METHODS}, got {method!r}")
    return method


def hutchinson_trace(losses: Union[LossClosure, Sequence[LossClosure]], groups: Dict[str, Sequence[torch.Tensor]],
                     method: str = "auto", max_iters: int = 100, min_iters: int = 2, tol: float = 1e-2,
                     rel_eps: Optional[float] = None, blockwise: bool = False, seed: int = 0,
                     fd_step: str = "global", atol: float = 0.0) -> HutchinsonResult:
    """Per-group Hessian trace ``Tr(H_gg)`` of the mean loss over ``losses`` by Hutchinson's estimator.

    ``groups``: name -> tensors (leaf tensors with ``requires_grad``) forming one block. ``losses``: closures
    that recompute the loss from the current tensor values. See the module doc for ``method``/``rel_eps``.
    Stops when every group's running mean moved by <= ``tol * |previous| + atol`` (after ``min_iters``)."""
    method = resolve_method(method, losses)
    if max_iters < 1 or min_iters < 1:
        raise ValueError("max_iters and min_iters must be >= 1")
    losses = _as_list(losses)
    gnames, params = _flat_params(groups)
    for p in params:
        if not p.requires_grad:
            raise ValueError("every tensor of a group must require grad")
    numel = {g: sum(int(p.numel()) for p in ps) for g, ps in groups.items()}
    if rel_eps is None:
        rel_eps = 1e-5 if all(p.dtype == torch.float64 for p in params) else 1e-3
    if fd_step not in ("global", "layer"):
        raise ValueError(f"fd_step must be 'global' or 'layer', got {fd_step!r}")
    sq = {g: sum(float(p.detach().double().pow(2).sum()) for p in ps) for g, ps in groups.items()}
    steps: Dict[str, float] = {}
    if fd_step == "global":
        norm, n = math.sqrt(sum(sq.values())), sum(numel.values())
        steps = {g: rel_eps * (norm if norm > 0 else 1.0) / math.sqrt(max(n, 1)) for g in groups}
    else:
        steps = {g: rel_eps * (math.sqrt(sq[g]) if sq[g] > 0 else 1.0) / math.sqrt(max(numel[g], 1))
                 for g in groups}
    gen = torch.Generator(device="cpu")
    gen.manual_seed(int(seed))

    sums = {g: 0.0 for g in groups}
    sq_sums = {g: 0.0 for g in groups}
    history: Dict[str, List[float]] = {g: [] for g in groups}
    prev: Optional[Dict[str, float]] = None
    converged = False
    it = 0
    blocks = [[g] for g in groups] if blockwise else [list(groups)]
    for it in range(1, max_iters + 1):
        vs = [(torch.randint(0, 2, p.shape, generator=gen, dtype=torch.int8).to(p.dtype) * 2 - 1).to(p.device)
              for p in params]
        for block in blocks:
            active = set(block)
            if method in ("autograd", "fd_output"):
                vb = [v if n in active else torch.zeros_like(v) for n, v in zip(gnames, vs)]
                hv = (_hvp_autograd(losses, params, vb) if method == "autograd"
                      else _hvp_fd_output(losses, params, vb, rel_eps))
                scale = {g: 1.0 for g in block}
            else:
                ub = [v * steps[n] if n in active else torch.zeros_like(v) for n, v in zip(gnames, vs)]
                hv = _hvp_fd(losses, params, ub)
                scale = {g: 1.0 / steps[g] for g in block}
            est = {g: 0.0 for g in block}
            for n, v, h in zip(gnames, vs, hv):
                if n in active:
                    est[n] += float((v.double() * h.double()).sum())
            for g in block:
                sums[g] += est[g] * scale[g]
                sq_sums[g] += (est[g] * scale[g]) ** 2
        means = {g: sums[g] / it for g in groups}
        for g in groups:
            history[g].append(means[g])
        if prev is not None and it >= min_iters:
            if all(abs(means[g] - prev[g]) <= tol * abs(prev[g]) + atol + 1e-30 for g in groups):
                converged = True
                break
        prev = means
    stderr = {}
    for g in groups:
        mean = sums[g] / it
        var = max(sq_sums[g] / it - mean * mean, 0.0) * it / (it - 1) if it > 1 else float("nan")
        stderr[g] = math.sqrt(var / it) if it > 1 else float("nan")
    return HutchinsonResult({g: sums[g] / it for g in groups}, numel, it, converged, history, method,
                            steps if method == "fd" else {}, stderr)


def quantization_error(w: torch.Tensor, bits: int, per_channel: bool = True, scale: str = "maxabs") -> float:
    """``||Q_b(W) - W||^2`` with the shared quantizer (0 for 32 bits)."""
    if int(bits) == 32:
        return 0.0
    with torch.no_grad():
        d = fake_quant(w.detach(), int(bits), per_channel, scale).double() - w.detach().double()
        return float((d * d).sum())


def hessian_sensitivity(model, layers, losses: Union[LossClosure, Sequence[LossClosure]], method: str = "auto",
                        max_iters: int = 100, min_iters: int = 2, tol: float = 1e-2,
                        rel_eps: Optional[float] = None, blockwise: bool = False, seed: int = 0,
                        negative: str = "clamp", return_traces: bool = False, fd_step: str = "global",
                        atol: float = 0.0):
    """HAWQ-V2 sensitivity ``{layer: {bits: Tr(H_l)/n_l * ||Q_b(W_l) - W_l||^2}}``.

    ``losses``: closures computing the loss of ``model`` on held-out batches (see :func:`lfmmi_closures`).
    The model runs in eval mode at full precision; its bits, mode and ``requires_grad`` flags are restored.
    A negative trace estimate (the loss is not locally convex there, e.g. a model far from a minimum, or too
    few iterations) has no HAWQ meaning: ``negative="clamp"`` (default) uses 0 for it, ``"abs"`` its
    magnitude, ``"keep"`` the signed value (the raw traces are in the ``return_traces`` result).
    Returns the dict, or ``(dict, HutchinsonResult)`` when ``return_traces``."""
    if negative not in ("clamp", "abs", "keep"):
        raise ValueError(f"negative must be 'clamp', 'abs' or 'keep', got {negative!r}")
    specs = layer_specs(layers)
    wp = model.weight_params(include_xent=True)
    groups: Dict[str, List[torch.Tensor]] = {}
    for name, ws, _ in specs:
        bad = [w for w in ws if w not in wp]
        if bad:
            raise ValueError(f"layer {name}: unknown weight name(s) {bad}")
        groups[name] = [wp[w] for w in ws]
    saved_bits = dict(model.cfg.weight_bits)
    was_training = model.training
    saved_rg = {id(p): p.requires_grad for p in model.parameters()}
    model.eval()
    try:
        model.set_weight_bits({})
        for ps in groups.values():
            for p in ps:
                p.requires_grad_(True)
        res = hutchinson_trace(losses, groups, method, max_iters, min_iters, tol, rel_eps, blockwise, seed,
                               fd_step, atol)
    finally:
        model.set_weight_bits(saved_bits)
        model.train(was_training)
        for p in model.parameters():
            p.requires_grad_(saved_rg[id(p)])
    neg = [n for n, t in res.avg_trace.items() if t < 0]
    if neg:
        log.warning("negative Hessian trace estimate for layer(s) %s (loss not locally convex there, or too few "
                    "iterations); negative=%s", ", ".join(neg), negative)
    per_channel = model.cfg.quant_per_channel
    qscale = model.cfg.quant_scale
    out: Dict[str, Dict[int, float]] = {}
    for name, ws, bit_choices in specs:
        avg = res.avg_trace[name]
        if negative == "clamp":
            avg = max(avg, 0.0)
        elif negative == "abs":
            avg = abs(avg)
        out[name] = {int(b): avg * sum(quantization_error(wp[w], b, per_channel, qscale) for w in ws)
                     for b in bit_choices}
    return (out, res) if return_traces else out


def lfmmi_closures(model, batches, loss_fn, compiler, device=None, max_batches: Optional[int] = None,
                   dtype: Optional[torch.dtype] = None) -> List["SplitLoss"]:
    """One LF-MMI loss closure per batch (numerator graphs compiled once). ``loss_fn``: an
    ``lfmmi.LFMMILoss``; ``compiler``: ``NumeratorCompiler``. Batches: dicts with feats, lengths, texts.
    ``dtype``: features are cast to it (default: the model's parameter dtype)."""
    if device is None:
        device = next(model.parameters()).device
    if dtype is None:
        dtype = next(model.parameters()).dtype
    out: List[LossClosure] = []
    for i, b in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            break
        feats, lengths = b["feats"].to(device=device, dtype=dtype), b["lengths"].to(device)
        graphs = compiler.compile(b["texts"])

        def forward(feats=feats, lengths=lengths):
            return model(feats, lengths)

        def loss(chain, xent, out_len, graphs=graphs):
            return loss_fn(chain, xent, out_len, graphs)[0]

        out.append(SplitLoss(forward, loss))
    if not out:
        raise ValueError("no batches for the Hessian estimate")
    return out
