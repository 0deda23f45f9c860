"""The search's objective on a toy problem whose layers differ in sensitivity.

Each "layer" is a random weight matrix ``W_l`` whose quantization error costs ``s_l * ||Q_b(W_l) - W_l||^2``
(``s_l`` spans 300x across layers). The architecture weights mix the quantized copies exactly as the
supernet does (``supernet.mixing.mix_bits``, hard straight-through Gumbel samples), and the architect
sees only that loss and the size penalty. A working search must (a) land the *argmax* in the budget band,
(b) give the sensitive layers more bits than the insensitive ones, and (c) end with a sharp distribution.
"""
import pytest
import torch

from nas import Architect, ArchParams, LayerChoices, RampSchedule, SizePenalty, SizeTable, TemperatureSchedule
from nas.architect import GlobalAdam
from quant.quantizers import QUANTIZED_BITS
from supernet.mixing import mix_bits

BITS = QUANTIZED_BITS
SENS = (10.0, 3.0, 1.0, 0.3, 0.1, 0.03)
N = 64


def toy_search(seed=0, steps=600, hard=True, kind="band", source="argmax", optimizer="adam_global",
               entropy=0.5, lr=0.05, ratio=6.0):
    torch.manual_seed(seed)
    layers = [LayerChoices(f"l{i}", BITS) for i in range(len(SENS))]
    table = SizeTable(layers, [torch.tensor([[N * N * b / 8.0] for b in BITS]) for _ in layers])
    target = len(SENS) * N * N * 4 / ratio  # fp32 bytes / ratio
    arch = ArchParams(layers, tau=5.0, hard=hard)
    W = [torch.randn(N, N) for _ in layers]
    architect = Architect(arch, SizePenalty(table, target, kind, 2.0, source=source), lr=lr,
                          optimizer=optimizer, weight_decay=0.0)
    tau, ent = TemperatureSchedule(5.0, 0.5, total=steps), RampSchedule(entropy, 0, steps)

    def loss():
        return sum(s * ((mix_bits(w, BITS, wb, per_channel=True, scale="mse") - w) ** 2).mean()
                   for s, w, (wb, _) in zip(SENS, W, arch()))

    for t in range(steps):
        arch.tau, architect.entropy_weight = tau(t), ent(t)
        architect.step(loss)
    choices = arch.argmax_choices()
    return [b for b, _ in choices], table.size(choices) / target, float(arch.mean_entropy().detach())


@pytest.mark.parametrize("seed", [0, 1])
def test_search_lands_argmax_in_band_and_follows_sensitivity(seed):
    bits, ratio, entropy = toy_search(seed)
    assert 0.9 <= ratio <= 1.0, (bits, ratio)
    # more sensitive layers never get fewer bits; the extremes differ
    assert all(a >= b for a, b in zip(bits, bits[1:])), bits
    assert bits[0] > bits[-1]
    assert entropy < 0.1  # sharp: the argmax is what the search converged on


def test_band_penalty_is_two_sided_and_zero_inside():
    layers = [LayerChoices("a", (1, 8))]
    table = SizeTable(layers, [torch.tensor([[10.0], [80.0]])])
    pen = SizePenalty(table, 100.0, "band", 2.0, band=(0.9, 1.0))
    for w, want in [((1.0, 0.0), 2.0 * (0.9 - 0.1)), ((0.0, 1.0), 2.0 * (0.9 - 0.8))]:
        p, size = pen([(torch.tensor(w), torch.ones(1))])
        assert float(p) == pytest.approx(want)
    table2 = SizeTable(layers, [torch.tensor([[95.0], [150.0]])])
    pen2 = SizePenalty(table2, 100.0, "band", 2.0, band=(0.9, 1.0))
    assert float(pen2([(torch.tensor([1.0, 0.0]), torch.ones(1))])[0]) == 0.0
    assert float(pen2([(torch.tensor([0.0, 1.0]), torch.ones(1))])[0]) == pytest.approx(2.0 * 0.5)


def test_argmax_source_penalises_the_argmax_with_softmax_gradient():
    layers = [LayerChoices("a", (1, 8))]
    table = SizeTable(layers, [torch.tensor([[10.0], [200.0]])])
    arch = ArchParams(layers)
    with torch.no_grad():
        arch.bit_logits[0].copy_(torch.tensor([0.0, 0.3]))  # argmax 8 bits, over budget
    p, size = SizePenalty(table, 100.0, "band", 1.0, source="argmax")(arch)
    assert float(size.detach()) == 200.0 and float(p.detach()) == pytest.approx(1.0)
    p.backward()
    g = arch.bit_logits[0].grad
    assert g[1] > 0 > g[0]  # descent lowers the 8-bit logit


def test_global_adam_keeps_relative_gradient_sizes():
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    opt = GlobalAdam([a, b], lr=0.1, betas=(0.0, 0.999))
    for _ in range(5):
        a.grad, b.grad = torch.tensor([1.0, -1.0]), torch.tensor([0.01, -0.01])
        opt.step()
    assert float(a[0]) / float(b[0]) == pytest.approx(100.0, rel=1e-6)
    per_logit = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    adam = torch.optim.Adam(per_logit, lr=0.1, betas=(0.0, 0.999))
    for _ in range(5):
        per_logit[0].grad, per_logit[1].grad = torch.tensor([1.0, -1.0]), torch.tensor([0.01, -0.01])
        adam.step()
    assert float(per_logit[0][0]) / float(per_logit[1][0]) == pytest.approx(1.0, rel=1e-3)  # what it erases
    sd = opt.state_dict()
    opt2 = GlobalAdam([torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))], lr=0.1)
    opt2.load_state_dict(sd)
    assert opt2.param_groups[0]["global_step"] == 5


def test_entropy_ramp_and_mean_entropy():
    r = RampSchedule(0.4, 1.0, 3.0)
    assert r(0.5) == 0.0 and r(2.0) == pytest.approx(0.2) and r(5.0) == pytest.approx(0.4)
    arch = ArchParams([LayerChoices("a", (1, 2, 4)), LayerChoices("b", (4,), (8, 16))])
    assert float(arch.mean_entropy()) == pytest.approx(1.0, abs=1e-5)  # near-uniform start
    with torch.no_grad():
        arch.bit_logits[0].copy_(torch.tensor([50.0, 0.0, 0.0]))
        arch.dim_logits[1].copy_(torch.tensor([0.0, 50.0]))
    assert float(arch.mean_entropy()) < 1e-6
    hb, hd = arch.entropies()[1]
    assert hb is None and hd is not None  # a fixed choice has no entropy
