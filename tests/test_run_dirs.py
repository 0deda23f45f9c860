"""Output directories: run_identity.json and --resume refusing another run before writing anything, the
exclusive lock on --out, and checkpoint rotation with a fallback to the previous good checkpoint."""
from __future__ import annotations

import hashlib
import json

import pytest
import torch

from tests.conftest import run_cli, run_cli_fail
from training import checkpoint as ckpt
from training import rundir


def _snapshot(d):
    """{relative path: (size, sha1, mtime_ns)} of every file under d."""
    return {str(p.relative_to(d)): (p.stat().st_size, hashlib.sha1(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def fp32_run(tiny_corpus, small_train_config, tmp_path_factory):
    out = tmp_path_factory.mktemp("fp32") / "run"
    run_cli(["retrain.py", "--data-dir", tiny_corpus, "--config", small_train_config, "--max-steps", 3,
             "--no-progress", "--out", out])
    return out


def _retrain(tiny_corpus, cfg, out, *extra):
    return ["retrain.py", "--data-dir", tiny_corpus, "--config", cfg, "--max-steps", 3, "--no-progress",
            "--out", out, *extra]


def test_run_identity_is_recorded(fp32_run, tiny_corpus):
    ident = json.loads((fp32_run / "run_identity.json").read_text())
    assert ident["kind"] == "retrain" and ident["architecture"] == "fp32" and ident["space"] == "tdnnf_demo"
    assert ident["data_dir"] == str(tiny_corpus.resolve()) and ident["init_from"] is None
    assert len(ident["genotype_hash"]) == 16 and len(ident["config_hash"]) == 16
    assert (fp32_run / "checkpoint.pt").is_file() and (fp32_run / "checkpoint.prev.pt").is_file()


@pytest.mark.parametrize("change", ["uniform_bits", "genotype", "config"])
def test_resume_of_another_run_is_refused_before_writing(fp32_run, tiny_corpus, small_train_config, tmp_path,
                                                         change):
    extra, cfg = [], small_train_config
    if change == "uniform_bits":
        extra = ["--uniform-bits", 4]
    elif change == "genotype":
        from search_spaces.genotype import Genotype
        from search_spaces.space import load_search_space

        g = tmp_path / "g.json"
        Genotype.uniform(load_search_space("tdnnf_demo"), 2).save(str(g))
        extra = ["--genotype", g]
    else:
        cfg = tmp_path / "other.yaml"
        cfg.write_text(small_train_config.read_text().replace("den_order: 2", "den_order: 3"))
    before = _snapshot(fp32_run)
    r = run_cli_fail(_retrain(tiny_corpus, cfg, fp32_run, "--resume", *extra))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: refusing to --resume {fp32_run}: it holds a different run")
    assert ("genotype_hash" if change != "config" else "config_hash") in last
    assert _snapshot(fp32_run) == before  # nothing written: genotype.json, model files, checkpoints


def test_resume_of_the_same_run_continues(fp32_run, tiny_corpus, small_train_config):
    assert ckpt.load(fp32_run / "checkpoint.pt")["step"] == 3
    run_cli(["retrain.py", "--data-dir", tiny_corpus, "--config", small_train_config, "--max-steps", 4,
             "--no-progress", "--out", fp32_run, "--resume"])
    assert ckpt.load(fp32_run / "checkpoint.pt")["step"] == 4
    assert ckpt.load(fp32_run / "checkpoint.prev.pt")["step"] == 3


def test_search_resume_with_another_budget_is_refused(tiny_corpus, small_train_config, tmp_path):
    out = tmp_path / "search"
    common = ["train_search.py", "--data-dir", tiny_corpus, "--config", small_train_config, "--max-steps", 1,
              "--no-progress", "--out", out]
    run_cli(common + ["--target-ratio", 8])
    before = _snapshot(out)
    r = run_cli_fail(common + ["--target-ratio", 4, "--resume"])
    assert r.returncode == 2 and "target_bytes" in r.stderr and "Traceback" not in r.stderr
    assert _snapshot(out) == before


def test_a_second_process_on_the_same_out_is_refused(tiny_corpus, small_train_config, tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    lock = rundir.acquire_lock(out)  # this test process plays the first run
    try:
        r = run_cli_fail(_retrain(tiny_corpus, small_train_config, out))
    finally:
        rundir._held_locks.remove(lock)
        lock.close()
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith(f"error: {out} is in use by another process (pid ")
    assert sorted(p.name for p in out.iterdir()) == [".run.lock"]
    run_cli(_retrain(tiny_corpus, small_train_config, out))  # the lock is free again


def test_lock_is_exclusive_between_open_files(tmp_path):
    a = rundir.acquire_lock(tmp_path)
    try:
        with pytest.raises(rundir.RunDirError, match="in use by another process"):
            rundir.acquire_lock(tmp_path)
    finally:
        rundir._held_locks.remove(a)
        a.close()
    rundir._held_locks.remove(rundir.acquire_lock(tmp_path))


def test_checkpoints_rotate_and_a_corrupt_latest_falls_back(tmp_path, caplog):
    p = tmp_path / "checkpoint.pt"
    for step in (1, 2, 3):
        ckpt.save_rotating({"step": step, "w": torch.full((2,), float(step))}, p)
    assert sorted(f.name for f in tmp_path.iterdir()) == ["checkpoint.prev.pt", "checkpoint.pt"]
    assert ckpt.load(p)["step"] == 3 and ckpt.load(ckpt.previous_path(p))["step"] == 2
    p.write_bytes(p.read_bytes()[:100])  # torn / corrupt latest
    with caplog.at_level("WARNING"):
        st, used = ckpt.load_latest(p)
    assert st["step"] == 2 and used == ckpt.previous_path(p)
    assert "falling back to the previous checkpoint" in caplog.text
    p.unlink()
    assert ckpt.load_latest(p)[0]["step"] == 2 and ckpt.has_checkpoint(p)
    ckpt.previous_path(p).write_bytes(b"junk")
    with pytest.raises(RuntimeError, match="cannot read checkpoint"):
        ckpt.load_latest(p)


def test_retrain_resumes_from_the_previous_checkpoint_when_the_latest_is_corrupt(tiny_corpus,
                                                                                 small_train_config, tmp_path):
    out = tmp_path / "run"
    common = ["retrain.py", "--data-dir", tiny_corpus, "--config", small_train_config, "--no-progress",
              "--uniform-bits", 4, "--out", out]
    run_cli(common + ["--max-steps", 4])  # checkpoints at steps 2 and 4
    (out / "checkpoint.pt").write_bytes(b"not a checkpoint")
    r = run_cli(common + ["--max-steps", 6, "--resume"])
    assert "falling back to the previous checkpoint" in r.stderr and "at epoch 0, batch 2, step 2" in r.stderr
    assert ckpt.load(out / "checkpoint.pt")["step"] == 6
