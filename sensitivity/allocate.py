"""Bit allocation under a model-size budget from any per-layer sensitivity (KL, Hessian, ...).

Problem (multiple-choice knapsack): pick one bit-width ``b_l`` per genotype layer to

    minimise  sum_l S[l][b_l]      subject to   sum_l bytes(l, b_l) <= budget

with ``bytes`` from THE cost model (``quant.cost_model.layer_bytes``; the bottleneck of each TDNN-F layer is
fixed: the space's largest choice unless given). Every stored tensor belongs to a layer, so the sum of layer
bytes is the packed model size.

:func:`knapsack` (dynamic programming over a discretised byte axis, exact when the gcd grid is small
enough), :func:`pareto_frontier` and :func:`brute_force` live in :mod:`quant.knapsack` (the solver is
shared with ``nas.derive``) and are re-exported here. :func:`allocate_bits` returns a Genotype.
"""
from __future__ import annotations

import math
from typing import Dict, Mapping, Optional

from quant.cost_model import layer_bytes
from quant.knapsack import (Allocation, BudgetError, FrontierPoint, Table, brute_force, knapsack, min_model_bytes,
                            normalise_table, pareto_frontier)
from search_spaces.genotype import Genotype

__all__ = ["Allocation", "BudgetError", "FrontierPoint", "Table", "allocate_bits", "brute_force", "fp32_model_bytes",
           "knapsack", "layer_sizes", "min_model_bytes", "normalise_table", "pareto_frontier",
           "resolve_bottlenecks"]


# ------------------------------------------------------------------------------------------------------
# Search-space level
# ------------------------------------------------------------------------------------------------------

def layer_sizes(space, bottlenecks: Optional[Mapping[str, int]] = None) -> Dict[str, Dict[int, int]]:
    """``{layer: {bits: bytes}}`` from the cost model for every bit choice of ``space`` (needs num_pdfs);
    TDNN-F layers at ``bottlenecks[layer]`` or the space's largest choice."""
    cfg = space.network
    if cfg.num_pdfs is None:
        raise ValueError(f"search space {space.name}: num_pdfs is not set (space.with_num_pdfs(n))")
    bn = resolve_bottlenecks(space, bottlenecks)
    return {l.name: {int(b): int(layer_bytes(cfg, l.name, b, bn.get(l.name))) for b in l.bits}
            for l in space.layers}


def resolve_bottlenecks(space, bottlenecks: Optional[Mapping[str, int]] = None) -> Dict[str, int]:
    bottlenecks = dict(bottlenecks or {})
    unknown = [k for k in bottlenecks if k not in space.layer_names]
    if unknown:
        raise ValueError(f"bottlenecks for unknown layer(s) {unknown}")
    out = {}
    for l in space.layers:
        if not l.has_bottleneck:
            if l.name in bottlenecks and bottlenecks[l.name] is not None:
                raise ValueError(f"layer {l.name} has no bottleneck")
            continue
        d = int(bottlenecks.get(l.name, l.bottlenecks[-1]))
        if d not in l.bottlenecks:
            raise ValueError(f"layer {l.name}: bottleneck {d} not in choices {list(l.bottlenecks)}")
        out[l.name] = d
    return out


def fp32_model_bytes(space, bottlenecks: Optional[Mapping[str, int]] = None) -> int:
    """Size of the all-float model at the given (default: largest) bottlenecks."""
    bn = resolve_bottlenecks(space, bottlenecks)
    return int(sum(layer_bytes(space.network, l.name, 32, bn.get(l.name)) for l in space.layers))


def allocate_bits(space, sensitivity: Table, budget_bytes: float, bottlenecks: Optional[Mapping[str, int]] = None,
                  method: str = "unknown", max_cells: int = 200_000, extra_source: Optional[dict] = None):
    """Genotype minimising total ``sensitivity`` under ``budget_bytes`` (cost-model bytes).

    ``source`` records the method, the budget, the total sensitivity and whether the DP was exact."""
    bn = resolve_bottlenecks(space, bottlenecks)
    sizes = layer_sizes(space, bn)
    alloc = knapsack(sensitivity, sizes, budget_bytes, max_cells)
    src = {"method": method, "budget_bytes": int(math.floor(budget_bytes)),
           "total_sensitivity": alloc.total_sensitivity, "allocation_bytes": alloc.total_bytes,
           "min_bytes": alloc.min_bytes, "exact": alloc.exact}
    src.update(extra_source or {})
    g = Genotype.from_choices(space, alloc.bits, bn, source=src)
    if g.expected_size_bytes is not None and g.expected_size_bytes != alloc.total_bytes:
        raise RuntimeError(f"cost model mismatch: layer sum {alloc.total_bytes} != model size "
                           f"{g.expected_size_bytes}")
    return g
