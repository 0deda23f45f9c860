"""Factored TDNN (TDNN-F, Kaldi ``tdnnf-layer``) acoustic model for LF-MMI, with per-weight bit-widths.

Network (Kaldi swbd ``tdnn_7r`` shape, sizes from :class:`TDNNFConfig`)::

    input (B,T,F) --edge-replicated context-->
    tdnn1:            splice(tdnn1_context) [+ i-vector] -> affine -> ReLU -> BN -> dropout
    tdnnf_i (i=1..N): linear D_in->b  (offsets -s,0, no bias, semi-orthogonal, floating scale)
                      affine b->D     (offsets 0,s, bias) -> ReLU -> BN(no affine) -> continuous dropout
                      out = bypass_scale * in + layer_out        (stride 0 = 1x1; no bypass if D_in != D)
    prefinal_l:       linear D -> small (semi-orthogonal), shared by both heads (Kaldi ``prefinal-l``)
    chain head:       prefinal_chain = affine small->big, ReLU, BN, linear big->small (semi-orth.), BN;
                      output = affine small->num_pdfs (no log-softmax)
    xent head:        prefinal_xent (same shape, own weights) -> affine -> log_softmax        (training only)

Weight layout is Kaldi's: a TDNN weight is a matrix ``(out, k * in)`` whose columns are the ``k`` time offsets
(ascending) times the input dims, offset-major. The output row is the quantization channel.

Frame subsampling (factor f = 3): the network runs at the input frame rate up to the first TDNN-F layer whose
time-stride is a positive multiple of f; the sequence is subsampled there (every f-th frame, on the grid of
output times 0, f, 2f, ...) and that layer and all later ones run on the subsampled sequence with stride s/f.
This computes exactly what Kaldi computes for output frames t = 0, f, 2f, ... (Kaldi evaluates each layer
only at the times the next one needs). If no layer has such a stride the subsampling happens before the
prefinal layers. Layers after the subsampling point must have stride 0 or a multiple of f.

Lengths: ``T_out = (T_in + f - 1) // f`` exactly (``(T_in + 2) // 3``). The model needs ``left_context`` /
``right_context`` frames around each utterance; it supplies them by edge replication *per utterance* (the
frames before time 0 repeat frame 0; frames after ``lengths[b] - 1`` repeat frame ``lengths[b] - 1``, so batch
padding never leaks into an utterance's outputs), then evaluates every layer without padding ("valid").
Output frames at or past ``out_lengths[b]`` are padding (computed from replicated frames), never use them.

BatchNorm has no learned scale/offset (Kaldi ``batchnorm``). In training its batch statistics (and the
running statistics it accumulates) use only the frames whose time lies inside their utterance,
``0 <= t < lengths[b]``, so replicated context and batch padding do not bias them
(``bn_mask_padding: true``, default; ``false`` = plain BatchNorm over every evaluated frame). In eval mode
the running statistics are used and the mask plays no part.

Per-weight bits: ``config.weight_bits`` maps weight names (see :func:`weight_names`) to ``{1,2,4,8,32}``;
missing names are 32 (float). When ``bits < 32`` the forward uses
``models.quantizers.fake_quant(w, bits, config.quant_per_channel, config.quant_scale)`` (STE gradient); the
latent float weight is what the optimizer and the semi-orthogonal step update. ``model.quant_enabled = False``
turns fake quantization off (ADMM training, or a model rebuilt from a packed file whose weights are
already on the grid).

Supernet hooks: subclass and override :meth:`TDNNF.qw` (effective weight of a named matrix, e.g. a mix of
quantized copies) and :meth:`TDNNF.layer_weights` (both factors of a TDNN-F layer, e.g. rank-masked).
Reusable pieces: :func:`splice`, :func:`tdnn_conv`, :func:`factored_tdnn`,
:func:`tdnnf_layer_forward`, :func:`continuous_dropout`, :func:`semi_orthogonal_step_`,
:func:`dropout_at`, :func:`tensor_layout`, :func:`layer_groups`.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.quantizers import SCALE_MODES, check_bits, fake_quant

# --------------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------------
# Naming: weights, genotype layers, every tensor a packed file holds
# --------------------------------------------------------------------------------------------------------

def weight_names(cfg: TDNNFConfig, include_xent: bool = False) -> List[str]:
    """Every weight matrix that can carry its own bit-width, in network order."""
    names = ["tdnn1"]
    for i in range(1, cfg.num_layers + 1):
        names += [f"tdnnf{i}.linear", f"tdnnf{i}.affine"]
    names += ["prefinal_l", "prefinal_chain.affine", "prefinal_chain.linear", "output"]
    if include_xent and cfg.xent:
        names += ["prefinal_xent.affine", "prefinal_xent.linear", "output_xent"]
    return names


class LayerGroup(NamedTuple):
    """One genotype layer: its name, the weight matrices sharing its bit-width, and whether it has a
    bottleneck (rank) choice. Unpacks as ``(name, weights, has_bottleneck)``."""

    name: str
    weights: List[str]
    has_bottleneck: bool

    @property
    def bottleneck_index(self) -> int:
        """Index of this layer's rank in ``TDNNFConfig.bottleneck_dims`` (TDNN-F layers only)."""
        if not self.has_bottleneck:
            raise ValueError(f"layer {self.name!r} has no bottleneck")
        return bottleneck_index(self.name)


