"""The LM's mixed-precision search: the supernet at a one-hot architecture is that quantized LM; the search
lands its argmax in the budget band; search_lm.py -> quantize_lm.py --method file on the tiny corpus."""
from __future__ import annotations

import json

import pytest
import torch

from lm.data import LMBatches
from lm.model import TransformerLM, TransformerLMConfig, matrix_names
from lm.quant import lm_fp32_bytes, lm_size
from lm.search import LMSearchOptions, LMSearchSpace, LMSupernet, run_search, split_held_out
from models.quantizers import QUANTIZED_BITS
from tests.conftest import INVALID_BITS, run_cli

V = 30


def small_lm(seed=0):
    torch.manual_seed(seed)
    cfg = TransformerLMConfig(vocab_size=V, d_model=16, n_heads=2, n_layers=2, d_ff=32, max_len=16, dropout=0.0)
    return TransformerLM(cfg)


def test_supernet_at_a_one_hot_architecture_is_that_quantized_lm():
    m = small_lm()
    ref = small_lm()
    space = LMSearchSpace("t", QUANTIZED_BITS + (32,))
    net = LMSupernet(m, space)
    x = torch.randint(0, V, (3, 8))
    names = matrix_names(m.cfg)
    for k in range(3):
        bits = {n: space.bits[(i + k) % len(space.bits)] for i, n in enumerate(names)}
        net.arch.set_choices([(bits[n], None) for n in names])
        ref.set_weight_bits(bits)
        net.eval(), ref.eval()
        with torch.no_grad():
            torch.testing.assert_close(net(x), ref(x), rtol=0, atol=1e-6)
    net.arch.clear_fixed()
    net.train()
    y = net(x)
    y.sum().backward()  # the logits get a task gradient through the mixed weights
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.arch.bit_logits)
    with pytest.raises(ValueError, match="float LM"):
        q = small_lm()
        q.set_weight_bits({names[0]: 4})
        LMSupernet(q, space)


def test_search_lands_the_argmax_in_the_budget_band(tmp_path):
    m = small_lm(1)
    g = torch.Generator().manual_seed(0)
    seqs = [[0] + torch.randint(2, V, (int(torch.randint(2, 9, (), generator=g)),), generator=g).tolist() + [0]
            for _ in range(160)]
    tr, ho = split_held_out(len(seqs), 0.2, 0)
    assert not set(tr) & set(ho) and len(tr) + len(ho) == len(seqs)
    space = LMSearchSpace("t", QUANTIZED_BITS)
    net = LMSupernet(m, space)
    target = lm_fp32_bytes(m.cfg) / 6  # between the all-1-bit and all-8-bit LMs
    assert net.size_table().min_bytes() < 0.9 * target and net.size_table().max_bytes() > target
    opts = LMSearchOptions(epochs=6, warmup_epochs=1.0, batch_size=16, arch_lr=0.2, log_every=5)
    rec = run_search(net, LMBatches([seqs[i] for i in tr], 16, 0, True, 0), LMBatches([seqs[i] for i in ho], 16, 0, True, 1),
                     opts, target, tmp_path, progress=False)
    size = lm_size(m.cfg.replace(weight_bits=net.argmax_bits())).total_bytes
    assert rec["argmax_bytes"] == size
    assert 0.9 * target <= size <= target
    log = [json.loads(l) for l in (tmp_path / "search_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3, 4, 5, 6] and log[0]["arch_steps"] == 0 < log[1]["arch_steps"]
    assert log[-1]["entropy_mean"] < log[1]["entropy_mean"]  # sharper at the end
    assert json.loads((tmp_path / "arch_probs.json").read_text())["epoch"] == 6


def test_lm_search_options_and_space_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown search option"):
        LMSearchOptions.from_dict({"epoch": 3})
    with pytest.raises(ValueError, match="warmup_epochs"):
        LMSearchOptions.from_dict({"epochs": 1, "warmup_epochs": 1})
    (tmp_path / "s.yaml").write_text(f"name: x\nbits: [2, {INVALID_BITS}]\n")
    with pytest.raises(ValueError, match=f"unsupported bit-width {INVALID_BITS}"):
        LMSearchSpace.load(str(tmp_path / "s.yaml"))
    (tmp_path / "s.yaml").write_text("name: x\nbit: [2]\n")
    with pytest.raises(ValueError, match="unknown key"):
        LMSearchSpace.load(str(tmp_path / "s.yaml"))
    bits = LMSearchSpace.load("lm_demo").bits  # the shipped space's widths, all of them quantized widths
    assert bits == (1, 2, 4, 8) and set(bits) <= set(QUANTIZED_BITS)


LM_CONFIG = ("model:\n  d_model: 16\n  n_heads: 2\n  n_layers: 1\n  d_ff: 32\n  dropout: 0.0\n"
             "train:\n  epochs: 1\n  batch_size: 32\n  warmup_steps: 1\n  checkpoint_every: 100\n  log_every: 1\n")


def test_search_lm_cli_then_quantize_lm_with_its_bits(tiny_corpus, tmp_path):
    (tmp_path / "lm.yaml").write_text(LM_CONFIG)
    run_cli(["train_lm.py", "--data-dir", tiny_corpus, "--config", tmp_path / "lm.yaml", "--max-steps", 3,
             "--no-progress", "--out", tmp_path / "lm"])
    (tmp_path / "search.yaml").write_text("search:\n  epochs: 2\n  warmup_epochs: 0.5\n  batch_size: 16\n")
    args = ["search_lm.py", "--init", tmp_path / "lm" / "model.pt", "--data-dir", tiny_corpus, "--out",
            tmp_path / "search", "--config", tmp_path / "search.yaml", "--budget-ratio", 8, "--no-progress"]
    run_cli(args)
    bits = json.loads((tmp_path / "search" / "lm_bits.json").read_text())
    assert bits["method"] == "nas" and bits["bytes"] <= bits["fp32_bytes"] / 8
    run_cli(args + ["--resume"])  # finished: nothing to redo, the same result
    assert json.loads((tmp_path / "search" / "lm_bits.json").read_text())["weight_bits"] == bits["weight_bits"]
    (tmp_path / "qat.yaml").write_text("train:\n  epochs: 1\n  batch_size: 32\n  warmup_steps: 1\n")
    run_cli(["quantize_lm.py", "--init", tmp_path / "lm" / "model.pt", "--data-dir", tiny_corpus, "--method", "file",
             "--bits-from", tmp_path / "search" / "lm_bits.json", "--config", tmp_path / "qat.yaml",
             "--out", tmp_path / "nas", "--no-progress"])
    size = json.loads((tmp_path / "nas" / "size.json").read_text())
    assert size["weight_bits"] == bits["weight_bits"] and size["bytes"] == bits["bytes"]
