"""Safe file primitives for model files and checkpoints: atomic writes, code-free reads, finiteness guards.

- :func:`save_atomic` writes to a temporary file in the same directory, fsyncs it and renames it over
  the target, so a killed job leaves either the old or the new file, never a torn one.
- :func:`load` reads with ``weights_only=True`` (no code from the file is ever executed).
- :func:`check_finite` refuses a tensor dict holding NaN or inf (:class:`NonFiniteTensorError`).

The lowest module of ``training``: ``training.model_io`` (model files) and ``training.checkpoint``
(rotating training checkpoints, RNG state) both build on it; ``training.checkpoint`` re-exports every name.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Dict

import torch


def _write_atomic(path, write, binary: bool) -> None:
    """``write(f)`` into a temporary file beside ``path``, fsync, then os.replace: readers see the old file
    or the whole new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_atomic(obj: Dict[str, Any], path) -> None:
    """torch.save ``obj`` to ``path`` atomically (tmp file + fsync + os.replace)."""
    _write_atomic(path, lambda f: torch.save(obj, f), binary=True)


def write_json_atomic(obj: Any, path) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically (tmp file + fsync + os.replace)."""
    import json

    _write_atomic(path, lambda f: json.dump(obj, f, indent=1), binary=False)


class NonFiniteTensorError(ValueError):
    """A model about to be written holds NaN or infinite values."""


def nonfinite_tensors(tensors: Dict[str, Any]) -> list:
    """Names of the floating-point tensors in ``tensors`` (e.g. a state_dict) with a NaN or inf value."""
    return [k for k, t in tensors.items()
            if torch.is_tensor(t) and t.is_floating_point() and not bool(torch.isfinite(t).all())]


def check_finite(tensors: Dict[str, Any], what, action: str = "write") -> None:
    """Raise :class:`NonFiniteTensorError` naming the non-finite tensors of ``tensors``; ``what`` names
    the file that was about to be written (or read, with ``action="read"``)."""
    bad = nonfinite_tensors(tensors)
    if bad:
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise NonFiniteTensorError(f"refusing to {action} {what}: non-finite values in tensor(s) "
                                   f"{', '.join(bad[:5])}{more}")


def load(path, map_location="cpu") -> Dict[str, Any]:
    """Load a checkpoint written by :func:`save_atomic`; never unpickles arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise RuntimeError(f"cannot read checkpoint {path}: {e}") from e
