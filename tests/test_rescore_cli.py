"""rescore.py on the tiny corpus: a 2-step acoustic model and a few-step Transformer LM."""
from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli

LM_CONFIG = ("model:\n  d_model: 16\n  n_heads: 2\n  n_layers: 1\n  d_ff: 32\n  dropout: 0.0\n"
             "train:\n  epochs: 1\n  batch_size: 32\n  warmup_steps: 1\n  checkpoint_every: 100\n  log_every: 1\n")


@pytest.fixture(scope="module")
def models(tiny_corpus, small_train_config, tmp_path_factory):
    d = tmp_path_factory.mktemp("rescore_models")
    run_cli(["retrain.py", "--data-dir", tiny_corpus, "--config", small_train_config, "--max-steps", 2,
             "--no-progress", "--out", d / "am"])
    (d / "lm.yaml").write_text(LM_CONFIG)
    run_cli(["train_lm.py", "--data-dir", tiny_corpus, "--config", d / "lm.yaml", "--max-steps", 3,
             "--no-progress", "--out", d / "lm"])
    return d


def test_rescore_cli_writes_nbest_lists_and_wers(tiny_corpus, models, tmp_path):
    out = tmp_path / "rescore"
    run_cli(["rescore.py", "--model", models / "am" / "model.pt", "--lm", models / "lm" / "model.pt",
             "--data-dir", tiny_corpus, "--out", out, "--nbest", 5, "--graph-cache", tmp_path / "graphs",
             "--beam", 8, "--lattice-beam", 4, "--lm-weights", "0.5,1,2", "--alphas", "0,0.5,1", "--no-progress"])
    rep = json.loads((out / "rescore.json").read_text())
    assert rep["weights"]["tuned_on"] == "dev" and len(rep["grid"]["results"]) == 9
    assert (rep["weights"]["lm_weight"], rep["weights"]["alpha"]) == \
        (rep["grid"]["best"]["lm_weight"], rep["grid"]["best"]["alpha"])
    for split in ("dev", "test"):
        w = rep[split]["wer"]
        assert w["oracle"]["wer"] <= w["rescored"]["wer"] and w["oracle"]["wer"] <= w["first_pass"]["wer"]
        assert "p_value" in rep[split]["significance"]["mapsswe"]
        lines = [json.loads(l) for l in (out / split / "nbest.jsonl").read_text().splitlines()]
        assert len(lines) == rep[split]["counts"]["utterances"] > 0
        for rec in lines:
            seqs = [h["words"] for h in rec["hyps"]]
            assert len(seqs) == len(set(seqs)) <= 5  # distinct word sequences
            assert set(rec) == {"utt", "ref", "hyps"}
            for h in rec["hyps"]:
                assert set(h) == {"words", "acoustic", "graph", "ngram", "nnlm", "oov"}
            totals = [h["acoustic"] + h["graph"] for h in rec["hyps"]]
            assert totals == sorted(totals)  # first-pass order
        first = (out / split / "first_pass" / "hyps.txt").read_text().splitlines()
        assert [l.split(None, 1)[1:] for l in first] == \
            [[r["hyps"][0]["words"]] if r["hyps"] and r["hyps"][0]["words"] else [] for r in lines]
    # the dev grid's best WER is the dev rescored WER
    assert rep["grid"]["best"]["wer"] == pytest.approx(rep["dev"]["wer"]["rescored"]["wer"])


def test_rescore_cli_refuses_an_lm_with_another_vocabulary(tiny_corpus, models, tmp_path):
    bad = tmp_path / "vocab.txt"
    bad.write_text("<eos>\n<unk>\nNOT_A_WORD\n")
    with pytest.raises(AssertionError, match="does not match the language model"):
        run_cli(["rescore.py", "--model", models / "am" / "model.pt", "--lm", models / "lm" / "model.pt",
                 "--lm-vocab", bad, "--data-dir", tiny_corpus, "--out", tmp_path / "x",
                 "--graph-cache", tmp_path / "graphs", "--no-progress"])


def test_rescore_through_the_lms_onnx_export_matches_the_pytorch_lm(tiny_corpus, models, tmp_path):
    run_cli(["export_onnx.py", "--lm", models / "lm" / "model.pt", "--out", tmp_path / "lm.onnx"])
    outs = {}
    for name, lm in (("pt", models / "lm" / "model.pt"), ("onnx", tmp_path / "lm.onnx")):
        outs[name] = tmp_path / name
        run_cli(["rescore.py", "--model", models / "am" / "model.pt", "--lm", lm, "--data-dir", tiny_corpus,
                 "--out", outs[name], "--nbest", 5, "--graph-cache", tmp_path / "graphs", "--beam", 8,
                 "--lattice-beam", 4, "--lm-weights", "0.5,1,2", "--alphas", "0,0.5,1", "--no-progress"])
    reps = {n: json.loads((o / "rescore.json").read_text()) for n, o in outs.items()}
    assert reps["pt"]["weights"]["lm_weight"] == reps["onnx"]["weights"]["lm_weight"]
    for split in ("dev", "test"):
        assert reps["pt"][split]["wer"]["rescored"]["wer"] == reps["onnx"][split]["wer"]["rescored"]["wer"]
        a, b = ([json.loads(l) for l in (outs[n] / split / "nbest.jsonl").read_text().splitlines()] for n in ("pt", "onnx"))
        scores = [(x["nnlm"], y["nnlm"]) for ra, rb in zip(a, b) for x, y in zip(ra["hyps"], rb["hyps"])]
        assert len(a) == len(b) and scores
        assert max(abs(x - y) for x, y in scores) < 1e-3


