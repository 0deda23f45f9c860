"""KL and Hessian-trace sensitivities on a tiny TDNN-F; Hutchinson vs the exact trace of a quadratic."""
import math

import pytest
import torch
import torch.nn.functional as F

from models.tdnnf import TDNNF
from search_spaces.space import search_space_from_dict
from sensitivity.hessian import SplitLoss, hessian_sensitivity, hutchinson_trace
from sensitivity.kl import kl_sensitivity

BITS = (2, 4, 8, 32)


def tiny_space():
    return search_space_from_dict({
        "name": "tiny", "network": dict(feat_dim=5, tdnn1_dim=16, num_layers=3, hidden_dim=16, bottleneck_dims=8,
                                        time_strides=[1, 0, 3], prefinal_dim=8, prefinal_big_dim=12, num_pdfs=6),
        "choices": {"default": {"bits": list(BITS), "bottleneck": [4, 8]}}})


def make_model(space, seed=0):
    torch.manual_seed(seed)
    m = TDNNF(space.network)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1]))
    return m


def make_batches(n=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        lengths = torch.tensor([30, 24, 17])
        out.append({"feats": torch.randn(3, 30, 5, generator=g), "lengths": lengths})
    return out


def settle_bn(m, batches):
    """Fill the BatchNorm running statistics (cumulative average) so eval mode is sensible."""
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm1d):
            mod.reset_running_stats()
            mod.momentum = None
    m.train()
    with torch.no_grad():
        for b in batches:
            m(b["feats"], b["lengths"])
    m.eval()
    return m


def make_fragile_(m, layer="tdnnf2", factor=50.0):
    """Same function, fragile weights: bottleneck unit 0 of ``layer`` is switched off (its row of the linear
    factor is zero) and the affine column reading it gets a huge outlier per output channel. The float
    network barely changes, but per-channel max-abs scaling now rounds every other affine weight to 0.
    ``layer`` must have time-stride 0 (one column block)."""
    wp = m.weight_params()
    with torch.no_grad():
        lin, aff = wp[layer + ".linear"], wp[layer + ".affine"]
        lin[0] = 0.0
        aff[:, 0] = factor * aff.abs().max()
    return m


def test_kl_basic_properties():
    space = tiny_space()
    batches = make_batches()
    m = settle_bn(make_model(space), batches)
    m.set_weight_bits({"tdnn1": 8})
    sens = kl_sensitivity(m, space, batches)
    assert m.cfg.weight_bits == {"tdnn1": 8} and not m.training   # restored
    assert set(sens) == set(space.layer_names)
    for layer, row in sens.items():
        assert sorted(row) == list(BITS)
        assert row[32] == 0.0
        assert all(v >= 0 and math.isfinite(v) for v in row.values())
        assert row[2] >= row[4] >= row[8], (layer, row)      # fewer bits, more damage
        assert row[2] > 0
    # the same numbers with the batches given one at a time (valid-frame weighting)
    assert kl_sensitivity(m, space, batches, max_batches=1) != sens


def test_kl_ignores_padding_frames():
    space = tiny_space()
    batches = make_batches(1)
    m = settle_bn(make_model(space), batches)
    a = kl_sensitivity(m, space, batches)
    b = dict(batches[0])
    b["feats"] = b["feats"].clone()
    b["feats"][2, 17:] = 1000.0     # garbage in the padding of the shortest utterance
    c = kl_sensitivity(m, space, [b])
    for l in a:
        for bits in a[l]:
            assert c[l][bits] == pytest.approx(a[l][bits], rel=1e-4, abs=1e-9)


def test_kl_detects_fragile_layer():
    space = tiny_space()
    batches = make_batches()
    base = settle_bn(make_model(space), batches)
    before = kl_sensitivity(base, space, batches)
    frag = settle_bn(make_fragile_(make_model(space)), batches)
    after = kl_sensitivity(frag, space, batches)
    assert after["tdnnf2"][4] > 5 * before["tdnnf2"][4]
    assert max(after, key=lambda l: after[l][4]) == "tdnnf2"


def xent_closures(m, batches, targets_seed=3):
    """Cross-entropy of chain_out against fixed random targets on valid frames, plus a small term on the xent
    head (a twice-differentiable loss), split as forward + loss so every Hv method can use it."""
    g = torch.Generator().manual_seed(targets_seed)
    out = []
    for b in batches:
        T_out = (b["feats"].shape[1] + 2) // 3
        tgt = torch.randint(0, 6, (b["feats"].shape[0], T_out), generator=g)

        def forward(b=b):
            return m(b["feats"], b["lengths"])

        def loss(chain, xent, ol, tgt=tgt):
            mask = torch.arange(chain.shape[1]).unsqueeze(0) < ol.unsqueeze(1)
            return F.cross_entropy(chain[mask], tgt[mask]) + 0.1 * (xent[mask] ** 2).mean()

        out.append(SplitLoss(forward, loss))
    return out


