#!/usr/bin/env python
"""Kill soak of the experiment runner: SIGKILL it at random moments, restart it, compare with a clean run.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/kill_soak.py --seed 0 --kills 10 [--data-dir DIR] [--work DIR --keep]

1. Builds the tiny corpus (``prepare_data.py --corpus synth --size tiny --seed 0``) unless ``--data-dir``
   names one, and writes the tiny experiment of ``tests/test_e2e_tiny.py`` (fp32, uniform4, nas_r8 and
   its ONNX export, 3 steps of training/search each) into the work directory.
2. Runs ``run_experiments.py`` once, uninterrupted, into ``ref/``, timing it (T) and its console lines
   (``[i/n] <system>``, ``<stage> ...``, ``<stage> done in``, ``=>``, ``table:``: the anchors).
3. Runs it into ``soak/``: ``--kills`` kill points are drawn (seeded) uniformly in (0, T) and sorted; a
   point is "anchor A + s seconds" of the reference run. Each attempt runs the runner until it prints A
   (or a later anchor: finished stages are skipped on a restart), waits s seconds, then SIGKILLs the whole
   process group (runner and stage subprocesses, started with ``start_new_session=True``), as if the
   machine lost power, and waits until every process of it is gone. So the kills spread over every stage
   of the pipeline, as they would over a real run's time, although each restart redoes some work. An
   attempt that finishes before its point draws a new one. After the last kill the runner runs to the end.
4. Compares ``soak/`` with ``ref/``: the results table (``results.csv``/``.json``/``.md``, every column
   but times), every ``genotype*.json`` (paths of the run directory normalised), each system's model
   (``model.safetensors``, ``model.onnx`` for the ONNX system; ``model.pt`` reported too) byte for byte
   and, for ``.safetensors``, by content: the safetensors writer orders the header's metadata keys
   differently in every process, so even two clean runs differ in those header bytes. Every other
   file is compared too (JSON up to times and paths, ``.pt`` by value: pickle's memo makes a resumed
   run's checkpoint bytes differ where its values do not; logs and TensorBoard event files are not), and
   ``soak/`` is searched for leftovers: temporary files (``*.tmp``, ``*.tmp.*``, ``*.part*``), runner
   ``.lock`` files, a ``.run.lock`` still held, files the clean run does not have, and half-written files
   (JSON/JSONL that does not parse, a torn ``.pt`` zip or ``.safetensors``).

Prints what the restarts recovered from (training stages resumed from a checkpoint, stale locks and
temporary files removed), how the other files compare, one summary line, and writes a JSON summary
(``--summary``; default ``<work>/summary.json`` when the work directory is kept, else
``$TMPDIR/kill_soak_seed<seed>.json``). Exit status 0 only when every kill
was survived, the soak run finished, the table, genotypes and models (tensors and metadata) are
identical, and nothing is left over or missing; other files that differ are listed, not failed.
Standard library only, but for the project's ``training.safe_io`` (and torch) to compare ``.pt`` files by
value; the CLIs run as subprocesses (a script never imports another script).
"""
from __future__ import annotations

import argparse
import csv
import fnmatch
import json
import os
import queue
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[1]

TRAIN_CONFIG = ("train:\n  epochs: 2\n  max_duration: 20.0\n  warmup_steps: 2\n  checkpoint_every: 2\n"
                "  log_every: 1\n  valid_max_duration: 60.0\n"
                "lfmmi:\n  den_order: 2\n")  # tests/conftest.py small_train_config

# names of temporary / partial files the project's writers use (training/safe_io.save_atomic:
# "<name>.<random>.tmp"; checkpoint rotation "checkpoint.prev.pt.tmp"; run_identity.json.tmp; the
# runner's size.json.tmp and genotype_in.tmp; export_onnx's model.onnx.tmp; train_search's arch_probs.tmp)
TEMP_PATTERNS = ["*.tmp", "*.tmp.*", "*.part", "*.partial", "*~", ".#*"]
RUNNER_LOCK = ".lock"      # run_experiments.py's per-system lock (holds a pid)
RUN_LOCK = ".run.lock"     # training.rundir's flock file: persists by design, must not be held
TIME_KEY = re.compile(r"(^|_)(seconds|secs|time|elapsed|rtf)($|_)", re.I)
TFEVENTS = "events.out.tfevents.*"  # names carry time, host and pid: one more per (re)start