def bottleneck_index(layer: str) -> int:
    """``tdnnf<i>`` -> ``i - 1``, its index in ``TDNNFConfig.bottleneck_dims``; the one place that reads
    a layer number from a layer name. Any other name is a ValueError."""
    if not layer.startswith("tdnnf") or not layer[len("tdnnf"):].isdigit() or int(layer[len("tdnnf"):]) < 1:
        raise ValueError(f"layer {layer!r} is not a TDNN-F layer (tdnnf1, tdnnf2, ...): it has no bottleneck")
    return int(layer[len("tdnnf"):]) - 1


def layer_groups(cfg: TDNNFConfig) -> List[LayerGroup]:
    """Genotype layers, in model order (:class:`LayerGroup`: name, weight names sharing its bit-width, has a
    bottleneck choice).

    ``tdnn1``; ``tdnnf1..N`` (both factors share the layer's bits, the bottleneck is the layer's rank);
    ``prefinal`` (prefinal_l + the chain prefinal affine and linear); ``output`` (chain output affine).
    The xent branch is training-only, float, and not part of the genotype or of the exported model.
    """
    groups = [LayerGroup("tdnn1", ["tdnn1"], False)]
    for i in range(1, cfg.num_layers + 1):
        groups.append(LayerGroup(f"tdnnf{i}", [f"tdnnf{i}.linear", f"tdnnf{i}.affine"], True))
    groups.append(LayerGroup("prefinal", ["prefinal_l", "prefinal_chain.affine", "prefinal_chain.linear"], False))
    groups.append(LayerGroup("output", ["output"], False))
    return groups


@dataclass(frozen=True)
class TensorInfo:
    name: str                 # export name, e.g. "tdnnf3.linear", "tdnnf3.bias", "tdnnf3.bn.mean"
    shape: Tuple[int, ...]
    kind: str                 # "weight" (may be quantized) | "bias" | "bn_mean" | "bn_var"
    group: str                # genotype layer it belongs to ("xent" for the xent branch)