def test_hessian_fd_matches_autograd_on_model():
    space = tiny_space()
    batches = make_batches()
    m = settle_bn(make_model(space), batches).double()
    for b in batches:
        b["feats"] = b["feats"].double()
    cl = xent_closures(m, batches)
    kw = dict(max_iters=3, min_iters=3, tol=0.0, seed=5, return_traces=True)
    s_ad, r_ad = hessian_sensitivity(m, space, cl, method="autograd", **kw)
    # weight-space FD needs a step small enough not to cross ReLU kinks; output-space FD does not care
    for method, eps in [("fd", 1e-6), ("fd_output", 1e-3), ("fd_output", 1e-6)]:
        s_fd, r_fd = hessian_sensitivity(m, space, cl, method=method, rel_eps=eps, **kw)
        assert r_fd.method == method
        for l in space.layer_names:
            assert r_fd.trace[l] == pytest.approx(r_ad.trace[l], rel=1e-3, abs=1e-6), (method, eps, l)
            for bits in BITS:
                assert s_fd[l][bits] == pytest.approx(s_ad[l][bits], rel=1e-3, abs=1e-9)
            assert s_fd[l][32] == 0.0


@pytest.mark.parametrize("method", ["fd", "fd_output", "autograd"])
def test_hessian_detects_fragile_layer(method):
    space = tiny_space()
    batches = make_batches()
    for b in batches:
        b["feats"] = b["feats"].double()
    base = settle_bn(make_model(space).double(), batches)
    frag = settle_bn(make_fragile_(make_model(space).double()), batches)
    kw = dict(max_iters=8, tol=0.05, seed=0, method=method, blockwise=True)
    before = hessian_sensitivity(base, space, xent_closures(base, batches), **kw)
    after = hessian_sensitivity(frag, space, xent_closures(frag, batches), **kw)
    assert after["tdnnf2"][4] > 5 * before["tdnnf2"][4]
    assert max(after, key=lambda l: after[l][4]) == "tdnnf2"
    # the model is left as it was
    assert frag.cfg.weight_bits == {} and not frag.training


def quadratic(A, sizes, dtype=torch.float64, seed=0):
    """loss = 0.5 w^T A w, split as 'network' w -> (2 w,) (linear) and loss y -> 0.125 y^T A y."""
    g = torch.Generator().manual_seed(seed)
    ws = [torch.randn(n, generator=g, dtype=dtype).requires_grad_(True) for n in sizes]
    return ws, SplitLoss(lambda: (2 * torch.cat(ws),), lambda y: 0.125 * y @ (A @ y))


