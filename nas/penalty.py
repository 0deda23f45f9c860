"""Model-size penalty: the expected size of the network under the architecture distribution.

A :class:`SizeTable` holds, for every searchable layer, the bytes of that layer at each (bits, bottleneck)
pair (``S_l`` of shape ``(n_bits, n_dims)``, from ``quant.cost_model``) plus the bytes of everything not
searched (``const_bytes``). With per-layer mixing weights ``w_b``, ``w_d``:

    E[size] = const_bytes + sum_l  w_b^T S_l w_d  =  const + sum_l sum_{b,d} w_b w_d S_l[b, d]

which is differentiable in the weights and, under one-hot weights, equals the size of that one
architecture. :class:`SizePenalty` turns it into ``lambda * f(E / target)`` with ``f`` one of

* ``linear``: ``E / target``                (ProxylessNAS ``add#linear`` up to a constant),
* ``log``:    ``log(E / target)``           (FBNet-like, scale-free),
* ``hinge``:  ``max(0, E / target - 1)``    (zero under the budget).
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch

from nas.arch_params import ArchParams, LayerChoices, Weights

PENALTY_KINDS = ("linear", "log", "hinge")


class SizeTable:
    """Bytes per searchable layer and choice, plus constant bytes (float64 tensors)."""

    def __init__(self, layers: Sequence[LayerChoices], tables: Sequence[torch.Tensor], const_bytes: float = 0.0):
        self.layers = tuple(layers)
        if len(tables) != len(self.layers):
            raise ValueError(f"{len(tables)} tables for {len(self.layers)} layers")
        self.tables: List[torch.Tensor] = []
        for l, t in zip(self.layers, tables):
            t = torch.as_tensor(t, dtype=torch.float64)
            if t.shape != (len(l.bits), len(l.dims)):
                raise ValueError(f"layer {l.name}: table of shape {tuple(t.shape)}, expected "
                                 f"({len(l.bits)}, {len(l.dims)})")
            self.tables.append(t)
        self.const_bytes = float(const_bytes)
        self._cache = {}

    @classmethod
    def from_cost_fn(cls, layers: Sequence[LayerChoices], cost_fn: Callable[[LayerChoices, int, Optional[int]], float],
                     const_bytes: float = 0.0) -> "SizeTable":
        """Build the tables by calling ``cost_fn(layer, bits, bottleneck) -> bytes`` for every pair."""
        tables = [torch.tensor([[float(cost_fn(l, b, d)) for d in l.dims] for b in l.bits], dtype=torch.float64)
                  for l in layers]
        return cls(layers, tables, const_bytes)

    @property
    def names(self) -> List[str]:
        return [l.name for l in self.layers]

    def size(self, choices: Sequence[Tuple[int, Optional[int]]]) -> float:
        """Bytes of one discrete architecture ``[(bits, bottleneck), ...]`` (layer order)."""
        total = self.const_bytes
        for l, t, (b, d) in zip(self.layers, self.tables, choices):
            if d not in l.dims and l.dims == (None,):
                d = None
            total += float(t[l.bits.index(b), l.dims.index(d)])
        return total

    def expected(self, weights: Weights) -> torch.Tensor:
        """``E[size]`` in bytes (float64 scalar, differentiable in ``weights``)."""
        if len(weights) != len(self.tables):
            raise ValueError(f"{len(weights)} weight pairs for {len(self.tables)} layers")
        if not weights:
            return torch.tensor(self.const_bytes, dtype=torch.float64)
        total = None
        for t, (wb, wd) in zip(self._on(weights[0][0].device), weights):
            e = wb.to(torch.float64) @ t @ wd.to(torch.float64)
            total = e if total is None else total + e
        return total + self.const_bytes

    def _on(self, device) -> List[torch.Tensor]:
        key = str(device)
        if key not in self._cache:
            self._cache[key] = [t.to(device) for t in self.tables]
        return self._cache[key]

    def min_bytes(self) -> float:
        return self.const_bytes + sum(float(t.min()) for t in self.tables)

    def max_bytes(self) -> float:
        return self.const_bytes + sum(float(t.max()) for t in self.tables)


class SizePenalty:
    """``weight * f(E[size] / target_bytes)``; call with mixing weights or an :class:`ArchParams`.

    ``source`` (used when called with an ArchParams): ``"probs"`` = softmax of the logits (the true
    expectation, deterministic; default) or ``"sample"`` = the weights of the last forward pass (FBNet).
    Returns ``(penalty, expected_bytes)``, both 0-dim tensors (float32 penalty, float64 bytes).
    """

    def __init__(self, table: SizeTable, target_bytes: float, kind: str = "hinge", weight: float = 1.0,
                 source: str = "probs"):
        if kind not in PENALTY_KINDS:
            raise ValueError(f"unknown penalty kind {kind!r}; choose one of {PENALTY_KINDS}")
        if target_bytes <= 0:
            raise ValueError("target_bytes must be > 0")
        if source not in ("probs", "sample"):
            raise ValueError(f"unknown source {source!r}")
        self.table, self.target_bytes, self.kind = table, float(target_bytes), kind
        self.weight, self.source = float(weight), source

    def __call__(self, weights: Union[Weights, ArchParams]) -> Tuple[torch.Tensor, torch.Tensor]:
        if isinstance(weights, ArchParams):
            if self.source == "sample" and weights.last is not None:
                weights = weights.last
            else:
                weights = weights.probs()
        expected = self.table.expected(weights)
        ratio = expected / self.target_bytes
        if self.kind == "linear":
            f = ratio
        elif self.kind == "log":
            f = torch.log(ratio)
        else:
            f = torch.clamp(ratio - 1.0, min=0.0)
        return (self.weight * f).to(torch.float32), expected

    def __repr__(self) -> str:
        return (f"SizePenalty(kind={self.kind}, weight={self.weight}, target_bytes={self.target_bytes:.0f}, "
                f"source={self.source})")


def size_table_from_cost_model(cfg, layers: Sequence[LayerChoices]) -> SizeTable:
    """Adapter to ``quant.cost_model.size_table`` (bytes of each genotype layer at each (bits, bottleneck);
    layers without a bottleneck are keyed by dim 0 there). Every stored tensor belongs to a genotype layer,
    so the constant part is 0 (the xent branch is training-only and not counted, as in the cost model)."""
    from quant import cost_model

    missing = {g for g, _, _ in _groups(cfg)} - {l.name for l in layers}
    const = 0.0
    for g in missing:  # a layer the caller does not list: counted at the config's own bits/bottleneck
        const += float(cost_model.model_size(cfg).per_layer.get(g, 0))
    raw = cost_model.size_table(cfg, {l.name: (l.bits, None if l.dims == (None,) else l.dims) for l in layers})
    tables = [[[raw[l.name][int(b)][0 if d is None else int(d)] for d in l.dims] for b in l.bits] for l in layers]
    return SizeTable(layers, tables, const)


def _groups(cfg):
    from models.tdnnf import layer_groups

    return layer_groups(cfg)
