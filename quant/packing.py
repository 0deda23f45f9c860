"""Export a (fake-quantized) TDNN-F to a packed file, and rebuild an inference module from that file alone.

File format: safetensors. Why: it holds only raw tensors and a JSON header with offsets (no pickle, so
loading a file cannot run code); the header is validated against the payload by the library (dtype, shape,
offsets inside the file, no overlap); tensors can be memory-mapped; and the string metadata in the header
carries the architecture, so one file is the whole model.

Contents (names from ``models.layout.tensor_layout``):

* weight ``W`` at b < 32 bits: ``W.codes`` uint8 1-D, the integer codes of the whole tensor row-major,
  offset to unsigned (``u = q + qmax``; 1 bit: ``u = (q + 1) / 2``) and written as one little-endian bit
  stream: code i in bits ``[i*b, (i+1)*b)`` of the stream, stream bit k in bit ``k % 8`` of byte ``k // 8``
  (for b = 1, 2, 4, 8: ``8 / b`` codes a byte, code i of a byte in bits ``[i*b, (i+1)*b)``; 3 bits cross
  byte boundaries), zero-padded to ``ceil(n*b/8)`` bytes; ``W.scales`` float16,
  one per output row (or one per tensor).
* weight at 32 bits: ``W`` float32. Biases and BN running mean/var: float32.
* metadata: ``format`` = ``green-asr-tdnnf-packed``, ``format_version`` = ``1``, ``config`` = the
  TDNNFConfig JSON (bottleneck dims, ``weight_bits``, quantizer settings), ``include_xent``,
  ``payload_bytes`` (the cost model's prediction), plus caller extras (e.g. ``genotype``).

The fp32 baseline exports the same way (every weight float32). ``torch.load`` is never used.
"""
from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from models.config import TDNNFConfig
from models.layout import TensorInfo, tensor_layout, weight_names
from models.tdnnf import TDNNF
from quant.cost_model import model_size, stored_tensors
from models.quantizers import check_bits, dequantize, qmax_for, quantize_to_codes

FORMAT = "green-asr-tdnnf-packed"
FORMAT_VERSION = "1"
_DTYPES = {"U8": torch.uint8, "F16": torch.float16, "F32": torch.float32}


class PackedModelError(ValueError):
    """A packed model file that cannot be read: truncated, inconsistent, or unsupported."""


# ---------------------------------------------------------------------------------------------------------
# bit packing
# ---------------------------------------------------------------------------------------------------------

