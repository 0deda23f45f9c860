"""retrain.py and train_search.py on the tiny corpus: ADMM lands on the grid, fine-tuning into a smaller
bottleneck, bad genotypes, and kill-and-resume of a search."""
from __future__ import annotations

import json
import re

import pytest
import torch

from tests.conftest import INVALID_BITS, run_and_kill_after_checkpoints, run_cli, run_cli_fail
from training import checkpoint as ckpt


def test_admm_retrain_ends_on_the_quantization_grid(tiny_corpus, small_train_config, tmp_path):
    from quant.quantizers import fake_quant
    from training.model_io import load_model_file

    out = tmp_path / "admm"
    run_cli(["retrain.py", "--data-dir", tiny_corpus, "--config", small_train_config, "--max-steps", 4,
             "--uniform-bits", 2, "--quant-trainer", "admm", "--no-progress", "--out", out])
    m = load_model_file(out / "model.pt")
    params = m.weight_params(include_xent=False)
    assert m.cfg.weight_bits, "a uniform 2-bit model must record per-weight bits"
    for name, bits in m.cfg.weight_bits.items():
        w = params[name].detach()
        assert torch.equal(fake_quant(w, bits, m.cfg.quant_per_channel, m.cfg.quant_scale), w), name
    size = json.load(open(out / "size.json"))
    assert size["trainer"] == "admm" and size["payload_bytes"] == size["predicted_bytes"]


def test_finetune_from_fp32_into_a_smaller_genotype(tiny_corpus, small_train_config, tmp_path):
    from search_spaces.genotype import Genotype
    from search_spaces.space import load_search_space

    fp32 = tmp_path / "fp32"
    run_cli(["retrain.py", "--data-dir", tiny_corpus, "--config", small_train_config, "--max-steps", 2,
             "--no-progress", "--out", fp32])
    space = load_search_space("tdnnf_demo")
    layers = [l.name for l in space.layers]
    g = {"version": 1, "search_space": "tdnnf_demo",
         "layers": [{"name": n, "bits": 4 if n != "output" else 8,
                     "bottleneck": (32 if n.startswith("tdnnf") else None)} for n in layers]}
    gp = tmp_path / "g.json"
    gp.write_text(json.dumps(g))
    out = tmp_path / "ft"
    run_cli(["retrain.py", "--data-dir", tiny_corpus, "--config", small_train_config, "--max-steps", 2,
             "--genotype", gp, "--init-from", fp32 / "model.pt", "--no-progress", "--out", out])
    size = json.load(open(out / "size.json"))
    assert size["compression_ratio"] > 8
    assert Genotype.load(str(out / "genotype.json")).layers[1].bottleneck == 32


def test_bad_genotype_is_a_clear_error(tiny_corpus, tmp_path):
    from search_spaces.space import load_search_space

    names = [l.name for l in load_search_space("tdnnf_demo").layers]
    g = {"version": 1, "search_space": "tdnnf_demo",
         "layers": [{"name": n, "bits": INVALID_BITS if n == "tdnnf2" else 8,
                     "bottleneck": 64 if n.startswith("tdnnf") else None} for n in names]}
    gp = tmp_path / "bad.json"
    gp.write_text(json.dumps(g))
    with pytest.raises(AssertionError, match=f"tdnnf2.*bits|bits.*{INVALID_BITS}"):
        run_cli(["retrain.py", "--data-dir", tiny_corpus, "--genotype", gp, "--max-steps", 1,
                 "--out", tmp_path / "x"])
    g["layers"] = g["layers"][:3]
    gp.write_text(json.dumps(g))
    with pytest.raises(AssertionError, match="3 entries"):
        run_cli(["retrain.py", "--data-dir", tiny_corpus, "--genotype", gp, "--max-steps", 1,
                 "--out", tmp_path / "x"])


def test_search_kill_and_resume_gives_the_same_architecture_and_weights(tiny_corpus, small_train_config,
                                                                       tmp_path):
    common = ["train_search.py", "--data-dir", tiny_corpus, "--config", small_train_config,
              "--target-ratio", 8, "--max-steps", 7, "--no-progress"]
    # warm-up 0 so the architecture moves from the first step (the config sets only train/lfmmi)
    cfg = tmp_path / "search.yaml"
    cfg.write_text(open(small_train_config).read() + "search:\n  warmup_epochs: 0\n  held_out_fraction: 0.3\n  log_every: 3\n")
    common[common.index(small_train_config)] = cfg
    run_cli(common + ["--out", tmp_path / "straight"])
    # TensorBoard: the genotype as text, its bar chart, and the size chart layout
    events = b"".join(e.read_bytes() for e in (tmp_path / "straight" / "tb").glob("events.*"))
    for tag in (b"arch/genotype", b"arch/genotype_bars", b"arch/bits_heatmap", b"size against the budget"):
        assert tag in events, tag
    out = tmp_path / "killed"
    run_and_kill_after_checkpoints(common + ["--out", out], 2)
    run_cli(common + ["--out", out, "--resume"])
    a, b = ckpt.load(tmp_path / "straight" / "checkpoint.pt"), ckpt.load(out / "checkpoint.pt")
    assert a["step"] == b["step"] == 7
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert json.load(open(tmp_path / "straight" / "genotype.json"))["layers"] == \
        json.load(open(out / "genotype.json"))["layers"]
    check_subnet_file(tmp_path / "straight", tiny_corpus)
    # fine-tuning starts from the weights the search trained: every tensor copied, none sliced or rotated
    r = run_cli(["retrain.py", "--data-dir", tiny_corpus, "--config", small_train_config, "--max-steps", 1,
                 "--genotype", tmp_path / "straight" / "genotype.json", "--init-from",
                 tmp_path / "straight" / "subnet.pt", "--bottleneck-order", "none", "--no-progress",
                 "--out", tmp_path / "ft_from_search"])
    assert re.search(r"bottlenecks ordered: none; \d+ tensors copied, 0 sliced", r.stdout + r.stderr)


