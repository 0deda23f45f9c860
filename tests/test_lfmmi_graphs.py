"""Lang preparation: phone LM estimator, chain topology den graph, initial probs, numerator graphs."""
from __future__ import annotations

import itertools
import math
import os

import numpy as np
import pytest

from lfmmi.fsa import Fsa
from lfmmi.graphs import (BOS, DictLexicon, NumeratorCompiler, build_den_graph, compute_initial_probs,
                          den_graph_from_phone_lm, estimate_phone_lm, transcripts_to_phone_seqs)

FIX = os.path.join(os.path.dirname(__file__), "fixtures", "lfmmi")


def fixture_lexicon_and_texts():
    lex = DictLexicon.load(os.path.join(FIX, "lexicon.txt"))
    with open(os.path.join(FIX, "text.txt")) as f:
        texts = [l.strip() for l in f if l.strip()]
    return lex, texts


def tiny_lexicon():
    return DictLexicon({"A": [("AH",)], "CAT": [("K", "AE", "T")], "THE": [("DH", "AH"), ("DH", "IY")]})


def test_dict_lexicon_protocol():
    lex = tiny_lexicon()
    assert lex.phones[0] == "SIL"
    assert lex.phones[1:] == sorted(lex.phones[1:])
    assert lex.pronunciations("THE") == [("DH", "AH"), ("DH", "IY")]


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_phone_lm_is_normalised_and_ml(order):
    seqs = [[0, 1, 2, 0], [0, 2, 1, 2, 0], [0, 1, 2, 0]]
    lm = estimate_phone_lm(seqs, order=order)
    out = np.array(lm.final_prob, dtype=float)
    for s, p, d, pr in lm.arcs:
        out[s] += pr
    assert np.allclose(out, 1.0)
    # deterministic: at most one arc per (state, phone)
    assert len({(s, p) for s, p, d, pr in lm.arcs}) == len(lm.arcs)
    # every training sequence has a finite probability
    for sq in seqs:
        assert math.isfinite(lm.log_prob(sq))


def test_phone_lm_bigram_counts():
    seqs = [[0, 1, 0], [0, 2, 0], [0, 1, 0]]
    lm = estimate_phone_lm(seqs, order=2)
    idx = {h: i for i, h in enumerate(lm.states)}
    arcs = {(lm.states[s], p): pr for s, p, d, pr in lm.arcs}
    assert arcs[((BOS,), 0)] == pytest.approx(1.0)
    assert arcs[((0,), 1)] == pytest.approx(2 / 6)  # 0 followed by: 1,1,2 and </s> x3
    assert arcs[((0,), 2)] == pytest.approx(1 / 6)
    assert lm.final_prob[idx[(0,)]] == pytest.approx(3 / 6)
    assert lm.log_prob([0, 1, 0]) == pytest.approx(math.log(1 * 2 / 6 * 1 * 3 / 6))
    assert lm.log_prob([1]) == -math.inf  # unseen: no smoothing


def test_phone_lm_pruning_keeps_lower_orders():
    lex, texts = fixture_lexicon_and_texts()
    seqs, ws = transcripts_to_phone_seqs(lex, texts)
    full = estimate_phone_lm(seqs, order=4, weights=ws)
    pruned = estimate_phone_lm(seqs, order=4, num_extra_states=50, weights=ws)
    n_top = sum(1 for h in pruned.states if len(h) == 3 and h[0] != BOS)
    assert n_top == 50
    assert pruned.num_states < full.num_states
    out = np.array(pruned.final_prob, dtype=float)
    for s, p, d, pr in pruned.arcs:
        out[s] += pr
    assert np.allclose(out, 1.0)
    for sq in seqs[:10]:
        assert math.isfinite(pruned.log_prob(sq))


def test_den_graph_chain_topology_pdfs():
    lex, texts = fixture_lexicon_and_texts()
    g = build_den_graph(lex, texts, order=3)
    lm_states = None
    f = g.fsa
    assert g.num_pdfs == 2 * len(lex.phones)
    self_loop = f.label % 2 == 1
    # entry arcs carry even pdfs, self-loops odd ones; a state's self-loop pdf = 2k+1 where every
    # entry arc into the state has pdf 2k (one HMM state per phone occurrence in the LM history)
    assert np.all(f.src[self_loop] == f.dst[self_loop])
    assert g.chain_structure() is not None
    for s in range(f.num_states):
        loops = f.label[(f.src == s) & self_loop]
        entries = f.label[(f.dst == s) & ~self_loop]
        assert len(loops) <= 1
        if len(loops):
            assert np.all(entries == loops[0] - 1)
    assert g.init.sum() == pytest.approx(1.0)
    assert np.all(g.init >= 0)


