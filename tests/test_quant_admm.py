"""ADMM helper: projection on the grid (nearest point), loss term, updates, finalize."""
import math

import pytest
import torch

from models.config import TDNNFConfig
from models.layout import weight_names
from models.tdnnf import TDNNF
from quant.admm import ADMMQuantizer
from quant.quantizers import QUANTIZED_BITS, compute_scales, fake_quant, qmax_for, quantize_to_codes


def model(bits_map=None):
    cfg = TDNNFConfig.from_dict(dict(tdnn1_dim=16, hidden_dim=16, num_layers=3, bottleneck_dims=4,
                                     time_strides=[1, 0, 3], prefinal_dim=8, prefinal_big_dim=12, num_pdfs=6,
                                     feat_dim=4))
    if bits_map is None:
        bits_map = {n: QUANTIZED_BITS[i % len(QUANTIZED_BITS)] for i, n in enumerate(weight_names(cfg))}
    torch.manual_seed(0)
    m = TDNNF(cfg.replace(weight_bits=bits_map))
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn_like(p) / math.sqrt(p.shape[-1]))
    return m


@pytest.mark.parametrize("bits", QUANTIZED_BITS)
def test_projection_on_grid_and_nearest(bits):
    m = model()
    admm = ADMMQuantizer(m)
    torch.manual_seed(bits)
    w = torch.randn(10, 40)
    g = admm.project(w, bits)
    s = compute_scales(w, bits)
    q = g / s[:, None]
    assert torch.allclose(q, q.round(), atol=1e-4)                  # on the grid
    assert int(q.round().abs().max()) <= qmax_for(bits)
    if bits == 1:
        assert torch.equal(g.sign(), torch.where(w >= 0, 1.0, -1.0))
    else:  # nearest grid point of the fitted scale: every other level is at least as far
        levels = torch.arange(-qmax_for(bits), qmax_for(bits) + 1, dtype=torch.float32)
        d = (w[:, :, None] - levels[None, None, :] * s[:, None, None]).abs()
        best = d.min(-1).values
        assert torch.allclose((g - w).abs(), best, atol=1e-6)
    c, sc = quantize_to_codes(w, bits)
    assert torch.equal(g, c.float() * sc[:, None])


def test_admm_loop_and_finalize():
    m = model()
    admm = ADMMQuantizer(m, rho=1e-2)
    assert m.quant_enabled is False
    assert len(admm.bits) == len(weight_names(m.cfg))
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    x = torch.randn(2, 20, 4)
    lens = torch.tensor([20, 20])
    t0 = admm.loss_term(m)
    assert t0.item() >= 0 and t0.requires_grad
    res0 = admm.update(m)
    for step in range(30):
        opt.zero_grad()
        c, xe, _ = m(x, lens)
        loss = 1e-3 * c.square().mean() + admm.loss_term(m) * 100
        loss.backward()
        opt.step()
        if step % 5 == 4:
            res = admm.update(m)
    assert sum(res.values()) < sum(res0.values())
    state = admm.state_dict()
    admm.load_state_dict(state)
    admm.finalize(m)
    assert m.quant_enabled is True
    for n, p in m.weight_params().items():
        b = m.cfg.bits_of(n)
        if b < 32:
            assert torch.allclose(fake_quant(p.detach(), b), p.detach(), atol=1e-6), n  # on the grid
