"""ADMM quantized training (Leng et al. 2018 style), as a helper the trainer calls.

Problem: min_W L(W) s.t. W_l in Q_{b_l} (the per-channel uniform grid of layer l's bit-width, scale fitted).
Split W = G with G on the grid; scaled dual U. Iterations:

* W-step (every optimizer step): minimise ``L(W) + rho/2 * sum_l ||W_l - G_l + U_l||^2`` ->
  add :meth:`ADMMQuantizer.loss_term` to the loss.
* every N steps, :meth:`update`: ``G_l = Proj_{b_l}(W_l + U_l)`` (per-channel scale fitted with the model's
  quantizer setting, then nearest grid point = ``fake_quant`` forward), ``U_l += W_l - G_l``.
* at the end, :meth:`finalize`: ``W_l = Proj_{b_l}(W_l)`` (on the grid; U dropped), and fake quantization
  is switched back on (a no-op on grid weights with max-abs scaling, so the exported model equals the
  trained one).

While ADMM runs, the model's forward uses the float weights: the constructor sets
``model.quant_enabled = False``. Only weights with bits < 32 take part.

Usage::

    admm = ADMMQuantizer(model, rho=1e-3)
    for step, batch in ...:
        loss = lfmmi_loss + admm.loss_term(model)
        loss.backward(); opt.step()
        if step % N == 0: admm.update(model)
    admm.finalize(model)
"""
from __future__ import annotations

from typing import Dict, Optional

import torch

from models.quantizers import fake_quant


def _unwrap(model):
    return getattr(model, "module", model)  # DDP / DataParallel


class ADMMQuantizer:
    def __init__(self, model, rho: float = 1e-3, weight_bits: Optional[Dict[str, int]] = None):
        m = _unwrap(model)
        self.rho = float(rho)
        self.per_channel = m.cfg.quant_per_channel
        self.scale = m.cfg.quant_scale
        bits = dict(m.cfg.weight_bits if weight_bits is None else weight_bits)
        params = m.weight_params(include_xent=True)
        unknown = sorted(set(bits) - set(params))
        if unknown:
            raise ValueError(f"ADMM: unknown weight names {unknown}")
        self.bits = {n: int(b) for n, b in bits.items() if int(b) < 32}
        m.quant_enabled = False
        self.G: Dict[str, torch.Tensor] = {}
        self.U: Dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for n, b in self.bits.items():
                w = params[n].detach()
                self.U[n] = torch.zeros_like(w)
                self.G[n] = self.project(w, b)

    def project(self, w: torch.Tensor, bits: int) -> torch.Tensor:
        """Nearest point of the ``bits`` grid (per-channel scale fitted to ``w``)."""
        with torch.no_grad():
            return fake_quant(w.detach(), bits, self.per_channel, self.scale).clone()

    def loss_term(self, model) -> torch.Tensor:
        """rho/2 * sum ||W - G + U||^2 (differentiable in W)."""
        params = _unwrap(model).weight_params(include_xent=True)
        total = None
        for n in self.bits:
            w = params[n]
            t = ((w - self.G[n].to(w.device) + self.U[n].to(w.device)) ** 2).sum()
            total = t if total is None else total + t
        if total is None:
            return torch.zeros(())
        return 0.5 * self.rho * total

    @torch.no_grad()
    def update(self, model) -> Dict[str, float]:
        """G = Proj(W + U); U += W - G. Returns relative primal residuals ||W - G|| / ||W|| per weight."""
        params = _unwrap(model).weight_params(include_xent=True)
        res = {}
        for n, b in self.bits.items():
            w = params[n].detach()
            self.G[n] = self.project(w + self.U[n].to(w.device), b)
            self.U[n] = self.U[n].to(w.device) + w - self.G[n]
            res[n] = float((w - self.G[n]).norm() / w.norm().clamp(min=1e-12))
        return res

    @torch.no_grad()
    def finalize(self, model) -> None:
        """W = Proj(W) for every quantized weight; re-enable fake quantization."""
        m = _unwrap(model)
        params = m.weight_params(include_xent=True)
        for n, b in self.bits.items():
            params[n].copy_(self.project(params[n], b))
        m.quant_enabled = True

    def state_dict(self) -> dict:
        return {"rho": self.rho, "bits": dict(self.bits), "G": {k: v.cpu() for k, v in self.G.items()},
                "U": {k: v.cpu() for k, v in self.U.items()}}

    def load_state_dict(self, state: dict) -> None:
        if dict(state["bits"]) != self.bits:
            raise ValueError("ADMM state was saved for different weight bit-widths")
        self.rho = float(state["rho"])
        self.G = dict(state["G"])
        self.U = dict(state["U"])
