"""Budget-aware derivation: the most probable architecture whose cost-model size fits the budget."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from nas.derive import derive_genotype, derive_genotype_within_budget
from search_spaces import load_search_space
from supernet.network import SuperNet


def _arch(seed, space):
    net = SuperNet.from_space(space)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.arch.arch_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 2)
    return net


def test_equals_argmax_when_the_argmax_fits():
    space = load_search_space("tdnnf_demo", num_pdfs=40)
    net = _arch(0, space)
    table = net.size_table()
    am = derive_genotype(net.arch, space)
    g = derive_genotype_within_budget(net.arch, space, table, am.expected_size_bytes + 1)
    assert [(l.bits, l.bottleneck) for l in g.layers] == [(l.bits, l.bottleneck) for l in am.layers]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_fits_the_budget_and_is_the_most_probable_such_architecture(seed):
    space = load_search_space("tdnnf_demo", num_pdfs=40)
    net = _arch(seed, space)
    table = net.size_table()
    am_size = derive_genotype(net.arch, space).expected_size_bytes
    budget = 0.5 * am_size if am_size > 2 * table.min_bytes() else 0.5 * (am_size + table.min_bytes())
    g = derive_genotype_within_budget(net.arch, space, table, budget)
    assert g.expected_size_bytes <= budget
    assert g.expected_size_bytes == g.size_bytes(space)

    # brute force over the three most probable options per layer is a lower bound on its score
    probs = net.arch.probs()
    def score(choices):
        s = 0.0
        for l, (pb, pd), (b, d) in zip(net.arch.layers, probs, choices):
            s += math.log(float(pb[l.bits.index(b)])) + math.log(float(pd[l.dims.index(d)]))
        return s
    chosen = [(l.bits, l.bottleneck) for l in g.layers]
    top = []
    for l, (pb, pd) in zip(net.arch.layers, probs):
        opts = sorted(((float(pb[i]) * float(pd[j]), (b, d)) for i, b in enumerate(l.bits)
                       for j, d in enumerate(l.dims)), reverse=True)[:2]
        top.append([o[1] for o in opts])
    best = max((score(c) for c in itertools.product(*top) if table.size(list(c)) <= budget), default=None)
    if best is not None:
        assert score(chosen) >= best - 1e-9


def test_budget_below_the_smallest_model_is_an_error():
    from sensitivity.allocate import BudgetError

    space = load_search_space("tdnnf_demo", num_pdfs=40)
    net = _arch(0, space)
    with pytest.raises(BudgetError):
        derive_genotype_within_budget(net.arch, space, net.size_table(), net.size_table().min_bytes() - 1)
