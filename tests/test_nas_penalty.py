"""Expected-size penalty: bilinear form of the cost-model table; penalty forms; penalty-driven descent to
the budget; a tighter budget yields a smaller genotype."""
import itertools
import math

import pytest
import torch

from nas import Architect, ArchParams, LayerChoices, SizePenalty, SizeTable, derive_genotype
from nas.penalty import size_table_from_cost_model
from search_spaces import load_search_space
from supernet.network import SuperNet


@pytest.fixture(scope="module")
def demo():
    space = load_search_space("tdnnf_demo", num_pdfs=60)
    layers = SuperNet.from_space(space).arch.layers
    return space, layers, size_table_from_cost_model(space.network, layers)


def test_expected_size_is_the_bilinear_form(demo):
    space, layers, table = demo
    torch.manual_seed(0)
    w = [(torch.softmax(torch.randn(len(l.bits)), 0), torch.softmax(torch.randn(len(l.dims)), 0)) for l in layers]
    brute = table.const_bytes
    for l, t, (wb, wd) in zip(layers, table.tables, w):
        for (i, b), (j, d) in itertools.product(enumerate(l.bits), enumerate(l.dims)):
            brute += float(wb[i] * wd[j]) * float(t[i, j])
    assert float(table.expected(w)) == pytest.approx(brute, rel=1e-6)
    # one-hot: exactly the cost model's size of that genotype
    g = derive_genotype(ArchParams(layers), space)
    assert table.size([(l.bits, l.bottleneck) for l in g.layers]) == g.expected_size_bytes == g.size_bytes(space)


def test_penalty_forms():
    t = SizeTable([LayerChoices("a", (4, 32))], [torch.tensor([[100.0], [300.0]])], const_bytes=0.0)
    w = [(torch.tensor([0.5, 0.5]), torch.tensor([1.0]))]  # E = 200
    for kind, target, want in [("linear", 100, 2.0), ("log", 100, math.log(2.0)), ("hinge", 100, 1.0),
                               ("hinge", 400, 0.0), ("linear", 400, 0.5)]:
        p, e = SizePenalty(t, target, kind, weight=3.0)(w)
        assert float(e) == 200.0 and float(p) == pytest.approx(3.0 * want)
    with pytest.raises(ValueError):
        SizePenalty(t, 100, "square")


def test_hinge_penalty_alone_drives_size_to_target_and_stays(demo):
    _, layers, table = demo
    torch.manual_seed(0)
    arch = ArchParams(layers)
    e0 = float(table.expected(arch.probs()).detach())
    target = 0.5 * e0  # the smallest model is 0.31 * e0
    architect = Architect(arch, SizePenalty(table, target, "hinge", weight=1.0), lr=0.05, weight_decay=0.0)
    trace = [architect.step()["expected_bytes"] / target for _ in range(300)]
    assert trace[0] > 1.9
    # reached the budget, not far below it, and stays there (a one-sided hinge hovers at its edge)
    assert all(0.9 < r <= 1.06 for r in trace[150:])


def test_band_penalty_on_the_argmax_lands_the_argmax_in_the_band(demo):
    _, layers, table = demo
    torch.manual_seed(0)
    arch = ArchParams(layers)
    target = table.min_bytes() + 0.4 * (table.max_bytes() - table.min_bytes())
    architect = Architect(arch, SizePenalty(table, target, "band", weight=1.0, source="argmax"), lr=0.05,
                          weight_decay=0.0, optimizer="adam_global")
    for _ in range(300):
        architect.step()
    assert 0.9 <= table.size(arch.argmax_choices()) / target <= 1.0


def _search(layers, table, target, steps=250):
    """Penalty + a proxy task loss that prefers more bits and wider bottlenecks (quantization noise ~4^-b,
    low-rank error ~1/d): the trade-off the real search makes."""
    torch.manual_seed(0)
    arch = ArchParams(layers)
    arch.train_sampling = "softmax"
    arch.tau = 1.0
    err_b = [torch.tensor([4.0 ** -min(b, 16) for b in l.bits]) for l in layers]
    err_d = [torch.tensor([0.0 if d is None else 8.0 / d for d in l.dims]) for l in layers]

    def task():
        w = arch()
        return sum(wb @ eb + wd @ ed for (wb, wd), eb, ed in zip(w, err_b, err_d))

    architect = Architect(arch, SizePenalty(table, target, "hinge", weight=5.0), lr=0.05, weight_decay=0.0)
    for _ in range(steps):
        architect.step(task)
    return arch.argmax_choices()


def test_tighter_budget_gives_fewer_bits_or_smaller_dims(demo):
    _, layers, table = demo
    lo, hi = table.min_bytes(), table.max_bytes()
    loose = _search(layers, table, lo + 0.6 * (hi - lo))
    tight = _search(layers, table, lo + 0.15 * (hi - lo))
    assert table.size(tight) < table.size(loose)
    assert table.size(tight) <= (lo + 0.15 * (hi - lo)) * 1.05
    bits_l, bits_t = sum(b for b, _ in loose), sum(b for b, _ in tight)
    dims_l = sum(d for _, d in loose if d is not None)
    dims_t = sum(d for _, d in tight if d is not None)
    assert bits_t < bits_l or dims_t < dims_l
    # no layer grows under the tighter budget
    for (bl, dl), (bt, dt) in zip(loose, tight):
        assert bt <= bl and (dl is None or dt <= dl)
