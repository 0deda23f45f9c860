"""THE cost model: parameters and bytes of a TDNN-F model at any per-layer (bits, bottleneck) choice, and of
any model given its tensor layout (:func:`layout_size`; the Transformer LM's is ``lm.quant.lm_layout``).

Bytes = exactly the payload of the packed safetensors file written by :mod:`quant.packing` (file size minus
the 8-byte length prefix and the JSON header), tensor by tensor:

* weight at b < 32 bits: ``ceil(rows * cols * b / 8)`` bytes of codes (packed per *tensor*, row-major,
  ``8 / b`` codes a byte) + 2 bytes (fp16) per scale: ``rows`` scales per channel, 1 per layer.
* weight at 32 bits: ``rows * cols * 4`` (float32).
* biases and BatchNorm running mean / variance: float32, 4 bytes each (they are < 1% of the model and
  fp32 keeps the BN folding exact; changing FLOAT_BYTES here is the one place to change it).

Parameters = weights + biases (what Kaldi's nnet3-info counts); BN statistics are not parameters but are
stored and counted in bytes. The inference model excludes the training-only xent branch
(``include_xent=False`` everywhere by default), as Kaldi drops ``output-xent`` for decoding.

Everything here is a pure function of the config (shapes) and the bit-widths: no model instance needed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from models.config import TDNNFConfig
from models.layout import TensorInfo, layer_groups, tensor_layout
from models.quantizers import check_bits

FLOAT_BYTES = 4       # float32 weights (bits=32), biases, BN stats
SCALE_BYTES = 2       # float16 quantization scales


def code_bytes(numel: int, bits: int) -> int:
    """Bytes of ``numel`` codes packed at ``bits`` (one tensor, padded to a whole byte at the end)."""
    return (numel * check_bits(bits) + 7) // 8


def weight_bytes(shape: Sequence[int], bits: int, per_channel: bool = True) -> int:
    """Stored bytes of one weight matrix at ``bits`` (32 = float32)."""
    bits = check_bits(bits)
    numel = int(math.prod(shape))
    if bits == 32:
        return numel * FLOAT_BYTES
    n_scales = int(shape[0]) if per_channel else 1
    return code_bytes(numel, bits) + n_scales * SCALE_BYTES


def tensor_bytes(info: TensorInfo, bits: int = 32, per_channel: bool = True) -> int:
    if info.kind == "weight":
        return weight_bytes(info.shape, bits, per_channel)
    return int(math.prod(info.shape)) * FLOAT_BYTES


def stored_tensors(info: TensorInfo, bits: int, per_channel: bool = True) -> List[Tuple[str, str, Tuple[int, ...]]]:
    """The safetensors entries (name, dtype, shape) one layout tensor becomes in the packed file."""
    if info.kind == "weight" and bits < 32:
        n = int(math.prod(info.shape))
        return [(info.name + ".codes", "U8", (code_bytes(n, bits),)),
                (info.name + ".scales", "F16", (info.shape[0] if per_channel else 1,))]
    return [(info.name, "F32", tuple(info.shape))]


@dataclass
class SizeReport:
    total_bytes: int
    fp32_bytes: int
    num_parameters: int
    per_layer: Dict[str, int]                       # genotype layer (or "xent") -> bytes
    per_tensor: Dict[str, int] = field(default_factory=dict)

    @property
    def compression_ratio(self) -> float:
        """fp32 bytes of the *same* architecture / packed bytes. Against the full-size fp32 baseline
        (largest bottlenecks) use ``fp32_bytes(space.network) / total_bytes``."""
        return self.fp32_bytes / self.total_bytes

    @property
    def total_mb(self) -> float:
        return self.total_bytes / 1e6

    def to_dict(self) -> dict:
        return {"total_bytes": self.total_bytes, "fp32_bytes": self.fp32_bytes,
                "compression_ratio": self.compression_ratio, "num_parameters": self.num_parameters,
                "per_layer": dict(self.per_layer)}


def count_parameters(cfg: TDNNFConfig, include_xent: bool = True) -> int:
    """Weights + biases (BN statistics excluded), as Kaldi counts them."""
    return sum(int(math.prod(t.shape)) for t in tensor_layout(cfg, include_xent) if t.kind in ("weight", "bias"))


def layout_size(layout: Sequence[TensorInfo], bits_of: Callable[[str], int], per_channel: bool = True,
                num_parameters: Optional[int] = None) -> SizeReport:
    """Packed size of any model given its tensor layout (every stored tensor, ``TensorInfo``) and the
    bit-width of each weight (``bits_of(name)``; other kinds are float32). The acoustic model
    (:func:`model_size`) and the Transformer LM (``lm.quant.lm_size``) are both costed here.
    ``num_parameters`` defaults to the elements of every tensor of kind weight or bias."""
    per_layer: Dict[str, int] = {}
    per_tensor: Dict[str, int] = {}
    total = fp32 = 0
    for t in layout:
        b = tensor_bytes(t, bits_of(t.name) if t.kind == "weight" else 32, per_channel)
        per_tensor[t.name] = b
        per_layer[t.group] = per_layer.get(t.group, 0) + b
        total += b
        fp32 += tensor_bytes(t, 32)
    if num_parameters is None:
        num_parameters = sum(int(math.prod(t.shape)) for t in layout if t.kind in ("weight", "bias"))
    return SizeReport(total, fp32, int(num_parameters), per_layer, per_tensor)


def model_size(cfg: TDNNFConfig, include_xent: bool = False) -> SizeReport:
    """Packed size of the model described by ``cfg`` (its bottleneck dims and ``weight_bits``)."""
    return layout_size(tensor_layout(cfg, include_xent), cfg.bits_of, cfg.quant_per_channel,
                       count_parameters(cfg, include_xent))


def fp32_bytes(cfg: TDNNFConfig, include_xent: bool = False) -> int:
    return model_size(cfg.replace(weight_bits={}), include_xent).total_bytes


def layer_bytes(cfg: TDNNFConfig, layer: str, bits: int, bottleneck: Optional[int] = None) -> int:
    """Bytes of one genotype layer (see models.layout.layer_groups) with all its weights at ``bits`` and, for a
    TDNN-F layer, rank ``bottleneck`` (None: the config's). Includes the layer's biases and BN stats."""
    check_bits(bits)
    groups = {g.name: g for g in layer_groups(cfg)}
    if layer not in groups:
        raise KeyError(f"unknown layer {layer!r}; layers are {list(groups)}")
    if bottleneck is not None:
        if not groups[layer].has_bottleneck:
            raise ValueError(f"layer {layer!r} has no bottleneck")
        i = groups[layer].bottleneck_index
        dims = list(cfg.bottleneck_dims)
        dims[i] = int(bottleneck)
        cfg = cfg.replace(bottleneck_dims=dims)
    return sum(tensor_bytes(t, bits, cfg.quant_per_channel) for t in tensor_layout(cfg) if t.group == layer)


def size_table(cfg: TDNNFConfig, choices: Dict[str, Tuple[Sequence[int], Optional[Sequence[int]]]]
               ) -> Dict[str, Dict[int, Dict[int, float]]]:
    """``table[layer][bits][dim]`` in bytes (plain floats) for every choice; ``dim`` is 0 for layers without
    a bottleneck. ``choices``: layer -> (bit choices, bottleneck choices or None). The model's total size
    at a genotype is ``sum(table[l][bits_l][dim_l])`` (+ nothing else: every stored tensor belongs to a
    layer), so E[size] under independent per-layer choice probabilities is a bilinear form in them."""
    table: Dict[str, Dict[int, Dict[int, float]]] = {}
    for layer, (bits_choices, dims) in choices.items():
        table[layer] = {}
        for b in bits_choices:
            if dims:
                table[layer][int(b)] = {int(d): float(layer_bytes(cfg, layer, b, d)) for d in dims}
            else:
                table[layer][int(b)] = {0: float(layer_bytes(cfg, layer, b))}
    return table
