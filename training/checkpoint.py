"""Atomic checkpoints and model files.

- :func:`save_atomic` writes to a temporary file in the same directory, fsyncs it and renames it over
  the target, so a killed job leaves either the old or the new checkpoint, never a torn one.
  (:func:`save_atomic`, :func:`load` and :func:`check_finite` are defined in ``training.safe_io``, which
  ``training.model_io`` uses too; they are re-exported here.)
- :func:`save_rotating` does the same and first moves the previous checkpoint to ``<name>.prev.pt``
  (by a hard link and a rename: at every moment both files are complete); :func:`load_latest` falls
  back to that previous one, with a warning, when the latest is missing or unreadable.
- :func:`load` reads with ``weights_only=True`` (no code from the file is ever executed).
- :func:`rng_state` / :func:`set_rng_state` capture every random generator a training step uses, so
  ``--resume`` continues exactly where a killed run stopped.
- :func:`load_acoustic_model` rebuilds an inference model from a ``model.pt`` (float training output)
  or from a packed ``.safetensors`` export.
"""
from __future__ import annotations

import logging
import os
import random
import shutil
from pathlib import Path
from typing import Any, Dict

import numpy as np
import torch

from training.model_io import load_model_file
from training.safe_io import NonFiniteTensorError, check_finite, load, nonfinite_tensors, save_atomic

__all__ = ["NonFiniteTensorError", "check_finite", "has_checkpoint", "load", "load_acoustic_model", "load_latest",
           "nonfinite_tensors", "previous_path", "rng_state", "save_atomic", "save_rotating", "set_rng_state"]

log = logging.getLogger(__name__)


def previous_path(path) -> Path:
    """``checkpoint.pt`` -> ``checkpoint.prev.pt``."""
    path = Path(path)
    return path.with_name(path.stem + ".prev" + path.suffix)


def save_rotating(obj: Dict[str, Any], path) -> None:
    """Save ``obj`` to ``path`` atomically, keeping the checkpoint it replaces as ``previous_path(path)``."""
    path = Path(path)
    if path.is_file():
        prev = previous_path(path)
        tmp = prev.with_name(prev.name + ".tmp")
        if tmp.exists():
            tmp.unlink()
        try:
            os.link(path, tmp)
        except OSError:  # no hard links on this file system
            shutil.copyfile(path, tmp)
        os.replace(tmp, prev)
    save_atomic(obj, path)


def has_checkpoint(path) -> bool:
    """Whether ``path`` or its previous version exists (what :func:`load_latest` can try)."""
    return Path(path).is_file() or previous_path(path).is_file()


def load_latest(path, map_location="cpu"):
    """-> (state, path read): ``path``, or ``previous_path(path)`` with a warning when ``path`` is
    missing or unreadable. Raises when neither can be read."""
    path, prev = Path(path), previous_path(path)
    try:
        return load(path, map_location), path
    except (FileNotFoundError, RuntimeError) as e:
        if not prev.is_file():
            raise
        log.warning("%s; falling back to the previous checkpoint %s", e, prev)
        return load(prev, map_location), prev


def rng_state() -> Dict[str, Any]:
    st = {
        "torch": torch.get_rng_state(),
        "numpy": _np_state_to_plain(np.random.get_state()),
        "python": _py_state_to_plain(random.getstate()),
    }
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: Dict[str, Any]) -> None:
    torch.set_rng_state(st["torch"])
    np.random.set_state(_plain_to_np_state(st["numpy"]))
    random.setstate(_plain_to_py_state(st["python"]))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def _np_state_to_plain(s):
    return {"name": s[0], "keys": torch.from_numpy(np.asarray(s[1], dtype=np.int64)), "pos": int(s[2]),
            "has_gauss": int(s[3]), "gauss": float(s[4])}


def _plain_to_np_state(d):
    return (d["name"], d["keys"].numpy().astype(np.uint32), d["pos"], d["has_gauss"], d["gauss"])


def _py_state_to_plain(s):
    return {"version": s[0], "state": torch.tensor(s[1], dtype=torch.int64), "gauss": s[2]}


def _plain_to_py_state(d):
    return (d["version"], tuple(int(x) for x in d["state"].tolist()), d["gauss"])


def load_acoustic_model(path, device="cpu"):
    """An inference model (eval mode) from ``model.pt`` or a packed ``*.safetensors`` file.

    Its ``forward(feats, lengths)`` returns ``(chain_out, xent_out, out_lengths)`` (docs/INTERFACES.md);
    it carries ``.cmvn`` (a :class:`training.data.Cmvn` or None) when the file records one.
    """
    model = load_model_file(path, device=device)
    model.eval()
    return model
