"""The TDNN-F's layout as pure functions of its config, and weight surgery between bottleneck sizes.

Names: :func:`weight_names` (every matrix that can carry its own bit-width), :func:`layer_groups` (the
genotype layers, :class:`LayerGroup`; :func:`apply_layer_choices`: a genotype's config), :func:`bottleneck_index` (the one place that reads a layer number
from a name), :func:`tensor_layout` (every stored tensor with its export name and shape: the cost model
and the packer both read it). Surgery: :func:`slice_cols` and :func:`copy_weights_to_bottlenecks` (copy a
wider network's weights into narrower bottlenecks, keeping the first units). ``cfg`` is a
``models.config.TDNNFConfig``; nothing here builds modules (``models.tdnnf`` does).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn as nn

def weight_names(cfg, include_xent: bool = False) -> List[str]:
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


def layer_groups(cfg) -> List[LayerGroup]:
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


def apply_layer_choices(cfg, choices: Mapping[str, Tuple[int, Optional[int]]]):
    """The config of one architecture: ``cfg`` with every genotype layer's weights at its bits and every
    TDNN-F layer's rank at its bottleneck, from ``choices[layer] = (bits, bottleneck or None)``. The one
    genotype -> model config mapping (``Genotype.to_config``, ``SuperNet.subnet_config``). Bits 32 = float;
    a layer missing from ``choices`` stays float at the config's rank; an unknown layer is a ValueError."""
    groups = layer_groups(cfg)
    unknown = sorted(set(choices) - {g.name for g in groups})
    if unknown:
        raise ValueError(f"unknown genotype layer(s) {unknown}; the layers are {[g.name for g in groups]}")
    dims = list(cfg.bottleneck_dims)
    bits: Dict[str, int] = {}
    for g in groups:
        if g.name not in choices:
            continue
        b, d = choices[g.name]
        if int(b) != 32:
            bits.update({w: int(b) for w in g.weights})
        if g.has_bottleneck and d is not None:
            dims[g.bottleneck_index] = int(d)
    return cfg.replace(bottleneck_dims=dims, weight_bits=bits)


@dataclass(frozen=True)
class TensorInfo:
    name: str                 # export name, e.g. "tdnnf3.linear", "tdnnf3.bias", "tdnnf3.bn.mean"
    shape: Tuple[int, ...]
    kind: str                 # "weight" (may be quantized) | "bias" | "bn_mean" | "bn_var"
    group: str                # genotype layer it belongs to ("xent" for the xent branch)


def tensor_layout(cfg, include_xent: bool = False) -> List[TensorInfo]:
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
        cfg.validate(require_num_pdfs=True)  # the config's own error, naming the field
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
# Weight surgery: a wider network's weights into narrower bottlenecks
# --------------------------------------------------------------------------------------------------------

def slice_cols(w: torch.Tensor, k: int, d: int) -> torch.Tensor:
    """First ``d`` columns of each of the ``k`` offset blocks of a Kaldi-layout (out, k*r) weight."""
    rows, cols = w.shape
    r = cols // k
    if d == r:
        return w
    return w.reshape(rows, k, r)[:, :, :d].reshape(rows, k * d)


def copy_weights_to_bottlenecks(dst: nn.Module, src: Dict[str, torch.Tensor], skip_prefixes: Sequence[str] = ("arch.",)
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