def experiment_config(data_dir: Path, train_cfg: Path, steps: int = 3) -> str:
    """The tiny experiment of tests/test_e2e_tiny.py (``steps`` optimizer steps per training and search)."""
    return (f"data_dir: {data_dir}\nspace: tdnnf_demo\nretrain_config: {train_cfg}\n"
            f"search_config: {train_cfg}\nsplits: [dev, test]\n"
            f"retrain_args: [--max-steps, {steps}]\n"
            "systems:\n"
            "  - {name: fp32, kind: fp32}\n"
            "  - {name: uniform4, kind: uniform, bits: 4}\n"
            f"  - {{name: nas_r8, kind: nas, budget_ratio: 8, search_args: [--max-steps, {steps}]}}\n"
            "  - {name: nas_r8_onnx, kind: onnx, onnx_from: nas_r8}\n")


def env() -> Dict[str, str]:
    # one thread: training resume is compared bit for bit, and the float summation order depends on it
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


# ------------------------------------------------------------------------------------------ running
def group_alive(pgid: int) -> List[int]:
    """Pids of the live (not zombie) processes of process group ``pgid``."""
    pids = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            stat = (p / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()  # state ppid pgrp ...
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            pids.append(int(p.name))
    return pids


def kill_group(proc: subprocess.Popen, timeout: float = 300.0) -> float:
    """SIGKILL the whole process group of ``proc`` (a session leader) and wait until none of it runs (a
    process inside a system call, e.g. fsync, dies when it returns; a stage's flock is released only
    then). Returns the seconds that took."""
    t0 = time.time()
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    deadline = time.time() + timeout
    while group_alive(proc.pid) and time.time() < deadline:  # grandchildren are reaped by init
        time.sleep(0.05)
    left = group_alive(proc.pid)
    if left:
        raise RuntimeError(f"processes {left} of the killed group {proc.pid} are still alive")
    return time.time() - t0


class Anchors:
    """Landmarks in the runner's console output, the same in every run: ``<system>: start``,
    ``<system>: <stage> ...`` / ``<system>: <stage> done``, ``<system>: result`` and ``table``."""

    def __init__(self):
        self.system = ""

    def key(self, line: str) -> Optional[str]:
        m = re.match(r"\[\d+/\d+\] (\S+) \(", line)
        if m:
            self.system = m.group(1)
            return f"{self.system}: start"
        if line.startswith("    => "):
            return f"{self.system}: result"
        m = re.match(r"    (.+?) (\.\.\.|done in \d+ s)$", line)
        if m:
            return f"{self.system}: {m.group(1)} {'...' if m.group(2) == '...' else 'done'}"
        if line.startswith("table: "):
            return "table"
        return None


class Attempt:
    """One run of ``run_experiments.py`` in a session (process group) of its own; its console output goes,
    timestamped, to ``log`` and line by line to ``lines`` (None when it closes)."""

    def __init__(self, cfg: Path, out: Path, log: Path):
        self.log_path = log
        self.log = open(log, "a", buffering=1, errors="replace")
        self.log.write(f"\n##### start {time.strftime('%H:%M:%S')}\n")
        self.t0 = time.time()
        cmd = [sys.executable, "run_experiments.py", "--config", str(cfg), "--out", str(out)]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True, text=True, errors="replace")
        self.lines: "queue.Queue[Optional[Tuple[float, str]]]" = queue.Queue()
        self.last_line = "(nothing printed yet)"
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            t = time.time() - self.t0
            self.log.write(f"[{t:7.2f}] {line}")
            self.lines.put((t, line.rstrip("\n")))
        self.lines.put(None)

    def next_line(self, timeout: Optional[float]) -> Tuple[bool, Optional[Tuple[float, str]]]:
        """(False, None) on timeout; (True, None) when the output closed; (True, (t, line)) otherwise."""
        try:
            item = self.lines.get(timeout=timeout)
        except queue.Empty:
            return False, None
        if item is not None and item[1].strip():
            self.last_line = item[1].strip()[:120]
        return True, item

    def kill(self) -> float:
        secs = kill_group(self.proc)
        self.close()
        return secs

    def close(self) -> None:
        self.reader.join(timeout=10)
        self.log.close()


