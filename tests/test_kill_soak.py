"""scripts/kill_soak.py's comparison and leftover checks on synthetic run directories, and its process-group
kill (the soak itself runs the experiment many times: a script, not part of the test run)."""
from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _soak():
    spec = importlib.util.spec_from_file_location("kill_soak", ROOT / "scripts" / "kill_soak.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run_dir(root: Path, wer: str = "12.50", train_seconds: float = 1.0) -> Path:
    """A finished tiny experiment as the runner leaves it (the files the checks look at)."""
    rows = [{"system": "fp32", "kind": "fp32", "bits": "32/32", "bytes": "1000", "wer_dev": "10.00",
             "wer_test": "11.00"},
            {"system": "nas_r8", "kind": "nas", "bits": "4/2", "bytes": "150", "wer_dev": wer, "wer_test": "13.00"}]
    root.mkdir(parents=True)
    with open(root / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    (root / "results.json").write_text(json.dumps(rows))
    (root / "results.md").write_text("| system |\n")
    for r in rows:
        d = root / r["system"]
        d.mkdir()
        geno = {"version": 1, "layers": [{"bits": 4}], "source": {"run": str(root / r["system"] / "search")}}
        (d / "genotype.json").write_text(json.dumps(geno))
        (d / "size.json").write_text(json.dumps({"file_bytes": 10, "train_seconds": train_seconds}))
        (d / "model.safetensors").write_bytes(_safetensors(b"\x01\x02\x03\x04"))
        (d / ".run.lock").write_text("123\n")
        (d / "log.txt").write_text(f"started at {train_seconds}\n")
        (d / "tb").mkdir()
        (d / "tb" / f"events.out.tfevents.{train_seconds}.host").write_bytes(b"x")
    (root / "nas_r8" / "genotype_in.json").write_text((root / "nas_r8" / "genotype.json").read_text())
    return root


def _safetensors(payload: bytes, meta_order=("a", "b")) -> bytes:
    header = {"__metadata__": {k: k.upper() for k in meta_order},
              "w": {"dtype": "U8", "shape": [len(payload)], "data_offsets": [0, len(payload)]}}
    header = json.dumps(header).encode()
    return len(header).to_bytes(8, "little") + header + payload


def test_identical_runs_pass_up_to_times_paths_and_event_files(tmp_path):
    ks = _soak()
    ref, soak = _run_dir(tmp_path / "ref"), _run_dir(tmp_path / "soak", train_seconds=7.5)
    (soak / "fp32" / "tb" / "events.out.tfevents.99.host").write_bytes(b"y")  # one more per restart
    (soak / "fp32" / ".run.lock").write_text("456\n")  # another pid
    # the safetensors writer orders the header's metadata differently in every process
    (soak / "nas_r8" / "model.safetensors").write_bytes(_safetensors(b"\x01\x02\x03\x04", ("b", "a")))
    res = ks.compare(ref, soak)
    assert res["table"]["identical"] and res["table"]["rows"] == 2
    assert res["genotypes"]["n_identical"] == res["genotypes"]["n"] == 2  # the source paths differ
    assert res["models"]["n_identical"] == 2 and res["models"]["n_byte_identical"] == 1
    assert res["leftovers"]["count"] == 0 and not res["leftovers"]["missing_files"]
    assert res["other_files"]["different"] == []
    assert set(res["other_files"]["same_content"]) == {  # the genotypes name their run
        "fp32/size.json", "nas_r8/size.json", "nas_r8/model.safetensors", "fp32/genotype.json",
        "nas_r8/genotype.json", "nas_r8/genotype_in.json"}
    line = ks.summary_line(10, 10, True, res)
    assert line == ("kill soak: 10/10 kills survived, table identical: yes, genotypes identical: 2/2, "
                    "models byte-identical: 1/2 (same tensors and metadata: 2/2), leftover temp files: 0")


def test_differences_and_leftovers_are_found(tmp_path):
    ks = _soak()
    ref, soak = _run_dir(tmp_path / "ref"), _run_dir(tmp_path / "soak", wer="12.75")
    g = json.loads((soak / "nas_r8" / "genotype_in.json").read_text())
    g["layers"][0]["bits"] = 2
    (soak / "nas_r8" / "genotype_in.json").write_text(json.dumps(g))
    (soak / "fp32" / "model.safetensors").write_bytes(_safetensors(b"\x01\x02\x03\x05"))
    (soak / "fp32" / "checkpoint.pt.k2j3h4.tmp").write_bytes(b"partial")   # save_atomic's temp name
    (soak / "nas_r8" / "size.json.tmp").write_text("{")
    (soak / "nas_r8" / ".lock").write_text("999999999")                    # a runner lock, pid dead
    (soak / "nas_r8" / "decode_dev").mkdir()
    (soak / "nas_r8" / "decode_dev" / "wer.json").write_text('{"wer": 1')  # torn
    (soak / "nas_r8" / "model.safetensors").write_bytes(_safetensors(b"\x01\x02\x03\x04")[:-2])  # short
    res = ks.compare(ref, soak)
    assert not res["table"]["identical"]
    assert res["table"]["diffs"][0] == "nas_r8.wer_dev: '12.50' vs '12.75'"
    assert res["genotypes"]["n_identical"] == 1
    assert res["genotypes"]["systems"]["nas_r8"]["diffs"] == ["genotype_in.json: differs"]
    assert res["models"]["n_identical"] == res["models"]["n_byte_identical"] == 0
    lo = res["leftovers"]
    assert lo["temp_files"] == ["fp32/checkpoint.pt.k2j3h4.tmp", "nas_r8/size.json.tmp"]
    assert lo["runner_locks"] == [{"file": "nas_r8/.lock", "pid": "999999999", "stale": True}]
    assert lo["extra_files"] == ["nas_r8/decode_dev/wer.json"]
    assert set(lo["half_written"]) == {"nas_r8/decode_dev/wer.json", "nas_r8/model.safetensors"}
    assert lo["count"] == 2 + 1 + 1 + 2
    line = ks.summary_line(3, 10, False, res)
    assert line.startswith("kill soak: 3/10 kills survived (FAILED), table identical: no, genotypes identical: 1/2")


def test_kill_group_kills_the_stage_subprocesses_too():
    ks = _soak()
    # a "runner" whose child ignores the parent's death, as a stage subprocess would
    code = "import subprocess, time; subprocess.Popen(['sleep', '60']); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    deadline = time.time() + 10
    while len(ks.group_alive(proc.pid)) < 2 and time.time() < deadline:
        time.sleep(0.05)
    assert len(ks.group_alive(proc.pid)) == 2
    ks.kill_group(proc)
    assert proc.returncode == -9 and ks.group_alive(proc.pid) == []
    assert os.getpgrp() != proc.pid


def test_kill_points_are_anchored_on_the_runners_stage_lines():
    ks = _soak()
    p = ks.Anchors()
    lines = ["4 of 4 systems to run: fp32, u4", "[1/2] fp32 (fp32)", "    train ...", "    train done in 8 s",
             "    => fp32: 2,562 bytes (1.0x), dev 100.00% (23 s)", "[2/2] u4 (uniform)", "    decode dev ...",
             "| system |", "table: exp/results.md (also .csv, .json)"]
    assert [p.key(l) for l in lines] == [None, "fp32: start", "fp32: train ...", "fp32: train done", "fp32: result",
                                         "u4: start", "u4: decode dev ...", None, "table"]
    anchors = [(1.0, "fp32: start"), (1.5, "fp32: train ..."), (9.5, "fp32: train done")]
    assert ks.kill_point(anchors, 0.4) == (-1, "start", 0.4)
    assert ks.kill_point(anchors, 4.0) == (1, "fp32: train ...", 2.5)
    assert ks.kill_point(anchors, 20.0) == (2, "fp32: train done", 10.5)
