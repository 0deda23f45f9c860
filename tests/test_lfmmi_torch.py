"""Proof of the pure-PyTorch LF-MMI backend: brute force, leaky HMM, gradcheck, invariants, CTC."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from lfmmi.fsa import Fsa
from lfmmi.graphs import DenGraph, DictLexicon, NumeratorCompiler, build_den_graph
from lfmmi.torch_backend import (DenominatorFunction, den_forward_backward, den_log_z, num_forward_backward,
                                 num_log_z, NumBatch)

torch.set_num_threads(1)


def random_fsa(rng, S, E, N, all_final=True, every_state_out=True):
    src = list(rng.integers(0, S, E))
    if every_state_out:
        src[:S] = list(range(S))
    dst = rng.integers(0, S, E)
    lab = rng.integers(0, N, E)
    logw = np.log(rng.uniform(0.2, 1.0, E))
    final = np.zeros(S) if all_final else np.where(rng.uniform(size=S) < 0.5, np.log(rng.uniform(0.3, 1, S)), -np.inf)
    if not all_final and not np.isfinite(final).any():
        final[S - 1] = 0.0
    return Fsa(S, src, dst, lab, logw, start=0, final=final)


def brute_force_logz(fsa: Fsa, init_log: np.ndarray, y: np.ndarray) -> float:
    """log sum over all arc sequences of length T (consecutive, starting per init) of weights."""
    T = y.shape[0]
    tot = -math.inf
    for arcs in itertools.product(range(fsa.num_arcs), repeat=T):
        s0 = fsa.src[arcs[0]]
        ok = all(fsa.dst[arcs[i]] == fsa.src[arcs[i + 1]] for i in range(T - 1))
        if not ok or not np.isfinite(init_log[s0]):
            continue
        lp = init_log[s0] + fsa.final[fsa.dst[arcs[-1]]]
        lp += sum(fsa.logw[a] + y[t, fsa.label[a]] for t, a in enumerate(arcs))
        tot = np.logaddexp(tot, lp)
    return float(tot)


@pytest.mark.parametrize("seed", range(6))
def test_den_brute_force(seed):
    rng = np.random.default_rng(seed)
    S, E, N = int(rng.integers(2, 4)), int(rng.integers(4, 7)), 3
    fsa = random_fsa(rng, S, E, N)
    init = rng.uniform(0.1, 1, S)
    init /= init.sum()
    g = DenGraph(fsa, N, init=init)
    T = int(rng.integers(1, 5))
    y = torch.tensor(rng.normal(size=(1, T, N)) * 2)
    lz = den_log_z(y, torch.tensor([T]), g, eta=0.0)
    assert float(lz[0]) == pytest.approx(brute_force_logz(fsa, np.log(init), y[0].numpy()), rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("seed", range(6))
def test_num_brute_force(seed):
    rng = np.random.default_rng(100 + seed)
    S, E, N = int(rng.integers(2, 5)), int(rng.integers(4, 7)), 3
    fsa = random_fsa(rng, S, E, N, all_final=False, every_state_out=False)
    T = int(rng.integers(1, 5))
    y = torch.tensor(rng.normal(size=(1, T, N)) * 2)
    lz, _ = num_log_z(y, torch.tensor([T]), [fsa])
    init_log = np.full(S, -np.inf)
    init_log[0] = 0.0
    ref = brute_force_logz(fsa, init_log, y[0].numpy())
    if math.isinf(ref):
        assert math.isinf(float(lz[0])) and float(lz[0]) < 0
    else:
        assert float(lz[0]) == pytest.approx(ref, rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("seed", range(4))
def test_leaky_hmm_equals_explicit_leaky_graph(seed):
    """Leaky HMM = ordinary HMM on a graph with, for every state k and arc j->i (p, n), an extra arc
    k->i (eta * init(j) * p, n), and final weight (1 + eta) on every state."""
    rng = np.random.default_rng(200 + seed)
    S, E, N, eta = 3, 5, 3, 0.25
    fsa = random_fsa(rng, S, E, N)
    init = rng.uniform(0.1, 1, S)
    init /= init.sum()
    src, dst, lab, lw = list(fsa.src), list(fsa.dst), list(fsa.label), list(fsa.logw)
    for k in range(S):
        for e in range(E):
            src.append(k)
            dst.append(fsa.dst[e])
            lab.append(fsa.label[e])
            lw.append(math.log(eta * init[fsa.src[e]]) + fsa.logw[e])
    leaky = Fsa(S, src, dst, lab, lw, start=0, final=np.full(S, math.log(1 + eta)))
    T = 3
    y = torch.tensor(rng.normal(size=(1, T, N)))
    lz = den_log_z(y, torch.tensor([T]), DenGraph(fsa, N, init=init), eta=eta)
    assert float(lz[0]) == pytest.approx(brute_force_logz(leaky, np.log(init), y[0].numpy()), rel=1e-9)


def tiny_lexicon():
    return DictLexicon({"A": [("AH",)], "CAT": [("K", "AE", "T")], "THE": [("DH", "AH"), ("DH", "IY")]})


@pytest.mark.parametrize("eta", [0.0, 0.1])
def test_den_gradcheck(eta):
    lex = tiny_lexicon()
    g = build_den_graph(lex, ["THE CAT", "A CAT", "THE A"], order=3)
    torch.manual_seed(0)
    y = torch.randn(3, 6, g.num_pdfs, dtype=torch.float64, requires_grad=True)
    L = torch.tensor([6, 3, 5])
    assert torch.autograd.gradcheck(lambda y: den_log_z(y, L, g, eta), (y,))


def test_num_gradcheck():
    lex = tiny_lexicon()
    fs = NumeratorCompiler(lex).compile(["THE CAT", "A", "CAT A"])
    torch.manual_seed(1)
    N = 2 * len(lex.phones)
    y = torch.randn(3, 7, N, dtype=torch.float64, requires_grad=True)
    L = torch.tensor([7, 4, 6])
    assert torch.autograd.gradcheck(lambda y: num_log_z(y, L, fs)[0], (y,))


def test_den_eager_matches_lazy_and_invariants():
    lex = tiny_lexicon()
    g = build_den_graph(lex, ["THE CAT", "A CAT", "THE A"], order=2)
    torch.manual_seed(2)
    y = (torch.randn(4, 9, g.num_pdfs) * 5).requires_grad_(True)
    L = torch.tensor([9, 1, 4, 8])
    lz = den_log_z(y, L, g, 0.1)
    (gr,) = torch.autograd.grad(lz.sum(), y)
    lz2, gamma, e_ab, e_g = den_forward_backward(y, L, g, 0.1)
    assert torch.allclose(lz, lz2)
    assert torch.allclose(gr, gamma, atol=1e-6)
    assert float(e_ab.max()) < 1e-4 and float(e_g.max()) < 1e-4  # float32
    gs = gamma.sum(-1)
    for b in range(4):
        assert torch.allclose(gs[b, : L[b]], torch.ones(int(L[b])), atol=1e-4)
        assert float(gs[b, L[b]:].abs().sum()) == 0.0


def test_num_gamma_sums_to_one():
    lex = tiny_lexicon()
    fs = NumeratorCompiler(lex).compile(["THE CAT", "A"])
    y = torch.randn(2, 8, 2 * len(lex.phones))
    L = torch.tensor([8, 5])
    lz, gamma = num_forward_backward(y, L, NumBatch(fs, y.shape[-1], y.device, y.dtype))
    gs = gamma.sum(-1)
    assert torch.allclose(gs[0], torch.ones(8), atol=1e-5)
    assert torch.allclose(gs[1, :5], torch.ones(5), atol=1e-5) and float(gs[1, 5:].abs().sum()) == 0


def test_batch_equals_single_sequences():
    lex = tiny_lexicon()
    g = build_den_graph(lex, ["THE CAT", "A CAT", "THE A"], order=3)
    fs = NumeratorCompiler(lex).compile(["THE CAT", "A", "CAT A"])
    y = torch.randn(3, 10, g.num_pdfs, dtype=torch.float64)
    L = torch.tensor([10, 6, 8])
    lz_d = den_log_z(y, L, g, 0.1)
    lz_n, _ = num_log_z(y, L, fs)
    for b in range(3):
        yb = y[b:b + 1, : L[b]]
        assert float(den_log_z(yb, L[b:b + 1], g, 0.1)[0]) == pytest.approx(float(lz_d[b]), rel=1e-12)
        assert float(num_log_z(yb, L[b:b + 1], [fs[b]])[0][0]) == pytest.approx(float(lz_n[b]), rel=1e-12)


def ctc_fsa(labels, blank=0):
    """CTC topology for a label sequence: start state 0, then positions 1..2L+1 (odd = blank)."""
    L = len(labels)
    ext = [blank]
    for l in labels:
        ext += [l, blank]
    n = len(ext) + 1
    src, dst, lab, lw = [], [], [], []

    def arc(u, v):
        src.append(u)
        dst.append(v)
        lab.append(ext[v - 1])
        lw.append(0.0)

    arc(0, 1)
    if L:
        arc(0, 2)
    for v in range(1, n):
        arc(v, v)
        if v + 1 < n:
            arc(v, v + 1)
        if v + 2 < n and ext[v + 1] != blank and ext[v + 1] != ext[v - 1]:
            arc(v, v + 2)
    final = np.full(n, -np.inf)
    final[n - 1] = 0.0
    if L:
        final[n - 2] = 0.0
    return Fsa(n, src, dst, lab, lw, start=0, final=final)


def test_ctc_numerator_matches_ctc_loss():
    torch.manual_seed(3)
    B, T, C = 4, 12, 5
    logits = torch.randn(B, T, C, dtype=torch.float64, requires_grad=True)
    logp = logits.log_softmax(-1)
    targets = [[1, 2, 2], [3], [4, 1, 3, 1, 2], [2, 2]]
    lengths = torch.tensor([12, 7, 11, 9])
    fs = [ctc_fsa(t) for t in targets]
    lz, _ = num_log_z(logp, lengths, fs)
    ref = torch.nn.functional.ctc_loss(
        logp.permute(1, 0, 2), torch.tensor([l for t in targets for l in t]), lengths,
        torch.tensor([len(t) for t in targets]), blank=0, reduction="none", zero_infinity=False)
    assert torch.allclose(-lz, ref, rtol=1e-10)
    # torch's ctc_loss backward is only the true gradient through log_softmax: compare w.r.t. logits
    (g1,) = torch.autograd.grad(lz.sum(), logits, retain_graph=True)
    (g2,) = torch.autograd.grad(-ref.sum(), logits)
    assert torch.allclose(g1, g2, atol=1e-10)


def test_infeasible_numerator_is_minus_inf_with_zero_gamma():
    lex = tiny_lexicon()
    fs = NumeratorCompiler(lex).compile(["THE CAT THE CAT"])
    y = torch.randn(1, 5, 2 * len(lex.phones), requires_grad=True)
    lz, gamma = num_log_z(y, torch.tensor([5]), fs)
    lz = lz.detach()
    assert math.isinf(float(lz[0])) and float(lz[0]) < 0
    assert float(gamma.abs().sum()) == 0.0


def test_den_saves_only_state_level_tensors():
    """Memory O(T*B*S): the Function saves x (T,N,B), alpha' (T+1,S,B), c - nothing of size E."""
    lex = tiny_lexicon()
    g = build_den_graph(lex, ["THE CAT", "A CAT", "THE A"], order=3)
    y = torch.randn(2, 5, g.num_pdfs, requires_grad=True)
    lz = den_log_z(y, torch.tensor([5, 4]), g, 0.1)
    saved = lz.grad_fn.saved_tensors
    sizes = sorted(t.numel() for t in saved)
    assert max(sizes) <= max(6 * g.num_states * 2, 5 * g.num_pdfs * 2)
    assert g.num_arcs * 5 * 2 not in sizes


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
def test_cuda_matches_cpu():
    lex = tiny_lexicon()
    g = build_den_graph(lex, ["THE CAT", "A CAT", "THE A"], order=3)
    fs = NumeratorCompiler(lex).compile(["THE CAT", "A"])
    y = torch.randn(2, 9, g.num_pdfs, dtype=torch.float64)
    L = torch.tensor([9, 6])
    a = den_log_z(y, L, g, 0.1)
    b = den_log_z(y.cuda(), L.cuda(), g, 0.1).cpu()
    assert torch.allclose(a, b)
    assert torch.allclose(num_log_z(y, L, fs)[0], num_log_z(y.cuda(), L.cuda(), fs)[0].cpu())


