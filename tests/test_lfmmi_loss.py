"""lfmmi.LFMMILoss: objective, gradient, regularisers, skipping of bad sequences."""
from __future__ import annotations

import math
import os

import pytest
import torch

from lfmmi import LFMMILoss, LFMMIOptions
from lfmmi.graphs import DictLexicon, NumeratorCompiler, build_den_graph
from lfmmi.torch_backend import den_log_z, num_log_z

torch.set_num_threads(1)
FIX = os.path.join(os.path.dirname(__file__), "fixtures", "lfmmi")


@pytest.fixture(scope="module")
def setup():
    lex = DictLexicon.load(os.path.join(FIX, "lexicon.txt"))
    with open(os.path.join(FIX, "text.txt")) as f:
        texts = [l.strip() for l in f if l.strip()]
    den = build_den_graph(lex, texts, order=3)
    comp = NumeratorCompiler(lex)
    return lex, texts, den, comp


def test_objective_and_gradient_match_backends(setup):
    lex, texts, den, comp = setup
    torch.manual_seed(0)
    B, T = 3, 40
    y = torch.randn(B, T, den.num_pdfs, dtype=torch.float64, requires_grad=True)
    L = torch.tensor([40, 35, 38])
    fs = comp.compile(texts[:3])
    loss_fn = LFMMILoss(den, LFMMIOptions(xent_regularize=0.0, out_of_range_regularize=0.0))
    loss, stats = loss_fn(y, None, L, fs)
    (g,) = torch.autograd.grad(loss, y)
    num, _ = num_log_z(y, L, fs)
    dz = den_log_z(y, L, den, 0.1)
    frames = float(L.sum())
    ref = -(num - dz).sum() / frames
    (gref,) = torch.autograd.grad(ref, y)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-10)
    assert torch.allclose(g, gref, atol=1e-12)
    assert stats["frames"] == frames and stats["skipped"] == 0
    assert stats["objf_per_frame"] == pytest.approx(-loss.item(), rel=1e-10)
    for k in ("objf_per_frame", "num_per_frame", "den_per_frame", "frames", "skipped"):
        assert k in stats


def test_regularisers(setup):
    lex, texts, den, comp = setup
    torch.manual_seed(1)
    B, T = 2, 30
    y = (torch.randn(B, T, den.num_pdfs, dtype=torch.float64) * 3).requires_grad_(True)
    with torch.no_grad():
        y[0, 3, 5] = 35.0
        y[1, 2, 7] = -40.0
    xent = torch.randn(B, T, den.num_pdfs, dtype=torch.float64).log_softmax(-1).requires_grad_(True)
    L = torch.tensor([30, 25])
    fs = comp.compile(texts[3:5])
    opts = LFMMIOptions(xent_regularize=0.1, l2_regularize=1e-3, out_of_range_regularize=0.01)
    loss, stats = LFMMILoss(den, opts)(y, xent, L, fs)
    base, _ = LFMMILoss(den, LFMMIOptions(xent_regularize=0, out_of_range_regularize=0))(y, None, L, fs)
    _, gnum = num_log_z(y, L, fs)
    mask = (torch.arange(T).unsqueeze(0) < L.unsqueeze(1)).unsqueeze(-1)
    yk = torch.where(mask, y, torch.zeros_like(y))
    F = float(L.sum())
    extra = (-0.1 * (xent * gnum).sum() + 0.5e-3 * (yk ** 2).sum()
             + 0.01 * torch.relu(yk.abs() - 30).pow(2).sum()) / F
    assert loss.item() == pytest.approx((base + extra).item(), rel=1e-10)
    (gx,) = torch.autograd.grad(loss, xent)
    assert torch.allclose(gx, -0.1 * gnum / F)  # xent targets are the detached numerator posteriors
    assert stats["out_of_range_per_frame"] == pytest.approx((25.0 + 100.0) / F)


