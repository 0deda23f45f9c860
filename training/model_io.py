"""Model files for decoding: ``model.pt`` (float weights + config + CMVN + phone list), packed
``.safetensors`` and its ONNX export ``.onnx``.

``model.pt`` is a plain dict of tensors and strings, read with ``weights_only=True``. The packed file is
:mod:`quant.packing`'s format; the CMVN statistics and the phone list ride in its metadata so the file
alone suffices. The phone list (``SIL`` first; phone k owns pdfs 2k and 2k+1, docs/INTERFACES.md) is what
the output units mean: decoding builds its graph over it, whatever phones a corpus's lexicon happens to use.
A loaded model carries ``.cmvn`` and ``.phones`` (None for files written before phone lists were recorded).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional, Sequence

from models.bottleneck_order import order_bottlenecks_
from models.config import TDNNFConfig
from models.layout import copy_weights_to_bottlenecks
from models.tdnnf import build_model
from quant.onnx_model import OnnxAcousticModel
from quant.packing import load_packed, read_header
from training import safe_io
from training.data import Cmvn

log = logging.getLogger(__name__)


def check_phones(model, phones: Optional[Sequence[str]]) -> None:
    """A phone list must give the model's pdfs: 2 per phone (chain topology), ``SIL`` first."""
    if phones is None:
        return
    n = getattr(model.cfg, "num_pdfs", None)
    if n is not None and 2 * len(phones) != n:
        raise ValueError(f"{len(phones)} phones give {2 * len(phones)} pdfs, the model has {n}")


def save_model_file(model, path, cmvn: Optional[Cmvn] = None, phones: Optional[Sequence[str]] = None) -> None:
    """Write ``model`` (weights, config, CMVN, phone list) to ``path`` atomically; refuses a non-finite
    tensor."""
    safe_io.check_finite(model.state_dict(), path)
    check_phones(model, phones)
    obj = {"config": model.cfg.to_json(), "state_dict": model.state_dict(), "format": "green-asr-model-v1"}
    if cmvn is not None:
        obj["cmvn_mean"] = cmvn.mean.clone()
        obj["cmvn_std"] = cmvn.std.clone()
    if phones is not None:
        obj["phones"] = json.dumps(list(phones))
    safe_io.save_atomic(obj, path)


def cmvn_metadata(cmvn: Optional[Cmvn]) -> dict:
    if cmvn is None:
        return {}
    return {"cmvn": json.dumps({"mean": cmvn.mean.tolist(), "std": cmvn.std.tolist()})}


def model_metadata(cmvn: Optional[Cmvn], phones: Optional[Sequence[str]] = None) -> dict:
    """The packed file's metadata: CMVN statistics and the phone list (JSON strings)."""
    meta = cmvn_metadata(cmvn)
    if phones is not None:
        meta["phones"] = json.dumps(list(phones))
    return meta


def load_model_file(path, device="cpu"):
    """A model file by its suffix: ``.safetensors`` (packed), ``.onnx`` (``quant.onnx_model``: an
    onnxruntime session behind the same call interface, CPU only), else ``model.pt``."""
    p = Path(path)
    if p.suffix == ".onnx":
        return OnnxAcousticModel(str(p)).to(device)
    if p.suffix == ".safetensors":
        model = load_packed(str(p), device=str(device))
        meta = read_header(str(p)).get("__metadata__", {})
        model.cmvn = Cmvn(**json.loads(meta["cmvn"])) if "cmvn" in meta else None
        model.phones = json.loads(meta["phones"]) if "phones" in meta else None
        check_phones(model, model.phones)
        return model
    obj = safe_io.load(p, map_location="cpu")
    if not isinstance(obj, dict) or obj.get("format") != "green-asr-model-v1":
        fmt = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(f"{p} is not a model file written by retrain.py (format={fmt!r})")
    safe_io.check_finite(obj["state_dict"], p, action="read")
    cfg = TDNNFConfig.from_dict(json.loads(obj["config"]))
    model = build_model(cfg)
    try:
        model.load_state_dict(obj["state_dict"])
    except RuntimeError as e:
        raise RuntimeError(f"{p}: weights do not match the recorded architecture: {e}") from e
    model.cmvn = Cmvn(obj["cmvn_mean"], obj["cmvn_std"]) if "cmvn_mean" in obj else None
    model.phones = json.loads(obj["phones"]) if "phones" in obj else None
    check_phones(model, model.phones)
    return model.to(device)


def init_from(model, path, order: str = "pca") -> None:
    """Start ``model`` (a TDNN-F or supernet) from the float weights of the model file ``path``.

    The source's bottleneck units are first ordered by importance (``models.bottleneck_order``, a
    function-preserving rotation or permutation; ``order="none"`` skips it), then a smaller bottleneck
    keeps the first units (``models.layout.copy_weights_to_bottlenecks``): a low-rank network starts from
    the best rank-d part of each layer instead of an arbitrary half of its units."""
    src = load_model_file(path)
    order_bottlenecks_(src, order)
    try:
        copied, sliced = copy_weights_to_bottlenecks(model, src.state_dict())
    except (KeyError, ValueError) as e:
        raise RuntimeError(f"--init-from {path}: {e.args[0]}") from None
    log.info("initialised from %s (bottlenecks ordered: %s; %d tensors copied, %d sliced to smaller bottlenecks)",
             path, order, copied, sliced)
