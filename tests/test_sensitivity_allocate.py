"""Bit allocation: DP knapsack == brute force, budget respected, Pareto frontier exact, Genotype output."""
import itertools
import random

import pytest

from models.quantizers import SUPPORTED_BITS
from search_spaces.space import search_space_from_dict
from sensitivity.allocate import (BudgetError, allocate_bits, brute_force, fp32_model_bytes, knapsack,
                                  layer_sizes, pareto_frontier)


def random_case(rng, n_layers, n_choices, monotone=True):
    sens, sizes = {}, {}
    bits_all = list(SUPPORTED_BITS)
    for i in range(n_layers):
        bits = sorted(rng.sample(bits_all, n_choices))
        numel = rng.randint(5, 400)
        sizes[f"l{i}"] = {b: (numel * b + 7) // 8 + rng.randint(0, 3) for b in bits}
        if monotone:
            base = rng.uniform(0.1, 10)
            sens[f"l{i}"] = {b: (0.0 if b == 32 else base * 4.0 ** (-b) * rng.uniform(0.5, 2)) for b in bits}
        else:
            sens[f"l{i}"] = {b: rng.uniform(-1, 5) for b in bits}
    return sens, sizes


@pytest.mark.parametrize("seed", range(12))
def test_knapsack_equals_brute_force(seed):
    rng = random.Random(seed)
    sens, sizes = random_case(rng, rng.randint(1, 5), rng.randint(1, 4), monotone=seed % 3 != 0)
    lo = sum(min(r.values()) for r in sizes.values())
    hi = sum(max(r.values()) for r in sizes.values())
    for budget in sorted({lo, hi, hi + 10} | {rng.randint(lo, hi) for _ in range(15)}):
        a = knapsack(sens, sizes, budget)
        b = brute_force(sens, sizes, budget)
        assert a.exact
        assert a.total_bytes <= budget
        assert a.total_bytes == sum(sizes[l][a.bits[l]] for l in sizes)
        assert a.total_sensitivity == pytest.approx(sum(sens[l][a.bits[l]] for l in sizes))
        assert a.total_sensitivity == pytest.approx(b.total_sensitivity, abs=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_coarse_grid_still_respects_budget(seed):
    rng = random.Random(100 + seed)
    sens, sizes = random_case(rng, 5, 4)
    lo = sum(min(r.values()) for r in sizes.values())
    hi = sum(max(r.values()) for r in sizes.values())
    for budget in [rng.randint(lo, hi) for _ in range(10)]:
        a = knapsack(sens, sizes, budget, max_cells=7)       # deliberately coarse
        b = brute_force(sens, sizes, budget)
        assert a.total_bytes <= budget
        assert a.total_sensitivity >= b.total_sensitivity - 1e-12


def test_hand_made_case():
    # two layers, 10 bytes budget: (8-bit a, 2-bit b) = 6+2 beats (4,4) = 4+4 sensitivity-wise
    sizes = {"a": {2: 2, 4: 4, 8: 6}, "b": {2: 2, 4: 4, 8: 6}}
    sens = {"a": {2: 10.0, 4: 5.0, 8: 0.0}, "b": {2: 1.0, 4: 0.5, 8: 0.0}}
    a = knapsack(sens, sizes, 8)
    assert a.bits == {"a": 8, "b": 2} and a.total_bytes == 8 and a.total_sensitivity == 1.0
    assert knapsack(sens, sizes, 12).bits == {"a": 8, "b": 8}
    assert knapsack(sens, sizes, 4).bits == {"a": 2, "b": 2}
    with pytest.raises(BudgetError, match="smallest possible model, 4 bytes"):
        knapsack(sens, sizes, 3)


def test_ties_prefer_smaller_model():
    sizes = {"a": {4: 4, 8: 8, 32: 32}}
    sens = {"a": {4: 0.0, 8: 0.0, 32: 0.0}}
    assert knapsack(sens, sizes, 100).bits == {"a": 4}


def brute_frontier(sens, sizes):
    layers = list(sizes)
    pts = []
    for combo in itertools.product(*[sorted(sizes[l]) for l in layers]):
        pts.append((sum(sizes[l][b] for l, b in zip(layers, combo)), sum(sens[l][b] for l, b in zip(layers, combo))))
    front = []
    for b, s in sorted(pts):
        if not front or s < front[-1][1] - 1e-12:
            if front and front[-1][0] == b:
                continue
            front.append((b, s))
    return front


@pytest.mark.parametrize("seed", range(6))
def test_pareto_frontier_exact(seed):
    rng = random.Random(200 + seed)
    sens, sizes = random_case(rng, rng.randint(1, 5), rng.randint(2, 4), monotone=seed % 2 == 0)
    got = pareto_frontier(sens, sizes)
    want = brute_frontier(sens, sizes)
    assert [p.bytes for p in got] == [b for b, _ in want]
    assert [p.sensitivity for p in got] == pytest.approx([s for _, s in want])
    for p in got:   # each point is realised by its bits, and is the knapsack optimum at its size
        assert p.bytes == sum(sizes[l][p.bits[l]] for l in sizes)
        assert knapsack(sens, sizes, p.bytes).total_sensitivity == pytest.approx(p.sensitivity)


def tiny_space(bits=SUPPORTED_BITS):
    return search_space_from_dict({
        "name": "tiny", "network": dict(feat_dim=5, tdnn1_dim=16, num_layers=2, hidden_dim=16, bottleneck_dims=8,
                                        time_strides=[1, 3], prefinal_dim=8, prefinal_big_dim=12, num_pdfs=6),
        "choices": {"default": {"bits": list(bits), "bottleneck": [4, 8]}}})


def test_allocate_bits_genotype():
    space = tiny_space()
    sizes = layer_sizes(space)
    fp32 = fp32_model_bytes(space)
    assert sum(r[32] for r in sizes.values()) == fp32
    sens = {l: {b: (0.0 if b == 32 else (i + 1) * 2.0 ** (-b)) for b in space.layer(l).bits}
            for i, l in enumerate(space.layer_names)}
    for ratio in (0.05, 0.1, 0.2, 0.5, 1.0):
        budget = ratio * fp32
        if budget < sum(min(r.values()) for r in sizes.values()):
            with pytest.raises(BudgetError):
                allocate_bits(space, sens, budget, method="test")
            continue
        g = allocate_bits(space, sens, budget, method="test")
        assert g.expected_size_bytes <= budget
        assert g.size_bytes(space) == g.expected_size_bytes
        assert g.source["method"] == "test" and g.source["budget_bytes"] == int(budget)
        assert all(l.bottleneck in (None, 8) for l in g.layers)
        ref = brute_force(sens, sizes, budget)
        assert g.source["total_sensitivity"] == pytest.approx(ref.total_sensitivity)
    # JSON-style string keys and a given bottleneck
    sj = {l: {str(b): v for b, v in r.items()} for l, r in sens.items()}
    g = allocate_bits(space, sj, fp32, bottlenecks={"tdnnf1": 4}, method="kl")
    assert [l.bottleneck for l in g.layers if l.bottleneck] == [4, 8]
    assert all(l.bits == 32 for l in g.layers)
