"""The searchable TDNN-F: ``models.tdnnf.TDNNF`` at maximal bottlenecks with composite weights.

:class:`SuperNet` subclasses the standalone network and overrides only :meth:`TDNNF.qw` (the hook that
turns a latent weight into the weight the layer multiplies by), so the layer math (splicing, factored
TDNN, ReLU/BN/dropout/bypass, subsampling, heads) is the standalone network's own code. Each forward:

1. reads the per-layer mixing weights ``[(w_bits, w_dims), ...]`` from ``self.arch`` (an
   :class:`nas.ArchParams`: sampled each call in train mode, argmax in eval mode, or fixed explicitly);
2. builds, per searchable weight, the composite of :mod:`supernet.mixing` (one matmul per layer);
3. runs ``TDNNF.forward``.

Genotype layers are those of :func:`models.layout.layer_groups`: ``tdnn1``, ``tdnnf1..N`` (bits + rank),
``prefinal`` (its three weights share the bits), ``output``. A layer the search space does not search has a
single choice. The xent branch stays float (training only, not exported).

The semi-orthogonal step (inherited ``apply_semi_orthogonal_``) acts on the full max-rank linear factors;
any prefix of rows of a row-orthonormal matrix is row-orthonormal, so every candidate rank keeps it.
"""
from __future__ import annotations

import contextlib
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from models.config import TDNNFConfig
from models.layout import apply_layer_choices, copy_weights_to_bottlenecks, layer_groups
from models.tdnnf import TDNNF
from nas.arch_params import ArchParams, LayerChoices
from nas.derive import derive_genotype
from nas.penalty import SizeTable, size_table_from_cost_model
from search_spaces.genotype import Genotype, LayerChoice
from supernet.mixing import mix_bits, mix_rank_cols, mix_rank_rows

Choice = Tuple[int, Optional[int]]


def _zeros(w: torch.Tensor) -> List[bool]:
    return [x == 0.0 for x in w.detach().tolist()]


def layer_choices_for(cfg: TDNNFConfig, choices: Dict[str, Tuple[Sequence[int], Optional[Sequence[int]]]]
                      ) -> List[LayerChoices]:
    """Genotype layers of ``cfg`` in network order with their candidates. ``choices[layer] = (bits,
    dims or None)``; a layer missing from ``choices`` is fixed at 32 bits (and the config's bottleneck)."""
    groups = layer_groups(cfg)
    known = {g.name for g in groups}
    bad = sorted(set(choices) - known)
    if bad:
        raise ValueError(f"unknown layer(s) {bad}; genotype layers are {sorted(known)}")
    out = []
    for g in groups:
        bits, dims = choices.get(g.name, ((32,), None))
        bits = tuple(sorted(int(b) for b in bits))
        if g.has_bottleneck:
            dims = tuple(sorted(int(d) for d in dims)) if dims else (int(cfg.bottleneck_dims[g.bottleneck_index]),)
        else:
            if dims:
                raise ValueError(f"layer {g.name} has no bottleneck, got bottleneck choices {dims}")
            dims = (None,)
        out.append(LayerChoices(g.name, bits, dims))
    return out