def spd(n, off=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    B = torch.randn(n, n, generator=g, dtype=torch.float64) * off
    return torch.diag(torch.rand(n, generator=g, dtype=torch.float64) * 4 + 1) + (B + B.T) / 2


@pytest.mark.parametrize("method", ["fd", "fd_output", "autograd"])
def test_hutchinson_exact_on_diagonal_quadratic(method):
    A = torch.diag(torch.arange(1, 13, dtype=torch.float64))
    ws, loss = quadratic(A, [5, 7])
    r = hutchinson_trace(loss, {"a": [ws[0]], "b": [ws[1]]}, method=method, max_iters=50, tol=1e-9)
    assert r.trace["a"] == pytest.approx(15.0, rel=1e-7)           # 1+..+5
    assert r.trace["b"] == pytest.approx(78.0 - 15.0, rel=1e-7)
    assert r.converged and r.iters == 2                             # every sample is exact
    assert r.avg_trace["a"] == pytest.approx(3.0, rel=1e-7)


@pytest.mark.parametrize("method", ["fd", "fd_output", "autograd"])
@pytest.mark.parametrize("blockwise", [False, True])
def test_hutchinson_matches_exact_trace_of_quadratic(method, blockwise):
    A = spd(16)
    ws, loss = quadratic(A, [6, 10])
    groups = {"a": [ws[0]], "b": [ws[1]]}
    w0 = [w.detach().clone() for w in ws]
    r = hutchinson_trace(loss, groups, method=method, max_iters=1000, min_iters=1000, tol=0.0,
                         blockwise=blockwise, seed=1)
    assert r.iters == 1000 and not r.converged
    assert r.trace["a"] == pytest.approx(float(A[:6, :6].trace()), rel=0.02)
    assert r.trace["b"] == pytest.approx(float(A[6:, 6:].trace()), rel=0.02)
    assert all(torch.equal(w, w_) for w, w_ in zip(ws, w0))          # weights restored exactly


def test_hutchinson_fd_equals_autograd_sample_by_sample():
    A = spd(10, seed=3)
    ws, loss = quadratic(A, [4, 6], seed=2)
    groups = {"a": [ws[0]], "b": [ws[1]]}
    kw = dict(max_iters=20, min_iters=20, tol=0.0, seed=7)
    ad = hutchinson_trace(loss, groups, method="autograd", **kw)
    for method in ("fd", "fd_output"):
        fd = hutchinson_trace(loss, groups, method=method, **kw)
        for g in groups:
            assert fd.history[g] == pytest.approx(ad.history[g], rel=1e-6)


def test_tolerance_stop():
    A = spd(30, off=0.5, seed=4)
    ws, loss = quadratic(A, [30])
    r = hutchinson_trace(loss, {"a": ws}, method="autograd", max_iters=500, tol=1e-2)
    assert r.converged and r.iters < 500
    h = r.history["a"]
    assert abs(h[-1] - h[-2]) <= 1e-2 * abs(h[-2])
    assert r.trace["a"] == pytest.approx(float(A.trace()), rel=0.25)


def test_autograd_mode_refuses_non_twice_differentiable_loss():
    class NoDouble(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return (x * x).sum()

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return 2 * x.detach() * g

    w = torch.randn(5, dtype=torch.float64, requires_grad=True)
    with pytest.raises(RuntimeError, match="method='fd'"):
        hutchinson_trace(lambda: NoDouble.apply(w), {"a": [w]}, method="autograd", max_iters=2)
    r = hutchinson_trace(lambda: NoDouble.apply(w), {"a": [w]}, method="fd", max_iters=5)
    assert r.trace["a"] == pytest.approx(10.0, rel=1e-6)        # Hessian 2 I


def test_hessian_with_tiny_lfmmi():
    """FD Hessian through the LF-MMI loss (no double backward there), float64, weights restored."""
    from lfmmi import LFMMILoss
    from lfmmi.graphs import DictLexicon, NumeratorCompiler, build_den_graph
    from sensitivity.hessian import lfmmi_closures

    lex = DictLexicon({"BA": [("B", "AA")], "AB": [("AA", "B")], "A": [("AA",)]})   # 3 phones -> 6 pdfs
    texts = ["BA AB", "A BA", "AB", "A A BA"]
    den = build_den_graph(lex, texts, order=2)
    loss_fn, comp = LFMMILoss(den), NumeratorCompiler(lex)
    space = tiny_space()
    batches = make_batches()
    for b in batches:
        b["texts"] = ["BA AB", "A BA", "AB"]
    m = settle_bn(make_model(space), batches).double()
    w0 = {k: v.detach().clone() for k, v in m.weight_params().items()}
    cl = lfmmi_closures(m, batches, loss_fn, comp)
    loss = cl[0]()
    assert loss.dtype == torch.float64 and torch.isfinite(loss)
    sens, res = hessian_sensitivity(m, space, cl, max_iters=3, tol=0.05, return_traces=True)
    assert res.method == "fd_output" and 2 <= res.iters <= 3           # 'auto' picks it for SplitLoss
    # output-space FD does not depend on the step; weight-space FD runs too (kinks make it noisier)
    res2 = hessian_sensitivity(m, space, cl, max_iters=3, tol=0.05, rel_eps=1e-7, return_traces=True)[1]
    for l in res.trace:
        assert res2.trace[l] == pytest.approx(res.trace[l], rel=1e-4, abs=1e-9)
    res3 = hessian_sensitivity(m, space, cl, method="fd", max_iters=2, return_traces=True)[1]
    assert all(math.isfinite(t) for t in res3.trace.values())
    assert all(math.isfinite(t) for t in res.trace.values())
    for l, row in sens.items():
        assert row[32] == 0.0 and all(v >= 0 and math.isfinite(v) for v in row.values())
        assert row[2] >= row[8]
    assert all(torch.equal(w0[k], v) for k, v in m.weight_params().items())
    assert loss_fn.total_skipped == 0


def test_negative_trace_handling():
    """A concave loss: negative traces are clamped to 0 by default, or kept / made absolute on request."""
    space = tiny_space()
    batches = make_batches(1)
    for b in batches:
        b["feats"] = b["feats"].double()
    m = settle_bn(make_model(space).double(), batches)
    cl = [SplitLoss(c.forward, lambda *o, c=c: -c.loss(*o)) for c in xent_closures(m, batches)]
    kw = dict(max_iters=2, min_iters=2, tol=0.0, seed=0, method="autograd", blockwise=True)
    keep, res = hessian_sensitivity(m, space, cl, negative="keep", return_traces=True, **kw)
    clamp = hessian_sensitivity(m, space, cl, **kw)
    absv = hessian_sensitivity(m, space, cl, negative="abs", **kw)
    neg = [l for l, t in res.avg_trace.items() if t < 0]
    assert "output" in neg                # -cross-entropy is concave in the output weights
    for l in space.layer_names:
        if l in neg:
            assert keep[l][2] < 0 and clamp[l][2] == 0.0 and absv[l][2] == pytest.approx(-keep[l][2])
        else:
            assert keep[l][2] == clamp[l][2] == absv[l][2]
    with pytest.raises(ValueError, match="negative"):
        hessian_sensitivity(m, space, cl, negative="bogus", **kw)


def test_stderr_covers_error():
    A = spd(16, off=0.5, seed=9)
    ws, loss = quadratic(A, [16])
    r = hutchinson_trace(loss, {"a": ws}, method="autograd", max_iters=400, min_iters=400, tol=0.0, seed=2)
    assert 0 < r.stderr["a"] < 0.1 * float(A.trace())
    assert abs(r.trace["a"] - float(A.trace())) < 4 * r.stderr["a"]
