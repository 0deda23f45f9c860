"""The LM at low bit-widths: fake quantization in the forward pass, the cost model against bytes on disk,
the packed file (pack -> load exact), sensitivities against direct computations, the budget allocation."""
from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
from torch.nn import functional as F

from lm.mixed_precision import (allocate_lm_bits, average_bits, heldout_batches, lm_hessian_sensitivity,
                                lm_kl_sensitivity, matrix_specs, uniform_bits)
from lm.model import TransformerLM, TransformerLMConfig, matrix_names
from lm.quant import (decode_vocab, encode_vocab, export_packed_lm, fixed_bytes, header_bytes, is_packed_lm,
                      lm_fp32_bytes, lm_layout, lm_size, load_packed_lm, matrix_bytes, upgrade_packed_lm)
from lm.score import load_lm, save_lm, sentence_logprobs
from lm.vocab import Vocab
from models.quantizers import QUANTIZED_BITS, SUPPORTED_BITS, fake_quant
from quant.knapsack import brute_force
from quant.packing import PackedModelError, payload_bytes, read_header
from tests.conftest import INVALID_BITS, run_cli

V = 40
VOCAB = Vocab(["<eos>", "<unk>"] + [f"w{i}" for i in range(V - 2)])
LOW_BITS = QUANTIZED_BITS


def small_cfg(**kw):
    d = dict(vocab_size=V, d_model=16, n_heads=2, n_layers=2, d_ff=24, max_len=16, dropout=0.0)
    d.update(kw)
    return TransformerLMConfig(**d)


def trained_like(cfg, seed=0):
    """A model whose weights are not at their N(0, 0.02) init (rows of different scales, some outliers)."""
    torch.manual_seed(seed)
    m = TransformerLM(cfg)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.1 * torch.rand(p.shape[0], *([1] * (p.dim() - 1))))
    return m.eval()


def seqs(n=24, seed=1):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        k = int(torch.randint(1, 9, (), generator=g))
        out.append([0] + torch.randint(2, V, (k,), generator=g).tolist() + [0])
    return out


ARCHS = [dict(), dict(tie_embeddings=False), dict(positions="learned"), dict(positions="learned", tie_embeddings=False)]


def mixed_bits(cfg, seed=0):
    widths = list(SUPPORTED_BITS)
    return {n: widths[(i + seed) % len(widths)] for i, n in enumerate(matrix_names(cfg))}


@pytest.mark.parametrize("arch", ARCHS)
def test_forward_uses_fake_quantized_matrices(arch):
    """The quantized LM equals a float LM whose matrices were replaced by fake_quant of them."""
    cfg = small_cfg(**arch)
    m = trained_like(cfg)
    bits = mixed_bits(cfg)
    x = torch.randint(0, V, (3, 9))
    ref = TransformerLM(cfg).eval()
    ref.load_state_dict(m.state_dict())
    with torch.no_grad():
        for n, p in ref.weight_params().items():
            p.copy_(fake_quant(p, bits[n], True, cfg.quant_scale))
    m.set_weight_bits(bits)
    torch.testing.assert_close(m(x), ref(x), rtol=0, atol=1e-6)
    m.quant_enabled = False
    assert not torch.allclose(m(x), ref(x), atol=1e-4)


def test_tied_head_shares_the_embedding_bits_and_storage():
    cfg = small_cfg()
    assert "lm_head.weight" not in matrix_names(cfg)
    m = trained_like(cfg)
    m.set_weight_bits({"tok_emb.weight": 2})
    h = torch.randn(5, cfg.d_model)
    expect = F.linear(h, fake_quant(m.tok_emb.weight, 2, True, cfg.quant_scale), m.lm_head.bias)
    torch.testing.assert_close(m.lm_head(h), expect)


def test_bad_bit_assignments_are_errors_naming_the_matrix():
    m = TransformerLM(small_cfg())
    with pytest.raises(ValueError, match="unknown matrices.*lm_head.weight"):
        m.set_weight_bits({"lm_head.weight": 4})  # tied: not a matrix of its own
    with pytest.raises(ValueError, match=f"unsupported bit-width {INVALID_BITS}"):
        m.set_weight_bits({"tok_emb.weight": INVALID_BITS})
    with pytest.raises(ValueError, match="quant_scale"):
        small_cfg(quant_scale="minmax")


