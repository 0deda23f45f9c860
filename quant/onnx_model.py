"""Run an exported ``model.onnx`` (``quant.onnx_export``) with onnxruntime behind the acoustic-model interface.

:class:`OnnxAcousticModel` is called like the PyTorch TDNN-F in eval mode,
``model(feats (B, T, F), lengths (B,)) -> (chain (B, T_out, num_pdfs), None, out_lengths (B,))``, with torch
tensors in and out, so decoding, rescoring and the benchmarks use it unchanged. The ONNX graph applies the
model's CMVN itself: ``model.cmvn`` is then None and ``model.cmvn_in_graph`` True, and callers must not
normalise the features again (``decoding.cli.load_model_and_cmvn`` knows). ``model.phones`` and
``model.cfg`` come from the file's metadata. It runs on onnxruntime's CPU provider only.
"""
from __future__ import annotations

import json
import os
from typing import Optional

import numpy as np
import torch

from models.config import TDNNFConfig
from quant.onnx_export import FORMAT, FORMAT_VERSION


class OnnxModelError(ValueError):
    """A file that is not a readable acoustic-model ONNX export."""


def cpu_session(path: str, num_threads: Optional[int] = None, error=OnnxModelError):
    """``(onnxruntime.InferenceSession on the CPU provider, its custom metadata dict)`` for ``path``;
    ``num_threads`` intra-op threads (default: ``torch.get_num_threads()``, PyTorch's budget in this
    process). A missing or unloadable file raises ``error`` with the path and the runtime's message."""
    import onnxruntime as ort

    if not os.path.isfile(path):
        raise error(f"{path}: no such file")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(num_threads or torch.get_num_threads())
    opts.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime's error classes differ between versions
        raise error(f"{path}: onnxruntime cannot load it: {' '.join(str(e).split())[:300]}") from None
    return session, dict(session.get_modelmeta().custom_metadata_map)


class OnnxAcousticModel:
    """An onnxruntime session over an exported acoustic model. ``num_threads``: onnxruntime's intra-op
    threads (default: ``torch.get_num_threads()``, the same budget PyTorch has in this process)."""

    def __init__(self, path: str, num_threads: Optional[int] = None):
        self.session, meta = cpu_session(path, num_threads)
        if meta.get("format") != FORMAT:
            raise OnnxModelError(f"{path}: not a {FORMAT} file (format={meta.get('format')!r})")
        if meta.get("format_version") != FORMAT_VERSION:
            raise OnnxModelError(f"{path}: unsupported format_version {meta.get('format_version')!r}")
        try:
            self.cfg = TDNNFConfig.from_dict(json.loads(meta["config"]))
            self.cmvn_in_graph = bool(json.loads(meta.get("cmvn_in_graph", "false")))
            self.phones = json.loads(meta["phones"]) if "phones" in meta else None
            self.weights = json.loads(meta.get("weights", "{}"))
        except (KeyError, json.JSONDecodeError, ValueError, TypeError) as e:
            raise OnnxModelError(f"{path}: bad metadata: {e}") from None
        if self.phones is not None and self.cfg.num_pdfs != 2 * len(self.phones):
            raise OnnxModelError(f"{path}: {len(self.phones)} phones give {2 * len(self.phones)} pdfs, the model "
                                 f"has {self.cfg.num_pdfs}")
        self.cmvn = None
        self.metadata = meta
        self.path = path

    def eval(self) -> "OnnxAcousticModel":
        return self

    def to(self, device) -> "OnnxAcousticModel":
        if str(device) != "cpu":
            raise OnnxModelError(f"ONNX models run on onnxruntime's CPU provider; got --device {device}")
        return self

    def __call__(self, feats: torch.Tensor, lengths: torch.Tensor, ivectors=None):
        if ivectors is not None:
            raise OnnxModelError("the ONNX export takes no i-vectors")
        if feats.dim() != 3 or feats.shape[2] != self.cfg.feat_dim:
            raise ValueError(f"feats must be (B, T, {self.cfg.feat_dim}), got {tuple(feats.shape)}")
        lens = lengths.detach().cpu().numpy().astype(np.int64)
        if lens.shape != (feats.shape[0],) or (lens < 1).any() or (lens > feats.shape[1]).any():
            raise ValueError("lengths must be (B,) in [1, T]")
        x = np.ascontiguousarray(feats.detach().cpu().numpy(), dtype=np.float32)
        chain, out_lengths = self.session.run(["chain", "out_lengths"], {"feats": x, "lengths": lens})
        return torch.from_numpy(chain), None, torch.from_numpy(out_lengths)

    forward = __call__
