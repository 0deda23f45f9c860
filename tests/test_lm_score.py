"""Sentence log-probabilities, perplexity, model.pt save/load, and score_lm.py."""
from __future__ import annotations

import json
import math

import pytest
import torch

from tests.conftest import run_cli
from lm.model import TransformerLM, TransformerLMConfig
from lm.score import load_lm, perplexity, save_lm, sentence_logprobs
from lm.vocab import EOS, UNK, Vocab

WORDS = ["THE", "CAT", "SAT", "ON", "MAT", "A", "DOG"]
SENTS = [["THE", "CAT", "SAT"], ["A", "DOG", "SAT", "ON", "THE", "MAT"], [], ["THE", "BIRD"], ["DOG"]]


def model_and_vocab(seed=0):
    vocab = Vocab([EOS, UNK] + WORDS)
    torch.manual_seed(seed)
    cfg = TransformerLMConfig(vocab_size=len(vocab), d_model=16, n_heads=2, n_layers=2, d_ff=32, max_len=10,
                              dropout=0.3)
    return TransformerLM(cfg), vocab


def manual_logprob(model, vocab, words):
    """sum_i log p(w_i | <eos> w_<i) with one forward per position, unknown words as <unk>."""
    ids = [vocab.eos_id] + [vocab.words.index(w) if w in vocab.words else vocab.unk_id for w in words] + [vocab.eos_id]
    total = 0.0
    model.eval()
    with torch.no_grad():
        for t in range(1, len(ids)):
            logits = model(torch.tensor([ids[:t]]))[0, -1].double()
            total += float(logits[ids[t]] - torch.logsumexp(logits, 0))
    return total


def test_sentence_logprobs_match_per_position_loop():
    model, vocab = model_and_vocab()
    model.train()  # scoring must switch dropout off itself
    logp, toks, oovs = sentence_logprobs(model, vocab, SENTS, batch_size=2)
    assert not model.training
    model.train()
    assert toks == [4, 7, 1, 3, 2]
    assert oovs == [0, 0, 0, 1, 0]
    for s, lp in zip(SENTS, logp):
        assert abs(lp - manual_logprob(model, vocab, s)) < 1e-4
    # batch composition (padding) does not change a sentence's score
    for a, b in zip(logp, sentence_logprobs(model, vocab, SENTS, batch_size=64)[0]):
        assert abs(a - b) < 1e-5


def test_perplexity_is_exp_of_mean_negative_logprob_per_token():
    model, vocab = model_and_vocab()
    manual = [manual_logprob(model, vocab, s) for s in SENTS]
    tokens = sum(len(s) + 1 for s in SENTS)
    got = perplexity(model, vocab, SENTS, batch_size=3)
    assert got["tokens"] == tokens == 17
    assert got["oov"] == 1 and got["sentences"] == 5
    assert math.isclose(got["ppl"], math.exp(-sum(manual) / tokens), rel_tol=1e-5)
    assert math.isclose(got["logprob"], sum(manual), rel_tol=1e-5)


def test_eos_is_scored_once_at_the_end():
    """log p(w1 w2) = log p(w1 | <eos>) + log p(w2 | <eos> w1) + log p(<eos> | <eos> w1 w2)."""
    model, vocab = model_and_vocab()
    model.eval()
    i = vocab.words.index
    with torch.no_grad():
        lsm = torch.log_softmax(model(torch.tensor([[0, i("THE"), i("CAT")]]))[0].double(), -1)
    want = float(lsm[0, i("THE")] + lsm[1, i("CAT")] + lsm[2, vocab.eos_id])
    got = sentence_logprobs(model, vocab, [["THE", "CAT"]])[0][0]
    assert abs(got - want) < 1e-5


def test_too_long_sentence_is_an_error():
    model, vocab = model_and_vocab()
    with pytest.raises(ValueError, match="at most 9"):
        sentence_logprobs(model, vocab, [["THE"] * 10])
    sentence_logprobs(model, vocab, [["THE"] * 9])


def test_model_file_round_trip_and_vocab_mismatch(tmp_path):
    model, vocab = model_and_vocab()
    save_lm(model, vocab, tmp_path / "model.pt")
    obj = torch.load(tmp_path / "model.pt", weights_only=True)
    assert set(obj) == {"format", "config", "vocab", "vocab_sha1", "state_dict"}
    assert obj["state_dict"]["lm_head.weight"].data_ptr() == obj["state_dict"]["tok_emb.weight"].data_ptr()
    loaded, v2 = load_lm(tmp_path / "model.pt", vocab=vocab)
    assert v2 == vocab
    assert loaded.lm_head.weight is loaded.tok_emb.weight
    for k, t in model.state_dict().items():
        assert torch.equal(t, loaded.state_dict()[k]), k
    assert sentence_logprobs(loaded, v2, SENTS)[0] == sentence_logprobs(model, vocab, SENTS)[0]
    other = Vocab([EOS, UNK] + list(reversed(WORDS)))
    with pytest.raises(ValueError, match="not the one"):
        load_lm(tmp_path / "model.pt", vocab=other)


def test_score_lm_cli(tmp_path):
    model, vocab = model_and_vocab()
    save_lm(model, vocab, tmp_path / "model.pt")
    vocab.save(tmp_path / "vocab.txt")
    (tmp_path / "hyps.txt").write_text("u1 THE CAT SAT\nu2\nu3 THE BIRD\n")
    run_cli(["score_lm.py", "--model", tmp_path / "model.pt", "--text", tmp_path / "hyps.txt", "--utt-ids",
             "--vocab", tmp_path / "vocab.txt", "--out", tmp_path / "scores.txt", "--ppl-json", tmp_path / "p.json"])
    rows = [l.split() for l in (tmp_path / "scores.txt").read_text().splitlines()]
    assert [r[0] for r in rows] == ["u1", "u2", "u3"]
    assert [int(r[2]) for r in rows] == [4, 1, 3] and [int(r[3]) for r in rows] == [0, 0, 1]
    model.eval()
    for r, s in zip(rows, [["THE", "CAT", "SAT"], [], ["THE", "BIRD"]]):
        assert abs(float(r[1]) - manual_logprob(model, vocab, s)) < 1e-4
    summary = json.loads((tmp_path / "p.json").read_text())
    assert summary["tokens"] == 8 and summary["oov"] == 1
    assert math.isclose(summary["ppl"], math.exp(-sum(float(r[1]) for r in rows) / 8), rel_tol=1e-5)
    # plain text (no ids): blank lines skipped, ids are line numbers, scores on stdout
    (tmp_path / "plain.txt").write_text("THE CAT SAT\n\nTHE BIRD\n")
    r = run_cli(["score_lm.py", "--model", tmp_path / "model.pt", "--text", tmp_path / "plain.txt"])
    assert [l.split()[0] for l in r.stdout.splitlines()] == ["1", "3"]


def test_score_lm_refuses_a_model_of_another_vocabulary(tmp_path):
    model, vocab = model_and_vocab()
    save_lm(model, vocab, tmp_path / "model.pt")
    Vocab([EOS, UNK] + WORDS + ["EXTRA"]).save(tmp_path / "other_vocab.txt")
    (tmp_path / "t.txt").write_text("THE CAT\n")
    with pytest.raises(AssertionError, match="not the one .* was trained with"):
        run_cli(["score_lm.py", "--model", tmp_path / "model.pt", "--text", tmp_path / "t.txt",
                 "--vocab", tmp_path / "other_vocab.txt"])