def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Signed integer codes (any shape; 1 bit: +-1) -> uint8 tensor of ceil(n*bits/8) bytes."""
    bits = check_bits(bits)
    if bits == 32:
        raise ValueError("bits=32 weights are stored as float32, not packed")
    q = codes.reshape(-1).to(torch.int32)
    qmax = qmax_for(bits)
    if bits == 1:
        if q.numel() and bool(((q != 1) & (q != -1)).any()):
            raise ValueError("1-bit codes must be -1 or +1")
        u = (q + 1) // 2
    else:
        if q.numel() and bool((q.abs() > qmax).any()):
            raise ValueError(f"codes outside [-{qmax}, {qmax}] for {bits}-bit packing")
        u = q + qmax
    n = u.numel()
    nbytes = (n * bits + 7) // 8
    if 8 % bits:  # codes cross byte boundaries: write them as one little-endian bit stream
        stream = ((u[:, None] >> torch.arange(bits, dtype=torch.int32, device=u.device)) & 1).reshape(-1)
        u, bits = torch.cat([stream, stream.new_zeros(nbytes * 8 - n * bits)]), 1
    per = 8 // bits
    u = torch.cat([u, u.new_zeros(nbytes * per - u.numel())]).reshape(nbytes, per)
    shifts = torch.arange(per, dtype=torch.int32, device=u.device) * bits
    return (u << shifts).sum(dim=1).to(torch.uint8)


def unpack_codes(packed: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    """Inverse of :func:`pack_codes`: int8 codes (numel,). Validates length, code range and padding."""
    bits = check_bits(bits)
    if bits == 32:
        raise ValueError("bits=32 weights are stored as float32, not packed")
    if packed.dtype != torch.uint8 or packed.dim() != 1:
        raise ValueError(f"packed codes must be a 1-D uint8 tensor, got {packed.dtype} {tuple(packed.shape)}")
    nbytes = (numel * bits + 7) // 8
    if packed.numel() != nbytes:
        raise ValueError(f"{packed.numel()} bytes of {bits}-bit codes for {numel} values (expected {nbytes})")
    width = 1 if 8 % bits else bits  # codes that cross byte boundaries are read as a bit stream
    shifts = torch.arange(8 // width, dtype=torch.int32, device=packed.device) * width
    u = ((packed.to(torch.int32)[:, None] >> shifts) & ((1 << width) - 1)).reshape(-1)
    if bool((u[numel * bits // width:] != 0).any()):
        raise ValueError("non-zero padding after the last code")
    u = u[:numel * bits // width]
    if width != bits:
        u = (u.reshape(numel, bits) << torch.arange(bits, dtype=torch.int32, device=u.device)).sum(dim=1)
    if bits == 1:
        return (u * 2 - 1).to(torch.int8)
    qmax = qmax_for(bits)
    if numel and bool((u > 2 * qmax).any()):
        raise ValueError(f"invalid {bits}-bit code {int(u.max())} (max {2 * qmax})")
    return (u - qmax).to(torch.int8)


# ---------------------------------------------------------------------------------------------------------
# export / load
# ---------------------------------------------------------------------------------------------------------

def pack_tensors(layout: Sequence[TensorInfo], live: Dict[str, torch.Tensor], bits_of: Callable[[str], int],
                 per_channel: bool, scale: str, what: str = "model") -> Dict[str, torch.Tensor]:
    """The safetensors entries of a model: every tensor of ``layout`` taken from ``live`` (name -> tensor),
    a weight below 32 bits as ``<name>.codes`` + ``<name>.scales``, everything else float32. Shared by the
    acoustic model's and the LM's packed files; non-finite values or shapes off the layout are errors."""
    tensors: Dict[str, torch.Tensor] = {}
    for info in layout:
        t = live[info.name].detach().to("cpu", torch.float32)
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"refusing to write {what}: non-finite values in tensor {info.name}")
        if tuple(t.shape) != info.shape:
            raise ValueError(f"{info.name}: model tensor {tuple(t.shape)} != layout {info.shape}")
        bits = bits_of(info.name) if info.kind == "weight" else 32
        if bits < 32:
            codes, scales = quantize_to_codes(t, bits, per_channel, scale)
            tensors[info.name + ".codes"] = pack_codes(codes, bits)
            tensors[info.name + ".scales"] = scales.to(torch.float16)
        else:
            tensors[info.name] = t.contiguous().clone()
    return tensors


def save_packed_file(path: str, tensors: Dict[str, torch.Tensor], meta: Dict[str, str],
                     extra_metadata: Optional[Dict[str, str]] = None) -> None:
    """Write ``tensors`` with the string metadata ``meta`` plus caller extras (JSON-encoded unless strings;
    a key of ``meta`` is reserved)."""
    from safetensors.torch import save_file

    meta = dict(meta)
    for k, v in (extra_metadata or {}).items():
        if k in meta:
            raise ValueError(f"extra metadata key {k!r} is reserved")
        meta[k] = v if isinstance(v, str) else json.dumps(v, sort_keys=True)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_file(tensors, path, metadata=meta)


def export_packed(model: TDNNF, path: str, include_xent: bool = False,
                  extra_metadata: Optional[Dict[str, str]] = None) -> int:
    """Write ``model`` (its config's bits and bottlenecks) to ``path``; returns the payload bytes, equal to
    ``quant.cost_model.model_size(model.cfg, include_xent).total_bytes``."""
    cfg = model.cfg
    tensors = pack_tensors(tensor_layout(cfg, include_xent), model.named_tensors(include_xent=include_xent),
                           cfg.bits_of, cfg.quant_per_channel, cfg.quant_scale, path)
    size = model_size(cfg, include_xent).total_bytes
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": cfg.to_json(),
            "include_xent": json.dumps(bool(include_xent)), "payload_bytes": str(size)}
    save_packed_file(path, tensors, meta, extra_metadata)
    return size


def read_header(path: str) -> dict:
    """The parsed safetensors JSON header (tensor entries + ``__metadata__``), after basic size checks."""
    try:
        fsize = os.path.getsize(path)
    except OSError as e:
        raise PackedModelError(f"{path}: cannot read ({e})") from None
    if fsize < 8:
        raise PackedModelError(f"{path}: truncated file ({fsize} bytes; no safetensors header)")
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        if n > fsize - 8 or n > 100_000_000:
            raise PackedModelError(f"{path}: truncated or corrupt header (header says {n} bytes, file has "
                                   f"{fsize - 8} after the length)")
        raw = fh.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PackedModelError(f"{path}: header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise PackedModelError(f"{path}: header is not a JSON object")
    payload = fsize - 8 - n
    ends = [v.get("data_offsets", [0, 0])[1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)]
    if max(ends, default=0) != payload:
        raise PackedModelError(f"{path}: header/payload mismatch: tensors end at byte {max(ends, default=0)} "
                               f"but the payload has {payload} bytes (truncated or padded file)")
    return header


def payload_bytes(path: str) -> int:
    """File size minus the 8-byte length prefix and the JSON header."""
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
    return os.path.getsize(path) - 8 - n


@dataclass
class PackedTensor:
    """One tensor of a packed file, decoded. ``value`` is float32 with the layout shape (a quantized weight
    dequantized); for a weight stored below 32 bits, ``codes`` (int8, layout shape; 1 bit: +-1) and
    ``scales`` (float32, ``(rows,)`` or ``(1,)``, float16-exact) are what the file holds."""
    name: str
    kind: str                      # models.layout.TensorInfo.kind
    bits: int                      # 32 for float tensors
    value: torch.Tensor
    codes: Optional[torch.Tensor] = None
    scales: Optional[torch.Tensor] = None


def unpack_tensors(path: str, layout: Sequence[TensorInfo], bits_of: Callable[[str], int],
                   per_channel: bool) -> List[PackedTensor]:
    """Every tensor of ``layout`` read from the packed file ``path`` and checked (names, dtypes, shapes,
    code ranges, padding, finiteness), in layout order. Raises PackedModelError on any bad input. The
    acoustic model's (:func:`read_packed`) and the LM's packed files are read through it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(path)
    except (SafetensorError, OSError, RuntimeError) as e:
        raise PackedModelError(f"{path}: cannot read tensors: {e}") from None
    bad = sorted(k for k, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all()))
    if bad:
        raise PackedModelError(f"{path}: non-finite values in tensor(s) {', '.join(bad[:5])}")
    expected = {}
    for info in layout:
        bits = bits_of(info.name) if info.kind == "weight" else 32
        for name, dt, shape in stored_tensors(info, bits, per_channel):
            expected[name] = (dt, shape)
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise PackedModelError(f"{path}: header/architecture mismatch: missing {missing[:5]}, unexpected {extra[:5]}")
    for name, (dt, shape) in expected.items():
        t = tensors[name]
        if t.dtype != _DTYPES[dt] or tuple(t.shape) != shape:
            raise PackedModelError(f"{path}: tensor {name} is {t.dtype} {tuple(t.shape)}, expected "
                                   f"{_DTYPES[dt]} {shape}")
    out: List[PackedTensor] = []
    for info in layout:
        bits = bits_of(info.name) if info.kind == "weight" else 32
        if bits < 32:
            n = int(math.prod(info.shape))
            scales = tensors[info.name + ".scales"].to(torch.float32)
            try:
                codes = unpack_codes(tensors[info.name + ".codes"], bits, n).reshape(info.shape)
                w = dequantize(codes, scales, bits)
            except ValueError as e:
                raise PackedModelError(f"{path}: {info.name}: {e}") from None
            pt = PackedTensor(info.name, info.kind, bits, w, codes, scales)
        else:
            pt = PackedTensor(info.name, info.kind, 32, tensors[info.name])
        if not bool(torch.isfinite(pt.value).all()):
            raise PackedModelError(f"{path}: {info.name} holds non-finite values")
        out.append(pt)
    return out


