"""Multiple-choice knapsack under a byte budget: pick one choice per layer to

    minimise  sum_l cost[l][c_l]      subject to   sum_l bytes(l, c_l) <= budget

The one solver behind both budgeted decisions of the project: bit allocation from a per-layer sensitivity
(``sensitivity.allocate.allocate_bits``, cost = sensitivity) and the most probable architecture within a
budget (``nas.derive.derive_genotype_within_budget``, cost = ``-log p``). It knows nothing of models or
sensitivities: tables are ``{layer: {choice key (int): value}}``; the byte counts come from the caller
(``quant.cost_model``). It sits in ``quant`` so that ``nas`` and ``sensitivity``, siblings that do not
import each other, can both use it (docs/ARCHITECTURE.md); ``sensitivity.allocate`` re-exports it.

:func:`knapsack` solves it by dynamic programming over a discretised byte axis. Only the bytes *above* the
smallest model matter (each layer's cheapest choice is subtracted first); the step is the gcd of all those
extra byte counts when that gives at most ``max_cells`` cells (then the DP is exact), otherwise
``extra_budget / max_cells`` with every item's bytes rounded *up* to whole steps (so the answer always
respects the true budget; it may miss the optimum by less than one step per layer of bytes).
:func:`pareto_frontier` gives the exact (size, total cost) frontier by merging layers and pruning
dominated points (for plots, and an exact cross-check); :func:`brute_force` enumerates (small cases, tests).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import reduce
from typing import Dict, List, Mapping, Optional, Tuple

import numpy as np

Table = Mapping[str, Mapping[int, float]]


class BudgetError(ValueError):
    """The size budget is below the smallest model the choices allow."""


@dataclass
class Allocation:
    bits: Dict[str, int]
    total_sensitivity: float
    total_bytes: int
    min_bytes: int          # the smallest possible model (every layer at its cheapest choice)
    step_bytes: float       # DP grid step (1 or the gcd: exact)
    exact: bool

    def to_dict(self) -> dict:
        return {"bits": dict(self.bits), "total_sensitivity": self.total_sensitivity,
                "total_bytes": self.total_bytes, "min_bytes": self.min_bytes, "step_bytes": self.step_bytes,
                "exact": self.exact}


def normalise_table(t: Mapping) -> Dict[str, Dict[int, float]]:
    """``{layer: {bits: value}}`` with int bits (JSON gives string keys) and float values."""
    out: Dict[str, Dict[int, float]] = {}
    for layer, row in t.items():
        out[str(layer)] = {int(b): float(v) for b, v in row.items()}
    return out


def _options(sens: Table, sizes: Table) -> Tuple[List[str], List[List[Tuple[int, int, float]]]]:
    """Per layer (in ``sizes`` order): choices (bits, bytes, sensitivity) sorted by bytes then bits."""
    sens, sizes = normalise_table(sens), normalise_table(sizes)
    missing = [l for l in sizes if l not in sens]
    if missing:
        raise ValueError(f"no sensitivity for layer(s) {missing}")
    layers, opts = [], []
    for l, row in sizes.items():
        choices = []
        for b, nbytes in row.items():
            if b not in sens[l]:
                continue
            s = sens[l][b]
            if not math.isfinite(s):
                raise ValueError(f"layer {l}, {b} bits: sensitivity {s} is not finite")
            if nbytes != int(nbytes) or nbytes < 0:
                raise ValueError(f"layer {l}, {b} bits: size {nbytes} is not a non-negative whole byte count")
            choices.append((b, int(nbytes), s))
        if not choices:
            raise ValueError(f"layer {l}: no bit choice has both a size and a sensitivity "
                             f"(sizes {sorted(row)}, sensitivity {sorted(sens[l])})")
        choices.sort(key=lambda c: (c[1], c[0]))
        layers.append(l)
        opts.append(choices)
    return layers, opts


def min_model_bytes(sizes: Table) -> int:
    return int(sum(min(row.values()) for row in normalise_table(sizes).values()))


def knapsack(sens: Table, sizes: Table, budget_bytes: float, max_cells: int = 200_000) -> Allocation:
    """Minimum total sensitivity with total bytes <= ``budget_bytes`` (multiple-choice knapsack, DP).

    ``sens``/``sizes``: ``{layer: {bits: value}}``; a layer's choices are the bits present in both.
    Ties prefer the smaller size. Raises :class:`BudgetError` when even the smallest model is too big."""
    layers, opts = _options(sens, sizes)
    base = sum(o[0][1] for o in opts)
    extra = float(budget_bytes) - base
    if extra < 0:
        raise BudgetError(f"budget {budget_bytes:.0f} bytes is below the smallest possible model, {base} bytes "
                          f"(every layer at its cheapest choice); raise the budget")
    extra_int = int(math.floor(extra))
    deltas = [c[1] - o[0][1] for o in opts for c in o]
    g = reduce(math.gcd, [d for d in deltas if d > 0], 0)
    if g > 0 and extra_int // g <= max_cells:
        step, exact = float(g), True
        cells = extra_int // g
        weights = [[(c[1] - o[0][1]) // g for c in o] for o in opts]
    elif g == 0:      # every layer has a single size: nothing to choose on the byte axis
        step, exact, cells = 1.0, True, 0
        weights = [[0 for _ in o] for o in opts]
    else:
        step, exact = extra / max_cells, False
        cells = max_cells
        weights = [[int(math.ceil((c[1] - o[0][1]) / step - 1e-9)) for c in o] for o in opts]
    INF = np.inf
    dp = np.zeros(cells + 1)           # dp[c]: min sensitivity of the layers so far using <= c steps
    args: List[np.ndarray] = []
    for o, w in zip(opts, weights):
        cand = np.full((len(o), cells + 1), INF)
        for k, (c, wk) in enumerate(zip(o, w)):
            if wk <= cells:
                cand[k, wk:] = dp[: cells + 1 - wk] + c[2]
        arg = np.argmin(cand, axis=0)   # first minimum: the smaller size on ties
        dp = cand[arg, np.arange(cells + 1)]
        args.append(arg.astype(np.int32))
    if not np.isfinite(dp[cells]):
        raise BudgetError(f"no allocation fits {budget_bytes:.0f} bytes")  # pragma: no cover (base fits)
    bits: Dict[str, int] = {}
    c = cells
    total_bytes = 0
    total_s = 0.0
    for l, o, w, arg in zip(reversed(layers), reversed(opts), reversed(weights), reversed(args)):
        k = int(arg[c])
        bits[l] = o[k][0]
        total_bytes += o[k][1]
        total_s += o[k][2]
        c -= w[k]
    bits = {l: bits[l] for l in layers}
    assert total_bytes <= budget_bytes + 1e-9, (total_bytes, budget_bytes)
    return Allocation(bits, total_s, total_bytes, base, step, exact)


def brute_force(sens: Table, sizes: Table, budget_bytes: float) -> Optional[Allocation]:
    """Enumerate every combination (small cases / tests). None when nothing fits."""
    layers, opts = _options(sens, sizes)
    best = None
    for combo in itertools.product(*opts):
        nbytes = sum(c[1] for c in combo)
        if nbytes > budget_bytes:
            continue
        s = sum(c[2] for c in combo)
        if best is None or s < best[0] or (s == best[0] and nbytes < best[1]):
            best = (s, nbytes, combo)
    if best is None:
        return None
    return Allocation({l: c[0] for l, c in zip(layers, best[2])}, best[0], best[1],
                      sum(o[0][1] for o in opts), 1.0, True)


@dataclass
class FrontierPoint:
    bytes: int
    sensitivity: float
    bits: Dict[str, int]

    def to_dict(self) -> dict:
        return {"bytes": self.bytes, "sensitivity": self.sensitivity, "bits": dict(self.bits)}


def pareto_frontier(sens: Table, sizes: Table, max_points: int = 1_000_000) -> List[FrontierPoint]:
    """Exact Pareto frontier of (total bytes, total sensitivity), ascending bytes / strictly descending
    sensitivity: every allocation not dominated by another (smaller-or-equal size and strictly lower
    sensitivity, or strictly smaller size and equal-or-lower sensitivity)."""
    layers, opts = _options(sens, sizes)
    front: List[Tuple[int, float, Tuple[int, ...]]] = [(0, 0.0, ())]
    for o in opts:
        merged = [(b + c[1], s + c[2], ks + (k,)) for (b, s, ks) in front for k, c in enumerate(o)]
        merged.sort(key=lambda p: (p[0], p[1]))
        front = []
        for p in merged:
            if not front or p[1] < front[-1][1]:
                if front and p[0] == front[-1][0]:   # same size, lower sensitivity (cannot happen: sorted)
                    front[-1] = p
                else:
                    front.append(p)
        if len(front) > max_points:
            raise ValueError(f"Pareto frontier exceeds {max_points} points; use knapsack() per budget")
    return [FrontierPoint(b, s, {l: o[k][0] for l, o, k in zip(layers, opts, ks)}) for b, s, ks in front]