def tensor_layout(cfg: TDNNFConfig, include_xent: bool = False) -> List[TensorInfo]:
    """Every tensor of the model (BN running stats included), with export names and shapes, in order.
    A pure function of the config: the cost model and the packer both use it."""
    out: List[TensorInfo] = []
    D, H = cfg.tdnn1_dim, cfg.hidden_dim
    out += [TensorInfo("tdnn1", (D, cfg.tdnn1_input_dim), "weight", "tdnn1"),
            TensorInfo("tdnn1.bias", (D,), "bias", "tdnn1"),
            TensorInfo("tdnn1.bn.mean", (D,), "bn_mean", "tdnn1"),
            TensorInfo("tdnn1.bn.var", (D,), "bn_var", "tdnn1")]
    din = D
    for i in range(1, cfg.num_layers + 1):
        g = f"tdnnf{i}"
        k = 2 if cfg.time_strides[i - 1] > 0 else 1
        b = cfg.bottleneck_dims[i - 1]
        out += [TensorInfo(f"{g}.linear", (b, k * din), "weight", g),
                TensorInfo(f"{g}.affine", (H, k * b), "weight", g),
                TensorInfo(f"{g}.bias", (H,), "bias", g),
                TensorInfo(f"{g}.bn.mean", (H,), "bn_mean", g),
                TensorInfo(f"{g}.bn.var", (H,), "bn_var", g)]
        din = H
    S, Bg = cfg.prefinal_dim, cfg.prefinal_big_dim
    out.append(TensorInfo("prefinal_l", (S, din), "weight", "prefinal"))
    heads = [("prefinal_chain", "prefinal")]
    if include_xent and cfg.xent:
        heads.append(("prefinal_xent", "xent"))
    N = cfg.num_pdfs if cfg.num_pdfs is not None else 0
    if cfg.num_pdfs is None:
        raise ConfigError("num_pdfs is not set (set it from the data: 2 * number of phones)")
    for p, g in heads:
        out += [TensorInfo(f"{p}.affine", (Bg, S), "weight", g),
                TensorInfo(f"{p}.bias", (Bg,), "bias", g),
                TensorInfo(f"{p}.bn1.mean", (Bg,), "bn_mean", g),
                TensorInfo(f"{p}.bn1.var", (Bg,), "bn_var", g),
                TensorInfo(f"{p}.linear", (S, Bg), "weight", g),
                TensorInfo(f"{p}.bn2.mean", (S,), "bn_mean", g),
                TensorInfo(f"{p}.bn2.var", (S,), "bn_var", g)]
        oname = "output" if p == "prefinal_chain" else "output_xent"
        out += [TensorInfo(oname, (N, S), "weight", "output" if g == "prefinal" else g),
                TensorInfo(f"{oname}.bias", (N,), "bias", "output" if g == "prefinal" else g)]
    return out


# --------------------------------------------------------------------------------------------------------
# Functional building blocks (shared with the supernet)
# --------------------------------------------------------------------------------------------------------

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


def dropout_at(schedule: str, progress: float) -> float:
    """Dropout proportion at training progress in [0, 1] (piecewise linear, Kaldi dropout_schedule.py)."""
    pts = parse_dropout_schedule(schedule)
    x = min(max(float(progress), 0.0), 1.0)
    if x <= pts[0][0]:
        return pts[0][1]
    for (f0, v0), (f1, v1) in zip(pts, pts[1:]):
        if f0 <= x <= f1:
            return v0 if f1 == f0 else v0 + (v1 - v0) * (x - f0) / (f1 - f0)
    return pts[-1][1]


def continuous_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Kaldi continuous dropout: x * m, m ~ U[1-2p, 1+2p] per (sequence, channel), shared across time.
    ``x`` is (B, C, T)."""
    if not training or p <= 0.0:
        return x
    m = torch.rand(x.shape[0], x.shape[1], 1, dtype=x.dtype, device=x.device)
    return x * (1.0 - 2.0 * p + 4.0 * p * m)


def splice(x: torch.Tensor, offsets: Sequence[int]) -> torch.Tensor:
    """(B, C, T) -> (B, k*C, T - (max-min)) with frames x[t+o] for o in offsets, offset-major channels;
    output index i is time ``t0 + i - offsets[0]`` if x's index 0 is time t0."""
    lo, hi = offsets[0], offsets[-1]
    T = x.shape[2] - (hi - lo)
    if T <= 0:
        raise ValueError("sequence too short for the splice context")
    return torch.cat([x[:, :, o - lo: o - lo + T] for o in offsets], dim=1)