def tail(path: Path, n: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:])


def run_to_end(cfg: Path, out: Path, log: Path, timeout: float) -> Tuple[int, float, List[Tuple[float, str]]]:
    """Run the runner to its end; (exit status, seconds, [(seconds, anchor)] of its console output)."""
    att, parser, anchors = Attempt(cfg, out, log), Anchors(), []
    deadline = att.t0 + timeout
    while True:
        got, item = att.next_line(max(0.0, deadline - time.time()))
        if not got:  # timed out
            att.kill()
            return -1, time.time() - att.t0, anchors
        if item is None:
            break
        key = parser.key(item[1])
        if key is not None:
            anchors.append((item[0], key))
    rc = att.proc.wait()
    secs = time.time() - att.t0
    kill_group(att.proc)  # nothing should be left, but a stage must not outlive its runner
    att.close()
    return rc, secs, anchors


def kill_point(anchors: List[Tuple[float, str]], t: float) -> Tuple[int, str, float]:
    """Instant ``t`` of the reference run as (index of the last anchor at or before it, its key, seconds
    after it); index -1 and key "start" before the first anchor."""
    i = -1
    for j, (ta, _) in enumerate(anchors):
        if ta <= t:
            i = j
    return (i, anchors[i][1], t - anchors[i][0]) if i >= 0 else (-1, "start", t)


def soak_attempt(cfg: Path, out: Path, log: Path, point: Tuple[int, str, float],
                 order: Dict[str, int]) -> Dict[str, Any]:
    """Run the runner until it reaches ``point`` of the reference run (the first anchor at or after the
    point's anchor, in the reference's order, plus the point's offset; stages already done are skipped,
    so the soak's anchor may be a later one), then SIGKILL its process group. Returns what happened."""
    idx, key, offset = point
    att, parser = Attempt(cfg, out, log), Anchors()
    kill_at = att.t0 + offset if idx < 0 else None
    while True:
        wait = None if kill_at is None else max(0.0, kill_at - time.time())
        got, item = att.next_line(wait)
        if not got or (kill_at is not None and time.time() >= kill_at):
            if att.proc.poll() is None:
                at = att.last_line
                secs = att.kill()
                if att.proc.returncode == -signal.SIGKILL:
                    return {"killed": True, "ref_point": f"{key} +{offset:.1f} s", "at": at,
                            "after_s": round(time.time() - att.t0 - secs, 1), "kill_wait_s": round(secs, 2)}
                return {"killed": False, "exit": att.proc.returncode, "ref_point": f"{key} +{offset:.1f} s"}
            if not got:  # it has exited: its output closes next
                time.sleep(0.01)
                continue
        if item is None:
            rc = att.proc.wait()
            kill_group(att.proc)
            att.close()
            return {"killed": False, "exit": rc, "ref_point": f"{key} +{offset:.1f} s", "at": att.last_line}
        k = parser.key(item[1])
        if kill_at is None and k is not None and order.get(k, -1) >= idx:
            kill_at = time.time() + offset


# ------------------------------------------------------------------------------------------ comparing
def normalise(text: str, root: Path) -> str:
    """Replace the run directory's path (as written, and resolved) by <RUN>."""
    for r in sorted({str(root), str(root.resolve())}, key=len, reverse=True):
        text = text.replace(r, "<RUN>")
    return text