def check_subnet_file(search_dir, corpus_dir):
    """subnet.pt is the final genotype with the supernet's weights: the supernet restored from the
    checkpoint, fixed to that genotype, computes what the loaded subnet computes."""
    from search_spaces.genotype import Genotype
    from search_spaces.space import load_search_space
    from supernet.network import SuperNet
    from training.experiment import load_corpus
    from training.model_io import load_model_file

    corpus = load_corpus(corpus_dir)
    space = load_search_space("tdnnf_demo", num_pdfs=corpus.num_pdfs)
    g = Genotype.load(str(search_dir / "genotype.json"))
    sub = load_model_file(search_dir / "subnet.pt").eval()
    assert sub.cfg == g.to_config(space)
    assert sub.phones == list(corpus.lexicon.phones)
    assert torch.equal(sub.cmvn.mean, corpus.cmvn.mean)
    net = SuperNet.from_space(space)
    net.load_state_dict(ckpt.load(search_dir / "checkpoint.pt")["model"])
    net.eval()
    net.arch.set_choices([(l.bits, l.bottleneck) for l in g.layers])
    torch.manual_seed(0)
    x, lengths = torch.randn(2, 40, 40), torch.tensor([40, 33])
    with torch.no_grad():
        a, b = net(x, lengths)[0], sub(x, lengths)[0]
    assert torch.allclose(a, b, atol=1e-5, rtol=1e-5), float((a - b).abs().max())


def test_frozen_weight_search_moves_only_the_logits(tiny_corpus, small_train_config, tmp_path):
    """search.weights: frozen: every weight stays the --init-from model's (no optimizer or semi-orthogonal
    step touches it; BatchNorm statistics still update) and the logits learn from the task gradient."""
    from search_spaces.space import load_search_space
    from supernet.network import SuperNet
    from training.experiment import load_corpus
    from training.model_io import init_from

    start = tmp_path / "fp32"
    run_cli(["retrain.py", "--data-dir", tiny_corpus, "--config", small_train_config, "--max-steps", 2,
             "--no-progress", "--out", start])
    cfg = tmp_path / "search.yaml"
    cfg.write_text(open(small_train_config).read() + "search:\n  mode: single\n  weights: frozen\n"
                   "  warmup_epochs: 0\n  penalty_weight: 0.0\n  arch_lr: 0.1\n")
    out = tmp_path / "search"
    run_cli(["train_search.py", "--data-dir", tiny_corpus, "--config", cfg, "--init-from", start / "model.pt",
             "--target-ratio", 8, "--max-steps", 5, "--no-progress", "--out", out])
    corpus = load_corpus(tiny_corpus)
    space = load_search_space("tdnnf_demo", num_pdfs=corpus.num_pdfs)
    ref = SuperNet.from_space(space)
    init_from(ref, str(start / "model.pt"), "pca")  # the weights the search started from
    state = ckpt.load(out / "checkpoint.pt")["model"]
    weights = {n for n, _ in ref.named_parameters() if not n.startswith("arch.")}
    assert weights
    for n in weights:
        assert torch.equal(state[n], ref.state_dict()[n]), n
    logits = [n for n in state if n.startswith("arch.")]
    assert logits and any(not torch.equal(state[n], ref.state_dict()[n]) for n in logits)
    # the option refuses the settings it cannot honour
    bad = tmp_path / "bad.yaml"
    bad.write_text(open(small_train_config).read() + "search:\n  weights: frozen\n")
    r = run_cli_fail(["train_search.py", "--data-dir", tiny_corpus, "--config", bad, "--init-from",
                      start / "model.pt", "--max-steps", 1, "--no-progress", "--out", tmp_path / "bad"])
    assert "weights: frozen needs mode: single" in r.stderr
    # --warmup-epochs overrides the YAML's search.warmup_epochs (a warm-up would step frozen weights: refused)
    r = run_cli_fail(["train_search.py", "--data-dir", tiny_corpus, "--config", cfg, "--init-from",
                      start / "model.pt", "--warmup-epochs", 1, "--max-steps", 1, "--no-progress",
                      "--out", tmp_path / "warm"])
    assert "weights: frozen needs mode: single and warmup_epochs: 0" in r.stderr