QAT_CONFIG = "train:\n  epochs: 1\n  batch_size: 32\n  warmup_steps: 1\n  checkpoint_every: 100\n  log_every: 1\n"


def test_quantized_lms_rescore_the_same_nbest_lists(tiny_corpus, models, tmp_path):
    """quantize_lm.py (uniform and KL mixed precision, with and without QAT) writes packed LMs whose size is
    the cost model's; rescore.py --nbest-from rescores a first run's lists with them, and with the first
    run's own LM it reproduces that run exactly."""
    first = tmp_path / "first"
    run_cli(["rescore.py", "--model", models / "am" / "model.pt", "--lm", models / "lm" / "model.pt",
             "--data-dir", tiny_corpus, "--out", first, "--nbest", 5, "--graph-cache", tmp_path / "graphs",
             "--beam", 8, "--lattice-beam", 4, "--lm-weights", "0.5,1,2", "--alphas", "0,0.5,1", "--no-progress"])
    same = tmp_path / "same"
    run_cli(["rescore.py", "--nbest-from", first, "--lm", models / "lm" / "model.pt", "--data-dir", tiny_corpus,
             "--out", same, "--lm-weights", "0.5,1,2", "--alphas", "0,0.5,1"])
    a, b = (json.loads((d / "rescore.json").read_text()) for d in (first, same))
    assert a["weights"] == b["weights"] and a["grid"] == b["grid"]
    for split in ("dev", "test"):
        assert a[split]["wer"] == b[split]["wer"]
        assert (first / split / "nbest.jsonl").read_text() == (same / split / "nbest.jsonl").read_text()
    (tmp_path / "qat.yaml").write_text(QAT_CONFIG)
    sizes = {}
    for name, args in (("uniform2", ["--method", "uniform", "--bits", 2, "--epochs", 0]),
                       ("kl_r8", ["--method", "kl", "--budget-ratio", 8])):
        out = tmp_path / name
        run_cli(["quantize_lm.py", "--init", models / "lm" / "model.pt", "--data-dir", tiny_corpus, "--out", out,
                 "--config", tmp_path / "qat.yaml", "--no-progress", *args])
        size = json.loads((out / "size.json").read_text())
        bits = json.loads((out / "lm_bits.json").read_text())
        from lm.quant import lm_size, load_packed_lm
        from quant.packing import payload_bytes
        model, _ = load_packed_lm(out / "model.safetensors")
        assert size["bytes"] == payload_bytes(str(out / "model.safetensors")) == lm_size(model.cfg).total_bytes
        assert model.cfg.weight_bits == bits["weight_bits"] == size["weight_bits"]
        ppl = json.loads((out / "ppl.json").read_text())
        assert all(ppl[s]["ppl"] > 1 for s in ("dev", "test"))
        sizes[name] = size
        res = tmp_path / ("rescore_" + name)
        run_cli(["rescore.py", "--nbest-from", first, "--lm", out / "model.safetensors", "--data-dir", tiny_corpus,
                 "--out", res, "--lm-weights", "0.5,1,2", "--alphas", "0,0.5,1"])
        rep = json.loads((res / "rescore.json").read_text())
        assert rep["nbest_from"] == str(first) and rep["model"] == a["model"]
        for split in ("dev", "test"):
            assert rep[split]["wer"]["first_pass"] == a[split]["wer"]["first_pass"]
            assert rep[split]["wer"]["oracle"] == a[split]["wer"]["oracle"]
    assert set(sizes["uniform2"]["weight_bits"].values()) == {2}
    assert sizes["kl_r8"]["bytes"] <= sizes["kl_r8"]["fp32_bytes"] / 8
    assert (tmp_path / "kl_r8" / "sensitivity.json").is_file() and (tmp_path / "kl_r8" / "checkpoint.pt").is_file()
    with pytest.raises(AssertionError, match="exactly one of --model"):
        run_cli(["rescore.py", "--lm", models / "lm" / "model.pt", "--data-dir", tiny_corpus, "--out", tmp_path / "y"])
