"""Cost model: per-layer table consistency, formulas."""
import math
import random

import pytest

from tests.conftest import INVALID_BITS

from models.layout import tensor_layout
from quant.cost_model import code_bytes, count_parameters, layer_bytes, model_size, weight_bytes
from search_spaces.genotype import Genotype
from search_spaces.space import load_search_space


def test_weight_bytes_formula():
    assert code_bytes(10, 1) == 2 and code_bytes(10, 2) == 3 and code_bytes(10, 4) == 5 and code_bytes(10, 8) == 10
    assert weight_bytes((3, 5), 4) == math.ceil(15 * 4 / 8) + 3 * 2
    assert weight_bytes((3, 5), 4, per_channel=False) == 8 + 2
    assert weight_bytes((3, 5), 32) == 60
    assert code_bytes(10, 3) == 4 and weight_bytes((3, 5), 3) == math.ceil(15 * 3 / 8) + 3 * 2
    with pytest.raises(ValueError):
        weight_bytes((3, 5), INVALID_BITS)


def test_table_sums_to_model_size():
    space = load_search_space("tdnnf_demo", num_pdfs=84)
    table = space.size_table()
    assert list(table) == space.layer_names
    rng = random.Random(0)
    for _ in range(20):
        bits = {l.name: rng.choice(l.bits) for l in space.layers}
        dims = {l.name: rng.choice(l.bottlenecks) for l in space.layers if l.has_bottleneck}
        g = Genotype.from_choices(space, bits, dims)
        pred = sum(table[l.name][bits[l.name]][dims.get(l.name, 0)] for l in space.layers)
        assert pred == g.expected_size_bytes == model_size(g.to_config(space)).total_bytes
        assert all(isinstance(v, float) for t in table.values() for d in t.values() for v in d.values())


def test_fp32_and_ratio():
    space = load_search_space("tdnnf_demo", num_pdfs=84)
    fp = model_size(Genotype.full_precision(space).to_config(space))
    q4 = model_size(Genotype.uniform(space, 4).to_config(space))
    assert fp.total_bytes == fp.fp32_bytes == q4.fp32_bytes
    assert 6.0 < q4.compression_ratio < 8.0
    params = count_parameters(space.network, include_xent=False)
    n_bn = sum(math.prod(t.shape) for t in tensor_layout(space.network) if t.kind.startswith("bn"))
    assert fp.total_bytes == 4 * (params + n_bn)


def test_layer_bytes_bottleneck_monotone():
    cfg = load_search_space("tdnnf_swbd").network
    a = [layer_bytes(cfg, "tdnnf5", 4, d) for d in (64, 96, 128, 160)]
    assert a == sorted(a) and len(set(a)) == 4
    with pytest.raises(ValueError, match="no bottleneck"):
        layer_bytes(cfg, "output", 4, 10)
    with pytest.raises(KeyError):
        layer_bytes(cfg, "tdnnf99", 4)
