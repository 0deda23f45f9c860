"""Genotype: one architecture of a search space, as versioned JSON (never eval'd).

::

    {"version": 1, "search_space": "tdnnf_demo",
     "layers": [{"name": "tdnn1", "bits": 8, "bottleneck": null},
                {"name": "tdnnf1", "bits": 4, "bottleneck": 48}, ...,
                {"name": "prefinal", "bits": 8, "bottleneck": null},
                {"name": "output", "bits": 8, "bottleneck": null}],
     "expected_size_bytes": 812345, "source": {"run": "exp/search_demo", "epoch": 6}}

A genotype layer covers (models.layout.layer_groups): ``tdnn1`` its affine; ``tdnnfI`` both factors (same
bits) and the rank ``bottleneck``; ``prefinal`` prefinal_l and the chain prefinal affine + linear;
``output`` the chain output affine. ``bottleneck`` is null for layers without one. The xent branch is
training-only float and not in the genotype. ``expected_size_bytes`` is the packed size from
quant.cost_model (None when the space's num_pdfs is unknown).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from models.config import TDNNFConfig
from models.layout import apply_layer_choices
from quant.cost_model import model_size
from search_spaces.space import SearchSpace

GENOTYPE_VERSION = 1


class GenotypeError(ValueError):
    """A bad genotype; the message names the field / layer."""


@dataclass
class LayerChoice:
    name: str
    bits: int
    bottleneck: Optional[int] = None

    def to_dict(self) -> dict:
        return {"name": self.name, "bits": self.bits, "bottleneck": self.bottleneck}


@dataclass
class Genotype:
    search_space: str
    layers: List[LayerChoice]
    expected_size_bytes: Optional[int] = None
    source: Dict = field(default_factory=dict)
    version: int = GENOTYPE_VERSION

    # ---- JSON ----
    def to_dict(self) -> dict:
        return {"version": self.version, "search_space": self.search_space,
                "layers": [l.to_dict() for l in self.layers],
                "expected_size_bytes": self.expected_size_bytes, "source": self.source}

    def to_json(self, indent: Optional[int] = 1) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=False)

    def save(self, path: str) -> None:
        with open(path, "w") as fh:
            fh.write(self.to_json() + "\n")

    @classmethod
    def from_dict(cls, d) -> "Genotype":
        if not isinstance(d, dict):
            raise GenotypeError("genotype must be a JSON object")
        unknown = sorted(set(d) - {"version", "search_space", "layers", "expected_size_bytes", "source"})
        if unknown:
            raise GenotypeError(f"unknown field(s) {unknown}")
        if d.get("version") != GENOTYPE_VERSION:
            raise GenotypeError(f"version: unsupported {d.get('version')!r} (this code reads {GENOTYPE_VERSION})")
        ss = d.get("search_space")
        if not isinstance(ss, str) or not ss:
            raise GenotypeError("search_space must be a non-empty string")
        layers = d.get("layers")
        if not isinstance(layers, list) or not layers:
            raise GenotypeError("layers must be a non-empty list")
        out = []
        for i, l in enumerate(layers):
            if not isinstance(l, dict) or set(l) - {"name", "bits", "bottleneck"} or "name" not in l or "bits" not in l:
                raise GenotypeError(f"layers[{i}] must be {{'name', 'bits', 'bottleneck'}}, got {l!r}")
            name, bits, bn = l["name"], l["bits"], l.get("bottleneck")
            if not isinstance(name, str):
                raise GenotypeError(f"layers[{i}].name must be a string")
            if isinstance(bits, bool) or not isinstance(bits, int):
                raise GenotypeError(f"layers[{i}] ({name}).bits must be an int, got {bits!r}")
            if bn is not None and (isinstance(bn, bool) or not isinstance(bn, int)):
                raise GenotypeError(f"layers[{i}] ({name}).bottleneck must be an int or null, got {bn!r}")
            out.append(LayerChoice(name, bits, bn))
        size = d.get("expected_size_bytes")
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
            raise GenotypeError(f"expected_size_bytes must be a non-negative int or null, got {size!r}")
        src = d.get("source", {})
        if not isinstance(src, dict):
            raise GenotypeError("source must be an object")
        return cls(ss, out, size, src)

    @classmethod
    def from_json(cls, text: str) -> "Genotype":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise GenotypeError(f"not valid JSON: {e}") from None
        return cls.from_dict(d)

    @classmethod
    def load(cls, path: str, space: Optional[SearchSpace] = None) -> "Genotype":
        """Read and (with ``space``) validate a genotype file; errors name the file."""
        with open(path) as fh:
            text = fh.read()
        try:
            g = cls.from_json(text)
            if space is not None:
                g.validate(space)
        except GenotypeError as e:
            raise GenotypeError(f"genotype {path}: {e}") from None
        return g

    # ---- against a space ----
    def validate(self, space: SearchSpace, check_size: bool = True) -> None:
        if self.search_space != space.name:
            raise GenotypeError(f"search_space: genotype is for {self.search_space!r}, space is {space.name!r}")
        if len(self.layers) != len(space.layers):
            raise GenotypeError(f"layers: {len(self.layers)} entries, space {space.name!r} has "
                                f"{len(space.layers)} ({space.layer_names})")
        for i, (l, s) in enumerate(zip(self.layers, space.layers)):
            if l.name != s.name:
                raise GenotypeError(f"layers[{i}].name: {l.name!r}, expected {s.name!r}")
            if l.bits not in s.bits and l.bits != 32:  # 32 (float) is always allowed: the fp32 reference
                raise GenotypeError(f"layer {l.name}: bits {l.bits} not in choices {list(s.bits)} (or 32, float)")
            if s.has_bottleneck:
                if l.bottleneck not in s.bottlenecks:
                    raise GenotypeError(f"layer {l.name}: bottleneck {l.bottleneck} not in choices "
                                        f"{list(s.bottlenecks)}")
            elif l.bottleneck is not None:
                raise GenotypeError(f"layer {l.name}: bottleneck must be null (layer has none), got {l.bottleneck}")
        if check_size and self.expected_size_bytes is not None and space.network.num_pdfs is not None:
            size = self.size_bytes(space)
            if size != self.expected_size_bytes:
                raise GenotypeError(f"expected_size_bytes: {self.expected_size_bytes} but the cost model gives "
                                    f"{size} for this space (different num_pdfs or space?)")

    def to_config(self, space: SearchSpace, num_pdfs: Optional[int] = None) -> TDNNFConfig:
        """The TDNN-F config (bottleneck dims + per-weight bits) this genotype describes."""
        self.validate(space, check_size=False)
        cfg = apply_layer_choices(space.network, {l.name: (l.bits, l.bottleneck) for l in self.layers})
        if num_pdfs is not None:
            cfg = cfg.replace(num_pdfs=int(num_pdfs))
        return cfg

    def size_bytes(self, space: SearchSpace) -> int:
        return model_size(self.to_config(space)).total_bytes

    def summary(self, space: SearchSpace) -> str:
        """A small table: layer, bits, bottleneck, bytes; then total, fp32 bytes and compression ratio."""
        rep = model_size(self.to_config(space))
        lines = [f"{'layer':<10} {'bits':>4} {'bneck':>5} {'bytes':>12}"]
        for l in self.layers:
            lines.append(f"{l.name:<10} {l.bits:>4} {str(l.bottleneck or '-'):>5} {rep.per_layer[l.name]:>12}")
        lines.append(f"total {rep.total_bytes} bytes ({rep.total_mb:.3f} MB), fp32 {rep.fp32_bytes} bytes, "
                     f"compression {rep.compression_ratio:.2f}x")
        return "\n".join(lines)

    # ---- constructors ----
    @classmethod
    def from_choices(cls, space: SearchSpace, bits: Dict[str, int], bottlenecks: Dict[str, int],
                     source: Optional[dict] = None) -> "Genotype":
        layers = [LayerChoice(s.name, int(bits[s.name]), int(bottlenecks[s.name]) if s.has_bottleneck else None)
                  for s in space.layers]
        g = cls(space.name, layers, None, dict(source or {}))
        g.validate(space)
        if space.network.num_pdfs is not None:
            g.expected_size_bytes = g.size_bytes(space)
        return g

    @classmethod
    def uniform(cls, space: SearchSpace, bits: int, bottleneck: str = "max",
                source: Optional[dict] = None) -> "Genotype":
        """Every layer at ``bits`` (must be a choice of every layer), bottleneck 'max' or 'min' choice."""
        if bottleneck not in ("max", "min"):
            raise GenotypeError("bottleneck must be 'max' or 'min'")
        pick = -1 if bottleneck == "max" else 0
        return cls.from_choices(space, {s.name: bits for s in space.layers},
                                {s.name: s.bottlenecks[pick] for s in space.layers if s.has_bottleneck},
                                source or {"baseline": f"uniform{bits}"})

    @classmethod
    def full_precision(cls, space: SearchSpace, source: Optional[dict] = None) -> "Genotype":
        """32-bit everywhere at the largest bottlenecks (the fp32 baseline)."""
        return cls.uniform(space, 32, "max", source or {"baseline": "fp32"})


def genotype_to_config(space: SearchSpace, genotype: Genotype, num_pdfs: Optional[int] = None) -> TDNNFConfig:
    return genotype.to_config(space, num_pdfs)