def test_too_short_utterance_is_skipped_and_counted(setup):
    lex, texts, den, comp = setup
    fs = comp.compile([texts[0], texts[1]])
    n_min = fs[1].min_path_length()
    T = 30
    L = torch.tensor([T, int(n_min) - 1])
    y = torch.randn(2, T, den.num_pdfs, requires_grad=True)
    xent = torch.randn(2, T, den.num_pdfs).log_softmax(-1).requires_grad_(True)
    loss_fn = LFMMILoss(den)
    loss, stats = loss_fn(y, xent, L, fs)
    assert stats["skipped"] == 1 and stats["frames"] == T
    assert math.isfinite(loss.item())
    loss.backward()
    assert torch.isfinite(y.grad).all() and torch.isfinite(xent.grad).all()
    assert float(y.grad[1].abs().sum()) == 0.0 and float(xent.grad[1].abs().sum()) == 0.0
    assert float(y.grad[0].abs().sum()) > 0
    assert loss_fn.total_skipped == 1


def test_non_finite_output_is_skipped(setup):
    lex, texts, den, comp = setup
    fs = comp.compile(texts[:2])
    y = torch.randn(2, 40, den.num_pdfs)
    y[1, 5, 3] = float("nan")
    y.requires_grad_(True)
    loss, stats = LFMMILoss(den)(y, None, torch.tensor([40, 40]), fs)
    loss.backward()
    assert stats["skipped"] == 1
    assert torch.isfinite(y.grad).all() and float(y.grad[1].abs().sum()) == 0.0


def test_all_skipped_batch_gives_zero_gradient(setup):
    lex, texts, den, comp = setup
    fs = comp.compile(texts[:2])
    y = torch.randn(2, 3, den.num_pdfs, requires_grad=True)
    loss, stats = LFMMILoss(den)(y, None, torch.tensor([3, 2]), fs)
    loss.backward()
    assert stats["skipped"] == 2 and stats["frames"] == 0 and loss.item() == 0.0
    assert float(y.grad.abs().sum()) == 0.0


def test_invariant_failure_is_skipped(setup):
    lex, texts, den, comp = setup
    fs = comp.compile(texts[:2])
    y = torch.randn(2, 40, den.num_pdfs, requires_grad=True)
    loss_fn = LFMMILoss(den, invariant_tolerance=-1.0)  # impossible tolerance: every sequence fails
    loss, stats = loss_fn(y, None, torch.tensor([40, 40]), fs)
    assert stats["skipped"] == 2


def test_training_lowers_the_loss(setup):
    lex, texts, den, comp = setup
    torch.manual_seed(0)
    fs = comp.compile(texts[:2])
    y = torch.zeros(2, 45, den.num_pdfs, requires_grad=True)
    L = torch.tensor([45, 45])
    opt = torch.optim.SGD([y], lr=20.0)
    loss_fn = LFMMILoss(den, xent_regularize=0.0)
    first = None
    for _ in range(10):
        loss, stats = loss_fn(y, None, L, fs)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first - 0.1


def test_lm_weighted_numerator_gives_nonpositive_objective(setup):
    lex, texts, den, comp = setup
    fs = NumeratorCompiler(lex, den_graph=den).compile(texts[:4])
    torch.manual_seed(5)
    y = torch.randn(4, 50, den.num_pdfs, dtype=torch.float64)
    for eta in (0.0, 0.1):
        _, stats = LFMMILoss(den, leaky_hmm_coefficient=eta)(y, None, torch.full((4,), 50), fs)
        assert stats["skipped"] == 0
        assert stats["objf_per_frame"] <= 0.0


def test_half_precision_output_is_upcast(setup):
    lex, texts, den, comp = setup
    fs = comp.compile(texts[:2])
    y = (torch.randn(2, 40, den.num_pdfs) * 3)
    L = torch.tensor([40, 36])
    ref, _ = LFMMILoss(den)(y.half().float(), None, L, fs)
    yh = y.half().requires_grad_(True)
    loss, stats = LFMMILoss(den)(yh, None, L, fs)
    loss.backward()
    assert stats["skipped"] == 0 and loss.item() == pytest.approx(ref.item(), rel=1e-5)
    assert yh.grad.dtype == torch.float16 and torch.isfinite(yh.grad).all()