@pytest.mark.parametrize("arch", ARCHS)
def test_pack_load_is_exact_and_cost_model_equals_bytes_on_disk(arch, tmp_path):
    cfg = small_cfg(**arch)
    x = torch.randint(0, V, (4, 11))
    for seed, bits in enumerate([{}, *[uniform_bits(cfg, b) for b in LOW_BITS], mixed_bits(cfg, 1), mixed_bits(cfg, 3)]):
        m = trained_like(cfg, seed)
        m.set_weight_bits(bits)
        path = tmp_path / f"lm{seed}.safetensors"
        n = export_packed_lm(m, VOCAB, str(path))
        assert n == payload_bytes(str(path)) == lm_size(m.cfg).total_bytes
        assert path.stat().st_size == n + header_bytes(path)
        loaded, vocab = load_packed_lm(path)
        assert vocab == VOCAB and loaded.cfg == m.cfg and not loaded.quant_enabled
        with torch.no_grad():
            assert torch.equal(loaded(x), m(x))
        assert is_packed_lm(path)
        # the model.pt loader opens packed files too (rescoring, score_lm.py, the ONNX export use it)
        again, _ = load_lm(path)
        with torch.no_grad():
            assert torch.equal(again(x), m(x))


def write_version1(src, dst):
    """``src`` (a version 2 file) as version 1 wrote it: the vocabulary a JSON list in ``vocab``."""
    from safetensors.torch import load_file, save_file
    meta = read_header(str(src))["__metadata__"]
    meta = {k: v for k, v in meta.items() if k != "vocab_zlib"}
    meta.update(format_version="1", vocab=json.dumps(decode_vocab(read_header(str(src))["__metadata__"]["vocab_zlib"])))
    save_file(load_file(str(src)), str(dst), metadata=meta)


def test_vocabulary_is_stored_compressed_and_version_1_files_load_and_upgrade_exactly(tmp_path):
    big = Vocab(["<eos>", "<unk>"] + [f"word{i:05d}" for i in range(3000)])
    assert decode_vocab(encode_vocab(big.words)) == big.words
    cfg = small_cfg(vocab_size=len(big))
    m = trained_like(cfg)
    m.set_weight_bits(mixed_bits(cfg, 2))
    v2 = tmp_path / "v2.safetensors"
    export_packed_lm(m, big, str(v2))
    meta = read_header(str(v2))["__metadata__"]
    assert meta["format_version"] == "2" and "vocab" not in meta
    assert len(meta["vocab_zlib"]) < 0.5 * len(json.dumps(big.words))
    v1 = tmp_path / "sub" / "model.safetensors"
    v1.parent.mkdir()
    write_version1(v2, v1)
    (v1.parent / "size.json").write_text(json.dumps({"bytes": 1, "file_bytes": v1.stat().st_size}))
    x = torch.randint(0, len(big), (3, 9))
    old, old_vocab = load_packed_lm(v1)  # version 1 is still read
    with torch.no_grad():
        ref = old(x)
    assert old_vocab == big and v1.stat().st_size > v2.stat().st_size
    run_cli(["upgrade_lm_file.py", str(v1), str(v2)])
    assert v1.stat().st_size == v2.stat().st_size  # as a fresh version 2 export
    new, new_vocab = load_packed_lm(v1)
    with torch.no_grad():
        assert new_vocab == big and torch.equal(new(x), ref)
    assert json.loads((v1.parent / "size.json").read_text()) == {"bytes": 1, "file_bytes": v1.stat().st_size,
                                                                 "header_bytes": header_bytes(v1)}
    assert upgrade_packed_lm(v1) == (v1.stat().st_size,) * 2  # version 2: left alone
    with pytest.raises(ValueError, match="vocab_zlib is not"):
        decode_vocab("not base64!")


