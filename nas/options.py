"""The YAML ``search:`` section of ``train_search.py`` as a typed record (:class:`SearchOptions`).

Every key is optional; an unknown key or a bad value is a ValueError naming it (``config_section`` adds
the file). Values are kept as written (an int stays an int), so a run's identity hash is the same as the
mapping it came from (:meth:`SearchOptions.to_dict`).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from nas.arch_params import INITS
from nas.architect import OPTIMIZERS, Architect
from nas.penalty import PENALTY_KINDS, PENALTY_SOURCES
from nas.schedule import SCHEDULE_KINDS

DERIVATIONS = ("argmax", "budget")  # the genotype: the argmax, or the most probable within the budget
WEIGHT_SAMPLINGS = ("arch", "uniform")  # SuperNet.weight_sampling: the subnets the weight steps train
WEIGHTS = ("train", "frozen")  # the shared weights: trained with the logits, or held at their start

CHOICES = {"mode": Architect.MODES, "derivation": DERIVATIONS, "arch_optimizer": OPTIMIZERS,
           "tau_schedule": SCHEDULE_KINDS, "penalty": PENALTY_KINDS, "penalty_source": PENALTY_SOURCES,
           "init": INITS, "weight_sampling": WEIGHT_SAMPLINGS, "weights": WEIGHTS}


@dataclass
class SearchOptions:
    mode: str = "bilevel"
    held_out_fraction: float = 0.1       # of the training recordings, for the architecture steps
    warmup_epochs: float = 1.0           # weights only (random subnets) before the architecture moves
    arch_lr: float = 0.05
    arch_optimizer: str = "adam_global"
    tau_start: float = 5.0               # Gumbel-softmax temperature, annealed to tau_end
    tau_end: float = 0.5
    tau_schedule: str = "exponential"
    hard: bool = True                    # straight-through one-hot samples: each step runs one real subnet
    penalty: str = "band"                # size penalty; band: two-sided, zero inside [low, high] x budget
    penalty_source: str = "argmax"       # the size it acts on
    penalty_band: List[float] = field(default_factory=lambda: [0.9, 1.0])
    penalty_weight: float = 2.0          # 0: no size penalty (a diagnostic of the task signal)
    entropy_weight: float = 0.05         # ramps from 0 after the warm-up: the distribution ends sharp
    init: str = "uniform"
    log_every: int = 10
    derivation: str = "argmax"
    # the subnets the weight steps train: "arch" samples the architecture distribution (so the sharp last
    # epochs train mostly its argmax), "uniform" a uniformly random subnet at every step (bilevel only)
    weight_sampling: str = "arch"
    # "frozen": the shared weights stay as they start (--init-from, e.g. the fp32 baseline) and only the
    # logits learn, from the training batches' own gradient (mode: single, no warm-up): the search is then
    # a joint, task-loss sensitivity of the start model to every layer's choice (docs/SEARCH.md)
    weights: str = "train"

    @classmethod
    def from_dict(cls, d: Optional[Dict[str, Any]]) -> "SearchOptions":
        d = dict(d or {})
        known = [f.name for f in dataclasses.fields(cls)]
        bad = sorted(set(d) - set(known))
        if bad:
            raise ValueError(f"unknown search option(s) {bad}; known: {sorted(known)}")
        opts = cls(**d)
        opts.validate()
        return opts

    def replace(self, **kw) -> "SearchOptions":
        """A copy with ``kw`` set (command-line overrides), validated."""
        opts = dataclasses.replace(self, **{k: v for k, v in kw.items() if v is not None})
        opts.validate()
        return opts

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        """Raise ValueError naming the first option with a bad type or value."""
        for k, allowed in CHOICES.items():
            if getattr(self, k) not in allowed:
                raise ValueError(f"search.{k} must be one of {list(allowed)}, got {getattr(self, k)!r}")
        for k in ("held_out_fraction", "warmup_epochs", "arch_lr", "tau_start", "tau_end", "penalty_weight",
                  "entropy_weight"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"search.{k} must be a finite number >= 0, got {v!r}")
        if not 0 <= self.held_out_fraction < 1:
            raise ValueError(f"search.held_out_fraction must be in [0, 1), got {self.held_out_fraction!r}")
        if self.tau_start <= 0 or self.tau_end <= 0:
            raise ValueError(f"search.tau_start and tau_end must be > 0, got {self.tau_start!r}, {self.tau_end!r}")
        if not isinstance(self.hard, bool):
            raise ValueError(f"search.hard must be true or false, got {self.hard!r}")
        if isinstance(self.log_every, bool) or not isinstance(self.log_every, int) or self.log_every < 0:
            raise ValueError(f"search.log_every must be an integer >= 0, got {self.log_every!r}")
        if self.weight_sampling == "uniform" and self.mode != "bilevel":
            raise ValueError("search.weight_sampling: uniform needs mode: bilevel (single-level mode learns the "
                             "logits from the weight steps' own samples)")
        if self.weights == "frozen" and (self.mode != "single" or self.warmup_epochs != 0):
            raise ValueError("search.weights: frozen needs mode: single and warmup_epochs: 0 (no weight steps to "
                             f"warm up or to hold a split out for), got mode {self.mode!r}, warmup_epochs "
                             f"{self.warmup_epochs!r}")
        band = self.penalty_band
        if not (isinstance(band, (list, tuple)) and len(band) == 2
                and all(not isinstance(x, bool) and isinstance(x, (int, float)) for x in band)
                and 0 < float(band[0]) <= float(band[1])):
            raise ValueError(f"search.penalty_band must be [low, high] with 0 < low <= high, got {band!r}")
