"""Write a packed TDNN-F (``quant.packing``) as an ONNX model whose low-bit weights stay packed at inference.

The graph maps features to chain pdf log-likelihoods on its own (CMVN, context, subsampling and the chain
head are inside), so ``model.onnx`` alone is the acoustic model:

    inputs   feats    float32 (B, T, feat_dim)   raw features (the graph applies the model's CMVN), zero-padded
             lengths  int64   (B,)               valid frames per utterance, 1 <= lengths[b] <= T
    outputs  chain       float32 (B, T_out, num_pdfs)   T_out = ceil(T / f); frames >= out_lengths[b] are padding
             out_lengths int64   (B,)                   ceil(lengths / f)

It computes what ``models.tdnnf.TDNNF.forward`` computes in eval mode (same edge replication per utterance,
same valid-context TDNN-F layers, frame subsampling at the same layer), in (B, T, C) layout: a TDNN layer
with time offsets {0, s} is a splice (two time slices concatenated offset-major, Kaldi's column order) and
one matrix product; BatchNorm is folded to a multiply-add with the running statistics.

Weights. Each matrix goes out at its genotype's bit-width (``metadata["weights"]`` records the choice):

* below 32 bits: onnxruntime's ``com.microsoft.MatMulNBits`` (``Y = A @ dequant(B)^T``), fed with the
  packed file's own integer codes and scales, so it multiplies by exactly the weights the PyTorch loader
  dequantizes. Our symmetric per-row codes ``q`` in ``[-qmax, qmax]`` become the operator's unsigned codes
  ``u = q + qmax`` with zero point ``qmax`` and the row's float16 scale (as float32) repeated for every
  block of the row. 1-bit weights (``q = +-1``) use the 2-bit kernel with ``u = q + 1`` in {0, 2} and zero
  point 1, which is exact; they take 2 bits per weight in the ONNX file (the documented fallback: the
  runtime has no 1-bit kernel). 3-bit weights use the 4-bit kernel the same way (``u = q + 3`` in 0..6, zero
  point 3: exact, 4 bits per weight in the file). The block size (a power of two, 16 ... 256, the operator's range) is the
  one that makes the row's codes, scales and zero points smallest; the last block's padding codes equal
  the zero point, so they dequantize to 0.
* 32 bits: a float32 ``MatMul``.
* ``kernel="float"`` writes every weight as a float32 ``MatMul`` of the dequantized matrix: the same
  function at float size (a reference, or a fallback where an onnxruntime build lacks a low-bit kernel).

``accuracy_level`` is MatMulNBits' attribute: 0 (default) multiplies in float32 with the weights
dequantized on the fly, which matches the PyTorch model to float rounding; 4 quantizes the activations to
int8 per block as well (faster where the CPU has int8 dot products, not exact; measure before using it).

Metadata (``metadata_props``): ``format`` = ``green-asr-tdnnf-onnx``, ``format_version`` = ``1``,
``config`` (the TDNNFConfig JSON, weight bits included), ``weights`` (JSON: weight name -> bits, kernel,
kernel bits, block size), ``kernel``, ``accuracy_level``, ``packed_payload_bytes`` (the packed file's
payload) and, when the packed file has them, ``cmvn`` and ``phones`` (same JSON as there).
Not supported: i-vector inputs (``ivector_dim > 0``) are refused with a clear error.
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from models.quantizers import qmax_for
from models.config import TDNNFConfig, contexts, subsampling_point
from quant.packing import PackedTensor, read_packed

FORMAT = "green-asr-tdnnf-onnx"
FORMAT_VERSION = "1"
KERNELS = ("nbits", "float")
ACCURACY_LEVELS = (0, 1, 2, 3, 4)
BLOCK_SIZES = (16, 32, 64, 128, 256)
OPSET = 17
_INT64_MAX = np.iinfo(np.int64).max


class OnnxExportError(ValueError):
    """A model the ONNX exporter cannot write (unsupported architecture or runtime)."""


def kernel_bits(bits: int) -> int:
    """MatMulNBits' bit-width for a weight of ``bits``: one that divides 8 (1-bit codes ride on the 2-bit
    kernel, 3-bit codes on the 4-bit one)."""
    return {1: 2, 3: 4}.get(bits, bits)


def choose_block_size(k: int, bits: int) -> int:
    """The block size (in ``BLOCK_SIZES``) that stores one row of ``k`` ``bits``-bit codes with its
    float32 scales and packed zero points in the fewest bytes (ties: the larger block)."""
    best = None
    for bs in BLOCK_SIZES:
        nb = -(-k // bs)
        size = nb * bs * bits // 8 + 4 * nb + -(-nb * bits // 8)
        if best is None or size <= best[0]:
            best = (size, bs)
    return best[1]


def _pack_rows(u: np.ndarray, bits: int) -> np.ndarray:
    """(R, C) unsigned codes < 2**bits, C a multiple of 8 // bits -> (R, C * bits // 8) uint8, code j of a
    byte in bits [j*bits, (j+1)*bits) (little end first: MatMulNBits' order, and the packed file's)."""
    per = 8 // bits
    r, c = u.shape
    u = u.astype(np.uint8).reshape(r, c // per, per)
    out = np.zeros((r, c // per), np.uint8)
    for j in range(per):
        out |= (u[:, :, j] << (j * bits)).astype(np.uint8)
    return out


def matmul_nbits_tensors(codes: np.ndarray, scales: np.ndarray, bits: int, block_size: int
                         ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MatMulNBits' (B, scales, zero_points) for a weight ``W = codes * scales[:, None]`` of shape (N, K).

    ``codes`` int (N, K) in [-qmax, qmax] (1 bit: +-1); ``scales`` (N,) or (1,) float. Returns
    B uint8 (N, n_blocks, block_size * kb / 8), scales float32 (N * n_blocks,), zero points uint8
    (N * ceil(n_blocks * kb / 8),), kb = :func:`kernel_bits`. Every block of row n dequantizes as
    ``(u - zp) * scales[n]`` = the row's own weights; padding past K dequantizes to 0."""
    n, k = codes.shape
    kb = kernel_bits(bits)
    zp = 1 if bits == 1 else qmax_for(bits)
    u = codes.astype(np.int64) + zp
    if u.min(initial=0) < 0 or u.max(initial=0) >= 2 ** kb:
        raise OnnxExportError(f"codes outside the {bits}-bit range")
    nb = -(-k // block_size)
    full = np.full((n, nb * block_size), zp, np.int64)
    full[:, :k] = u
    b = _pack_rows(full, kb).reshape(n, nb, block_size * kb // 8)
    s = np.broadcast_to(np.asarray(scales, np.float32).reshape(-1, 1), (n, nb)).reshape(-1).copy()
    per = 8 // kb
    nzb = -(-nb // per)
    z = np.zeros((n, nzb * per), np.int64)
    z[:, :nb] = zp
    return b, s, _pack_rows(z, kb).reshape(-1)


class OnnxGraph:
    """A small ONNX graph builder (also used by lm.onnx): constants become initializers, each op gets a
    fresh output name."""

    def __init__(self):
        from onnx import numpy_helper

        self._nh = numpy_helper
        self.nodes = []
        self.inits = []
        self._n = 0

    def name(self, hint: str) -> str:
        self._n += 1
        return f"{hint}_{self._n}"

    def const(self, value, hint: str = "c", dtype=None) -> str:
        arr = np.asarray(value, dtype=dtype)
        nm = self.name(hint)
        self.inits.append(self._nh.from_array(arr, nm))
        return nm

    def op(self, op_type: str, inputs: Sequence[str], hint: Optional[str] = None, domain: str = "",
           outputs: Optional[List[str]] = None, **attrs) -> str:
        from onnx import helper

        outs = outputs or [self.name(hint or op_type.lower())]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, domain=domain or None, **attrs))
        return outs[0]

    def time_slice(self, x: str, start: int, end_from_back: int, step: int = 1) -> str:
        """x[:, start : L - end_from_back : step] along the time axis (axis 1) of (B, L, C)."""
        end = -end_from_back if end_from_back > 0 else _INT64_MAX
        return self.op("Slice", [x, self.const([start], "st", np.int64), self.const([end], "en", np.int64),
                                 self.const([1], "ax", np.int64), self.const([step], "sp", np.int64)], "slice")

    def splice(self, x: str, offsets: Sequence[int]) -> str:
        """(B, L, C) -> (B, L - (max - min), len(offsets) * C), frames x[t + o] offset-major (Kaldi's
        column order); output index i is input index i - offsets[0]."""
        lo, hi = offsets[0], offsets[-1]
        parts = [self.time_slice(x, o - lo, hi - o) for o in offsets]
        return parts[0] if len(parts) == 1 else self.op("Concat", parts, "splice", axis=2)


class _Exporter:
    def __init__(self, cfg: TDNNFConfig, tensors: Sequence[PackedTensor], kernel: str, accuracy_level: int):
        self.cfg = cfg
        self.t = {p.name: p for p in tensors}
        self.kernel = kernel
        self.accuracy_level = accuracy_level
        self.g = OnnxGraph()
        self.weights: Dict[str, Dict] = {}

    def matmul(self, x: str, name: str, bias: Optional[str] = None) -> str:
        """x (B, L, K) @ W^T (+ bias) for the layout weight ``name`` (N, K)."""
        p = self.t[name]
        n, k = p.value.shape
        if p.bits < 32 and self.kernel == "nbits":
            kb = kernel_bits(p.bits)
            bs = choose_block_size(k, kb)
            b, s, z = matmul_nbits_tensors(p.codes.numpy(), p.scales.numpy(), p.bits, bs)
            y = self.g.op("MatMulNBits", [x, self.g.const(b, name + ".codes"), self.g.const(s, name + ".scales"),
                                          self.g.const(z, name + ".zero_points")], name, domain="com.microsoft",
                          K=k, N=n, bits=kb, block_size=bs, accuracy_level=self.accuracy_level)
            self.weights[name] = {"bits": p.bits, "kernel": "MatMulNBits", "kernel_bits": kb, "block_size": bs}
        else:
            w = np.ascontiguousarray(p.value.numpy().astype(np.float32).T)
            y = self.g.op("MatMul", [x, self.g.const(w, name + ".weight_t")], name)
            self.weights[name] = {"bits": p.bits, "kernel": "MatMul", "kernel_bits": 32}
        if bias is not None:
            y = self.g.op("Add", [y, self.g.const(self.t[bias].value.numpy().astype(np.float32), bias)], name)
        return y

    def batch_norm(self, x: str, prefix: str) -> str:
        """Eval-mode BatchNorm without affine: (x - mean) / sqrt(var + eps) as x * a + b."""
        mean = self.t[prefix + ".mean"].value.numpy().astype(np.float64)
        var = self.t[prefix + ".var"].value.numpy().astype(np.float64)
        a = 1.0 / np.sqrt(var + self.cfg.bn_eps)
        y = self.g.op("Mul", [x, self.g.const(a.astype(np.float32), prefix + ".scale")], "bn")
        return self.g.op("Add", [y, self.g.const((-mean * a).astype(np.float32), prefix + ".shift")], "bn")

    def tdnn(self, x: str, name: str, stride: int, bias: Optional[str] = None) -> str:
        """Time offsets {0, stride} (one offset when stride is 0): (B, L, C) -> (B, L - stride, N)."""
        return self.matmul(self.g.splice(x, [0, stride] if stride > 0 else [0]), name, bias)

    def build(self, cmvn: Optional[dict]):
        from onnx import TensorProto, helper

        cfg, g = self.cfg, self.g
        f = cfg.frame_subsampling_factor
        feats = "feats"
        x = feats
        if cmvn is not None:  # as decoding.decoder.compute_outputs: (x - mean) / max(std, 1e-5)
            mean = np.asarray(cmvn["mean"], np.float32).reshape(-1)
            std = np.maximum(np.asarray(cmvn["std"], np.float32).reshape(-1), np.float32(1e-5))
            x = g.op("Div", [g.op("Sub", [x, g.const(mean, "cmvn.mean")], "cmvn"), g.const(std, "cmvn.std")], "cmvn")
        # per-utterance edge replication: frame index min(max(t, 0), lengths[b] - 1) for t in [t_first, t_last]
        lf, rf, ls, rs = contexts(cfg)
        t_first = -(lf + ls)
        T = g.op("Shape", [feats], "T", start=1, end=2)
        t_out = g.op("Div", [g.op("Add", [T, g.const([f - 1], "c", np.int64)]), g.const([f], "c", np.int64)], "T_out")
        t_end = g.op("Add", [g.op("Mul", [t_out, g.const([f], "c", np.int64)]),
                             g.const([rs + rf + 1 - f], "c", np.int64)], "t_end")
        t = g.op("Range", [g.const(t_first, "c", np.int64), g.op("Squeeze", [t_end, g.const([0], "c", np.int64)]),
                           g.const(1, "c", np.int64)], "t")
        t = g.op("Max", [t, g.const(0, "c", np.int64)], "t")
        last = g.op("Unsqueeze", [g.op("Sub", ["lengths", g.const(1, "c", np.int64)]), g.const([1], "c", np.int64)], "last")
        idx = g.op("Min", [g.op("Unsqueeze", [t, g.const([0], "c", np.int64)]), last], "idx")  # (B, Tp)
        shape = g.op("Concat", [g.op("Shape", [idx]), g.op("Shape", [feats], start=2, end=3)], axis=0)
        idx3 = g.op("Expand", [g.op("Unsqueeze", [idx, g.const([2], "c", np.int64)]), shape], "idx")
        x = g.op("GatherElements", [x, idx3], "context", axis=1)
        # tdnn1
        x = self.matmul(g.splice(x, cfg.tdnn1_context), "tdnn1", "tdnn1.bias")
        x = self.batch_norm(g.op("Relu", [x]), "tdnn1.bn")
        t0 = t_first - cfg.tdnn1_context[0]
        sp = subsampling_point(cfg.time_strides, f)
        din = cfg.tdnn1_dim
        for i, stride in enumerate(cfg.time_strides):
            if i == sp:
                start = (-t0) % f
                x, t0 = g.time_slice(x, start, 0, f), t0 + start
            s = stride if i < sp else stride // f
            name = f"tdnnf{i + 1}"
            y = self.tdnn(self.tdnn(x, name + ".linear", s), name + ".affine", s, name + ".bias")
            y = self.batch_norm(g.op("Relu", [y]), name + ".bn")
            if cfg.bypass_scale and din == cfg.hidden_dim:
                byp = g.time_slice(x, s, s) if s > 0 else x
                y = g.op("Add", [y, g.op("Mul", [byp, g.const(np.float32(cfg.bypass_scale), "bypass")])], "bypass")
            x, din, t0 = y, cfg.hidden_dim, t0 + stride
        if sp == cfg.num_layers:
            start = (-t0) % f
            x, t0 = g.time_slice(x, start, 0, f), t0 + start
        if t0 != 0:
            raise OnnxExportError(f"internal error: output grid starts at t={t0}, not 0")
        h = self.matmul(x, "prefinal_l")
        c = self.batch_norm(g.op("Relu", [self.matmul(h, "prefinal_chain.affine", "prefinal_chain.bias")]),
                            "prefinal_chain.bn1")
        c = self.batch_norm(self.matmul(c, "prefinal_chain.linear"), "prefinal_chain.bn2")
        chain = self.matmul(c, "output", "output.bias")
        g.op("Identity", [chain], outputs=["chain"])
        g.op("Div", [g.op("Add", ["lengths", g.const([f - 1], "c", np.int64)]),
                     g.const([f], "c", np.int64)], outputs=["out_lengths"])
        inputs = [helper.make_tensor_value_info("feats", TensorProto.FLOAT, ["batch", "frames", cfg.feat_dim]),
                  helper.make_tensor_value_info("lengths", TensorProto.INT64, ["batch"])]
        outputs = [helper.make_tensor_value_info("chain", TensorProto.FLOAT, ["batch", "out_frames", cfg.num_pdfs]),
                   helper.make_tensor_value_info("out_lengths", TensorProto.INT64, ["batch"])]
        graph = helper.make_graph(g.nodes, "tdnnf", inputs, outputs, g.inits)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET),
                                                       helper.make_opsetid("com.microsoft", 1)],
                                 producer_name="green-asr")


