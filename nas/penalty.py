"""Model-size penalty: the expected size of the network under the architecture distribution.

A :class:`SizeTable` holds, for every searchable layer, the bytes of that layer at each (bits, bottleneck)
pair (``S_l`` of shape ``(n_bits, n_dims)``, from ``quant.cost_model``) plus the bytes of everything not
searched (``const_bytes``). With per-layer mixing weights ``w_b``, ``w_d``:

    E[size] = const_bytes + sum_l  w_b^T S_l w_d  =  const + sum_l sum_{b,d} w_b w_d S_l[b, d]

which is differentiable in the weights and, under one-hot weights, equals the size of that one
architecture. :class:`SizePenalty` turns it into ``lambda * f(S / target)`` with ``f`` one of

* ``linear``: ``r``                                   (ProxylessNAS ``add#linear`` up to a constant),
* ``log``:    ``log(r)``                              (FBNet-like, scale-free),
* ``hinge``:  ``max(0, r - 1)``                       (zero under the budget),
* ``band``:   ``max(0, r - high) + max(0, low - r)``  (two-sided: zero inside ``[low, high]`` of the
  budget, so the architecture is pushed *up* to use the budget as well as down under it),

``r = S / target``. ``S`` is the size of the weights the penalty is given. Called with an
:class:`ArchParams`, ``source`` picks them: ``"argmax"`` (the architecture that will be derived, one-hot
in the forward pass with the softmax's gradient, straight through), ``"sample"`` (the last forward
pass's sample) or ``"probs"`` (the expectation under the softmax). A one-sided penalty on the expectation
stops pushing once the expectation is under budget, however far the argmax lies from it; the band on
the argmax does not.
"""
from __future__ import annotations

import math
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch

from models.layout import layer_groups
from nas.arch_params import ArchParams, LayerChoices, Weights
from quant import cost_model

PENALTY_KINDS = ("linear", "log", "hinge", "band")
PENALTY_SOURCES = ("probs", "sample", "argmax")


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

    def layer_sizes(self, choices: Sequence[Tuple[int, Optional[int]]]) -> List[float]:
        """Bytes of each searchable layer of one discrete architecture ``[(bits, bottleneck), ...]``."""
        out = []
        for l, t, (b, d) in zip(self.layers, self.tables, choices):
            if d not in l.dims and l.dims == (None,):
                d = None
            out.append(float(t[l.bits.index(b), l.dims.index(d)]))
        return out

    def size(self, choices: Sequence[Tuple[int, Optional[int]]]) -> float:
        """Bytes of one discrete architecture ``[(bits, bottleneck), ...]`` (layer order)."""
        return self.const_bytes + sum(self.layer_sizes(choices))

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
    """``weight * f(S / target_bytes)``; call with mixing weights or an :class:`ArchParams`.

    ``source`` (used when called with an ArchParams; see the module docstring): ``"probs"`` (default),
    ``"sample"`` or ``"argmax"``. ``band = (low, high)``: the zero band of ``kind="band"``, as fractions of
    the target. Returns ``(penalty, size_bytes)``, both 0-dim tensors (float32 penalty, float64 bytes).
    """

    def __init__(self, table: SizeTable, target_bytes: float, kind: str = "hinge", weight: float = 1.0,
                 source: str = "probs", band: Tuple[float, float] = (0.9, 1.0)):
        if kind not in PENALTY_KINDS:
            raise ValueError(f"unknown penalty kind {kind!r}; choose one of {PENALTY_KINDS}")
        if not (math.isfinite(float(target_bytes)) and target_bytes > 0):
            raise ValueError(f"target_bytes must be finite and > 0, got {target_bytes}")
        if source not in PENALTY_SOURCES:
            raise ValueError(f"unknown source {source!r}; choose one of {PENALTY_SOURCES}")
        low, high = (float(x) for x in band)
        if not (0.0 < low <= high):
            raise ValueError(f"band must satisfy 0 < low <= high, got {band}")
        self.table, self.target_bytes, self.kind = table, float(target_bytes), kind
        self.weight, self.source, self.band = float(weight), source, (low, high)

    def __call__(self, weights: Union[Weights, ArchParams]) -> Tuple[torch.Tensor, torch.Tensor]:
        if isinstance(weights, ArchParams):
            if self.source == "sample" and weights.last is not None:
                weights = weights.last
            elif self.source == "argmax":
                weights = weights.sample("argmax")
            else:
                weights = weights.probs()
        size = self.table.expected(weights)
        ratio = size / self.target_bytes
        if self.kind == "linear":
            f = ratio
        elif self.kind == "log":
            f = torch.log(ratio)
        elif self.kind == "hinge":
            f = torch.clamp(ratio - 1.0, min=0.0)
        else:
            low, high = self.band
            f = torch.clamp(ratio - high, min=0.0) + torch.clamp(low - ratio, min=0.0)
        return (self.weight * f).to(torch.float32), size

    def __repr__(self) -> str:
        return (f"SizePenalty(kind={self.kind}, weight={self.weight}, target_bytes={self.target_bytes:.0f}, "
                f"source={self.source}, band={self.band})")


def size_table_from_cost_model(cfg, layers: Sequence[LayerChoices]) -> SizeTable:
    """Adapter to ``quant.cost_model.size_table`` (bytes of each genotype layer at each (bits, bottleneck);
    layers without a bottleneck are keyed by dim 0 there). Every stored tensor belongs to a genotype layer,
    so the constant part is 0 (the xent branch is training-only and not counted, as in the cost model)."""
    missing = {g.name for g in _groups(cfg)} - {l.name for l in layers}
    const = 0.0
    for g in missing:  # a layer the caller does not list: counted at the config's own bits/bottleneck
        const += float(cost_model.model_size(cfg).per_layer.get(g, 0))
    raw = cost_model.size_table(cfg, {l.name: (l.bits, None if l.dims == (None,) else l.dims) for l in layers})
    tables = [[[raw[l.name][int(b)][0 if d is None else int(d)] for d in l.dims] for b in l.bits] for l in layers]
    return SizeTable(layers, tables, const)


def _groups(cfg):
    return layer_groups(cfg)
