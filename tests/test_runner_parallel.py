"""Systems side by side (``run_experiments.py --jobs``): the scheduler starts a task only once its inputs
exist, never runs more than ``jobs`` at once, shares the threads out, stops the others when one fails; a
parallel run runs exactly the stages of a serial one."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import run_experiments as rx
from runner import console as rc
from runner.schedule import Scheduler, Task, current_scheduler


def test_tasks_wait_for_their_inputs_and_at_most_jobs_run_at_once(tmp_path):
    events, lock, running, peak = [], threading.Lock(), [0], [0]

    def work(name, makes=None):
        def run():
            with lock:
                running[0] += 1
                peak[0] = max(peak[0], running[0])
                events.append(("start", name, current_scheduler().stage_threads()))
            time.sleep(0.2)
            if makes:
                (tmp_path / makes).write_text("x")
            with lock:
                running[0] -= 1
                events.append(("end", name))
        return run

    f = lambda n: (lambda: (tmp_path / n).is_file())
    tasks = [Task("b", work("b"), ready=f("a.done")), Task("c", work("c", "c.done"), ready=f("a.done")),
             Task("d", work("d"), ready=f("c.done")), Task("a", work("a", "a.done")),
             Task("e", work("e"), after=["b", "not in this run"]),
             Task("never", work("never"), ready=f("nothing.done"), waits_for="nothing")]
    left = Scheduler(jobs=2, threads=4, poll_s=0.05).run(tasks)
    assert [t.name for t in left] == ["never"]
    order = [e[1] for e in events if e[0] == "start"]
    assert order[0] == "a" and set(order) == {"a", "b", "c", "d", "e"} and peak[0] == 2
    ends = [e[1] for e in events if e[0] == "end"]
    assert ends.index("a") < order.index("b") and ends.index("c") < order.index("d")
    assert ends.index("b") < order.index("e")
    threads = {e[1]: e[2] for e in events if e[0] == "start"}
    assert threads["a"] == 4 and threads["b"] == 2 and threads["c"] == 2  # alone: all; two at once: half


def test_a_failing_task_stops_the_running_stages_and_its_error_is_raised(tmp_path):
    pids = []

    def slow():
        rc.run_stage([sys.executable, "-c", "import os, time; print(os.getpid(), flush=True); time.sleep(60)"],
                     tmp_path / "slow.log")

    def fail():
        log = tmp_path / "slow.log"
        while not pids:  # until the slow stage has started and printed its pid
            time.sleep(0.05)
            pids.extend(int(l) for l in (log.read_text().splitlines() if log.is_file() else []) if l.isdigit())
        raise RuntimeError("stage failed: boom")

    t0 = time.time()
    with pytest.raises(RuntimeError, match="boom"):
        Scheduler(jobs=2, threads=2, poll_s=0.05).run([Task("slow", slow), Task("fail", fail)])
    assert time.time() - t0 < 30
    with pytest.raises(ProcessLookupError):
        os.kill(pids[0], 0)
    assert not rc._LIVE
    with pytest.raises(ValueError, match="jobs"):
        Scheduler(jobs=0, threads=2).run([])


SYSTEMS = [{"name": "fp32", "kind": "fp32"}, {"name": "u4", "kind": "uniform", "bits": 4},
           {"name": "nas", "kind": "nas", "budget_ratio": 8},
           {"name": "nas_sw", "kind": "nas", "budget_ratio": 8, "genotype_from": "nas", "finetune_from_search": True},
           {"name": "nas_onnx", "kind": "onnx", "onnx_from": "nas"}]
LM = {"systems": [{"name": "fp32", "kind": "fp32"}, {"name": "kl", "kind": "kl", "budget_ratio": 16}],
      "acoustic": ["u4", "nas"]}


def fake_stage(stages, lock):
    """A run_stage that writes what each script would (the files the runner and its report read) and
    records (script, out dir, OMP_NUM_THREADS, start, end)."""
    def run_stage(cmd, log_file, console=None, label="", env=None):
        cmd = [str(c) for c in cmd]
        t0 = time.time()
        time.sleep(0.05)
        script, out = Path(cmd[1]).name, Path(cmd[cmd.index("--out") + 1])
        (out.parent if script == "export_onnx.py" else out).mkdir(parents=True, exist_ok=True)
        geno = {"version": 1, "layers": [{"bits": 4, "bottleneck": 32}]}
        if script == "train_search.py":
            (out / "genotype.json").write_text(json.dumps(geno))
            (out / "subnet.pt").write_text("x")
        elif script == "export_onnx.py":  # the runner writes the system's genotype.json and size.json
            out.write_bytes(b"x" * 50)
        elif script == "retrain.py":
            (out / "genotype.json").write_text(json.dumps(geno))
            (out / "model.pt").write_text("x")
            (out / "size.json").write_text(json.dumps({"file_bytes": 100, "payload_bytes": 90, "fp32_bytes": 900}))
        elif script == "decode.py":
            (out / "wer.json").write_text(json.dumps({"wer": 10.0}))
            (out / "refs.txt").write_text("u1 A B\n")
            (out / "hyps.txt").write_text("u1 A B\n")
        elif script in ("train_lm.py", "quantize_lm.py"):
            (out / "size.json").write_text(json.dumps({"bytes": 400, "bits_per_weight": 2.0}))
            (out / "ppl.json").write_text("{}")
            (out / ("model.pt" if script == "train_lm.py" else "model.safetensors")).write_text("x")
            # its files exist a while before it ends (and the runner releases the LM's lock)
            time.sleep(2.0 if script == "quantize_lm.py" else 0.0)
        elif script == "rescore.py":
            rep = {"weights": {"lm_weight": 1.0, "alpha": 0.5}}
            for sp in ("dev", "test"):
                rep[sp] = {"wer": {k: {"wer": 1.0} for k in ("first_pass", "rescored", "oracle")}}
                (out / sp / "rescored").mkdir(parents=True)
                (out / sp / "rescored" / "refs.txt").write_text("u1 A B\n")
                (out / sp / "rescored" / "hyps.txt").write_text("u1 A B\n")
            (out / "rescore.json").write_text(json.dumps(rep))
        with lock:
            stages.append((script, str(out), (env or {}).get("OMP_NUM_THREADS"), t0, time.time()))
        return time.time() - t0
    return run_stage


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_parallel_run_runs_the_serial_runs_stages_in_dependency_order(tmp_path, monkeypatch, jobs):
    monkeypatch.setattr(rx.Report, "plot", lambda self, rows: None)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    runs = {}
    for j in sorted({1, jobs}):
        stages, lock = [], threading.Lock()
        monkeypatch.setattr(rx, "run_stage", fake_stage(stages, lock))
        out = tmp_path / f"exp{j}"
        cfg = {"data_dir": "d", "splits": ["dev", "test"], "systems": SYSTEMS, "lm": LM}
        shown = io.StringIO()
        rows = rx.Runner(cfg, out, "cpu", rc.Console(stream=shown)).run_all(jobs=j)
        assert [r["system"] for r in rows] == [s["name"] for s in SYSTEMS]
        assert (out / "system_results.md").is_file() and "another runner" not in shown.getvalue()
        runs[j] = [(s, Path(o).relative_to(out).as_posix(), th, t0, t1) for s, o, th, t0, t1 in stages]
    serial, par = runs[1], runs[jobs]
    assert sorted(s[:2] for s in par) == sorted(s[:2] for s in serial)  # the same stages, once each
    start = lambda script, out: next(s[3] for s in par if s[:2] == (script, out))
    end = lambda script, out: next(s[4] for s in par if s[:2] == (script, out))
    fp32 = [s for s in par if s[1].split("/")[0] == "fp32"]
    assert len(fp32) == 3 and all(s[3] >= max(f[4] for f in fp32) for s in par if s not in fp32)  # it runs alone
    assert start("retrain.py", "nas_sw") >= end("train_search.py", "nas/search")
    assert start("export_onnx.py", "nas_onnx/model.onnx") >= end("retrain.py", "nas")
    assert start("rescore.py", "nas/rescore_fp32") >= end("decode.py", "nas/decode_test")
    assert start("rescore.py", "u4/rescore_kl") >= end("rescore.py", "u4/rescore_fp32")
    if jobs == 1:
        assert all(s[2] is None for s in par)  # the environment's threads
        return
    overlap = [(a, b) for a in par for b in par if a < b and a[3] < b[4] and b[3] < a[4]]
    assert overlap  # some stages ran side by side ...
    for a, b in overlap:  # ... never more than two, each with one of the two threads
        assert sum(1 for c in par if c[3] < min(a[4], b[4]) and c[4] > max(a[3], b[3])) <= 2
    assert {s[2] for s in fp32} == {"2"}
    assert {"1"} <= {s[2] for s in par}


def test_jobs_below_one_is_refused():
    r = subprocess.run([sys.executable, "run_experiments.py", "--config", "configs/demo.yaml", "--jobs", "0"],
                       cwd=Path(rx.__file__).parent, capture_output=True, text=True)
    assert r.returncode != 0 and "--jobs must be >= 1" in r.stderr
