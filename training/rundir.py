"""What a training output directory holds, and who may write it.

``run_identity.json`` records what the run is (kind, space, architecture, genotype hash, config hash,
data, seed, init-from / distill-from paths). ``--resume`` on a directory whose identity differs is
refused *before anything is written* (:func:`check_identity`), naming the fields that differ.

``.run.lock`` is held with ``fcntl.flock`` for the life of the process (rank 0 under torchrun), so a
second process on the same ``--out`` is refused at once; the kernel releases the lock when the process
ends, even by ``kill -9``. (``.lock`` in the same directory belongs to ``run_experiments.py``'s
per-system lock, which has a different protocol.)

    check_identity(out, identity, resume)      # read-only; raises RunDirError on a mismatch
    lock = claim_out_dir(out, identity, resume, is_main)   # mkdir, lock, write run_identity.json
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Dict, Optional

log = logging.getLogger(__name__)

IDENTITY_FILE = "run_identity.json"
LOCK_FILE = ".run.lock"
# config keys that may change between a run and its --resume (they extend or shorten it)
RESUMABLE_TRAIN_KEYS = ("epochs", "max_steps", "checkpoint_every", "log_every")

_held_locks = []  # open lock files, kept for the life of the process


class RunDirError(RuntimeError):
    """The output directory holds another run, or another process is writing it."""


def stable_hash(obj: Any) -> str:
    """A short hash of ``obj``'s canonical JSON (sorted keys)."""
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def config_hash(cfg: Dict[str, Any], **extra) -> str:
    """Hash of the parsed config sections plus ``extra`` settings, leaving out the train keys a resumed
    run may change (:data:`RESUMABLE_TRAIN_KEYS`)."""
    cfg = {k: (dict(v) if isinstance(v, dict) else v) for k, v in (cfg or {}).items()}
    for k in RESUMABLE_TRAIN_KEYS:
        if isinstance(cfg.get("train"), dict):
            cfg["train"].pop(k, None)
    return stable_hash({"config": cfg, **extra})


def genotype_hash(geno) -> str:
    """Hash of a genotype's architecture (per layer: name, bits, bottleneck), not of its metadata."""
    return stable_hash([[l.name, l.bits, l.bottleneck] for l in geno.layers])


def abspath_or_none(p) -> Optional[str]:
    return os.path.abspath(str(p)) if p else None


def check_identity(out: Path, identity: Dict[str, Any], resume: bool) -> None:
    """With ``resume``, refuse (RunDirError) when ``out`` records a different run. Writes nothing."""
    path = Path(out) / IDENTITY_FILE
    if not resume or not path.is_file():
        return
    try:
        old = json.loads(path.read_text())
    except ValueError as e:
        raise RunDirError(f"refusing to --resume {out}: {path} is unreadable ({e})") from None
    diffs = [k for k in sorted(set(old) | set(identity)) if old.get(k) != identity.get(k)]
    if diffs:
        what = "; ".join(f"{k}: {old.get(k)!r} there, {identity.get(k)!r} now" for k in diffs)
        raise RunDirError(f"refusing to --resume {out}: it holds a different run ({what}); "
                          f"use another --out, or drop --resume to start over")


def acquire_lock(out: Path):
    """Take the exclusive lock of ``out`` or raise RunDirError naming the holder's pid."""
    import fcntl

    path = Path(out) / LOCK_FILE
    f = open(path, "a+")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = f.read().strip() or "unknown"
        f.close()
        raise RunDirError(f"{out} is in use by another process (pid {holder}, lock {path}); "
                          f"wait for it to finish or choose another --out") from None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    _held_locks.append(f)
    return f


def write_identity(out: Path, identity: Dict[str, Any]) -> None:
    path = Path(out) / IDENTITY_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(identity, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def remove_stale_temp_files(out: Path) -> None:
    """Delete the ``*.tmp`` files in ``out`` that a killed process left mid-way through an atomic write
    (``<name>.<random>.tmp`` of save_atomic, ``checkpoint.prev.pt.tmp``, ``run_identity.json.tmp``,
    ``size.json.tmp``, ...). Called under ``out``'s lock: no live process is writing them."""
    for p in sorted(Path(out).glob("*.tmp")):
        if p.is_file():
            log.warning("removing %s, left by a killed run", p)
            p.unlink(missing_ok=True)


def claim_out_dir(out, identity: Dict[str, Any], resume: bool, is_main: bool = True):
    """Check the identity (all ranks), then on the main rank create ``out``, lock it and record the
    identity. Returns the lock file (held until the process ends) or None on other ranks."""
    out = Path(out)
    check_identity(out, identity, resume)
    if not is_main:
        return None
    if resume and not (out / IDENTITY_FILE).is_file() and (out / "checkpoint.pt").is_file():
        log.warning("%s has no %s (written by an older version): its identity is not checked", out,
                    IDENTITY_FILE)
    out.mkdir(parents=True, exist_ok=True)
    lock = acquire_lock(out)
    check_identity(out, identity, resume)  # again under the lock: another process may have written it
    remove_stale_temp_files(out)
    write_identity(out, identity)
    return lock