def test_initial_probs_match_explicit_iteration():
    rng = np.random.default_rng(0)
    S = 5
    src = np.array([0, 0, 1, 2, 2, 3, 4, 4, 1])
    dst = np.array([1, 2, 2, 3, 0, 4, 0, 1, 1])
    logw = np.log(rng.uniform(0.1, 1.0, len(src)))
    fin = np.log(np.array([0.0, 0.0, 0.0, 0.2, 0.1]) + 1e-300)
    init = compute_initial_probs(S, src, dst, logw, 0, fin, iters=100)
    # explicit: rows normalised including the final prob, whose share then leaves the HMM
    M = np.zeros((S, S))
    for s, d, w in zip(src, dst, np.exp(logw)):
        M[s, d] += w
    M = M / (M.sum(1, keepdims=True) + np.exp(fin)[:, None])
    v = np.eye(S)[0]
    avg = np.zeros(S)
    for _ in range(100):
        v = v @ M
        v = v / v.sum()
        avg += v
    assert np.allclose(init, avg / 100)


def test_fsa_kaldifst_roundtrip():
    pytest.importorskip("kaldifst")
    lex = tiny_lexicon()
    f = NumeratorCompiler(lex).compile_one("THE CAT")
    g = Fsa.from_kaldifst(f.to_kaldifst())
    assert g.num_states == f.num_states and g.start == f.start
    key = lambda a: sorted(zip(a.src.tolist(), a.dst.tolist(), a.label.tolist(), np.round(a.logw, 5).tolist()))  # noqa: E731
    assert key(g) == key(f)
    assert np.array_equal(np.isfinite(g.final), np.isfinite(f.final))


def _pdf_sequences(fsa: Fsa, T: int):
    """All (pdf sequence, log prob) of length T from the start state, summed over paths."""
    out = {}
    arcs_from = {}
    for e in range(fsa.num_arcs):
        arcs_from.setdefault(int(fsa.src[e]), []).append(e)

    def rec(s, t, seq, lp):
        if t == T:
            if np.isfinite(fsa.final[s]):
                key = tuple(seq)
                out[key] = np.logaddexp(out.get(key, -np.inf), lp + fsa.final[s])
            return
        for e in arcs_from.get(s, []):
            rec(int(fsa.dst[e]), t + 1, seq + [int(fsa.label[e])], lp + fsa.logw[e])

    rec(fsa.start, 0, [], 0.0)
    return out


def test_numerator_graph_paths():
    lex = tiny_lexicon()
    P = {p: i for i, p in enumerate(lex.phones)}
    f = NumeratorCompiler(lex, sil_prob=0.5).compile_one("A CAT")
    assert f.min_path_length() == 4
    seqs = _pdf_sequences(f, 4)
    e = lambda p: 2 * P[p]  # noqa: E731
    assert set(seqs) == {(e("AH"), e("K"), e("AE"), e("T"))}
    assert seqs[(e("AH"), e("K"), e("AE"), e("T"))] == pytest.approx(3 * math.log(0.5))
    seqs5 = _pdf_sequences(f, 5)
    sil = e("SIL")
    expected = {
        (sil, e("AH"), e("K"), e("AE"), e("T")),
        (e("AH"), sil, e("K"), e("AE"), e("T")),
        (e("AH"), e("K"), e("AE"), e("T"), sil),
        (e("AH") + 1 - 0, e("K"), e("AE"), e("T"), 0)[:0] or (e("AH"), e("AH") + 1, e("K"), e("AE"), e("T")),
        (e("AH"), e("K"), e("K") + 1, e("AE"), e("T")),
        (e("AH"), e("K"), e("AE"), e("AE") + 1, e("T")),
        (e("AH"), e("K"), e("AE"), e("T"), e("T") + 1),
    }
    assert set(seqs5) == expected
    # the optional-silence choices are a distribution: with every choice counted once, mass = 1
    assert seqs5[(sil, e("AH"), e("K"), e("AE"), e("T"))] == pytest.approx(math.log(0.5 ** 3))


