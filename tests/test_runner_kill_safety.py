"""What a SIGKILL at a bad moment leaves, and that the next run copes (the bugs scripts/kill_soak.py looks
for): a runner lock with no pid, a finished system's stale lock, temporary files of atomic writes, and a
training run resumed after its last step."""
from __future__ import annotations

import json
import os

import run_experiments as rx
from tests.conftest import run_cli
from training import checkpoint as ckpt
from training.rundir import claim_out_dir


def test_a_lock_without_a_live_pid_is_stale(tmp_path):
    lock = rx.SystemLock(tmp_path)
    for text in ("", "0", "999999999"):  # killed before the pid was written (os.kill(0, 0) succeeds), dead
        lock.path.write_text(text)
        assert lock.stale() and lock.acquire()
        assert lock.path.read_text() == str(os.getpid())
    assert not lock.stale() and not rx.SystemLock(tmp_path).acquire()  # held by a live process
    lock.release()
    assert not lock.path.exists()


def _finished_fp32(out):
    d = out / "fp32"
    (d / "decode_dev").mkdir(parents=True)
    (d / "size.json").write_text(json.dumps({"file_bytes": 100, "payload_bytes": 90, "fp32_bytes": 90}))
    (d / "genotype.json").write_text(json.dumps({"layers": [{"bits": 32, "bottleneck": 64}]}))
    (d / "decode_dev" / "wer.json").write_text(json.dumps({"wer": 10.0}))
    return d


def test_a_finished_systems_stale_lock_is_removed_a_live_one_kept(tmp_path, monkeypatch):
    monkeypatch.setattr(rx.Report, "plot", lambda self, rows: None)
    cfg = {"data_dir": "d", "splits": ["dev"], "systems": [{"name": "fp32", "kind": "fp32"}]}
    out = tmp_path / "exp"
    d = _finished_fp32(out)
    (d / ".lock").write_text(str(os.getpid()))  # another runner, still releasing it
    rx.Runner(cfg, out, "cpu").run_all()
    assert (d / ".lock").is_file()
    (d / ".lock").write_text("999999999")  # killed after the last stage, before releasing it
    rows = rx.Runner(cfg, out, "cpu").run_all()
    assert not (d / ".lock").exists() and [r["system"] for r in rows] == ["fp32"]


def test_claiming_a_run_dir_removes_temp_files_a_killed_writer_left(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    left = ["checkpoint.pt.k2j3h4.tmp", "model.pt.a1b2c3.tmp", "checkpoint.prev.pt.tmp", "size.json.tmp"]
    for name in left + ["checkpoint.pt", "genotype_in.json"]:
        (out / name).write_text("x")
    claim_out_dir(out, {"kind": "test"}, resume=True)
    assert sorted(p.name for p in out.iterdir()) == [".run.lock", "checkpoint.pt", "genotype_in.json",
                                                    "run_identity.json"]


def test_resuming_a_run_that_reached_max_steps_takes_no_further_step(tiny_corpus, small_train_config, tmp_path):
    # killed after its last checkpoint, before size.json: the runner restarts it with --resume
    args = ["retrain.py", "--data-dir", tiny_corpus, "--config", small_train_config, "--max-steps", 2,
            "--no-progress", "--out", tmp_path]
    run_cli(args)
    model = (tmp_path / "model.pt").read_bytes()
    (tmp_path / "size.json").unlink()
    r = run_cli(args + ["--resume"])
    assert "saved checkpoint" not in r.stderr
    assert ckpt.load(tmp_path / "checkpoint.pt")["step"] == 2
    assert (tmp_path / "model.pt").read_bytes() == model and (tmp_path / "size.json").is_file()


def test_sigterm_to_the_runner_stops_its_stage(tmp_path):
    """A SIGTERM to a runner ends the stage subprocess it is running, not only the runner (which would
    leave an orphan writing into the system's directory)."""
    import signal
    import subprocess
    import sys
    import time

    pid_file = tmp_path / "stage.pid"
    stage = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(120)"
    runner = (
        "import sys; from pathlib import Path; from runner.console import run_stage, stop_on_sigterm\n"
        "stop_on_sigterm()\n"
        f"run_stage([sys.executable, '-c', {stage!r}], Path({str(tmp_path / 'log.txt')!r}))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", runner], cwd=os.path.dirname(os.path.dirname(__file__)))
    deadline = time.time() + 60
    while not (pid_file.exists() and pid_file.read_text()) and time.time() < deadline:
        time.sleep(0.1)
    stage_pid = int(pid_file.read_text())
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    try:
        os.kill(stage_pid, 0)
        alive = True
    except ProcessLookupError:
        alive = False
    assert not alive, "the stage outlived its runner"


def test_a_run_of_some_systems_keeps_every_finished_system_in_the_table(tmp_path, monkeypatch):
    monkeypatch.setattr(rx.Report, "plot", lambda self, rows: None)
    cfg = {"data_dir": "d", "splits": ["dev"], "systems": [{"name": "fp32", "kind": "fp32"},
                                                          {"name": "fp32_b", "kind": "fp32"}]}
    out = tmp_path / "exp"
    _finished_fp32(out)
    b = _finished_fp32(out / "tmp")
    os.rename(b, out / "fp32_b")
    rows = rx.Runner(cfg, out, "cpu").run_all(only=["fp32_b"])
    assert [r["system"] for r in rows] == ["fp32", "fp32_b"]
    table = (out / "results.md").read_text()
    assert "| fp32 |" in table and "| fp32_b |" in table
