"""The YAML ``quant:`` section of ``retrain.py`` as a typed record (:class:`QuantOptions`): how quantized
weights are trained. An unknown key or a bad value is a ValueError naming it (``config_section`` adds the
file)."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Dict, Optional

TRAINERS = ("ste", "admm")  # straight-through fake quantization, or ADMM towards the quantization grid


@dataclass
class QuantOptions:
    trainer: str = "ste"
    admm_rho: float = 1e-3          # ADMM penalty weight (trainer admm)
    admm_update_every: int = 20     # steps between ADMM projections (trainer admm)

    @classmethod
    def from_dict(cls, d: Optional[Dict[str, Any]]) -> "QuantOptions":
        d = dict(d or {})
        known = [f.name for f in dataclasses.fields(cls)]
        bad = sorted(set(d) - set(known))
        if bad:
            raise ValueError(f"unknown quant option(s) {bad}; known: {sorted(known)}")
        opts = cls(**d)
        opts.validate()
        return opts

    def replace(self, **kw) -> "QuantOptions":
        """A copy with ``kw`` set (command-line overrides; None = keep), validated."""
        opts = dataclasses.replace(self, **{k: v for k, v in kw.items() if v is not None})
        opts.validate()
        return opts

    def validate(self) -> None:
        if self.trainer not in TRAINERS:
            raise ValueError(f"quant.trainer must be one of {list(TRAINERS)}, got {self.trainer!r}")
        rho = self.admm_rho
        if isinstance(rho, bool) or not isinstance(rho, (int, float)) or not math.isfinite(rho) or rho <= 0:
            raise ValueError(f"quant.admm_rho must be a finite number > 0, got {rho!r}")
        every = self.admm_update_every
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"quant.admm_update_every must be an integer >= 1, got {every!r}")
