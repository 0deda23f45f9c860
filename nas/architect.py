"""The architect: updates the architecture logits with their own optimizer.

Two schedules (both first-order):

* **bi-level** (DARTS first order; default): the network weights are trained on the train split by the
  usual loop, and once per step :meth:`Architect.step` takes one optimizer step of the logits on
  ``loss_fn()`` (the task loss of a held-out batch) plus the size penalty. Only the logits are
  differentiated (``torch.autograd.grad``), so the weights' ``.grad`` is left untouched.
* **single-level** (EdMIPS): weights and logits share the batch. The loop adds
  :meth:`Architect.penalty_term` to its loss, calls ``backward()`` once (filling both gradients), steps
  its weight optimizer, then calls :meth:`Architect.step_from_grads`.

``warmup_epochs``: :meth:`active` is False before that epoch; the loop trains the weights only.

The logits' objective is ``task + penalty + entropy_weight * mean normalised entropy``
(:meth:`ArchParams.mean_entropy`); the caller sets :attr:`Architect.entropy_weight` from a schedule, so
the distribution ends sharp and the derived argmax is the architecture the search converged on.

Optimizers of the logits (``optimizer``):

* ``"adam_global"`` (default): Adam's first moment per logit, but one second moment for all of them
  (the mean squared gradient). It adapts the step size like Adam while keeping the *relative* sizes of
  the gradients: the size penalty's gradient on a layer is proportional to the bytes at stake, and a
  per-logit Adam would give a small layer's tiny but steady penalty gradient a full-size step;
* ``"adam"``: per-logit Adam (DARTS);
* ``"sgd"``: SGD with momentum 0.9.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple, Union

import torch

from nas.arch_params import ArchParams
from nas.penalty import SizePenalty

OPTIMIZERS = ("adam_global", "adam", "sgd")


class GlobalAdam(torch.optim.Optimizer):
    """Adam with a per-parameter first moment and a single second moment shared by every element of
    every parameter (the running mean of the squared gradient): ``p -= lr * m_hat / (sqrt(v_hat) + eps)``
    with ``v`` a scalar, bias-corrected like Adam. Decoupled weight decay (AdamW style)."""

    def __init__(self, params, lr: float = 1e-2, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))
        self.param_groups[0].setdefault("global_step", 0)
        self.param_groups[0].setdefault("global_v", 0.0)

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        ps = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
        if not ps:
            return loss
        g2 = sum(float(p.grad.double().square().sum()) for p in ps) / sum(p.numel() for p in ps)
        head = self.param_groups[0]  # the shared second moment lives in the first group (saved with it)
        b1, b2 = head["betas"]
        head["global_step"] += 1
        t = head["global_step"]
        head["global_v"] = b2 * head["global_v"] + (1 - b2) * g2
        denom = (head["global_v"] / (1 - b2 ** t)) ** 0.5 + head["eps"]
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if "m" not in st:
                    st["m"] = torch.zeros_like(p)
                st["m"].mul_(group["betas"][0]).add_(p.grad, alpha=1 - group["betas"][0])
                if group["weight_decay"]:
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(st["m"] / (1 - group["betas"][0] ** t), alpha=-group["lr"] / denom)
        return loss


def make_arch_optimizer(kind: str, params, lr: float, betas, weight_decay: float) -> torch.optim.Optimizer:
    if kind == "adam_global":
        return GlobalAdam(params, lr=lr, betas=betas, weight_decay=weight_decay)
    if kind == "adam":
        return torch.optim.Adam(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay)
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    raise ValueError(f"unknown architecture optimizer {kind!r}; choose one of {OPTIMIZERS}")


LossFn = Callable[[], Union[torch.Tensor, Tuple[torch.Tensor, Dict[str, Any]]]]


class Architect:
    """Args:
        arch: the architecture parameters.
        penalty: the size penalty (None: task loss only).
        lr, betas, weight_decay: the logits' optimizer (DARTS Adam: 3e-4, (0.5, 0.999), 1e-3; FBNet lr 1e-2).
        mode: ``"bilevel"`` or ``"single"`` (informational for :meth:`step`; both methods work).
        warmup_epochs: epochs of weights-only training before the logits move.
        grad_clip: optional max-norm clip of the logits' gradient.
        optimizer: ``"adam"`` (default here, DARTS), ``"adam_global"`` or ``"sgd"`` (module docstring).
        entropy_weight: initial weight of the entropy term (the search's schedule updates it).
    """

    MODES = ("bilevel", "single")

    def __init__(self, arch: ArchParams, penalty: Optional[SizePenalty] = None, lr: float = 3e-3,
                 betas=(0.5, 0.999), weight_decay: float = 1e-3, mode: str = "bilevel",
                 warmup_epochs: float = 0.0, grad_clip: Optional[float] = None, optimizer: str = "adam",
                 entropy_weight: float = 0.0):
        if mode not in self.MODES:
            raise ValueError(f"unknown architect mode {mode!r}; choose one of {self.MODES}")
        self.arch, self.penalty, self.mode = arch, penalty, mode
        self.warmup_epochs, self.grad_clip = float(warmup_epochs), grad_clip
        self.params = [p for p in arch.arch_parameters()]
        self.optimizer = make_arch_optimizer(optimizer, self.params, lr, betas, weight_decay)
        self.entropy_weight = float(entropy_weight)
        self.steps = 0
        self.skipped_steps = 0  # updates left out because the logits' gradient was not finite

    def active(self, epoch: float) -> bool:
        """True once the warm-up is over (``epoch`` may be fractional)."""
        return float(epoch) >= self.warmup_epochs

    def penalty_term(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(weighted size penalty + entropy term, size bytes)`` under the current logits (zeros without
        a penalty or entropy weight)."""
        z = self.params[0].new_zeros(())
        pen, size = (z, z.to(torch.float64)) if self.penalty is None else self.penalty(self.arch)
        if self.entropy_weight:
            pen = pen + self.entropy_weight * self.arch.mean_entropy()
        return pen, size

    def _finish(self, grads_present: bool) -> bool:
        """Average the logits' gradients over ranks and step; False (no update, counted in
        ``skipped_steps``) when a gradient is not finite. Ranks agree: the check follows the all-reduce."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            ws = torch.distributed.get_world_size()
            for p in self.params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                torch.distributed.all_reduce(p.grad)
                p.grad.div_(ws)
        finite = all(bool(torch.isfinite(p.grad).all()) for p in self.params if p.grad is not None)
        if not finite:
            self.optimizer.zero_grad(set_to_none=True)
            self.skipped_steps += 1
            return False
        if self.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        if grads_present:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.steps += 1
        return True

    def step(self, loss_fn: Optional[LossFn] = None) -> Dict[str, float]:
        """One bi-level (first-order) update: minimise ``loss_fn() + penalty`` over the logits only.

        ``loss_fn`` runs the supernet (train mode, so architecture weights are sampled) on a held-out
        batch and returns the task loss (or ``(loss, stats)``); None means penalty only.
        Returns floats: ``arch_loss`` (task), ``penalty``, ``expected_bytes``.
        """
        stats: Dict[str, Any] = {}
        if loss_fn is None:
            task = self.params[0].new_zeros(())
        else:
            out = loss_fn()
            task, stats = (out if isinstance(out, tuple) else (out, {}))
        pen, expected = self.penalty_term()
        total = task + pen
        for p in self.params:  # drop gradients left by the weight step's backward
            p.grad = None
        if total.requires_grad:
            grads = torch.autograd.grad(total, self.params, allow_unused=True)
            for p, g in zip(self.params, grads):
                p.grad = g if g is not None else torch.zeros_like(p)
        applied = self._finish(total.requires_grad)
        res = {"arch_loss": float(task.detach()), "penalty": float(pen.detach()),
               "expected_bytes": float(expected.detach())}
        if not applied:
            res["skipped"] = 1.0
        if self.entropy_weight:
            res["entropy_mean"] = float(self.arch.mean_entropy().detach())
        res.update({k: float(v) for k, v in stats.items() if isinstance(v, (int, float))})
        return res

    def step_from_grads(self) -> bool:
        """Single-level update: step the logits with the gradients the caller's ``backward()`` left;
        False when they were not finite (no update)."""
        return self._finish(any(p.grad is not None for p in self.params))

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def state_dict(self) -> Dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "steps": self.steps, "skipped_steps": self.skipped_steps}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.steps = int(state.get("steps", 0))
        self.skipped_steps = int(state.get("skipped_steps", 0))
