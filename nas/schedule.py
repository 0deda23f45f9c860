"""Temperature annealing for the Gumbel-softmax architecture weights.

``TemperatureSchedule(start, end, total)`` is evaluated at a (fractional) epoch or step ``t``:

* ``exponential`` (default): ``start * (end/start) ** (t/total)``, i.e. ``start`` at 0, ``end`` at
  ``total`` and constant afterwards (5 -> 0.5 over the search);
* ``fbnet``: ``start * exp(-rate * t)`` (FBNet: 5.0 and 0.045 per epoch), floored at ``end``;
* ``linear``: straight line from ``start`` to ``end``;
* ``constant``: always ``start``.

``warmup`` shifts the clock: the temperature stays at ``start`` for the warm-up epochs, while the
architecture parameters are frozen, and the annealing runs over ``[warmup, total]``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

SCHEDULE_KINDS = ("exponential", "fbnet", "linear", "constant")


@dataclass
class TemperatureSchedule:
    start: float = 5.0
    end: float = 0.5
    total: float = 1.0
    kind: str = "exponential"
    rate: float = 0.045
    warmup: float = 0.0

    def __post_init__(self):
        if self.kind not in SCHEDULE_KINDS:
            raise ValueError(f"unknown temperature schedule {self.kind!r}; choose one of {SCHEDULE_KINDS}")
        if self.start <= 0 or self.end <= 0:
            raise ValueError("temperatures must be > 0")
        if self.total <= self.warmup and self.kind in ("exponential", "linear"):
            raise ValueError(f"total ({self.total}) must exceed warmup ({self.warmup})")

    def __call__(self, t: float) -> float:
        t = max(0.0, float(t) - self.warmup)
        span = max(1e-12, self.total - self.warmup)
        if self.kind == "constant":
            return float(self.start)
        if self.kind == "fbnet":
            return float(max(self.end, self.start * math.exp(-self.rate * t)))
        frac = min(1.0, t / span)
        if self.kind == "linear":
            return float(self.start + (self.end - self.start) * frac)
        return float(self.start * (self.end / self.start) ** frac)


@dataclass
class RampSchedule:
    """``0`` before ``start``, rising linearly to ``value`` at ``end`` and constant afterwards (the
    weight of the search's entropy term: nothing while the architecture explores, full at the end)."""

    value: float = 0.0
    start: float = 0.0
    end: float = 1.0

    def __post_init__(self):
        if self.end < self.start:
            raise ValueError(f"ramp end ({self.end}) before its start ({self.start})")

    def __call__(self, t: float) -> float:
        t = float(t)
        if t <= self.start:
            return 0.0
        if t >= self.end or self.end == self.start:
            return float(self.value)
        return float(self.value) * (t - self.start) / (self.end - self.start)
