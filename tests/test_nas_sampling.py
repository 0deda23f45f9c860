"""Gumbel-softmax sampling, temperature schedules, ArchParams modes."""
import math

import pytest
import torch

from nas import ArchParams, LayerChoices, TemperatureSchedule, gumbel_softmax


def test_hard_samples_are_one_hot_with_straight_through_gradient():
    logits = torch.randn(7, 5, requires_grad=True)
    c = torch.randn(7, 5)
    g1 = torch.Generator().manual_seed(3)
    y = gumbel_softmax(logits, tau=0.7, hard=True, generator=g1)
    assert torch.equal(y.detach().sum(-1), torch.ones(7))
    assert set(y.detach().unique().tolist()) <= {0.0, 1.0}
    (y * c).sum().backward()
    g_hard = logits.grad.clone()
    logits.grad = None
    g2 = torch.Generator().manual_seed(3)
    y_soft = gumbel_softmax(logits, tau=0.7, hard=False, generator=g2)
    assert torch.equal(y.detach().argmax(-1), y_soft.detach().argmax(-1))
    (y_soft * c).sum().backward()
    assert torch.allclose(g_hard, logits.grad)  # straight-through: the soft sample's gradient
    assert float(g_hard.abs().sum()) > 0


def test_soft_samples_and_frequencies():
    logits = torch.tensor([1.0, 0.0, -1.0, 0.5])
    g = torch.Generator().manual_seed(0)
    ys = torch.stack([gumbel_softmax(logits, 1.0, generator=g) for _ in range(4000)])
    assert torch.allclose(ys.sum(-1), torch.ones(4000), atol=1e-5) and bool((ys > 0).all())
    freq = torch.bincount(ys.argmax(-1), minlength=4).float() / 4000
    assert torch.allclose(freq, torch.softmax(logits, 0), atol=0.03)  # Gumbel-max: argmax ~ softmax(alpha)
    cold = gumbel_softmax(logits, 0.01, generator=g)
    assert float(cold.max()) > 0.99
    assert torch.allclose(gumbel_softmax(logits, 2.0, noise=False), torch.softmax(logits / 2.0, 0))


def test_temperature_schedules():
    s = TemperatureSchedule(5.0, 0.5, total=10)
    assert s(0) == pytest.approx(5.0) and s(10) == pytest.approx(0.5) and s(25) == pytest.approx(0.5)
    assert s(5) == pytest.approx(math.sqrt(5.0 * 0.5))
    assert all(s(t) > s(t + 1) for t in range(10))
    f = TemperatureSchedule(5.0, 0.5, total=100, kind="fbnet", rate=0.045)
    assert f(0) == 5.0 and f(10) == pytest.approx(5.0 * math.exp(-0.45)) and f(1000) == 0.5
    w = TemperatureSchedule(5.0, 0.5, total=12, warmup=2)
    assert w(0) == w(2) == 5.0 and w(12) == pytest.approx(0.5) and w(7) == pytest.approx(math.sqrt(2.5))
    lin = TemperatureSchedule(5.0, 1.0, total=4, kind="linear")
    assert [lin(t) for t in range(5)] == pytest.approx([5, 4, 3, 2, 1])
    assert TemperatureSchedule(2.0, 0.5, kind="constant")(3) == 2.0
    with pytest.raises(ValueError):
        TemperatureSchedule(kind="cosine")


def layers():
    return [LayerChoices("a", (2, 4, 8)), LayerChoices("b", (1, 32), (16, 32, 64)), LayerChoices("c", (8,))]


def test_arch_params_modes():
    torch.manual_seed(0)
    arch = ArchParams(layers(), tau=1.0, hard=True)
    assert len(arch.arch_parameters()) == 6
    w = arch()  # train mode: hard Gumbel
    assert [tuple(t.shape) for p in w for t in p] == [(3,), (1,), (2,), (3,), (1,), (1,)]
    for wb, wd in w:
        assert float(wb.detach().max()) == pytest.approx(1.0, abs=1e-6)
        assert int((wb.detach() == 0).sum()) == wb.numel() - 1
    with torch.no_grad():
        arch.bit_logits[0].copy_(torch.tensor([0.0, 3.0, 1.0]))
        arch.dim_logits[1].copy_(torch.tensor([0.0, 0.0, 2.0]))
    arch.eval()
    w = arch()  # straight-through argmax: one-hot values, softmax gradient
    assert w[0][0].tolist() == pytest.approx([0.0, 1.0, 0.0]) and w[0][0].requires_grad
    with torch.no_grad():
        w = arch()  # exact one-hot
    assert w[0][0].tolist() == [0.0, 1.0, 0.0] and w[1][1].tolist() == [0.0, 0.0, 1.0]
    assert arch.argmax_choices()[:2] == [(4, None), (arch.layers[1].bits[int(arch.bit_logits[1].argmax())], 64)]
    arch.set_choices([(8, None), (1, 16), (8, None)])
    assert arch.is_fixed and arch()[1][1].tolist() == [1.0, 0.0, 0.0]
    arch.clear_fixed()
    arch.train()
    arch.train_sampling = "softmax"
    arch.tau = 2.0
    assert torch.allclose(arch()[0][0], torch.softmax(arch.bit_logits[0] / 2.0, 0))
    with pytest.raises(ValueError):
        arch.set_choices([(3, None), (1, 16), (8, None)])
    with pytest.raises(ValueError):
        LayerChoices("x", (4, 2))
