"""The Transformer LM as ONNX: export (``export_lm_onnx``) and an onnxruntime model for scoring and rescoring.

The graph computes :class:`lm.model.TransformerLM` in eval mode from its ``model.pt``:

    input   tokens  int64 (B, T), T <= max_len
    output  logits  float32 (B, T, vocab_size)

token embedding (Gather) + positions (a slice of the sinusoidal or learned table); per block
``h += out_proj(softmax(q k^T / sqrt(d_head) + causal mask) v)`` on ``LayerNormalization(h)`` and
``h += ff_out(gelu(ff_in(LayerNormalization(h))))`` (exact, erf GELU); the final LayerNorm and
``lm_head`` (the embedding matrix when tied). Weights are float32 ``MatMul``s: the LM has no packed
low-bit form yet, so there are no low-bit kernels to map to.
Metadata: ``format`` = ``green-asr-lm-onnx``, ``format_version`` = ``1``, ``config`` (the
TransformerLMConfig JSON), ``vocab`` (JSON word list) and ``vocab_sha1``.

:class:`OnnxTransformerLM` is called like the PyTorch LM (``model(tokens) -> logits``, torch tensors), so
``lm.score`` and ``lm.rescore`` use it unchanged; ``lm.rescore.load_rescoring_lm`` opens ``.onnx`` files.
"""
from __future__ import annotations

import json
import math
import os
from typing import Tuple

import numpy as np
import torch

from lm.model import TransformerLMConfig, matrix_names
from lm.score import load_lm
from lm.vocab import Vocab
from quant.onnx_export import OPSET, OnnxGraph
from quant.onnx_model import cpu_session

FORMAT = "green-asr-lm-onnx"
FORMAT_VERSION = "1"


class LMOnnxError(ValueError):
    """An LM ONNX file that cannot be read, or a model that cannot be exported."""


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float32)