class SuperNet(TDNNF):
    """Weight-sharing supernet. ``forward(feats, lengths) -> (chain_out, xent_out, out_lengths)`` exactly
    as ``TDNNF``.

    Args:
        cfg: the network config (``bottleneck_dims`` is overridden by each layer's largest choice,
            ``weight_bits`` ignored: the bits come from the architecture weights).
        layers: candidates per genotype layer (:func:`layer_choices_for`), in ``layer_groups`` order.
        arch: existing ArchParams (else one is created with ``arch_kwargs``).
    """

    def __init__(self, cfg: TDNNFConfig, layers: Sequence[LayerChoices], arch: Optional[ArchParams] = None,
                 **arch_kwargs):
        groups = layer_groups(cfg)
        names = [g.name for g in groups]
        if [l.name for l in layers] != names:
            raise ValueError(f"layers must be the genotype layers in order {names}, got {[l.name for l in layers]}")
        dims = list(cfg.bottleneck_dims)
        for g, l in zip(groups, layers):
            if g.has_bottleneck:
                dims[g.bottleneck_index] = max(int(d) for d in l.dims)
        self.base_cfg = cfg
        super().__init__(cfg.replace(bottleneck_dims=dims, weight_bits={}))
        self.arch = arch if arch is not None else ArchParams(layers, **arch_kwargs)
        if list(self.arch.layers) != list(layers):
            raise ValueError("arch layers differ from the supernet's")
        self.choices: Tuple[LayerChoices, ...] = tuple(layers)
        # weight name -> (layer index, kind, time-offset count k)
        self._wmap: Dict[str, Tuple[int, str, int]] = {}
        for li, g in enumerate(groups):
            for w in g.weights:
                if g.has_bottleneck:
                    k = 2 if self.cfg.time_strides[g.bottleneck_index] > 0 else 1
                    self._wmap[w] = (li, "linear" if w.endswith(".linear") else "affine", k)
                else:
                    self._wmap[w] = (li, "plain", 1)
        self._cur: Optional[list] = None
        self._skip: Optional[list] = None
        self._frozen: Optional[list] = None
        self.freeze_unsampled = True  # hard samples: no autograd through zero-valued candidates (same grads)
        # False: forward passes treat the sampled mixing weights as constants (no gradient to the logits),
        # so a hard sample computes only the sampled subnet -- the weight step of a bi-level search,
        # whose logits are updated on held-out data instead (see arch_gradients)
        self.arch_grad = True
        # the subnet a forward pass without gradients to the logits (a bi-level weight step) computes:
        # "arch" samples the architecture distribution (its Gumbel samples), "uniform" a uniformly random
        # subnet whatever the logits, so the shared weights keep training every candidate alike while
        # the distribution sharpens (the architecture steps, with arch_gradients, still sample it)
        self.weight_sampling = "arch"
        self.space = None  # the search_spaces.SearchSpace when built by from_space
        self._table: Optional[SizeTable] = None

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def from_config(cls, cfg: TDNNFConfig, choices: Dict[str, Tuple[Sequence[int], Optional[Sequence[int]]]],
                    num_pdfs: Optional[int] = None, **arch_kwargs) -> "SuperNet":
        if num_pdfs is not None:
            cfg = cfg.replace(num_pdfs=num_pdfs)
        return cls(cfg, layer_choices_for(cfg, choices), **arch_kwargs)

    @classmethod
    def from_space(cls, space, num_pdfs: Optional[int] = None, **arch_kwargs) -> "SuperNet":
        """Build from a ``search_spaces.SearchSpace`` (its network config holds the max ranks; each
        ``LayerSpace`` gives the bit and bottleneck candidates). ``num_pdfs`` overrides the space's."""
        if num_pdfs is not None:
            space = space.with_num_pdfs(num_pdfs)
        layers = [LayerChoices(l.name, tuple(sorted(l.bits)),
                               tuple(l.bottlenecks) if l.has_bottleneck else (None,)) for l in space.layers]
        net = cls(space.network, layers, **arch_kwargs)
        net.space = space
        return net

    # ------------------------------------------------------------------ parameters
    def arch_parameters(self) -> List[torch.nn.Parameter]:
        return self.arch.arch_parameters()

    def weight_parameters(self) -> List[torch.nn.Parameter]:
        ids = {id(p) for p in self.arch.parameters()}
        return [p for p in self.parameters() if id(p) not in ids]

    def size_table(self) -> SizeTable:
        """Bytes per (layer, bits, bottleneck) from ``quant.cost_model`` (every stored tensor belongs to a
        genotype layer, so ``const_bytes`` is 0)."""
        if self._table is None:
            self._table = size_table_from_cost_model(self.base_cfg, self.choices)
        return self._table

    def expected_size_bytes(self) -> float:
        """E[size] under the current architecture distribution (softmax of the logits), in bytes."""
        with torch.no_grad():
            return float(self.size_table().expected(self.arch.probs()))

    def genotype(self, source: Optional[dict] = None):
        """The argmax ``search_spaces.Genotype`` (needs a model built by :meth:`from_space`)."""
        if self.space is None:
            return derive_genotype(self.arch, table=self.size_table(), source=source)
        return derive_genotype(self.arch, self.space, source=source)

    # ------------------------------------------------------------------ forward
    def qw(self, name: str, w: torch.Tensor) -> torch.Tensor:
        spec = self._wmap.get(name)
        if spec is None or self._cur is None:
            return super().qw(name, w)  # xent branch: float
        li, kind, k = spec
        layer = self.choices[li]
        wb, wd = self._cur[li]
        sb, sd = self._skip[li] if self._skip is not None else (None, None)
        fb, fd = self._frozen[li] if self._frozen is not None else (None, None)
        opts = dict(per_channel=self.cfg.quant_per_channel, scale=self.cfg.quant_scale, quant=self.quant_enabled)
        if kind == "plain":
            return mix_bits(w, layer.bits, wb, skip=sb, frozen=fb, **opts)
        if kind == "affine":
            return mix_rank_cols(w, k, layer.dims, wd, layer.bits, wb, skip_d=sd, skip_b=sb, frozen_d=fd,
                                 frozen_b=fb, **opts)
        if opts["per_channel"] or not opts["quant"] or all(b == 32 for b in layer.bits):
            return mix_bits(w, layer.bits, wb, skip=sb, frozen=fb, **opts)  # row scales ignore the rank kept
        return mix_rank_rows(w, layer.dims, wd, layer.bits, wb, skip_d=sd, skip_b=sb, frozen_d=fd, frozen_b=fb,
                             **opts)

    @contextlib.contextmanager
    def arch_gradients(self, enabled: bool = True):
        """Temporarily set :attr:`arch_grad` (e.g. for the architecture step of a bi-level search)."""
        old, self.arch_grad = self.arch_grad, bool(enabled)
        try:
            yield self
        finally:
            self.arch_grad = old

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor, ivectors: Optional[torch.Tensor] = None):
        if (self.weight_sampling == "uniform" and self.training and not self.arch_grad
                and not self.arch.is_fixed):
            self._cur = self.arch.last = self.arch.sample("uniform")
        else:
            self._cur = self.arch()
        if not self.arch_grad:
            self._cur = [(wb.detach(), wd.detach()) for wb, wd in self._cur]
        self._skip = self._frozen = None
        if self.arch.is_fixed or not torch.is_grad_enabled() or not self.arch_grad:
            # constant weights: skip the candidates whose weight is exactly 0
            self._skip = [(_zeros(wb), _zeros(wd)) for wb, wd in self._cur]
        elif self.freeze_unsampled and self.training and self.arch.hard and self.arch.train_sampling == "gumbel":
            # hard straight-through samples: zero-valued candidates need no gradient to the weights
            self._frozen = [(_zeros(wb), _zeros(wd)) for wb, wd in self._cur]
        try:
            return super().forward(feats, lengths, ivectors)
        finally:
            self._cur = self._skip = self._frozen = None

    # ------------------------------------------------------------------ export
    def subnet_config(self, choices) -> TDNNFConfig:
        """Standalone config of a genotype (or ``[(bits, bottleneck), ...]``): the search space's own
        ``Genotype.to_config`` when built from a space, else ``models.layout.apply_layer_choices`` (the
        mapping both use)."""
        choices = self._as_choices(choices)
        if self.space is not None:
            g = Genotype(self.space.name, [LayerChoice(l.name, b, d) for l, (b, d) in zip(self.choices, choices)])
            return g.to_config(self.space)
        return apply_layer_choices(self.base_cfg, {l.name: c for l, c in zip(self.choices, choices)})

    def _as_choices(self, genotype) -> List[Choice]:
        if hasattr(genotype, "layers"):
            by_name = {}
            for lc in genotype.layers:
                if isinstance(lc, dict):
                    by_name[lc["name"]] = (int(lc["bits"]), lc.get("bottleneck"))
                else:
                    by_name[lc.name] = (int(lc.bits), getattr(lc, "bottleneck", None))
            missing = [l.name for l in self.choices if l.name not in by_name]
            if missing:
                raise ValueError(f"genotype lacks layers {missing}")
            genotype = [by_name[l.name] for l in self.choices]
        out = []
        for l, (b, d) in zip(self.choices, genotype):
            if b not in l.bits and b != 32:  # 32 (float) is always a valid standalone layer
                raise ValueError(f"layer {l.name}: bits {b} not among the candidates {l.bits} (or 32)")
            if l.dims == (None,):
                d = None
            elif d not in l.dims:
                raise ValueError(f"layer {l.name}: bottleneck {d} not among the candidates {l.dims}")
            out.append((int(b), None if d is None else int(d)))
        return out

    @torch.no_grad()
    def export_subnet(self, genotype) -> TDNNF:
        """A standalone ``TDNNF`` of ``genotype`` (Genotype or ``[(bits, bottleneck), ...]``) holding the
        shared weights: first d rows of each linear factor, first d columns (per time offset) of each affine
        factor; everything else copied as is (BN statistics included). Same device and dtype."""
        choices = self._as_choices(genotype)
        net = TDNNF(self.subnet_config(choices))
        copy_weights_to_bottlenecks(net, self.state_dict())
        net.quant_enabled = self.quant_enabled
        net.dropout_p = self.dropout_p
        p = next(self.parameters())
        return net.to(device=p.device, dtype=p.dtype).train(self.training)
