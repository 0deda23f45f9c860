"""Typed, validated loader for YAML search spaces.

File format::

    name: tdnnf_demo                 # the genotype's "search_space"
    description: free text           # optional
    network: {...}                   # models.config.TDNNFConfig fields (base network; num_pdfs may be null)
    extends: tdnnf_demo              # instead of network: another space's network (name or path), the
                                     # same network with other choices (its choices when this file has none)
    choices:
      default: {bits: [1, 2, 4, 8, 32], bottleneck: [32, 48, 64]}
      layers:                        # optional per-layer overrides (layer names: models.layout.layer_groups)
        tdnn1: {bits: [4, 8, 32]}
        tdnnf3: {bottleneck: [48, 64]}

Layers: ``tdnn1``, ``tdnnf1..N`` (bits shared by both factors + a bottleneck choice), ``prefinal``,
``output`` (bits only). Bit choices are a non-empty subset of {1, 2, 3, 4, 8, 32} (a genotype may put any layer at
32, float, whatever its choices: the fp32 reference); bottleneck choices are
strictly ascending positive ints <= the layer's hidden dim. A TDNN-F layer without bottleneck choices
keeps the network's ``bottleneck_dims`` entry as its only choice. The base network's bottleneck dims become
the largest choice of each layer (the supernet's max rank). Errors are ``SearchSpaceError`` naming the field.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from models.quantizers import SUPPORTED_BITS
from models.config import ConfigError, TDNNFConfig
from models.layout import bottleneck_index, layer_groups
from quant import cost_model

SPACES_DIR = os.path.dirname(os.path.abspath(__file__))


class SearchSpaceError(ValueError):
    """A bad search space file; the message names the field."""


@dataclass(frozen=True)
class LayerSpace:
    name: str
    bits: Tuple[int, ...]
    bottlenecks: Optional[Tuple[int, ...]]   # None: no bottleneck choice for this layer
    weights: Tuple[str, ...]                 # weight names sharing the bits

    @property
    def has_bottleneck(self) -> bool:
        return self.bottlenecks is not None

    @property
    def bottleneck_index(self) -> int:
        """Index of this layer's rank in ``TDNNFConfig.bottleneck_dims`` (layers with a bottleneck only)."""
        if not self.has_bottleneck:
            raise ValueError(f"layer {self.name!r} has no bottleneck")
        return bottleneck_index(self.name)


@dataclass
class SearchSpace:
    name: str
    network: TDNNFConfig
    layers: List[LayerSpace]
    description: str = ""
    path: Optional[str] = None

    @property
    def layer_names(self) -> List[str]:
        return [l.name for l in self.layers]

    def layer(self, name: str) -> LayerSpace:
        for l in self.layers:
            if l.name == name:
                return l
        raise KeyError(f"search space {self.name!r} has no layer {name!r}")

    def with_num_pdfs(self, num_pdfs: int) -> "SearchSpace":
        return SearchSpace(self.name, self.network.replace(num_pdfs=int(num_pdfs)), list(self.layers),
                           self.description, self.path)

    def bits_only(self) -> "SearchSpace":
        """A copy whose layers keep only their largest bottleneck (a search over bit-widths alone)."""
        from dataclasses import replace

        layers = [replace(l, bottlenecks=(max(l.bottlenecks),)) if l.has_bottleneck else l for l in self.layers]
        return SearchSpace(self.name, self.network, layers, self.description, self.path)

    def size_table(self) -> Dict[str, Dict[int, Dict[int, float]]]:
        """cost_model.size_table for every choice: ``table[layer][bits][dim]`` bytes (dim 0 = n/a)."""
        if self.network.num_pdfs is None:
            raise SearchSpaceError(f"{self.name}: network.num_pdfs is not set (use with_num_pdfs(n))")
        return cost_model.size_table(self.network, {l.name: (l.bits, l.bottlenecks) for l in self.layers})


def _int_list(v, where: str) -> List[int]:
    if not isinstance(v, list) or not v or any(isinstance(x, bool) or not isinstance(x, int) for x in v):
        raise SearchSpaceError(f"{where} must be a non-empty list of ints, got {v!r}")
    return list(v)


def _check_bits(v, where: str) -> Tuple[int, ...]:
    v = _int_list(v, where)
    bad = [b for b in v if b not in SUPPORTED_BITS]
    if bad:
        raise SearchSpaceError(f"{where}: unsupported bit-width(s) {bad}; allowed {list(SUPPORTED_BITS)}")
    if len(set(v)) != len(v):
        raise SearchSpaceError(f"{where}: repeated bit-width in {v}")
    return tuple(sorted(v))


def _check_dims(v, where: str, max_dim: int) -> Tuple[int, ...]:
    v = _int_list(v, where)
    if any(b <= 0 for b in v) or any(a >= b for a, b in zip(v, v[1:])):
        raise SearchSpaceError(f"{where} must be strictly ascending positive ints, got {v}")
    if v[-1] > max_dim:
        raise SearchSpaceError(f"{where}: {v[-1]} exceeds the layer dim {max_dim}")
    return tuple(v)


