"""Shared fixtures: the ``tiny`` embedded corpus, built once per test session."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from models.quantizers import SUPPORTED_BITS  # noqa: E402

# a bit-width the code rejects (the smallest one missing from models.quantizers.SUPPORTED_BITS)
INVALID_BITS = min(b for b in range(1, 33) if b not in SUPPORTED_BITS)


def run_cli(args, cwd=ROOT, env=None, timeout=900):
    """Run a top-level CLI of this repository with the current interpreter; fail with its output."""
    e = dict(os.environ)
    # one thread: kill-and-resume tests compare parameters bit for bit, and the float summation order
    # (hence the last bits) depends on the thread count
    e["OMP_NUM_THREADS"] = "1"
    e.update(env or {})
    r = subprocess.run([sys.executable] + [str(a) for a in args], cwd=cwd, env=e, capture_output=True,
                       text=True, timeout=timeout)
    if r.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} failed ({r.returncode}):\n{r.stdout[-3000:]}\n"
                             f"{r.stderr[-6000:]}")
    return r


def run_and_kill_after_checkpoints(args, n: int = 2, timeout: float = 600):
    """Start a CLI, SIGKILL it right after its n-th "saved checkpoint" log line; return that count."""
    import signal
    import time

    proc = subprocess.Popen([sys.executable] + [str(a) for a in args], cwd=ROOT,
                            env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    saved, deadline = 0, time.time() + timeout
    for line in proc.stderr:
        if "saved checkpoint at step" in line:
            saved += 1
            if saved == n:
                proc.send_signal(signal.SIGKILL)
                break
        assert time.time() < deadline, "timed out waiting for checkpoints"
    proc.wait()
    assert saved == n, f"the run ended after {saved} checkpoints, before the {n}th"
    assert proc.returncode == -signal.SIGKILL
    return saved


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    """``prepare_data.py --corpus synth --size tiny`` (about 15 s), shared by the whole session."""
    out = tmp_path_factory.mktemp("synth_tiny")
    run_cli(["prepare_data.py", "--corpus", "synth", "--size", "tiny", "--out", out, "--seed", "0"])
    return out


@pytest.fixture(scope="session")
def small_train_config(tmp_path_factory) -> Path:
    """A retrain/search config with small batches so the tiny corpus gives several steps per epoch."""
    p = tmp_path_factory.mktemp("cfg") / "train_tiny.yaml"
    p.write_text(
        "train:\n  epochs: 2\n  max_duration: 20.0\n  warmup_steps: 2\n  checkpoint_every: 2\n"
        "  log_every: 1\n  valid_max_duration: 60.0\n"
        "lfmmi:\n  den_order: 2\n"
    )
    return p


def run_cli_fail(args, cwd=ROOT, env=None, timeout=900):
    """Run a CLI that must fail; return the completed process (returncode, stdout, stderr)."""
    e = dict(os.environ)
    e["OMP_NUM_THREADS"] = "1"
    e.update(env or {})
    r = subprocess.run([sys.executable] + [str(a) for a in args], cwd=cwd, env=e, capture_output=True,
                       text=True, timeout=timeout)
    if r.returncode == 0:
        raise AssertionError(f"{' '.join(map(str, args))} succeeded but should have failed:\n"
                             f"{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
    return r


def corpus_with_nan_features(src: Path, dst: Path, split: str = "train", num_cuts: int = 1,
                             frames=(10, 11, 12)) -> list:
    """Copy the prepared corpus ``src`` to ``dst`` with NaN in ``frames`` of the first ``num_cuts`` cuts
    of ``split`` (features rewritten as .npy files); return the ids of the poisoned cuts."""
    import shutil

    import numpy as np
    from lhotse import CutSet
    from lhotse.features.io import NumpyFilesWriter

    shutil.copytree(src, dst)
    cuts = list(CutSet.from_file(dst / f"cuts_{split}.jsonl.gz"))
    bad = []
    with NumpyFilesWriter(str(dst / "feats_nan")) as w:
        for c in cuts[:num_cuts]:
            f = np.asarray(c.load_features(), dtype=np.float32).copy()
            f[list(frames)] = np.nan
            key = w.write(c.id, f)
            c.features.storage_type, c.features.storage_path, c.features.storage_key = \
                w.name, str(dst / "feats_nan"), key
            bad.append(c.id)
    CutSet.from_cuts(cuts).to_file(dst / f"cuts_{split}.jsonl.gz")
    return bad
