"""The TDNN-F's configuration (:class:`TDNNFConfig`, validated on construction) and what follows from it
alone: the dropout schedule's parse, the frame-subsampling point and the context the network consumes.
The network itself is ``models.tdnnf``; names and tensor shapes are ``models.layout``.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from models.layout import weight_names
from models.quantizers import SCALE_MODES, check_bits

class ConfigError(ValueError):
    """A bad TDNN-F config; the message names the field."""


@dataclass
class TDNNFConfig:
    feat_dim: int = 40
    ivector_dim: int = 0
    tdnn1_dim: int = 256
    tdnn1_context: List[int] = field(default_factory=lambda: [-1, 0, 1])
    num_layers: int = 8
    hidden_dim: int = 256
    bottleneck_dims: List[int] = field(default_factory=lambda: [64] * 8)
    time_strides: List[int] = field(default_factory=lambda: [1, 1, 1, 0, 3, 3, 3, 3])
    prefinal_dim: int = 128
    prefinal_big_dim: int = 256
    num_pdfs: Optional[int] = None
    dropout_schedule: str = "0,0@0.20,0.5@0.50,0"
    bypass_scale: float = 0.66
    frame_subsampling_factor: int = 3
    xent: bool = True
    weight_bits: Dict[str, int] = field(default_factory=dict)
    quant_per_channel: bool = True
    quant_scale: str = "maxabs"
    bn_eps: float = 1e-3
    bn_momentum: float = 0.1
    bn_mask_padding: bool = True

    # ---- construction / validation ----
    @classmethod
    def from_dict(cls, d: dict, num_pdfs: Optional[int] = None) -> "TDNNFConfig":
        """Build and validate from a plain dict (e.g. a YAML ``network:`` section). ``bottleneck_dims`` may be
        one int (all layers). ``num_pdfs`` overrides the dict's value (set from data at build time)."""
        if not isinstance(d, dict):
            raise ConfigError(f"network config must be a mapping, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown network config field(s): {', '.join(unknown)}")
        d = dict(d)
        if num_pdfs is not None:
            d["num_pdfs"] = num_pdfs
        n = d.get("num_layers", cls.num_layers)
        if isinstance(d.get("bottleneck_dims"), int) and not isinstance(d.get("bottleneck_dims"), bool):
            if not isinstance(n, int):
                raise ConfigError("num_layers must be an int")
            d["bottleneck_dims"] = [d["bottleneck_dims"]] * n
        for key in ("tdnn1_context", "bottleneck_dims", "time_strides"):
            if key in d and isinstance(d[key], tuple):
                d[key] = list(d[key])
        if "weight_bits" in d and d["weight_bits"] is None:
            d["weight_bits"] = {}
        cfg = cls(**d)
        cfg.validate()
        return cfg

    @classmethod
    def from_yaml(cls, path: str, num_pdfs: Optional[int] = None) -> "TDNNFConfig":
        """Load a YAML file holding either the config itself or a search space with a ``network:`` section."""
        import yaml

        with open(path) as fh:
            d = yaml.safe_load(fh)
        if isinstance(d, dict) and "network" in d:
            d = d["network"]
        return cls.from_dict(d, num_pdfs=num_pdfs)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["weight_bits"] = dict(sorted(self.weight_bits.items()))
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def replace(self, **kw) -> "TDNNFConfig":
        cfg = dataclasses.replace(self, **kw)
        cfg.validate()
        return cfg

    def validate(self, require_num_pdfs: bool = False) -> None:
        def pos_int(name, allow_zero=False):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (0 if allow_zero else 1):
                raise ConfigError(f"{name} must be a {'non-negative' if allow_zero else 'positive'} int, got {v!r}")

        for name in ("feat_dim", "tdnn1_dim", "num_layers", "hidden_dim", "prefinal_dim", "prefinal_big_dim",
                     "frame_subsampling_factor"):
            pos_int(name)
        pos_int("ivector_dim", allow_zero=True)
        if self.num_pdfs is not None:
            pos_int("num_pdfs")
        elif require_num_pdfs:
            raise ConfigError("num_pdfs is not set (set it from the data: 2 * number of phones)")
        ctx = self.tdnn1_context
        if (not isinstance(ctx, list) or not ctx or any(isinstance(c, bool) or not isinstance(c, int) for c in ctx)
                or sorted(set(ctx)) != ctx or ctx[0] > 0 or ctx[-1] < 0):
            raise ConfigError(f"tdnn1_context must be an ascending list of distinct ints from <= 0 to >= 0, "
                              f"got {ctx!r}")
        for name in ("bottleneck_dims", "time_strides"):
            v = getattr(self, name)
            if not isinstance(v, list) or len(v) != self.num_layers:
                raise ConfigError(f"{name} must be a list of num_layers={self.num_layers} ints, got {v!r}")
            if any(isinstance(x, bool) or not isinstance(x, int) or x < (1 if name == "bottleneck_dims" else 0)
                   for x in v):
                raise ConfigError(f"{name} has a bad entry: {v!r}")
        f = self.frame_subsampling_factor
        sp = subsampling_point(self.time_strides, f)
        for i in range(sp, self.num_layers):
            if self.time_strides[i] % f:
                raise ConfigError(
                    f"time_strides[{i}]={self.time_strides[i]} comes after the frame-subsampling point (layer "
                    f"{sp + 1}) and must be 0 or a multiple of frame_subsampling_factor={f}")
        if not isinstance(self.dropout_schedule, str):
            raise ConfigError("dropout_schedule must be a string like '0,0@0.20,0.5@0.50,0'")
        try:
            parse_dropout_schedule(self.dropout_schedule)
        except ValueError as e:
            raise ConfigError(f"dropout_schedule: {e}") from None
        if not isinstance(self.bypass_scale, (int, float)) or isinstance(self.bypass_scale, bool):
            raise ConfigError(f"bypass_scale must be a number, got {self.bypass_scale!r}")
        if self.quant_scale not in SCALE_MODES:
            raise ConfigError(f"quant_scale must be one of {SCALE_MODES}, got {self.quant_scale!r}")
        if not isinstance(self.weight_bits, dict):
            raise ConfigError("weight_bits must be a mapping weight name -> bits")
        known = set(weight_names(self, include_xent=True))
        for k, b in self.weight_bits.items():
            if k not in known:
                raise ConfigError(f"weight_bits: unknown weight name {k!r} (known: {sorted(known)})")
            try:
                check_bits(b)
            except ValueError as e:
                raise ConfigError(f"weight_bits[{k!r}]: {e}") from None

    # ---- derived ----
    def bits_of(self, name: str) -> int:
        return int(self.weight_bits.get(name, 32))

    @property
    def tdnn1_input_dim(self) -> int:
        return len(self.tdnn1_context) * self.feat_dim + self.ivector_dim