def export_onnx(packed_path: str, out_path: str, kernel: str = "nbits", accuracy_level: int = 0,
                check: bool = True) -> Dict:
    """Write the packed model ``packed_path`` (``quant.packing`` format) to ``out_path`` as ONNX.

    Returns ``{"path", "file_bytes", "packed_payload_bytes", "weights"}``. With ``check`` the file is
    loaded into an onnxruntime session once, so a runtime that lacks an operator fails here with a clear
    error (naming ``kernel="float"``) and not at decoding time."""
    import onnx

    if kernel not in KERNELS:
        raise OnnxExportError(f"unknown kernel {kernel!r}: choose one of {KERNELS}")
    if accuracy_level not in ACCURACY_LEVELS:
        raise OnnxExportError(f"accuracy_level must be one of {ACCURACY_LEVELS}, got {accuracy_level!r}")
    cfg, _, meta, tensors = read_packed(packed_path)
    if cfg.ivector_dim:
        raise OnnxExportError(f"{packed_path}: models with i-vector inputs (ivector_dim={cfg.ivector_dim}) are "
                              f"not supported by the ONNX export")
    cmvn = json.loads(meta["cmvn"]) if "cmvn" in meta else None
    ex = _Exporter(cfg, tensors, kernel, accuracy_level)
    model = ex.build(cmvn)
    props = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": cfg.to_json(), "kernel": kernel,
             "accuracy_level": str(accuracy_level), "weights": json.dumps(ex.weights, sort_keys=True),
             "packed_payload_bytes": str(meta.get("payload_bytes", "")),
             "cmvn_in_graph": json.dumps(cmvn is not None)}
    for key in ("cmvn", "phones", "genotype"):
        if key in meta:
            props[key] = meta[key]
    onnx.helper.set_model_props(model, props)
    onnx.checker.check_model(model)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    tmp = out_path + ".tmp"
    onnx.save(model, tmp)
    if check:
        import onnxruntime as ort

        try:
            ort.InferenceSession(tmp, providers=["CPUExecutionProvider"])
        except Exception as e:  # the runtime's own error type differs between versions
            os.remove(tmp)
            used = sorted({w["kernel_bits"] for w in ex.weights.values() if w["kernel"] == "MatMulNBits"})
            raise OnnxExportError(f"onnxruntime {ort.__version__} cannot load the exported model (MatMulNBits "
                                  f"bit-widths used: {used}): {' '.join(str(e).split())[:300]}; export with "
                                  f"kernel='float' (--kernel float) to use float weights instead") from None
    os.replace(tmp, out_path)
    return {"path": out_path, "file_bytes": os.path.getsize(out_path),
            "packed_payload_bytes": int(meta["payload_bytes"]) if meta.get("payload_bytes") else None,
            "weights": ex.weights}
