"""End to end on the tiny corpus: search -> retrain (QAT) -> packed export -> decode -> results table,
through the one-command experiment runner (a few steps each; checks plumbing, not accuracy)."""
from __future__ import annotations

import csv
import json

from tests.conftest import run_cli


def test_runner_search_retrain_export_decode_table(tiny_corpus, small_train_config, tmp_path):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(
        f"data_dir: {tiny_corpus}\nspace: tdnnf_demo\nretrain_config: {small_train_config}\n"
        f"search_config: {small_train_config}\nsplits: [dev, test]\n"
        "retrain_args: [--max-steps, 3]\n"
        "systems:\n"
        "  - {name: fp32, kind: fp32}\n"
        "  - {name: uniform4, kind: uniform, bits: 4}\n"
        "  - {name: nas_r8, kind: nas, budget_ratio: 8, search_args: [--max-steps, 3]}\n"
        "  - {name: nas_r8_onnx, kind: onnx, onnx_from: nas_r8}\n"
    )
    out = tmp_path / "exp"
    # two systems at a time, as scripts/run_demo.sh runs them
    r = run_cli(["run_experiments.py", "--config", cfg, "--out", out, "--jobs", "2"])
    # the console names every system and stage, gives one result line per system, and ends with the
    # table (stdout), the plot and the TensorBoard command (stderr)
    err = r.stderr
    for i, name in enumerate(["fp32", "uniform4", "nas_r8", "nas_r8_onnx"], start=1):
        assert f"[{i}/4] {name}" in err
    for stage in ("train done in", "fine-tune (QAT) and export done in", "search done in", "decode dev done in",
                  "decode test done in", "export ONNX done in"):
        assert stage in err, stage
    assert err.count("    => ") == 4 and "uniform4: " in err and "x), dev " in err
    assert r.stdout.strip().splitlines()[0].startswith("| system |")
    tail = err.strip().splitlines()
    assert tail[-4].startswith("plot:") and tail[-3] == f"TensorBoard: tensorboard --logdir {out}"
    assert "arch/bits_heatmap" in tail[-2]
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [r["system"] for r in rows] == ["fp32", "uniform4", "nas_r8", "nas_r8_onnx"]
    onnx = rows.pop()
    # the ONNX row: the searched model's export, decoded through onnxruntime; its bytes are the ONNX file's
    assert int(onnx["bytes"]) == (out / "nas_r8_onnx" / "model.onnx").stat().st_size
    assert onnx["bits"] == rows[2]["bits"] and onnx["bottlenecks"] == rows[2]["bottlenecks"]
    assert json.load(open(out / "nas_r8_onnx" / "decode_dev" / "wer.json"))["model"].endswith("model.onnx")
    for r in rows:
        assert 0.0 <= float(r["wer_test"]) and 0.0 <= float(r["wer_dev"])
        size = json.load(open(out / r["system"] / "size.json"))
        # the reported size is the packed file's payload, equal to the cost model's prediction
        assert size["payload_bytes"] == size["predicted_bytes"]
        assert int(r["bytes"]) == (out / r["system"] / "model.safetensors").stat().st_size
    fp32, u4, nas = rows
    assert float(u4["ratio"]) > 5.0  # 4-bit weights, fp16 scales, fp32 biases/BN
    assert float(nas["payload_bytes"]) < float(fp32["payload_bytes"])
    g = json.load(open(out / "nas_r8" / "genotype.json"))
    assert g["version"] == 1 and len(g["layers"]) == 11
    assert (out / "results.md").read_text().count("|") > 10
    assert (out / "wer_vs_size.png").stat().st_size > 0
    # rerunning finds every stage done and only rewrites the table
    r = run_cli(["run_experiments.py", "--config", cfg, "--out", out])
    assert "[1/" not in r.stderr and "systems to run" not in r.stderr and "| nas_r8 |" in r.stdout
    assert "TensorBoard: tensorboard --logdir" in r.stderr