def test_numerator_alternative_pronunciations():
    lex = tiny_lexicon()
    P = {p: i for i, p in enumerate(lex.phones)}
    f = NumeratorCompiler(lex, sil_prob=0.5).compile_one("THE")
    seqs = _pdf_sequences(f, 2)
    assert set(seqs) == {(2 * P["DH"], 2 * P["AH"]), (2 * P["DH"], 2 * P["IY"])}


def test_numerator_fixture_feasible_lengths():
    lex, texts = fixture_lexicon_and_texts()
    fs = NumeratorCompiler(lex).compile(texts)
    for text, f in zip(texts, fs):
        n_min = sum(min(len(p) for p in lex.pronunciations(w)) for w in text.split())
        assert f.min_path_length() == n_min
        assert f.max_label() < 2 * len(lex.phones)


def test_works_with_lang_lexicon():
    lexmod = pytest.importorskip("lang.lexicon")
    lex = lexmod.Lexicon.load(os.path.join(FIX, "lexicon.txt"))
    dlex, texts = fixture_lexicon_and_texts()
    assert lex.phones == dlex.phones
    a = build_den_graph(lex, texts, order=3)
    b = build_den_graph(dlex, texts, order=3)
    assert a.num_states == b.num_states and a.num_arcs == b.num_arcs
    assert np.allclose(a.init, b.init)
    fa = NumeratorCompiler(lex).compile(texts[:5])
    fb = NumeratorCompiler(dlex).compile(texts[:5])
    for x, y in zip(fa, fb):
        assert np.array_equal(x.label, y.label) and np.allclose(x.logw, y.logw)
    with pytest.raises(lexmod.OOVError):
        NumeratorCompiler(lex).compile(["THE ZZYZX QWERTY"])


def _den_pdf_sequence_logprob(den, seq):
    """log sum over den paths (from init) emitting the pdf sequence ``seq``."""
    f = den.fsa
    cur = {j: math.log(p) for j, p in enumerate(den.init) if p > 0}
    for l in seq:
        nxt = {}
        for s, lp in cur.items():
            for e in np.nonzero((f.src == s) & (f.label == l))[0]:
                d = int(f.dst[e])
                nxt[d] = np.logaddexp(nxt.get(d, -np.inf), lp + f.logw[e])
        cur = nxt
    return float(np.logaddexp.reduce(list(cur.values()))) if cur else -math.inf


@pytest.mark.parametrize("order", [2, 3])
def test_numerator_composed_with_den_graph(order):
    lex = tiny_lexicon()
    texts = ["THE CAT", "A CAT", "THE A", "CAT"]
    den = build_den_graph(lex, texts, order=order)
    plain = NumeratorCompiler(lex).compile_one("THE CAT")
    comp = NumeratorCompiler(lex, den_graph=den).compile_one("THE CAT")
    for T in (5, 6):
        p = _pdf_sequences(plain, T)
        c = _pdf_sequences(comp, T)
        assert set(c) <= set(p) and len(c) > 0
        for seq, lp in p.items():
            expected = lp + _den_pdf_sequence_logprob(den, seq)
            if math.isinf(expected):
                assert seq not in c
            else:
                assert c[seq] == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("order", [3, 4])
def test_minimised_den_graph_is_equivalent(order):
    torch = pytest.importorskip("torch")
    from lfmmi.torch_backend import den_log_z

    lex, texts = fixture_lexicon_and_texts()
    g = build_den_graph(lex, texts, order=order)
    g0 = build_den_graph(lex, texts, order=order, minimize=False)
    assert g.num_states < g0.num_states
    y = torch.randn(3, 20, g.num_pdfs, dtype=torch.float64)
    L = torch.tensor([20, 11, 17])
    for eta in (0.0, 0.1):
        assert torch.allclose(den_log_z(y, L, g, eta), den_log_z(y, L, g0, eta), rtol=1e-9)


def test_den_graph_save_load(tmp_path):
    lex, texts = fixture_lexicon_and_texts()
    g = build_den_graph(lex, texts, order=3)
    g.save(tmp_path / "den.npz")
    h = type(g).load(tmp_path / "den.npz")
    assert h.num_states == g.num_states and h.num_pdfs == g.num_pdfs
    assert np.array_equal(h.fsa.src, g.fsa.src) and np.allclose(h.fsa.logw, g.fsa.logw)
    assert np.allclose(h.init, g.init)
