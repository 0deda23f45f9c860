"""train_lm.py on the tiny corpus: outputs, exact resume (stopped or killed), bad input."""
from __future__ import annotations

import json
import math

import pytest
import torch

from tests.conftest import run_and_kill_after_checkpoints, run_cli
from lm.score import load_lm

CONFIG = ("model:\n  d_model: 32\n  n_heads: 2\n  n_layers: 1\n  d_ff: 64\n  dropout: 0.2\n"
          "train:\n  epochs: 2\n  batch_size: 32\n  warmup_steps: 3\n  checkpoint_every: 3\n  log_every: 1\n")


@pytest.fixture(scope="module")
def lm_config(tmp_path_factory):
    p = tmp_path_factory.mktemp("lmcfg") / "lm_tiny.yaml"
    p.write_text(CONFIG)
    return p


@pytest.fixture(scope="module")
def full_run(tiny_corpus, lm_config, tmp_path_factory):
    out = tmp_path_factory.mktemp("lm_full")
    run_cli(["train_lm.py", "--data-dir", tiny_corpus, "--config", lm_config, "--out", out, "--no-progress"])
    return out


def dev_sentences(data_dir):
    from lhotse import CutSet

    return [c.supervisions[0].text.split() for c in CutSet.from_file(data_dir / "cuts_dev.jsonl.gz")]


def test_train_lm_writes_model_vocab_ppl_and_logs(full_run, tiny_corpus):
    for name in ("model.pt", "vocab.txt", "ppl.json", "checkpoint.pt", "train_log.jsonl"):
        assert (full_run / name).is_file(), name
    assert any((full_run / "tb").iterdir())
    obj = torch.load(full_run / "model.pt", weights_only=True)
    assert obj["vocab"] == (full_run / "vocab.txt").read_text().splitlines()
    log = [json.loads(l) for l in (full_run / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    assert log[1]["step"] == 2 * math.ceil(224 / 32)  # 224 sentences in the tiny corpus's lm_text.txt
    ppl = json.loads((full_run / "ppl.json").read_text())
    assert set(ppl) == {"dev", "test"}
    # dev perplexity recomputed with one forward per position over the lhotse dev transcripts
    model, vocab = load_lm(full_run / "model.pt")
    sents = dev_sentences(tiny_corpus)
    total, tokens, oov = 0.0, 0, 0
    with torch.no_grad():
        for s in sents:
            ids = [vocab.eos_id] + [vocab.id(w) for w in s] + [vocab.eos_id]
            oov += sum(w not in vocab for w in s)
            for t in range(1, len(ids)):
                total += float(torch.log_softmax(model(torch.tensor([ids[:t]]))[0, -1].double(), 0)[ids[t]])
            tokens += len(ids) - 1
    assert ppl["dev"]["tokens"] == tokens == sum(len(s) + 1 for s in sents)
    assert ppl["dev"]["oov"] == oov
    assert math.isclose(ppl["dev"]["ppl"], math.exp(-total / tokens), rel_tol=1e-5)
    assert ppl["dev"]["ppl"] == log[-1]["dev"]["ppl"]
    assert ppl["dev"]["ppl"] < len(vocab)  # learnt something beyond the uniform distribution


def same_weights(a, b):
    sa = torch.load(a / "model.pt", weights_only=True)["state_dict"]
    sb = torch.load(b / "model.pt", weights_only=True)["state_dict"]
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), f"{k} differs"


def strip_seconds(path):
    return [{k: v for k, v in json.loads(l).items() if k != "seconds"} for l in path.read_text().splitlines()]


def test_stop_and_resume_gives_identical_weights(full_run, tiny_corpus, lm_config, tmp_path):
    args = ["train_lm.py", "--data-dir", tiny_corpus, "--config", lm_config, "--out", tmp_path, "--no-progress"]
    run_cli(args + ["--max-steps", "5"])  # stops inside epoch 1, between checkpoints
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["step"] == 5
    run_cli(args + ["--resume"])
    same_weights(full_run, tmp_path)
    assert json.loads((tmp_path / "ppl.json").read_text()) == json.loads((full_run / "ppl.json").read_text())
    assert strip_seconds(tmp_path / "train_log.jsonl") == strip_seconds(full_run / "train_log.jsonl")


def test_kill_and_resume_gives_identical_weights(full_run, tiny_corpus, lm_config, tmp_path):
    args = ["train_lm.py", "--data-dir", tiny_corpus, "--config", lm_config, "--out", tmp_path, "--no-progress"]
    run_and_kill_after_checkpoints(args, n=4)  # steps 3, 6, end of epoch 1 (7), 9
    assert not (tmp_path / "model.pt").exists()
    run_cli(args + ["--resume"])
    same_weights(full_run, tmp_path)
    assert strip_seconds(tmp_path / "train_log.jsonl") == strip_seconds(full_run / "train_log.jsonl")


def test_empty_lm_text_is_a_clear_error(tmp_path):
    (tmp_path / "lm_text.txt").write_text("\n\n")
    with pytest.raises(AssertionError, match="lm_text.txt holds no sentences"):
        run_cli(["train_lm.py", "--data-dir", tmp_path, "--out", tmp_path / "out", "--no-progress"])


def test_config_errors_name_the_key_and_the_file(tmp_path):
    from train_lm import load_config

    p = tmp_path / "bad.yaml"
    p.write_text("model:\n  d_modle: 64\n")
    with pytest.raises(ValueError, match=r"bad\.yaml.*d_modle"):
        load_config(p)
    p.write_text("train:\n  epoch: 3\n")
    with pytest.raises(ValueError, match=r"bad\.yaml.*epoch"):
        load_config(p)
    p.write_text("optim:\n  lr: 0.1\n")
    with pytest.raises(ValueError, match=r"bad\.yaml.*optim"):
        load_config(p)
    p.write_text("model:\n  vocab_size: 100\n")
    with pytest.raises(ValueError, match="vocab_size"):
        load_config(p)
    model_d, topts = load_config(None)
    assert model_d == {} and topts.epochs >= 1


def test_demo_config_loads():
    from pathlib import Path

    from train_lm import load_config

    model_d, topts = load_config(Path(__file__).resolve().parents[1] / "configs" / "lm_demo.yaml")
    assert model_d and topts.epochs >= 1