def conv_weight(w: torch.Tensor, k: int) -> torch.Tensor:
    """Kaldi-layout (out, k*in) -> conv1d weight (out, in, k)."""
    out, cols = w.shape
    return w.reshape(out, k, cols // k).transpose(1, 2)


def tdnn_conv(x: torch.Tensor, w: torch.Tensor, bias: Optional[torch.Tensor], stride: int) -> torch.Tensor:
    """TDNN with two offsets {0, stride} (stride>0) or one (stride 0), no padding: (B,in,T)->(B,out,T-stride)."""
    k = 2 if stride > 0 else 1
    return F.conv1d(x, conv_weight(w, k), bias, dilation=max(stride, 1))


def factored_tdnn(x: torch.Tensor, w_linear: torch.Tensor, w_affine: torch.Tensor, bias: Optional[torch.Tensor],
                  stride: int) -> torch.Tensor:
    """Linear factor (offsets -s,0) then affine factor (offsets 0,s): (B,Din,T) -> (B,D,T-2s).
    Output index i is the time of input index i + s."""
    return tdnn_conv(tdnn_conv(x, w_linear, None, stride), w_affine, bias, stride)


def batch_norm(x: torch.Tensor, bn: nn.BatchNorm1d, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """BatchNorm (no affine) of (B, C, T); in training the statistics use only frames where ``mask``
    (broadcastable to (B, 1, T)) is true, and update ``bn``'s running stats like nn.BatchNorm1d does."""
    if mask is None or not bn.training:
        return bn(x)
    m = mask.to(x.dtype).expand(x.shape[0], 1, x.shape[2])
    n = m.sum()
    if float(n) < 2:
        return bn(x)
    mean = (x * m).sum(dim=(0, 2)) / n
    xc = x - mean[None, :, None]
    var = (xc.square() * m).sum(dim=(0, 2)) / n
    if bn.track_running_stats:
        with torch.no_grad():
            mom = bn.momentum if bn.momentum is not None else 0.1
            bn.running_mean.mul_(1 - mom).add_(mom * mean.detach())
            bn.running_var.mul_(1 - mom).add_(mom * var.detach() * (n / (n - 1)))
            bn.num_batches_tracked += 1
    return xc * torch.rsqrt(var + bn.eps)[None, :, None]


def tdnnf_layer_forward(x: torch.Tensor, w_linear: torch.Tensor, w_affine: torch.Tensor, bias: torch.Tensor,
                        stride: int, bn: nn.Module, dropout_p: float, bypass_scale: float,
                        training: bool, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """One TDNN-F layer given its (already quantized) weights; ``stride`` on the current frame grid;
    ``mask`` (B, 1, T_out) marks the output frames BatchNorm statistics may use (None: all)."""
    y = factored_tdnn(x, w_linear, w_affine, bias, stride)
    y = continuous_dropout(batch_norm(F.relu(y), bn, mask), dropout_p, training)
    if bypass_scale and x.shape[1] == y.shape[1]:
        y = y + bypass_scale * (x[:, :, stride: x.shape[2] - stride] if stride > 0 else x)
    return y


def pointwise(x: torch.Tensor, w: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """1x1 affine on (B, C, T)."""
    y = torch.matmul(w, x)
    return y if bias is None else y + bias[:, None]


@torch.no_grad()
def semi_orthogonal_step_(w: torch.Tensor) -> float:
    """Kaldi ConstrainOrthonormalInternal with floating scale, in place on a 2-D weight (transposed
    internally when rows > cols). Returns the pre-update ratio tr(PP^T)*rows/tr(P)^2 (1 = orthogonal)."""
    M = w.detach().to(torch.float64)
    transpose = M.shape[0] > M.shape[1]
    if transpose:
        M = M.t()
    rows = M.shape[0]
    P = M @ M.t()
    tr_p = torch.trace(P)
    tr_pp = (P * P).sum()
    if tr_p <= 0:
        return float("nan")
    scale2 = tr_pp / tr_p
    ratio = float(tr_pp * rows / (tr_p * tr_p))
    speed = 0.125
    if ratio > 1.02:
        speed *= 0.5
    if ratio > 1.1:
        speed *= 0.5
    alpha = speed / scale2
    P = P - scale2 * torch.eye(rows, dtype=P.dtype, device=P.device)
    M = M - 4.0 * alpha * (P @ M)
    w.copy_((M.t() if transpose else M).to(w.dtype))
    return ratio


def semi_orthogonality_error(w: torch.Tensor) -> float:
    """||P - s^2 I||_F / (s^2 sqrt(rows)) with P = M M^T (smaller Gram) and s^2 = tr(PP^T)/tr(P)."""
    M = w.detach().to(torch.float64)
    if M.shape[0] > M.shape[1]:
        M = M.t()
    P = M @ M.t()
    s2 = (P * P).sum() / torch.trace(P)
    eye = torch.eye(P.shape[0], dtype=P.dtype, device=P.device)
    return float(torch.linalg.norm(P - s2 * eye) / (s2 * math.sqrt(P.shape[0])))


# --------------------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------------------

def _bn(dim: int, cfg: TDNNFConfig) -> nn.BatchNorm1d:
    return nn.BatchNorm1d(dim, eps=cfg.bn_eps, momentum=cfg.bn_momentum, affine=False)


def _init_weight(rows: int, cols: int) -> nn.Parameter:
    return nn.Parameter(torch.randn(rows, cols) / math.sqrt(cols))


class TDNNFLayer(nn.Module):
    def __init__(self, din: int, dim: int, bottleneck: int, stride: int, cfg: TDNNFConfig):
        super().__init__()
        k = 2 if stride > 0 else 1
        self.stride = stride
        self.linear = _init_weight(bottleneck, k * din)
        self.affine = _init_weight(dim, k * bottleneck)
        self.bias = nn.Parameter(torch.zeros(dim))
        self.bn = _bn(dim, cfg)


class Prefinal(nn.Module):
    def __init__(self, small: int, big: int, cfg: TDNNFConfig):
        super().__init__()
        self.affine = _init_weight(big, small)
        self.bias = nn.Parameter(torch.zeros(big))
        self.bn1 = _bn(big, cfg)
        self.linear = _init_weight(small, big)
        self.bn2 = _bn(small, cfg)


class TDNNF(nn.Module):
    """TDNN-F acoustic model. ``forward(feats (B,T,F), lengths (B,)) -> (chain_out, xent_out, out_lengths)``;
    ``xent_out`` is None when the model has no xent head (a model rebuilt from a packed file)."""

    def __init__(self, cfg: TDNNFConfig):
        super().__init__()
        cfg.validate(require_num_pdfs=True)
        self.cfg = cfg
        self.quant_enabled = True
        self.dropout_p = 0.0
        D, H, S, Bg, N = cfg.tdnn1_dim, cfg.hidden_dim, cfg.prefinal_dim, cfg.prefinal_big_dim, cfg.num_pdfs
        self.tdnn1 = _init_weight(D, cfg.tdnn1_input_dim)
        self.tdnn1_bias = nn.Parameter(torch.zeros(D))
        self.tdnn1_bn = _bn(D, cfg)
        layers = []
        din = D
        for i in range(cfg.num_layers):
            layers.append(TDNNFLayer(din, H, cfg.bottleneck_dims[i], cfg.time_strides[i], cfg))
            din = H
        self.tdnnfs = nn.ModuleList(layers)
        self.prefinal_l = _init_weight(S, din)
        self.prefinal_chain = Prefinal(S, Bg, cfg)
        # Kaldi output-layer: param-stddev 0, bias-stddev 0
        self.output = nn.Parameter(torch.zeros(N, S))
        self.output_bias = nn.Parameter(torch.zeros(N))
        if cfg.xent:
            self.prefinal_xent = Prefinal(S, Bg, cfg)
            self.output_xent = nn.Parameter(torch.zeros(N, S))
            self.output_xent_bias = nn.Parameter(torch.zeros(N))
        lf, rf, ls, rs = contexts(cfg)
        self.left_context = lf + ls
        self.right_context = rf + rs

    # ---- named tensors (export names of tensor_layout) ----
    def weight_params(self, include_xent: bool = True) -> Dict[str, nn.Parameter]:
        d: Dict[str, nn.Parameter] = {"tdnn1": self.tdnn1}
        for i, l in enumerate(self.tdnnfs, 1):
            d[f"tdnnf{i}.linear"] = l.linear
            d[f"tdnnf{i}.affine"] = l.affine
        d["prefinal_l"] = self.prefinal_l
        d["prefinal_chain.affine"] = self.prefinal_chain.affine
        d["prefinal_chain.linear"] = self.prefinal_chain.linear
        d["output"] = self.output
        if include_xent and self.cfg.xent:
            d["prefinal_xent.affine"] = self.prefinal_xent.affine
            d["prefinal_xent.linear"] = self.prefinal_xent.linear
            d["output_xent"] = self.output_xent
        return d

    def named_tensors(self, include_xent: bool = False) -> Dict[str, torch.Tensor]:
        """Every tensor of :func:`tensor_layout` by export name (live parameters / buffers)."""
        d: Dict[str, torch.Tensor] = {}

        def bn(prefix, m):
            d[prefix + ".mean"] = m.running_mean
            d[prefix + ".var"] = m.running_var

        d["tdnn1"] = self.tdnn1
        d["tdnn1.bias"] = self.tdnn1_bias
        bn("tdnn1.bn", self.tdnn1_bn)
        for i, l in enumerate(self.tdnnfs, 1):
            d[f"tdnnf{i}.linear"] = l.linear
            d[f"tdnnf{i}.affine"] = l.affine
            d[f"tdnnf{i}.bias"] = l.bias
            bn(f"tdnnf{i}.bn", l.bn)
        d["prefinal_l"] = self.prefinal_l
        heads = [("prefinal_chain", self.prefinal_chain, "output", self.output, self.output_bias)]
        if include_xent and self.cfg.xent:
            heads.append(("prefinal_xent", self.prefinal_xent, "output_xent", self.output_xent,
                          self.output_xent_bias))
        for p, m, o, ow, ob in heads:
            d[f"{p}.affine"] = m.affine
            d[f"{p}.bias"] = m.bias
            bn(f"{p}.bn1", m.bn1)
            d[f"{p}.linear"] = m.linear
            bn(f"{p}.bn2", m.bn2)
            d[o] = ow
            d[f"{o}.bias"] = ob
        return d

    def semi_orthogonal_params(self) -> List[nn.Parameter]:
        ps = [l.linear for l in self.tdnnfs] + [self.prefinal_l, self.prefinal_chain.linear]
        if self.cfg.xent:
            ps.append(self.prefinal_xent.linear)
        return ps

    # ---- training hooks ----
    @torch.no_grad()
    def apply_semi_orthogonal_(self) -> None:
        """Kaldi ConstrainOrthonormal on every semi-orthogonal weight (call after optimizer.step(), every
        4th step)."""
        for p in self.semi_orthogonal_params():
            semi_orthogonal_step_(p)

    def semi_orthogonality_errors(self) -> Dict[str, float]:
        names = {id(p): n for n, p in self.weight_params(include_xent=True).items()}
        return {names[id(p)]: semi_orthogonality_error(p) for p in self.semi_orthogonal_params()}

    def set_training_progress(self, progress: float) -> float:
        """Set the dropout proportion from the schedule at progress in [0, 1]; returns it."""
        self.dropout_p = dropout_at(self.cfg.dropout_schedule, progress)
        return self.dropout_p

    def set_weight_bits(self, weight_bits: Dict[str, int]) -> None:
        self.cfg = self.cfg.replace(weight_bits=dict(weight_bits))

    def num_parameters(self, include_xent: bool = True) -> int:
        skip = set()
        if not include_xent and self.cfg.xent:
            skip = {id(p) for p in list(self.prefinal_xent.parameters()) + [self.output_xent, self.output_xent_bias]}
        return sum(p.numel() for p in self.parameters() if id(p) not in skip)

    # ---- forward ----
    def qw(self, name: str, w: torch.Tensor) -> torch.Tensor:
        """Effective weight: fake-quantized at the configured bits (or w itself)."""
        bits = self.cfg.bits_of(name)
        if bits == 32 or not self.quant_enabled:
            return w
        return fake_quant(w, bits, self.cfg.quant_per_channel, self.cfg.quant_scale)

    def layer_weights(self, i: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Effective (linear, affine) weights of TDNN-F layer index i (0-based). Supernet hook: override to
        return mixed / rank-masked weights (zero rows of the linear factor and zero columns of the affine
        one beyond rank d; to match a standalone rank-d layer exactly, quantize the *sliced* rank-d affine
        columns, because per-row scales depend on the columns present)."""
        layer = self.tdnnfs[i]
        return self.qw(f"tdnnf{i + 1}.linear", layer.linear), self.qw(f"tdnnf{i + 1}.affine", layer.affine)

    def _prefinal(self, x, m: Prefinal, prefix: str, mask=None) -> torch.Tensor:
        x = batch_norm(F.relu(pointwise(x, self.qw(prefix + ".affine", m.affine), m.bias)), m.bn1, mask)
        return batch_norm(pointwise(x, self.qw(prefix + ".linear", m.linear)), m.bn2, mask)

    def _mask(self, lengths: torch.Tensor, t0: int, step: int, T: int) -> Optional[torch.Tensor]:
        """(B, 1, T) frames of the current grid (index j = time t0 + step*j) inside their utterance."""
        if not (self.training and self.cfg.bn_mask_padding):
            return None
        t = t0 + step * torch.arange(T, device=lengths.device)
        return ((t[None, :] >= 0) & (t[None, :] < lengths[:, None]))[:, None, :]

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor, ivectors: Optional[torch.Tensor] = None):
        """feats (B, T_in, feat_dim) float, lengths (B,) in [1, T_in] ->
        (chain_out (B, T_out, num_pdfs) unnormalised, xent_out (B, T_out, num_pdfs) log-softmax or None,
        out_lengths (B,) = (lengths + 2) // 3), T_out = (T_in + 2) // 3. ``ivectors`` (B, ivector_dim), one
        per utterance, appended to every frame's tdnn1 input; zeros when the config has ivector_dim > 0 and
        none are given."""
        cfg = self.cfg
        if feats.dim() != 3 or feats.shape[2] != cfg.feat_dim:
            raise ValueError(f"feats must be (B, T, {cfg.feat_dim}), got {tuple(feats.shape)}")
        B, T, _ = feats.shape
        if lengths.shape != (B,):
            raise ValueError(f"lengths must be ({B},), got {tuple(lengths.shape)}")
        lengths = lengths.to(torch.long)
        if T == 0 or bool((lengths > T).any()) or bool((lengths < 1).any()):
            raise ValueError("lengths must be in [1, T]")
        f = cfg.frame_subsampling_factor
        T_out = (T + f - 1) // f
        lf, rf, ls, rs = contexts(cfg)
        t_first = -(lf + ls)
        t_last = f * (T_out - 1) + rs + rf
        t = torch.arange(t_first, t_last + 1, device=feats.device)
        idx = torch.minimum(t.clamp(min=0)[None, :], (lengths - 1).to(feats.device)[:, None])  # (B, Tp)
        x = torch.gather(feats, 1, idx[:, :, None].expand(B, idx.shape[1], cfg.feat_dim)).transpose(1, 2)
        # tdnn1
        x = splice(x, cfg.tdnn1_context)
        t0 = t_first - cfg.tdnn1_context[0]
        if cfg.ivector_dim:
            if ivectors is None:
                ivectors = feats.new_zeros(B, cfg.ivector_dim)
            if ivectors.shape != (B, cfg.ivector_dim):
                raise ValueError(f"ivectors must be ({B}, {cfg.ivector_dim}), got {tuple(ivectors.shape)}")
            x = torch.cat([x, ivectors[:, :, None].expand(B, cfg.ivector_dim, x.shape[2])], dim=1)
        x = pointwise(x, self.qw("tdnn1", self.tdnn1), self.tdnn1_bias)
        lens = lengths.to(feats.device)
        x = batch_norm(F.relu(x), self.tdnn1_bn, self._mask(lens, t0, 1, x.shape[2]))
        x = continuous_dropout(x, self.dropout_p, self.training)
        sp = subsampling_point(cfg.time_strides, f)
        step = 1
        for i, layer in enumerate(self.tdnnfs):
            if i == sp:
                x, t0 = self._subsample(x, t0, f)
                step = f
            s = layer.stride if i < sp else layer.stride // f
            w_lin, w_aff = self.layer_weights(i)
            t0 += layer.stride
            mask = self._mask(lens, t0, step, x.shape[2] - 2 * s)
            x = tdnnf_layer_forward(x, w_lin, w_aff, layer.bias, s, layer.bn, self.dropout_p, cfg.bypass_scale,
                                    self.training, mask)
        if sp == len(self.tdnnfs):
            x, t0 = self._subsample(x, t0, f)
        assert t0 == 0 and x.shape[2] == T_out, (t0, x.shape, T_out)
        mask = self._mask(lens, 0, f, T_out)
        h = pointwise(x, self.qw("prefinal_l", self.prefinal_l))
        c = self._prefinal(h, self.prefinal_chain, "prefinal_chain", mask)
        chain = pointwise(c, self.qw("output", self.output), self.output_bias).transpose(1, 2)
        xent = None
        if cfg.xent:
            xh = self._prefinal(h, self.prefinal_xent, "prefinal_xent", mask)
            xent = F.log_softmax(pointwise(xh, self.qw("output_xent", self.output_xent), self.output_xent_bias)
                                 .transpose(1, 2), dim=-1)
        out_lengths = (lengths + f - 1) // f
        return chain, xent, out_lengths

    @staticmethod
    def _subsample(x: torch.Tensor, t0: int, f: int):
        """Keep the frames whose time is a multiple of f. Times stay in input-frame units: index j of the
        result is time t0' + f*j."""
        start = (-t0) % f
        return x[:, :, start::f], t0 + start


def slice_cols(w: torch.Tensor, k: int, d: int) -> torch.Tensor:
    """First ``d`` columns of each of the ``k`` offset blocks of a Kaldi-layout (out, k*r) weight."""
    rows, cols = w.shape
    r = cols // k
    if d == r:
        return w
    return w.reshape(rows, k, r)[:, :, :d].reshape(rows, k * d)


def copy_weights_to_bottlenecks(dst: TDNNF, src: Dict[str, torch.Tensor], skip_prefixes: Sequence[str] = ("arch.",)
                                ) -> Tuple[int, int]:
    """Copy the state ``src`` of a TDNN-F with bottlenecks >= ``dst``'s into ``dst``; returns (copied, sliced).

    A TDNN-F layer whose bottleneck shrinks from r to d keeps its first d bottleneck units: rows [0, d) of
    ``tdnnfs.i.linear`` (d, k*Din), and columns [0, d) of *each* of the k time-offset blocks of
    ``tdnnfs.i.affine`` (D, k*r), k = 2 for a time stride > 0 else 1 (:func:`slice_cols`) -- the same
    network as the source with units d..r-1 of that bottleneck switched off. Every other tensor must
    match in shape. Keys starting with ``skip_prefixes`` (a supernet's architecture logits) are ignored.
    """
    copied = sliced = 0
    with torch.no_grad():
        for key, t in dst.state_dict().items():
            if any(key.startswith(p) for p in skip_prefixes):
                continue
            if key not in src:
                raise KeyError(f"missing tensor {key} (another architecture?)")
            w = src[key]
            if w.shape != t.shape:
                parts = key.split(".")
                factor = parts[2] if len(parts) == 3 and parts[0] == "tdnnfs" else None
                k = 2 if factor and dst.cfg.time_strides[int(parts[1])] > 0 else 1
                if factor == "linear" and w.shape[1] == t.shape[1] and w.shape[0] >= t.shape[0]:
                    w = w[: t.shape[0]]
                elif factor == "affine" and w.shape[0] == t.shape[0] and w.shape[1] >= t.shape[1]:
                    w = slice_cols(w, k, t.shape[1] // k)
                else:
                    raise ValueError(f"tensor {key} has shape {tuple(w.shape)}, this network needs "
                                     f"{tuple(t.shape)} (only a TDNN-F bottleneck may shrink)")
                sliced += 1
            else:
                copied += 1
            t.copy_(w)
    return copied, sliced


def build_model(cfg: TDNNFConfig, num_pdfs: Optional[int] = None) -> TDNNF:
    if num_pdfs is not None:
        cfg = cfg.replace(num_pdfs=num_pdfs)
    return TDNNF(cfg)