def checked_metadata(path: str, fmt: str, version) -> Dict[str, str]:
    """The string metadata of the packed file ``path`` after the header checks of :func:`read_header`,
    refused unless its ``format`` is ``fmt`` and its ``format_version`` is ``version`` (a string, or a
    tuple of the versions the caller reads)."""
    meta = read_header(path).get("__metadata__") or {}
    if meta.get("format") != fmt:
        raise PackedModelError(f"{path}: not a {fmt} file (format={meta.get('format')!r})")
    if meta.get("format_version") not in ((version,) if isinstance(version, str) else tuple(version)):
        raise PackedModelError(f"{path}: unsupported format_version {meta.get('format_version')!r}")
    return meta


def read_packed(path: str) -> Tuple[TDNNFConfig, bool, Dict[str, str], List[PackedTensor]]:
    """``(config, include_xent, metadata, tensors in tensor_layout order)`` of a packed file, every tensor
    checked against the architecture (names, dtypes, shapes, code ranges, padding, finiteness). Raises
    PackedModelError on any bad input. :func:`load_packed` and the ONNX exporter read files through it."""
    meta = checked_metadata(path, FORMAT, FORMAT_VERSION)
    try:
        cfg_dict = json.loads(meta["config"])
        include_xent = bool(json.loads(meta.get("include_xent", "false")))
        cfg = TDNNFConfig.from_dict(cfg_dict)
        if not include_xent:  # the file has no xent branch: drop it (and any bits it carried)
            xent_names = set(weight_names(cfg, include_xent=True)) - set(weight_names(cfg))
            cfg = cfg.replace(xent=False, weight_bits={k: v for k, v in cfg.weight_bits.items()
                                                       if k not in xent_names})
    except (KeyError, json.JSONDecodeError, ValueError, TypeError, AttributeError) as e:
        raise PackedModelError(f"{path}: bad architecture metadata: {e}") from None
    out = unpack_tensors(path, tensor_layout(cfg, include_xent), cfg.bits_of, cfg.quant_per_channel)
    return cfg, include_xent, dict(meta), out


def load_packed(path: str, device: str = "cpu") -> TDNNF:
    """Rebuild an inference TDNNF (eval mode, weights dequantized, fake quantization off) from ``path``.
    ``model.packed_metadata`` holds the file's metadata. Raises PackedModelError on any bad input."""
    cfg, include_xent, meta, tensors = read_packed(path)
    model = TDNNF(cfg)
    live = model.named_tensors(include_xent=include_xent)
    with torch.no_grad():
        for t in tensors:
            live[t.name].copy_(t.value)
    model.quant_enabled = False
    model.packed_metadata = meta
    return model.to(device).eval()