def drop_times(obj: Any) -> Any:
    """``obj`` without dict keys that hold a measured time (``*_seconds``, ``rtf``, ...)."""
    if isinstance(obj, dict):
        return {k: drop_times(v) for k, v in obj.items() if not TIME_KEY.search(str(k))}
    if isinstance(obj, list):
        return [drop_times(v) for v in obj]
    return obj


def load_json_norm(path: Path, root: Path) -> Any:
    return drop_times(json.loads(normalise(path.read_text(), root)))


def compare_tables(ref: Path, soak: Path) -> Dict[str, Any]:
    """results.csv cell by cell (time columns left out), results.json up to times, results.md as text."""
    diffs: List[str] = []
    for d, what in ((ref, "ref"), (soak, "soak")):
        if not (d / "results.csv").is_file():
            return {"identical": False, "diffs": [f"{what}: no results.csv"], "columns": []}
    a = list(csv.DictReader(open(ref / "results.csv", newline="")))
    b = list(csv.DictReader(open(soak / "results.csv", newline="")))
    cols_a = list(a[0].keys()) if a else []
    cols_b = list(b[0].keys()) if b else []
    if cols_a != cols_b:
        diffs.append(f"columns differ: {cols_a} vs {cols_b}")
    cols = [c for c in cols_a if not TIME_KEY.search(c)]
    if [r.get("system") for r in a] != [r.get("system") for r in b]:
        diffs.append(f"systems differ: {[r.get('system') for r in a]} vs {[r.get('system') for r in b]}")
    for ra, rb in zip(a, b):
        for c in cols:
            if ra.get(c) != rb.get(c):
                diffs.append(f"{ra.get('system')}.{c}: {ra.get(c)!r} vs {rb.get(c)!r}")
    for name in ("results.json", "results.md"):
        pa, pb = ref / name, soak / name
        if not pa.is_file() or not pb.is_file():
            diffs.append(f"{name} missing")
        elif name.endswith(".json"):
            if load_json_norm(pa, ref) != load_json_norm(pb, soak):
                diffs.append(f"{name} differs")
        elif normalise(pa.read_text(), ref) != normalise(pb.read_text(), soak):
            diffs.append(f"{name} differs")
    return {"identical": not diffs and bool(a), "rows": len(a), "columns": cols, "diffs": diffs}


def compare_genotypes(ref: Path, soak: Path) -> Dict[str, Any]:
    """Every system's genotype*.json (genotype.json, genotype_in.json, search/genotype*.json): equal as
    JSON once the run directory's path is normalised (a genotype's source names its search run)."""
    per: Dict[str, Any] = {}
    for sysdir in sorted(p for p in ref.iterdir() if p.is_dir() and (p / "genotype.json").is_file()):
        files = sorted(str(f.relative_to(sysdir)) for f in sysdir.rglob("genotype*.json"))
        bad = []
        for rel in files:
            fa, fb = sysdir / rel, soak / sysdir.name / rel
            if not fb.is_file():
                bad.append(f"{rel}: missing")
            elif json.loads(normalise(fa.read_text(), ref)) != json.loads(normalise(fb.read_text(), soak)):
                bad.append(f"{rel}: differs")
        per[sysdir.name] = {"files": files, "identical": not bad, "diffs": bad}
    n_ok = sum(v["identical"] for v in per.values())
    return {"identical": n_ok == len(per) and bool(per), "n_identical": n_ok, "n": len(per), "systems": per}


def safetensors_content(path: Path) -> Tuple[Any, bytes]:
    """(parsed header, data bytes) of a .safetensors file."""
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + n]), data[8 + n:]


