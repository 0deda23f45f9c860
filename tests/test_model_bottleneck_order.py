"""Bottleneck ordering: function-preserving, and slicing an ordered network keeps its best units."""
import copy
import math

import pytest
import torch

from models.bottleneck_order import order_bottleneck_pair, order_bottlenecks_
from models.config import TDNNFConfig
from models.layout import copy_weights_to_bottlenecks, slice_cols
from models.tdnnf import TDNNF, semi_orthogonality_error


def small_net(seed=0):
    cfg = TDNNFConfig(feat_dim=6, tdnn1_dim=24, hidden_dim=24, num_layers=4, bottleneck_dims=[12] * 4,
                      time_strides=[1, 0, 3, 3], prefinal_dim=12, prefinal_big_dim=20, num_pdfs=11)
    g = torch.Generator().manual_seed(seed)
    net = TDNNF(cfg)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1]))
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
    return net.eval()


def feats(seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 40, 6, generator=g), torch.tensor([40, 33])


@pytest.mark.parametrize("method", ["pca", "energy"])
def test_ordering_preserves_the_function(method):
    net = small_net()
    x, L = feats()
    y0 = net(x, L)[0]
    ordered = copy.deepcopy(net)
    imp = order_bottlenecks_(ordered, method)
    assert set(imp) == {"tdnnf1", "tdnnf2", "tdnnf3", "tdnnf4"}
    assert all(a >= b for v in imp.values() for a, b in zip(v, v[1:]))  # descending
    assert torch.allclose(ordered(x, L)[0], y0, atol=1e-4, rtol=1e-4)


def test_pca_keeps_semi_orthogonality_and_maximises_kept_energy():
    g = torch.Generator().manual_seed(0)
    r, din, dout, k = 8, 10, 16, 2
    L = torch.linalg.qr(torch.randn(k * din, r, generator=g))[0].t().contiguous()  # row-orthonormal
    A = torch.randn(dout, k * r, generator=g) * torch.linspace(0.1, 2.0, r).repeat(k)[None, :]
    L2, A2, imp = order_bottleneck_pair(L, A, k, "pca")
    assert semi_orthogonality_error(L2) < 1e-5
    for d in (2, 4, 6):
        kept = float(slice_cols(A2, k, d).square().sum())
        # energy kept by the first d units >= that of any d original units (here: the d largest)
        orig = sorted(((A.reshape(dout, k, r) ** 2).sum((0, 1))).tolist(), reverse=True)
        assert kept >= sum(orig[:d]) - 1e-4
        assert kept == pytest.approx(sum(imp[:d].tolist()), rel=1e-5)


def test_ordered_slice_equals_the_ordered_network_with_units_switched_off():
    """Slicing the ordered network to d units computes what the ordered network computes with units
    d..r-1 of every bottleneck zeroed: slicing keeps the function of the kept units."""
    net = small_net(2)
    order_bottlenecks_(net, "pca")
    x, L = feats()
    d = 5
    sub = TDNNF(net.cfg.replace(bottleneck_dims=[d] * 4))
    copy_weights_to_bottlenecks(sub, net.state_dict())
    off = copy.deepcopy(net)
    with torch.no_grad():
        for layer in off.tdnnfs:
            layer.linear[d:] = 0.0
    assert torch.allclose(sub.eval()(x, L)[0], off(x, L)[0], atol=1e-5)
