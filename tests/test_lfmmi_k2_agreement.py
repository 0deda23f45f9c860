"""Backend agreement: the pure-PyTorch LF-MMI backend against k2 (runs in the k2 lane only).

k2 has no leaky HMM, so the den comparison uses eta = 0; Kaldi-style initial probabilities are
expressed in k2 exactly (a new start state carrying every state's arcs weighted by init), and the
start-state-only init is compared too. Loss and gradients must agree to 1e-4 relative.
Only lfmmi/ is imported (no lhotse, no lang/).
"""
from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

k2 = pytest.importorskip("k2")

from lfmmi import LFMMILoss, LFMMIOptions  # noqa: E402
from lfmmi.fsa import Fsa  # noqa: E402
from lfmmi.graphs import DenGraph, DictLexicon, NumeratorCompiler, build_den_graph  # noqa: E402
from lfmmi.k2_backend import den_log_z_k2, num_log_z_k2  # noqa: E402
from lfmmi.torch_backend import den_log_z, num_log_z  # noqa: E402

torch.set_num_threads(1)
FIX = os.path.join(os.path.dirname(__file__), "fixtures", "lfmmi")
RTOL = 1e-4


@pytest.fixture(scope="module")
def lang():
    lex = DictLexicon.load(os.path.join(FIX, "lexicon.txt"))
    with open(os.path.join(FIX, "text.txt")) as f:
        texts = [l.strip() for l in f if l.strip()]
    return lex, texts