def compare_models(ref: Path, soak: Path) -> Dict[str, Any]:
    """Per system, the table's model (model.safetensors; model.onnx for an ONNX system), model.pt too:
    byte for byte, and for .safetensors also by content (parsed header + tensor bytes): the safetensors
    writer puts the ``__metadata__`` keys in a hash-map order that changes from one process to the next,
    so two clean runs already differ in those header bytes."""
    per: Dict[str, Any] = {}
    for sysdir in sorted(p for p in ref.iterdir() if p.is_dir() and (p / "size.json").is_file()):
        main = "model.onnx" if (sysdir / "model.onnx").is_file() else "model.safetensors"
        r: Dict[str, Any] = {"file": main}
        for name in ("model.safetensors", "model.onnx", "model.pt"):
            fa, fb = sysdir / name, soak / sysdir.name / name
            if fa.is_file():
                r[name] = fb.is_file() and fa.read_bytes() == fb.read_bytes()
        r["byte_identical"] = bool(r.get(main))
        r["identical"] = r["byte_identical"]
        if main.endswith(".safetensors") and not r["identical"] and (soak / sysdir.name / main).is_file():
            try:
                r["identical"] = safetensors_content(sysdir / main) == safetensors_content(soak / sysdir.name / main)
            except ValueError:
                r["identical"] = False
        per[sysdir.name] = r
    n_ok = sum(v["identical"] for v in per.values())
    n_bytes = sum(v["byte_identical"] for v in per.values())
    return {"identical": n_ok == len(per) and bool(per), "n_identical": n_ok, "n_byte_identical": n_bytes,
            "n": len(per), "systems": per}