def test_cost_model_by_hand():
    """Bytes counted independently of lm_layout: codes ceil(n*b/8) + 2 per row, floats 4 each."""
    cfg = small_cfg(positions="learned", tie_embeddings=False)
    D, F_, L = cfg.d_model, cfg.d_ff, cfg.n_layers
    b = 2
    mats = [(V, D), (cfg.max_len, D)] + [(D, D)] * 4 * L + [(F_, D), (D, F_)] * L + [(V, D)]
    floats = L * (4 * D + 4 * D + F_ + D) + 2 * D + V  # attn + LN biases, ff biases, final LN, head bias
    expect = sum((r * c * b + 7) // 8 + 2 * r for r, c in mats) + 4 * floats
    assert lm_size(cfg.replace(weight_bits=uniform_bits(cfg, b))).total_bytes == expect
    assert lm_fp32_bytes(cfg) == 4 * (sum(r * c for r, c in mats) + floats)
    assert fixed_bytes(cfg) == 4 * floats
    assert lm_size(cfg).num_parameters == TransformerLM(cfg).num_parameters()
    assert sum(matrix_bytes(cfg, [b]).values().__iter__().__next__().values()) == (V * D * b + 7) // 8 + 2 * V
    assert average_bits(cfg.replace(weight_bits=uniform_bits(cfg, 4))) == 4


def test_bad_packed_files_are_clear_errors(tmp_path):
    cfg = small_cfg()
    m = trained_like(cfg)
    m.set_weight_bits(uniform_bits(cfg, 4))
    good = tmp_path / "lm.safetensors"
    export_packed_lm(m, VOCAB, str(good))
    raw = good.read_bytes()
    (tmp_path / "short.safetensors").write_bytes(raw[:-10])
    with pytest.raises(PackedModelError, match="truncated|mismatch"):
        load_packed_lm(tmp_path / "short.safetensors")
    (tmp_path / "empty.safetensors").write_bytes(b"")
    with pytest.raises(PackedModelError, match="truncated"):
        load_packed_lm(tmp_path / "empty.safetensors")
    other = Vocab(["<eos>", "<unk>"] + [f"x{i}" for i in range(V - 2)])
    with pytest.raises(ValueError, match="is not the one"):
        load_packed_lm(good, vocab=other)
    with pytest.raises(ValueError, match="vocabulary has"):
        export_packed_lm(m, Vocab(["<eos>", "<unk>", "a"]), str(tmp_path / "x.safetensors"))
    with torch.no_grad():
        m.tok_emb.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        export_packed_lm(m, VOCAB, str(tmp_path / "nan.safetensors"))
    # a vocabulary that does not decode, or one that is not the recorded one
    from safetensors.torch import load_file, save_file
    meta = read_header(str(good))["__metadata__"]
    for key, value, msg in [("vocab_zlib", "AAAA", "bad config or vocabulary"),
                            ("vocab_zlib", encode_vocab(other.words), "does not match its recorded sha1")]:
        save_file(load_file(str(good)), str(tmp_path / "bad.safetensors"), metadata={**meta, key: value})
        with pytest.raises(PackedModelError, match=msg):
            load_packed_lm(tmp_path / "bad.safetensors")
    # an acoustic-model packed file is not an LM
    from models.tdnnf import TDNNF
    from quant.packing import export_packed
    from tests.test_quant_packing import cfg_small
    am = tmp_path / "am.safetensors"
    export_packed(TDNNF(cfg_small()), str(am))
    assert not is_packed_lm(am)
    with pytest.raises(PackedModelError, match="not a green-asr-lm-packed file"):
        load_packed_lm(am)


def _kl_by_hand(model, name, bits, batches):
    """Mean next-word KL(P_fp || P_q) with only ``name`` quantized, by direct computation."""
    total, n = 0.0, 0
    q = TransformerLM(model.cfg.replace(weight_bits={})).eval()
    q.load_state_dict(model.state_dict())
    with torch.no_grad():
        p = dict(q.named_parameters(remove_duplicate=False))[name]
        p.copy_(fake_quant(p, bits, True, model.cfg.quant_scale))
        for b in batches:
            lp = F.log_softmax(model(b["inputs"]).double(), -1)
            lq = F.log_softmax(q(b["inputs"]).double(), -1)
            kl = (lp.exp() * (lp - lq)).sum(-1)
            total += float(kl[b["mask"]].sum())
            n += int(b["mask"].sum())
    return total / n


def test_kl_sensitivity_equals_a_direct_computation():
    cfg = small_cfg()
    m = trained_like(cfg)
    batches = heldout_batches(seqs(), 0, 8, 3)
    sens = lm_kl_sensitivity(m, batches, [1, 2, 8, 32])
    assert set(sens) == set(matrix_names(cfg)) and m.cfg.weight_bits == {}
    for name in ("tok_emb.weight", "blocks.1.ff.ff_in.weight"):
        for b in (1, 2, 8):
            assert sens[name][b] == pytest.approx(_kl_by_hand(m, name, b, batches), rel=1e-9, abs=1e-12)
        assert sens[name][32] == 0.0
        assert sens[name][1] > sens[name][2] > sens[name][8] > 0


def test_hessian_trace_matches_the_exact_hessian():
    """Hutchinson's Tr(H) of one matrix (many iterations) against the trace of the exact Hessian block."""
    cfg = small_cfg(d_model=4, n_heads=1, n_layers=1, d_ff=4, vocab_size=V)
    m = trained_like(cfg, 2)
    batches = heldout_batches(seqs(8), 0, 8, 1)
    name = "blocks.0.ff.ff_out.weight"
    sens, res = lm_hessian_sensitivity(m, batches, [2, 4], max_iters=400, return_traces=True)
    w = m.weight_params()[name]
    b = batches[0]

    def loss_of(flat):
        from torch.func import functional_call
        params = {k: v for k, v in m.named_parameters()}
        params[name] = flat.reshape(w.shape)
        logits = functional_call(m, params, (b["inputs"],))
        lp = F.log_softmax(logits, -1).gather(-1, b["targets"].unsqueeze(-1)).squeeze(-1)
        return -(lp * b["mask"]).sum() / b["mask"].sum()

    from torch.nn.attention import SDPBackend, sdpa_kernel
    with sdpa_kernel([SDPBackend.MATH]):
        H = torch.autograd.functional.hessian(loss_of, w.detach().reshape(-1).clone())
    exact = float(torch.diagonal(H).sum())
    # Hutchinson's estimate is unbiased: within 4 standard errors of the exact trace
    assert abs(res.trace[name] - exact) <= 4 * res.stderr[name] + 1e-9
    assert res.stderr[name] < 0.5 * abs(exact) or res.iters > 10
    err = float(((fake_quant(w.detach(), 2, True, cfg.quant_scale) - w.detach()) ** 2).sum())
    assert sens[name][2] == pytest.approx(max(res.trace[name], 0.0) / w.numel() * err, rel=1e-9)


def test_allocation_is_the_best_under_the_budget():
    cfg = small_cfg(n_layers=1)
    m = trained_like(cfg)
    batches = heldout_batches(seqs(), 0, 8, 2)
    choices = list(QUANTIZED_BITS)
    sens = lm_kl_sensitivity(m, batches, choices)
    fp = lm_fp32_bytes(cfg)
    sizes = matrix_bytes(cfg, choices)
    for ratio in (2.5, 4, 6):
        budget = fp / ratio
        bits, info = allocate_lm_bits(cfg, sens, budget, choices)
        assert info["bytes"] == lm_size(cfg.replace(weight_bits=bits)).total_bytes <= budget
        best = brute_force(sens, sizes, budget - fixed_bytes(cfg))
        assert info["total_sensitivity"] == pytest.approx(best.total_sensitivity)
    # a budget that fits everything at 8 bits takes 8 bits everywhere (8 is the least sensitive)
    bits, _ = allocate_lm_bits(cfg, sens, lm_size(cfg.replace(weight_bits=uniform_bits(cfg, 8))).total_bytes, choices)
    assert set(bits.values()) == {8}
    with pytest.raises(ValueError, match="below the smallest"):
        allocate_lm_bits(cfg, sens, fixed_bytes(cfg), choices)
    with pytest.raises(ValueError, match="no sensitivity"):
        allocate_lm_bits(cfg, {k: v for k, v in itertools.islice(sens.items(), 2)}, fp, choices)


def test_model_pt_round_trip_keeps_the_bits(tmp_path):
    cfg = small_cfg()
    m = trained_like(cfg)
    m.set_weight_bits(mixed_bits(cfg))
    save_lm(m, VOCAB, tmp_path / "model.pt")
    again, _ = load_lm(tmp_path / "model.pt")
    assert again.cfg.weight_bits == m.cfg.weight_bits
    s = [["w1", "w2"], ["w3"], ["nope"]]
    assert sentence_logprobs(again, VOCAB, s)[0] == pytest.approx(sentence_logprobs(m, VOCAB, s)[0], abs=1e-5)
    assert matrix_specs(cfg, [2, 4])["tok_emb.weight"] == (["tok_emb.weight"], [2, 4])
    assert [t.name for t in lm_layout(cfg) if t.kind == "weight"] == matrix_names(cfg)
    assert math.isclose(average_bits(m.cfg), sum(
        m.cfg.bits_of(t.name) * math.prod(t.shape) for t in lm_layout(cfg) if t.kind == "weight") /
        sum(math.prod(t.shape) for t in lm_layout(cfg) if t.kind == "weight"))


def test_onnx_export_of_a_packed_lm_scores_as_the_packed_model(tmp_path):
    pytest.importorskip("onnxruntime")
    from lm.onnx import export_lm_onnx, load_lm_onnx
    cfg = small_cfg(positions="learned")
    m = trained_like(cfg)
    m.set_weight_bits(mixed_bits(cfg, 2))
    export_packed_lm(m, VOCAB, str(tmp_path / "lm.safetensors"))
    export_lm_onnx(str(tmp_path / "lm.safetensors"), str(tmp_path / "lm.onnx"))
    onnx_model, vocab = load_lm_onnx(str(tmp_path / "lm.onnx"))
    x = torch.randint(0, V, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(torch.as_tensor(onnx_model(x)), m(x), rtol=0, atol=1e-4)