def search_space_from_dict(d: dict, num_pdfs: Optional[int] = None, path: Optional[str] = None) -> SearchSpace:
    if not isinstance(d, dict):
        raise SearchSpaceError("search space must be a mapping")
    unknown = sorted(set(d) - {"name", "description", "network", "choices", "extends"})
    if unknown:
        raise SearchSpaceError(f"unknown top-level field(s): {unknown}")
    name = d.get("name")
    if not isinstance(name, str) or not name:
        raise SearchSpaceError("name must be a non-empty string")
    if "extends" in d:
        if "network" in d:
            raise SearchSpaceError("extends: the network comes from the extended space; give one of extends, network")
        base = d["extends"]
        if not isinstance(base, str) or not base:
            raise SearchSpaceError("extends must be a space name or path")
        base_dict, _ = _read_space(base, relative_to=path)
        if "extends" in base_dict:
            raise SearchSpaceError(f"extends: {base!r} extends another space itself (one level only)")
        d = {**d, "network": base_dict.get("network")}
        if "choices" not in d and "choices" in base_dict:
            d["choices"] = base_dict["choices"]
    if "network" not in d:
        raise SearchSpaceError("network: missing")
    try:
        net = TDNNFConfig.from_dict(d["network"], num_pdfs=num_pdfs)
    except (ConfigError, TypeError) as e:
        raise SearchSpaceError(f"network: {e}") from None
    ch = d.get("choices") or {}
    if not isinstance(ch, dict):
        raise SearchSpaceError("choices must be a mapping")
    unknown = sorted(set(ch) - {"default", "layers"})
    if unknown:
        raise SearchSpaceError(f"choices: unknown field(s) {unknown}")
    default = ch.get("default") or {}
    overrides = ch.get("layers") or {}
    if not isinstance(default, dict) or not isinstance(overrides, dict):
        raise SearchSpaceError("choices.default and choices.layers must be mappings")
    groups = layer_groups(net)
    names = [g.name for g in groups]
    for k in overrides:
        if k not in names:
            raise SearchSpaceError(f"choices.layers.{k}: unknown layer (layers are {names})")
    for where, m in [("choices.default", default)] + [(f"choices.layers.{k}", v) for k, v in overrides.items()]:
        if not isinstance(m, dict):
            raise SearchSpaceError(f"{where} must be a mapping")
        bad = sorted(set(m) - {"bits", "bottleneck"})
        if bad:
            raise SearchSpaceError(f"{where}: unknown field(s) {bad}")
    layers: List[LayerSpace] = []
    dims = list(net.bottleneck_dims)
    for group in groups:
        g, ws, has_b = group.name, group.weights, group.has_bottleneck
        o = overrides.get(g, {})
        if "bits" in o:
            bits = _check_bits(o["bits"], f"choices.layers.{g}.bits")
        elif "bits" in default:
            bits = _check_bits(default["bits"], "choices.default.bits")
        else:
            bits = (32,)
        bn = None
        if has_b:
            i = group.bottleneck_index
            if "bottleneck" in o:
                bn = _check_dims(o["bottleneck"], f"choices.layers.{g}.bottleneck", net.hidden_dim)
            elif "bottleneck" in default:
                bn = _check_dims(default["bottleneck"], "choices.default.bottleneck", net.hidden_dim)
            else:
                bn = (net.bottleneck_dims[i],)
            dims[i] = bn[-1]
        elif "bottleneck" in o:
            raise SearchSpaceError(f"choices.layers.{g}.bottleneck: layer {g} has no bottleneck")
        layers.append(LayerSpace(g, bits, bn, tuple(ws)))
    net = net.replace(bottleneck_dims=dims)
    desc = d.get("description", "")
    return SearchSpace(name, net, layers, desc if isinstance(desc, str) else str(desc), path)


def _read_space(path_or_name: str, relative_to: Optional[str] = None) -> Tuple[dict, str]:
    """The YAML mapping of a space given by path, or by name from this package (or from ``relative_to``'s
    directory), and the path it was read from."""
    import yaml

    path = path_or_name
    if not os.path.exists(path):
        stem = path_or_name + ("" if path_or_name.endswith(".yaml") else ".yaml")
        dirs = ([os.path.dirname(relative_to)] if relative_to else []) + [SPACES_DIR]
        found = [os.path.join(x, stem) for x in dirs if os.path.exists(os.path.join(x, stem))]
        if not found:
            raise SearchSpaceError(f"search space {path_or_name!r}: no such file (or name under {SPACES_DIR})")
        path = found[0]
    try:
        with open(path) as fh:
            d = yaml.safe_load(fh)
    except yaml.YAMLError as e:
        raise SearchSpaceError(f"{path}: invalid YAML: {e}") from None
    return d, path


def load_search_space(path_or_name: str, num_pdfs: Optional[int] = None) -> SearchSpace:
    """Load a YAML space by path, or by name from this package (``tdnnf_demo``, ``tdnnf_swbd``)."""
    d, path = _read_space(path_or_name)
    return search_space_from_dict(d, num_pdfs=num_pdfs, path=path)