@pytest.mark.parametrize("order", [2, 3])
def test_den_brute_force_real_chain_graph(order):
    """The chain-structured fast path (sparse entry-arc matrix) against brute force."""
    lex = tiny_lexicon()
    g = build_den_graph(lex, ["THE CAT", "A CAT", "THE A", "A A"], order=order)
    assert "Pt" in g.tensors(torch.device("cpu"), torch.float64)
    T = 3
    y = torch.randn(1, T, g.num_pdfs, dtype=torch.float64)
    lz = den_log_z(y, torch.tensor([T]), g, eta=0.0)
    with np.errstate(divide="ignore"):
        ref = brute_force_logz(g.fsa, np.log(g.init), y[0].numpy())
    assert float(lz[0]) == pytest.approx(ref, rel=1e-10)


@pytest.mark.parametrize("order", [2, 4])
def test_structured_and_generic_paths_agree(order):
    import os
    from lfmmi.graphs import DictLexicon as DL

    fix = os.path.join(os.path.dirname(__file__), "fixtures", "lfmmi")
    lex = DL.load(os.path.join(fix, "lexicon.txt"))
    with open(os.path.join(fix, "text.txt")) as f:
        texts = [l.strip() for l in f if l.strip()]
    g = build_den_graph(lex, texts, order=order)
    torch.manual_seed(order)
    y = torch.randn(5, 30, g.num_pdfs, dtype=torch.float64) * 3
    L = torch.tensor([30, 12, 29, 1, 20])
    out = {}
    for us in (True, False):
        g.use_structure = us
        out[us] = den_forward_backward(y, L, g, 0.1)
    g.use_structure = True
    assert torch.allclose(out[True][0], out[False][0], rtol=1e-12)
    assert torch.allclose(out[True][1], out[False][1], atol=1e-12)
