"""Transformer LM: hand-computed next-token distribution, causality, tied embeddings, config errors."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lm.data import LMBatches, collate
from lm.model import TransformerLM, TransformerLMConfig, sinusoidal_positions
from lm.score import token_logprobs
from lm.train import LMTrainer, LMTrainOptions
from lm.vocab import Vocab


def small(**kw):
    d = dict(vocab_size=11, d_model=16, n_heads=4, n_layers=2, d_ff=24, max_len=12, dropout=0.0)
    d.update(kw)
    torch.manual_seed(0)
    return TransformerLM(TransformerLMConfig(**d)).eval()


def test_hand_computed_bigram_distribution(tmp_path):
    """With the blocks' output projections zeroed, learned positions zeroed and unit LayerNorms, the
    model is a bigram: p(. | x) = softmax(LN(E[x]) @ E^T + b). Compute that with numpy."""
    m = small(n_layers=1, positions="learned")
    with torch.no_grad():
        m.blocks[0].attn.out_proj.weight.zero_()
        m.blocks[0].attn.out_proj.bias.zero_()
        m.blocks[0].ff.ff_out.weight.zero_()
        m.blocks[0].ff.ff_out.bias.zero_()
        m.pos_emb.weight.zero_()
        m.lm_head.bias.copy_(torch.linspace(-1, 1, 11))
    E = m.tok_emb.weight.detach().double().numpy()
    b = m.lm_head.bias.detach().double().numpy()

    def ln(v):
        return (v - v.mean()) / math.sqrt(v.var() + 1e-5)

    def logp(prev, nxt):
        z = E @ ln(E[prev]) + b
        return z[nxt] - (z.max() + math.log(np.exp(z - z.max()).sum()))

    seq = [0, 5, 3, 7, 0]  # <eos> w w w <eos>
    batch = collate([seq], pad_id=0)
    with torch.no_grad():
        got = token_logprobs(m, batch)[0].double()
    want = torch.tensor([logp(seq[t], seq[t + 1]) for t in range(4)], dtype=torch.float64)
    assert torch.allclose(got, want, atol=1e-5)
    # the training loss of that sentence is the mean token NLL of the hand-computed numbers
    vocab = Vocab(["<eos>", "<unk>"] + [f"W{i}" for i in range(9)])
    trainer = LMTrainer(m, vocab, LMBatches([seq], 1, 0, shuffle=False), [], LMTrainOptions(epochs=1),
                        tmp_path, show_progress=False)
    stats = trainer.train_step(batch)
    assert math.isclose(stats["loss"], float(-want.mean()), rel_tol=1e-5)
    assert stats["tokens"] == 4


def test_batched_logprobs_equal_prefix_by_prefix_forwards():
    """Every position of a padded batch equals log_softmax of a forward over just that prefix."""
    m = small()
    seqs = [[0, 4, 9, 2, 0], [0, 3, 0], [0, 1, 6, 6, 8, 10, 0]]
    batch = collate(seqs, pad_id=0)
    with torch.no_grad():
        lp = token_logprobs(m, batch)
    for b, s in enumerate(seqs):
        for t in range(len(s) - 1):
            with torch.no_grad():
                ref = torch.log_softmax(m(torch.tensor([s[: t + 1]]))[0, -1], -1)[s[t + 1]]
            assert abs(float(lp[b, t]) - float(ref)) < 1e-5
        assert torch.all(lp[b, len(s) - 1:] == 0)  # padded positions are masked out


@pytest.mark.parametrize("positions", ["sinusoidal", "learned"])
def test_changing_a_future_token_never_changes_earlier_outputs(positions):
    m = small(positions=positions)
    x = torch.tensor([[0, 4, 9, 2, 7, 3, 1, 5]])
    base = m(x)
    for t in range(1, x.shape[1]):
        y = x.clone()
        y[0, t] = (y[0, t] + 3) % 11
        out = m(y)
        assert torch.equal(out[0, :t], base[0, :t]), f"position < {t} changed"
        assert not torch.allclose(out[0, t], base[0, t])  # the changed position itself does change


def test_tied_embeddings_share_storage():
    m = small()
    assert m.lm_head.weight is m.tok_emb.weight
    assert m.lm_head.weight.data_ptr() == m.tok_emb.weight.data_ptr()
    n_untied = small(tie_embeddings=False).num_parameters()
    assert n_untied - m.num_parameters() == 11 * 16
    with torch.no_grad():
        m.tok_emb.weight[3, 0] = 42.0
    assert float(m.lm_head.weight.detach()[3, 0]) == 42.0
    sd = m.state_dict()
    assert sd["lm_head.weight"].data_ptr() == sd["tok_emb.weight"].data_ptr()


def test_untied_embeddings_are_separate():
    m = small(tie_embeddings=False)
    assert m.lm_head.weight.data_ptr() != m.tok_emb.weight.data_ptr()


def test_every_weight_matrix_is_its_own_named_module():
    m = small(n_layers=1)
    names = {n for n, _ in m.named_parameters()}
    for part in ("attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.out_proj", "ff.ff_in", "ff.ff_out"):
        assert f"blocks.0.{part}.weight" in names
    assert m.blocks[0].ff.ff_in.weight.shape == (24, 16)


def test_config_rejects_unknown_keys_and_bad_values():
    with pytest.raises(ValueError, match="d_modle"):
        TransformerLMConfig.from_dict({"vocab_size": 10, "d_modle": 64})
    with pytest.raises(ValueError, match="multiple of n_heads"):
        TransformerLMConfig(vocab_size=10, d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="positions"):
        TransformerLMConfig(vocab_size=10, positions="rotary")
    cfg = TransformerLMConfig.from_dict({"vocab_size": 10, "n_layers": 1})
    assert cfg.d_model == 128 and cfg.n_heads == 4 and cfg.d_ff == 512 and cfg.tie_embeddings


def test_too_long_input_is_an_error():
    m = small()
    with pytest.raises(ValueError, match="max_len"):
        m(torch.zeros(1, 13, dtype=torch.int64))


def test_sinusoidal_table_values():
    pe = sinusoidal_positions(5, 4)
    assert math.isclose(float(pe[3, 0]), math.sin(3.0), rel_tol=1e-6)
    assert math.isclose(float(pe[3, 1]), math.cos(3.0), rel_tol=1e-6)
    assert math.isclose(float(pe[3, 2]), math.sin(3.0 / 100.0), rel_tol=1e-6)
    assert math.isclose(float(pe[3, 3]), math.cos(3.0 / 100.0), rel_tol=1e-6)