def subsampling_point(time_strides: Sequence[int], f: int) -> int:
    """Index of the first TDNN-F layer that runs on the subsampled sequence (len(time_strides) if none)."""
    if f == 1:
        return 0
    for i, s in enumerate(time_strides):
        if s > 0 and s % f == 0:
            return i
    return len(time_strides)


def contexts(cfg: TDNNFConfig) -> Tuple[int, int, int, int]:
    """(left_full, right_full, left_sub, right_sub): context in input frames consumed at the full frame rate
    (tdnn1 + layers before the subsampling point) and after it."""
    sp = subsampling_point(cfg.time_strides, cfg.frame_subsampling_factor)
    lf = -min(0, cfg.tdnn1_context[0]) + sum(cfg.time_strides[:sp])
    rf = max(0, cfg.tdnn1_context[-1]) + sum(cfg.time_strides[:sp])
    ls = sum(cfg.time_strides[sp:])
    return lf, rf, ls, ls


def parse_dropout_schedule(schedule: str) -> List[Tuple[float, float]]:
    """Kaldi dropout schedule ``'v0,v1@f1,...,vN'`` -> [(progress, value)] with progress 0 ... 1."""
    parts = [p.strip() for p in schedule.split(",") if p.strip()]
    if not parts:
        raise ValueError("empty schedule")
    pts: List[Tuple[float, float]] = []
    for j, p in enumerate(parts):
        if "@" in p:
            v, fr = p.split("@", 1)
            v, fr = float(v), float(fr)
        else:
            v = float(p)
            if len(parts) == 1:
                fr = 0.0
            elif j == 0:
                fr = 0.0
            elif j == len(parts) - 1:
                fr = 1.0
            else:
                raise ValueError(f"entry {p!r} needs '@fraction' (only the first and last may omit it)")
        if not 0.0 <= v <= 1.0 or not 0.0 <= fr <= 1.0:
            raise ValueError(f"entry {p!r} out of range [0, 1]")
        if pts and fr < pts[-1][0]:
            raise ValueError(f"fractions must be non-decreasing at {p!r}")
        pts.append((fr, v))
    return pts