def pt_content_equal(a: Path, b: Path) -> bool:
    """Two torch files (checkpoint.pt, model.pt) hold equal values. Their bytes may differ where the values
    do not: pickle memoises by object identity, so a key string shared with another object in one process
    (the optimizer's "step") and a separate copy in a resumed one are written differently."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import torch  # only here: the rest of the script needs the standard library only

    from training.safe_io import load

    def eq(x, y) -> bool:
        if torch.is_tensor(x) or torch.is_tensor(y):
            return torch.is_tensor(x) and torch.is_tensor(y) and x.dtype == y.dtype and torch.equal(x, y)
        if isinstance(x, dict):
            return isinstance(y, dict) and list(x) == list(y) and all(eq(x[k], y[k]) for k in x)
        if isinstance(x, (list, tuple)):
            return type(x) is type(y) and len(x) == len(y) and all(eq(u, v) for u, v in zip(x, y))
        return x == y

    try:
        return eq(load(a), load(b))
    except RuntimeError:
        return False


def files_of(root: Path) -> List[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() or p.is_symlink())


def half_written(path: Path) -> Optional[str]:
    """Why ``path`` looks torn (None if it reads whole): JSON/JSONL that does not parse, a .pt zip with a
    bad member, a .safetensors whose header and size disagree, an empty model file."""
    name = path.name
    try:
        if name.endswith(".json"):
            json.loads(path.read_text())
        elif name.endswith(".jsonl"):
            for i, line in enumerate(path.read_text().splitlines(), 1):
                if line.strip():
                    json.loads(line)
        elif name.endswith(".pt"):
            with zipfile.ZipFile(path) as z:
                badm = z.testzip()
                if badm is not None:
                    return f"bad zip member {badm}"
        elif name.endswith(".safetensors"):
            data = path.read_bytes()
            n = int.from_bytes(data[:8], "little")
            header = json.loads(data[8:8 + n])
            end = max([v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"] or [0])
            if len(data) != 8 + n + end:
                return f"size {len(data)} != header's {8 + n + end}"
        elif name.endswith((".onnx", ".fst")) and path.stat().st_size == 0:
            return "empty"
    except (ValueError, zipfile.BadZipFile, KeyError, UnicodeDecodeError) as e:
        return f"{type(e).__name__}: {str(e)[:100]}"
    return None


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def run_lock_held(path: Path) -> bool:
    import fcntl

    with open(path, "a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    return False


def scan_leftovers(ref: Path, soak: Path) -> Dict[str, Any]:
    """What ``soak/`` holds that a finished run must not: temporary files, runner locks, held run locks,
    files the clean run does not have (TensorBoard event files aside), torn files; and files it lacks."""
    fa, fb = set(files_of(ref)), set(files_of(soak))
    temp = [f for f in sorted(fb) if any(fnmatch.fnmatch(Path(f).name, p) for p in TEMP_PATTERNS)]
    locks = []
    for f in sorted(fb):
        if Path(f).name == RUNNER_LOCK:
            txt = (soak / f).read_text(errors="replace").strip()
            pid = int(txt) if txt.isdigit() else 0
            locks.append({"file": f, "pid": txt, "stale": not pid_alive(pid)})
    held = [f for f in sorted(fb) if Path(f).name == RUN_LOCK and run_lock_held(soak / f)]
    is_events = lambda f: fnmatch.fnmatch(Path(f).name, TFEVENTS)
    listed = set(temp) | {l["file"] for l in locks}
    extra = sorted(f for f in fb - fa if not is_events(f) and f not in listed)
    missing = sorted(f for f in fa - fb if not is_events(f))
    torn = {}
    for f in sorted(fb):
        why = half_written(soak / f)
        if why:
            torn[f] = why
    n = len(temp) + len(locks) + len(held) + len(extra) + len(torn)
    return {"count": n, "temp_files": temp, "runner_locks": locks, "held_run_locks": held,
            "extra_files": extra, "half_written": torn, "missing_files": missing,
            "tfevents": {"ref": sum(map(is_events, fa)), "soak": sum(map(is_events, fb))}}


def compare_other_files(ref: Path, soak: Path) -> Dict[str, Any]:
    """Every file both runs have: byte-equal, of the same content (JSON/JSONL/text up to measured times and
    the run directory's path; .safetensors by header and tensor bytes; .pt by value), or different. Logs,
    TensorBoard event files and ``.run.lock`` (a pid) are expected to differ and only counted."""
    same, up_to, differ, logs = [], [], [], []
    for f in sorted(set(files_of(ref)) & set(files_of(soak))):
        a, b = ref / f, soak / f
        name = Path(f).name
        if name in ("log.txt", RUN_LOCK) or fnmatch.fnmatch(name, TFEVENTS):  # logs, a pid
            logs.append(f)
            continue
        if a.read_bytes() == b.read_bytes():
            same.append(f)
            continue
        try:
            if name.endswith(".safetensors") and safetensors_content(a) == safetensors_content(b):
                up_to.append(f)  # the header's metadata order varies (compare_models)
                continue
            if name.endswith(".pt") and pt_content_equal(a, b):
                up_to.append(f)
                continue
            if name.endswith(".json") and load_json_norm(a, ref) == load_json_norm(b, soak):
                up_to.append(f)
                continue
            if name.endswith(".jsonl"):
                la = [drop_times(json.loads(l)) for l in normalise(a.read_text(), ref).splitlines() if l.strip()]
                lb = [drop_times(json.loads(l)) for l in normalise(b.read_text(), soak).splitlines() if l.strip()]
                if la == lb:
                    up_to.append(f)
                    continue
            if name.endswith((".txt", ".md", ".yaml", ".arpa")) and \
                    normalise(a.read_text(), ref) == normalise(b.read_text(), soak):
                up_to.append(f)
                continue
        except ValueError:
            pass
        differ.append(f)
    return {"byte_identical": len(same), "same_content": up_to, "different": differ,
            "logs_and_locks_not_compared": len(logs)}


def compare(ref: Path, soak: Path) -> Dict[str, Any]:
    return {"table": compare_tables(ref, soak), "genotypes": compare_genotypes(ref, soak),
            "models": compare_models(ref, soak), "leftovers": scan_leftovers(ref, soak),
            "other_files": compare_other_files(ref, soak)}


def coverage(soak: Path, logs: Path) -> Dict[str, int]:
    """What the restarts had to recover from, counted from the logs: training stages resumed from a
    checkpoint, stale runner locks and temporary files of killed writers removed, checkpoint fallbacks."""
    stage = "".join(p.read_text(errors="replace") for p in soak.rglob("log.txt"))
    runner = "".join(p.read_text(errors="replace") for p in logs.glob("soak_*.log"))
    return {"stages_resumed_from_checkpoint": stage.count("resumed from "),
            "checkpoint_fallbacks": stage.count("falling back to the previous checkpoint"),
            "temp_files_removed": stage.count("left by a killed run"),
            "stale_locks_removed": runner.count("removing stale lock")}


def summary_line(kills_done: int, kills: int, survived: bool, res: Dict[str, Any]) -> str:
    g, m, lo = res["genotypes"], res["models"], res["leftovers"]
    return (f"kill soak: {kills_done}/{kills} kills survived{'' if survived else ' (FAILED)'}, "
            f"table identical: {'yes' if res['table']['identical'] else 'no'}, "
            f"genotypes identical: {g['n_identical']}/{g['n']}, "
            f"models byte-identical: {m['n_byte_identical']}/{m['n']} (same tensors and metadata: "
            f"{m['n_identical']}/{m['n']}), leftover temp files: {lo['count']}")


# ------------------------------------------------------------------------------------------ main
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=0, help="seeds the kill instants (default 0)")
    p.add_argument("--kills", type=int, default=10, help="SIGKILLs before the soak run may finish (default 10)")
    p.add_argument("--work", default=None, help="work directory (default: a new temporary one)")
    p.add_argument("--keep", action="store_true", help="keep the work directory (always kept with --work)")
    p.add_argument("--data-dir", default=None, help="a prepared tiny corpus to reuse (default: build one)")
    p.add_argument("--summary", default=None, help="JSON summary path")
    p.add_argument("--max-steps", type=int, default=3,
                   help="optimizer steps of each training and search stage (default 3, as the e2e test; more "
                        "steps give the kills more chances to land mid-training, after a checkpoint)")
    p.add_argument("--timeout", type=float, default=7200, help="seconds allowed for one uninterrupted run")
    args = p.parse_args(argv)
    if args.kills < 0:
        p.error("--kills must be >= 0")

    work = Path(args.work).resolve() if args.work else Path(tempfile.mkdtemp(prefix="kill_soak_"))
    keep = args.keep or args.work is not None
    work.mkdir(parents=True, exist_ok=True)
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    summary_path = Path(args.summary) if args.summary else (
        work / "summary.json" if keep else Path(tempfile.gettempdir()) / f"kill_soak_seed{args.seed}.json")
    t_start = time.time()
    say = lambda s: print(f"[{time.time() - t_start:7.0f} s] {s}", flush=True)
    summary: Dict[str, Any] = {"seed": args.seed, "kills_planned": args.kills, "max_steps": args.max_steps,
                               "work": str(work),
                               "command": " ".join([sys.executable] + sys.argv)}
    ok = False
    try:
        # 1. data and configs
        if args.data_dir:
            data = Path(args.data_dir).resolve()
        else:
            data = work / "data"
            if not (data / "summary.json").is_file():
                say(f"building the tiny corpus in {data}")
                r = subprocess.run([sys.executable, "prepare_data.py", "--corpus", "synth", "--size", "tiny",
                                    "--out", str(data), "--seed", "0"], cwd=ROOT, env=env(),
                                   stdout=open(logs / "prepare_data.log", "wb"), stderr=subprocess.STDOUT)
                if r.returncode != 0:
                    raise RuntimeError(f"prepare_data.py failed:\n{tail(logs / 'prepare_data.log')}")
        train_cfg = work / "train_tiny.yaml"
        train_cfg.write_text(TRAIN_CONFIG)
        cfg = work / "exp.yaml"
        cfg.write_text(experiment_config(data, train_cfg, args.max_steps))
        ref, soak = work / "ref", work / "soak"
        for d in (ref, soak):
            if d.exists():
                shutil.rmtree(d)
        summary["data_dir"] = str(data)

        # 2. the reference run
        say("reference run (uninterrupted) into ref/")
        rc, t_ref, anchors = run_to_end(cfg, ref, logs / "ref.log", args.timeout)
        summary["ref_seconds"] = round(t_ref, 1)
        if rc != 0:
            raise RuntimeError(f"the reference run failed (exit {rc}):\n{tail(logs / 'ref.log')}")
        say(f"reference run done in {t_ref:.0f} s ({len(anchors)} stage lines)")
        order = {k: i for i, (_, k) in enumerate(anchors)}

        # 3. the soak run: kill points drawn uniformly over the reference run's duration, in order; each
        # attempt runs until the soak reaches its point (the same stage, as long after its start), then
        # its process group is killed. A restart that finishes before its point gets a new one.
        rng = random.Random(args.seed)
        points = sorted(kill_point(anchors, rng.uniform(0, t_ref)) for _ in range(args.kills))
        attempts: List[Dict[str, Any]] = []
        kills_done, failure = 0, None
        while kills_done < args.kills and len(attempts) < 3 * args.kills + 5:
            point = points.pop(0)
            log = logs / f"soak_{len(attempts):02d}.log"
            a = soak_attempt(cfg, soak, log, point, order)
            a["attempt"] = len(attempts)
            attempts.append(a)
            if a["killed"]:
                kills_done += 1
                say(f"kill {kills_done}/{args.kills} at ref point {a['ref_point']}, after {a['after_s']:.1f} s "
                    f"(soak at: {a['at']}; group gone in {a['kill_wait_s']:.1f} s)")
            elif a["exit"] != 0:
                failure = f"the runner restarted after {kills_done} kill(s) failed (exit {a['exit']}):\n{tail(log)}"
                break
            else:
                say(f"attempt {a['attempt']} finished before its kill point {a['ref_point']}: a new point")
                points = sorted(points + [kill_point(anchors, rng.uniform(0, t_ref))])
        summary["attempts"] = attempts
        summary["kills_done"] = kills_done
        if failure is None and kills_done < args.kills:
            failure = f"only {kills_done} of {args.kills} kills in {len(attempts)} attempts"
        if failure is None:
            say("final run, to the end")
            rc, t_fin, _ = run_to_end(cfg, soak, logs / "soak_final.log", args.timeout)
            summary["final_seconds"] = round(t_fin, 1)
            if rc != 0:
                failure = f"the final run after {kills_done} kills failed (exit {rc}):\n{tail(logs / 'soak_final.log')}"
        summary["failure"] = failure
        survived = failure is None
        if failure:
            say(failure)

        # 4. compare
        res = compare(ref, soak)
        summary.update(res)
        summary["coverage"] = coverage(soak, logs)
        summary["elapsed_s"] = round(time.time() - t_start, 1)
        line = summary_line(kills_done, args.kills, survived, res)
        summary["summary_line"] = line
        ok = (survived and kills_done == args.kills and res["table"]["identical"] and res["genotypes"]["identical"]
              and res["models"]["identical"] and res["leftovers"]["count"] == 0
              and not res["leftovers"]["missing_files"])
        summary["ok"] = ok
        for what in ("table", "genotypes", "models"):
            if not res[what]["identical"]:
                say(f"{what} differ: {json.dumps(res[what], indent=None)[:2000]}")
        lo = res["leftovers"]
        for k in ("temp_files", "runner_locks", "held_run_locks", "extra_files", "half_written", "missing_files"):
            if lo[k]:
                say(f"{k}: {lo[k]}")
        if res["other_files"]["different"]:
            say(f"other files that differ from ref/: {res['other_files']['different']}")
        print("recovered from: " + ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in summary["coverage"].items()),
              flush=True)
        o = res["other_files"]
        print(f"other files: {o['byte_identical']} byte-identical, {len(o['same_content'])} same content, "
              f"{len(o['different'])} different ({o['logs_and_locks_not_compared']} logs, locks and event files "
              f"not compared)", flush=True)
        print(line, flush=True)
    finally:
        summary["elapsed_s"] = round(time.time() - t_start, 1)
        summary_path.parent.mkdir(parents=True, exist_ok=True)
        summary_path.write_text(json.dumps(summary, indent=1) + "\n")
        print(f"summary: {summary_path} (elapsed {summary['elapsed_s']:.0f} s)", flush=True)
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