def export_lm_onnx(model_path: str, out_path: str) -> dict:
    """Write the LM ``model_path`` (``model.pt`` of train_lm.py) to ``out_path``; returns
    ``{"path", "file_bytes"}``."""
    import onnx
    from onnx import TensorProto, helper

    model, vocab = load_lm(model_path)
    cfg = model.cfg
    sd = dict(model.state_dict())
    for name in matrix_names(cfg):  # the matrices as the forward pass uses them (quantized ones on their grid)
        sd[name] = model.effective_weight(name).detach()
    g = OnnxGraph()
    i64 = np.int64

    def linear(x, prefix, weight=None):
        w = _np(sd[prefix + ".weight"] if weight is None else weight).T
        y = g.op("MatMul", [x, g.const(np.ascontiguousarray(w), prefix + ".weight_t")], prefix)
        return g.op("Add", [y, g.const(_np(sd[prefix + ".bias"]), prefix + ".bias")], prefix)

    def layer_norm(x, prefix, eps):
        return g.op("LayerNormalization", [x, g.const(_np(sd[prefix + ".weight"]), prefix + ".weight"),
                                           g.const(_np(sd[prefix + ".bias"]), prefix + ".bias")],
                    prefix, axis=-1, epsilon=float(eps))

    T = g.op("Shape", ["tokens"], "T", start=1, end=2)  # (1,)
    h = g.op("Gather", [g.const(_np(sd["tok_emb.weight"]), "tok_emb"), "tokens"], "emb", axis=0)
    table = _np(sd["pos_emb.weight"]) if cfg.positions == "learned" else _np(model.pos_table)
    pos = g.op("Slice", [g.const(table, "positions"), g.const([0], "c", i64), T, g.const([0], "c", i64)], "pos")
    h = g.op("Add", [h, pos], "h")
    # causal mask (T, T): -inf where key position j > query position i
    r = g.op("Range", [g.const(0, "c", i64), g.op("Squeeze", [T, g.const([0], "c", i64)]), g.const(1, "c", i64)])
    future = g.op("Less", [g.op("Unsqueeze", [r, g.const([1], "c", i64)]), g.op("Unsqueeze", [r, g.const([0], "c", i64)])])
    neg_inf = g.const(np.float32(-np.inf), "neg_inf")
    H, D = cfg.n_heads, cfg.d_model
    heads_shape = g.const([0, 0, H, D // H], "heads_shape", i64)
    merge_shape = g.const([0, 0, D], "merge_shape", i64)
    scale = g.const(np.float32(1.0 / math.sqrt(D // H)), "attn_scale")
    for b, blk in enumerate(model.blocks):
        p = f"blocks.{b}"
        a = layer_norm(h, p + ".ln_attn", blk.ln_attn.eps)
        q, k, v = (g.op("Reshape", [linear(a, f"{p}.attn.{n}_proj"), heads_shape]) for n in "qkv")
        q = g.op("Transpose", [q], perm=[0, 2, 1, 3])                  # (B, H, T, dh)
        kt = g.op("Transpose", [k], perm=[0, 2, 3, 1])                 # (B, H, dh, T)
        v = g.op("Transpose", [v], perm=[0, 2, 1, 3])
        s = g.op("Mul", [g.op("MatMul", [q, kt]), scale], "scores")    # (B, H, T, T)
        s = g.op("Where", [future, neg_inf, s], "masked")
        y = g.op("MatMul", [g.op("Softmax", [s], axis=-1), v])          # (B, H, T, dh)
        y = g.op("Reshape", [g.op("Transpose", [y], perm=[0, 2, 1, 3]), merge_shape])
        h = g.op("Add", [h, linear(y, f"{p}.attn.out_proj")], "h")
        f = linear(layer_norm(h, p + ".ln_ff", blk.ln_ff.eps), f"{p}.ff.ff_in")
        gelu = g.op("Mul", [g.op("Mul", [f, g.const(np.float32(0.5), "half")]),
                            g.op("Add", [g.op("Erf", [g.op("Mul", [f, g.const(np.float32(1 / math.sqrt(2)), "inv_sqrt2")])]),
                                         g.const(np.float32(1.0), "one")])], "gelu")
        h = g.op("Add", [h, linear(gelu, f"{p}.ff.ff_out")], "h")
    h = layer_norm(h, "ln_final", model.ln_final.eps)
    head = sd["tok_emb.weight"] if cfg.tie_embeddings else sd["lm_head.weight"]
    logits = linear(h, "lm_head", head)
    g.op("Identity", [logits], outputs=["logits"])
    graph = helper.make_graph(g.nodes, "transformer_lm",
                              [helper.make_tensor_value_info("tokens", TensorProto.INT64, ["batch", "tokens"])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT,
                                                             ["batch", "tokens", cfg.vocab_size])], g.inits)
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="green-asr")
    helper.set_model_props(onnx_model, {"format": FORMAT, "format_version": FORMAT_VERSION, "config": cfg.to_json(),
                                        "vocab": json.dumps(list(vocab.words)), "vocab_sha1": vocab.fingerprint()})
    onnx.checker.check_model(onnx_model)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    tmp = out_path + ".tmp"
    onnx.save(onnx_model, tmp)
    os.replace(tmp, out_path)
    return {"path": out_path, "file_bytes": os.path.getsize(out_path)}


class OnnxTransformerLM:
    """An onnxruntime session over an exported LM: ``model(tokens (B, T) int64) -> logits (B, T, V)``.
    ``cfg`` and ``vocab`` come from the file; ``device`` is the CPU (onnxruntime's CPU provider)."""

    device = torch.device("cpu")

    def __init__(self, path: str, num_threads=None):
        self.session, meta = cpu_session(path, num_threads, LMOnnxError)
        if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
            raise LMOnnxError(f"{path}: not a {FORMAT} v{FORMAT_VERSION} file (format={meta.get('format')!r})")
        try:
            self.cfg = TransformerLMConfig.from_dict(json.loads(meta["config"]), source=path)
            self.vocab = Vocab(json.loads(meta["vocab"]))
        except (KeyError, json.JSONDecodeError, ValueError, TypeError) as e:
            raise LMOnnxError(f"{path}: bad metadata: {e}") from None
        if self.vocab.fingerprint() != meta.get("vocab_sha1") or len(self.vocab) != self.cfg.vocab_size:
            raise LMOnnxError(f"{path}: the stored vocabulary does not match its sha1 or the config")

    def eval(self) -> "OnnxTransformerLM":
        return self

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be (B, T), got shape {tuple(tokens.shape)}")
        if tokens.shape[1] > self.cfg.max_len:
            raise ValueError(f"input of {tokens.shape[1]} tokens is longer than the model's max_len {self.cfg.max_len}")
        x = np.ascontiguousarray(tokens.detach().cpu().numpy(), dtype=np.int64)
        return torch.from_numpy(self.session.run(["logits"], {"tokens": x})[0])

    forward = __call__


def load_lm_onnx(path: str, vocab=None) -> Tuple[OnnxTransformerLM, Vocab]:
    """(model, its vocabulary); with ``vocab`` given it must equal the model's (first difference named)."""
    m = OnnxTransformerLM(path)
    if vocab is not None and vocab != m.vocab:
        raise ValueError(f"the vocabulary ({len(vocab)} words) is not the one {path} was trained with "
                         f"({len(m.vocab)} words): {m.vocab.first_difference(vocab)}")
    return m, m.vocab
