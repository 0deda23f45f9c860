"""n-best rescoring: the combined cost, first-pass equivalence, grid search, bad input."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from decoding.decoder import DecoderConfig, raw_lattice
from decoding.graph import get_graph
from decoding.lm import NgramModel
from decoding.nbest import lattice_nbest
from decoding.wer import corpus_wer
from lm.model import TransformerLM, TransformerLMConfig
from lm.rescore import ScoredHypothesis, counts, first_pass, grid_search, load_rescoring_lm, oracle, \
    read_nbest_jsonl, rescore, rescored_cost, score_nbest, write_nbest_jsonl
from lm.score import save_lm, sentence_logprobs
from lm.vocab import EOS, UNK, Vocab
from tests.test_decoding_graph import LEX, TEXT, TinyLexicon, lm_cost, loglikes

H = ScoredHypothesis


def hand_nbest():
    # first-pass order (acoustic + graph = 15, 16, 17)
    return {"u1": [H(["A", "B"], 10.0, 5.0, 4.0, 6.0), H(["A", "C"], 11.0, 5.0, 4.5, 2.0),
                   H(["A"], 14.0, 3.0, 2.5, 5.0)],
            "u2": [H(["C"], 3.0, 2.0, 1.5, 4.0), H(["B"], 3.5, 2.0, 1.0, 3.5)]}


def test_combined_cost_by_hand():
    nb = hand_nbest()
    h0, h1, h2 = nb["u1"]
    # cost = acoustic + w * (graph - ngram + (1 - alpha) * ngram + alpha * nnlm)
    assert h0.cost(1.0, 1.0) == 10 + 5 - 4 + 6 == 17.0
    assert h1.cost(1.0, 1.0) == 11 + 5 - 4.5 + 2 == 13.5
    assert h2.cost(2.0, 0.5) == 14 + 2 * (3 - 2.5 + 0.5 * 2.5 + 0.5 * 5) == 22.5
    assert rescored_cost(np.array([10.0]), 5.0, 4.0, 6.0, 2.0, 0.5)[0] == 10 + 2 * (5 - 4 + 2 + 3)
    assert rescore(nb, 1.0, 1.0) == {"u1": ["A", "C"], "u2": ["C"]}  # u2: 3+2-1.5+4=7.5 vs 3.5+2-1+3.5=8
    assert rescore(nb, 2.0, 0.5)["u1"] == ["A", "C"]  # 22, 18.5, 22.5
    assert rescore(nb, 3.0, 0.0)["u1"] == ["A"]  # 25, 26, 23
    assert rescore(nb, 2.0, 0.0)["u1"] == ["A", "B"]  # 20, 21, 20: a tie goes to the first-pass order
    assert rescore(nb, 1.0, 0.0) == first_pass(nb) == {"u1": ["A", "B"], "u2": ["C"]}


def test_grid_search_against_direct_rescoring():
    nb = hand_nbest()
    refs = {"u1": ["A", "C"], "u2": ["C"]}
    lws, alphas = (0.5, 1.0, 2.0, 3.0), (0.0, 0.5, 1.0)
    gs = grid_search(nb, refs, lws, alphas)
    assert len(gs.results) == 12
    for r in gs.results:
        hyps = rescore(nb, r.lm_weight, r.alpha)
        assert r.wer == pytest.approx(corpus_wer(refs, hyps)["wer"])
        assert r.changed == sum(hyps[u] != first_pass(nb)[u] for u in nb)
    assert gs.best.wer == min(r.wer for r in gs.results) == 0.0
    # zero errors at (0.5, 0.5), (1, 0.5), (2, 0.5), (0.5, 1), (1, 1), ...: each changes u1 only; the
    # smallest alpha, then the weight closest to 1, wins
    assert (gs.best.lm_weight, gs.best.alpha, gs.best.changed) == (1.0, 0.5, 1)
    assert rescore(nb, gs.best.lm_weight, gs.best.alpha) == refs
    # ties: when nothing beats the first pass, the first pass's own weights win
    same = grid_search(nb, first_pass(nb), lws, alphas)
    assert (same.best.lm_weight, same.best.alpha, same.best.changed) == (1.0, 0.0, 0)
    assert oracle(nb, refs) == refs
    with pytest.raises(ValueError):
        grid_search(nb, refs, [], alphas)


def test_empty_nbest_gives_an_empty_hypothesis_and_is_counted():
    nb = hand_nbest()
    nb["u3"] = []
    refs = {"u1": ["A", "C"], "u2": ["C"], "u3": ["B", "B"]}
    assert rescore(nb, 1.0, 1.0)["u3"] == [] and first_pass(nb)["u3"] == [] and oracle(nb, refs)["u3"] == []
    c = counts(nb)
    assert c["empty_nbest"] == 1 and c["utterances"] == 3 and c["hypotheses"] == 5
    gs = grid_search(nb, refs, (1.0,), (0.0,))
    assert gs.best.errors == 1 + 0 + 2  # u1 first pass "A B" (1 sub), u3: two deletions


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    d = tmp_path_factory.mktemp("g")
    (d / "text").write_text(TEXT)
    return get_graph(TinyLexicon(LEX), d / "cache", lm_text=d / "text", order=3)


def tiny_lm(words=("A", "SEE", "BEE"), seed=0):
    """A random Transformer LM whose vocabulary lacks some graph words ("BE")."""
    vocab = Vocab([EOS, UNK] + list(words))
    torch.manual_seed(seed)
    cfg = TransformerLMConfig(vocab_size=len(vocab), d_model=16, n_heads=2, n_layers=1, d_ff=32, max_len=16,
                              dropout=0.0)
    return TransformerLM(cfg).eval(), vocab


def test_score_nbest_on_decoded_lists(graph, tmp_path):
    m = loglikes(TinyLexicon(LEX), ["B", "IY", "AH", "S", "IY"], floor=-1.0, frames=2)
    m = m + np.random.default_rng(0).uniform(-0.5, 0, size=m.shape).astype(np.float32)
    nb = {"u1": lattice_nbest(raw_lattice(m, graph, DecoderConfig(lattice_beam=4.0)), graph.words, 8),
          "u2": []}
    assert len(nb["u1"]) == 8
    model, vocab = tiny_lm()
    ngram = NgramModel.load_arpa(graph.directory + "/G.arpa")
    scored = score_nbest(nb, ngram, model, vocab, batch_size=3)
    assert scored["u2"] == []
    lp, _tok, oov = sentence_logprobs(model, vocab, [h.words for h in nb["u1"]], batch_size=1)
    for h, s, l, o in zip(nb["u1"], scored["u1"], lp, oov):
        assert s.words == h.words and (s.acoustic, s.graph) == (h.acoustic, h.graph)
        assert s.nnlm == pytest.approx(-l, abs=1e-5) and s.oov == o == h.words.count("BE")
        # ARPA log10 -> natural log, </s> included; G's Viterbi cost is at most the ARPA cost
        toks = ["<s>"] + h.words + ["</s>"]
        log10 = sum(math.log10(ngram.prob(toks[i], toks[max(0, i - 2):i])) for i in range(1, len(toks)))
        assert s.ngram == pytest.approx(-log10 * math.log(10.0), abs=1e-9)
        assert lm_cost(graph, h.words) <= s.ngram + 1e-6
        # graph = G's Viterbi cost + silence choices (ln 2 at each of the n + 1 word boundaries), up to
        # float32 weights and to_str's 6 digits; on this graph G's Viterbi cost is the ARPA cost
        assert s.graph - (len(h.words) + 1) * math.log(2.0) == pytest.approx(lm_cost(graph, h.words), abs=2e-3)
    assert counts(scored)["oov_words"] == sum(h.words.count("BE") for h in nb["u1"]) > 0
    # lm_weight 1 and alpha 0 reproduce the first pass's order
    costs = [h.cost(1.0, 0.0) for h in scored["u1"]]
    assert costs == sorted(costs)
    assert [h.cost(1.0, 0.0) for h in scored["u1"]] == pytest.approx([h.total for h in nb["u1"]])
    assert rescore(scored, 1.0, 0.0) == {"u1": nb["u1"][0].words, "u2": []}
    # file round trip
    write_nbest_jsonl(tmp_path / "nbest.jsonl", scored, {"u1": ["BE", "A", "SEE"], "u2": []})
    assert read_nbest_jsonl(tmp_path / "nbest.jsonl") == scored


def test_lm_with_another_vocabulary_is_refused(tmp_path):
    model, vocab = tiny_lm()
    save_lm(model, vocab, tmp_path / "model.pt")
    vocab.save(tmp_path / "vocab.txt")
    m2, v2 = load_rescoring_lm(tmp_path / "model.pt")  # vocab.txt beside the model is checked
    assert v2 == vocab
    Vocab([EOS, UNK, "A", "BEE", "SEE"]).save(tmp_path / "other.txt")
    with pytest.raises(ValueError, match="other.txt does not match.*id 3"):
        load_rescoring_lm(tmp_path / "model.pt", tmp_path / "other.txt")
    (tmp_path / "vocab.txt").write_text("<eos>\n<unk>\nA\n")
    with pytest.raises(ValueError, match="vocab.txt does not match"):
        load_rescoring_lm(tmp_path / "model.pt")