def _lengths(B, T, seed):
    rng = np.random.default_rng(seed)
    L = rng.integers(T // 2, T + 1, B)
    L[0] = T
    return torch.tensor(L)


def assert_close_rel(a, b, rtol=RTOL):
    a = a.double()
    b = b.double()
    scale = max(float(b.abs().max()), 1e-3)
    err = float((a - b).abs().max())
    assert err <= rtol * scale, f"max abs err {err} vs scale {scale}"


def _compare_den(g, B, T, seed):
    torch.manual_seed(seed)
    y = (torch.randn(B, T, g.num_pdfs) * 2).requires_grad_(True)
    L = _lengths(B, T, seed)
    a = den_log_z(y.double(), L, g, eta=0.0)
    b = den_log_z_k2(y, L, g)
    assert_close_rel(a.detach(), b.detach())
    (ga,) = torch.autograd.grad(a.sum(), y)
    (gb,) = torch.autograd.grad(b.sum(), y)
    assert_close_rel(ga, gb)


@pytest.mark.parametrize("order", [2, 3, 4])
@pytest.mark.parametrize("B", [1, 16])
@pytest.mark.parametrize("init", ["kaldi", "start"])
def test_den_real_graph(lang, order, B, init):
    lex, texts = lang
    g = build_den_graph(lex, texts, order=order, init_mode=init)
    _compare_den(g, B, 25, seed=order * 10 + B)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("B", [1, 16])
def test_den_random_graph(seed, B):
    rng = np.random.default_rng(seed)
    S, E, N = 12, 60, 10
    src = np.concatenate([np.arange(S), rng.integers(0, S, E - S)])
    fsa = Fsa(S, src, rng.integers(0, S, E), rng.integers(0, N, E), np.log(rng.uniform(0.05, 1, E)))
    init = rng.uniform(0.0, 1.0, S)
    init[rng.uniform(size=S) < 0.3] = 0.0
    init[0] += 0.1
    g = DenGraph(fsa, N, init=init / init.sum())
    _compare_den(g, B, 20, seed)


@pytest.mark.parametrize("with_lm", [False, True])
@pytest.mark.parametrize("B", [1, 16])
def test_num_real_graphs(lang, B, with_lm):
    lex, texts = lang
    den = build_den_graph(lex, texts, order=3) if with_lm else None
    fs = NumeratorCompiler(lex, den_graph=den).compile(texts[:B])
    T = 60
    torch.manual_seed(B)
    N = 2 * len(lex.phones)
    y = (torch.randn(B, T, N) * 2).requires_grad_(True)
    L = _lengths(B, T, B)
    L = torch.maximum(L, torch.tensor([int(f.min_path_length()) for f in fs]))
    a, _ = num_log_z(y.double(), L, fs)
    b = num_log_z_k2(y, L, fs)
    assert_close_rel(a.detach(), b.detach())
    (ga,) = torch.autograd.grad(a.sum(), y)
    (gb,) = torch.autograd.grad(b.sum(), y)
    assert_close_rel(ga, gb)


@pytest.mark.parametrize("seed", range(3))
def test_num_random_graphs(seed):
    rng = np.random.default_rng(50 + seed)
    N = 8
    fs = []
    for _ in range(16):
        S = int(rng.integers(3, 8))
        E = int(rng.integers(S, 3 * S))
        src = np.concatenate([np.arange(S - 1), rng.integers(0, S, E - S + 1)])
        dst = np.concatenate([np.arange(1, S), rng.integers(0, S, E - S + 1)])
        final = np.full(S, -np.inf)
        final[S - 1] = 0.0
        final[rng.integers(0, S)] = math.log(0.5)
        fs.append(Fsa(S, src, dst, rng.integers(0, N, E), np.log(rng.uniform(0.1, 1, E)), final=final))
    T = 15
    y = torch.randn(16, T, N).requires_grad_(True)
    L = torch.tensor(rng.integers(8, T + 1, 16))
    a, _ = num_log_z(y.double(), L, fs)
    b = num_log_z_k2(y, L, fs)
    fin = torch.isfinite(b)
    assert torch.equal(torch.isfinite(a), fin)
    assert_close_rel(a.detach()[fin], b.detach()[fin])
    (ga,) = torch.autograd.grad(torch.where(fin, a, torch.zeros_like(a)).sum(), y)
    (gb,) = torch.autograd.grad(torch.where(fin, b, torch.zeros_like(b)).sum(), y)
    assert_close_rel(ga, gb)


@pytest.mark.parametrize("B", [1, 16])
def test_loss_module_backends_agree(lang, B):
    lex, texts = lang
    den = build_den_graph(lex, texts, order=3)
    fs = NumeratorCompiler(lex).compile(texts[:B])
    T = 70
    torch.manual_seed(7)
    N = den.num_pdfs
    y = (torch.randn(B, T, N) * 2).requires_grad_(True)
    xent = torch.randn(B, T, N).log_softmax(-1).requires_grad_(True)
    L = torch.maximum(_lengths(B, T, 3), torch.tensor([int(f.min_path_length()) + 2 for f in fs]))
    kw = dict(leaky_hmm_coefficient=0.0, xent_regularize=0.1, l2_regularize=1e-4)
    res = {}
    for backend in ("torch", "k2"):
        loss_fn = LFMMILoss(den, LFMMIOptions(backend=backend, **kw))
        loss, stats = loss_fn(y, xent, L, fs)
        gy, gx = torch.autograd.grad(loss, (y, xent))
        res[backend] = (loss.detach(), gy, gx, stats)
    assert_close_rel(res["torch"][0].view(1), res["k2"][0].view(1))
    assert_close_rel(res["torch"][1], res["k2"][1])
    assert_close_rel(res["torch"][2], res["k2"][2])
    for k in ("num_per_frame", "den_per_frame", "objf_per_frame"):
        assert res["torch"][3][k] == pytest.approx(res["k2"][3][k], rel=RTOL, abs=1e-6)


def test_k2_backend_skips_too_short(lang):
    lex, texts = lang
    den = build_den_graph(lex, texts, order=2)
    fs = NumeratorCompiler(lex).compile(texts[:2])
    T = 40
    L = torch.tensor([T, int(fs[1].min_path_length()) - 1])
    y = torch.randn(2, T, den.num_pdfs, requires_grad=True)
    loss, stats = LFMMILoss(den, backend="k2", leaky_hmm_coefficient=0.0)(y, None, L, fs)
    loss.backward()
    assert stats["skipped"] == 1
    assert torch.isfinite(y.grad).all() and float(y.grad[1].abs().sum()) == 0.0
