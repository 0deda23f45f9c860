"""Search space loader and Genotype schema: loading, validation errors naming the field, round trip."""
import copy
import json

import pytest
import yaml

from models.tdnnf import TDNNF
from search_spaces import Genotype, GenotypeError, SearchSpaceError, load_search_space
from search_spaces.space import SPACES_DIR, search_space_from_dict
from tests.conftest import INVALID_BITS


@pytest.fixture
def demo_dict():
    with open(f"{SPACES_DIR}/tdnnf_demo.yaml") as fh:
        return yaml.safe_load(fh)


def test_load_shipped_spaces():
    demo = load_search_space("tdnnf_demo", num_pdfs=84)
    assert demo.layer_names == ["tdnn1"] + [f"tdnnf{i}" for i in range(1, 9)] + ["prefinal", "output"]
    assert demo.layer("tdnnf3").bottlenecks == (32, 48, 64) and demo.layer("output").bottlenecks is None
    assert demo.layer("tdnnf3").weights == ("tdnnf3.linear", "tdnnf3.affine")
    assert demo.network.bottleneck_dims == [64] * 8 and demo.network.num_pdfs == 84
    swbd = load_search_space("tdnnf_swbd")
    assert swbd.network.num_layers == 14 and swbd.network.hidden_dim == 1536
    assert load_search_space(f"{SPACES_DIR}/tdnnf_demo.yaml").name == "tdnnf_demo"
    with pytest.raises(SearchSpaceError, match="no such file"):
        load_search_space("nope")


def test_extends_takes_the_network_of_another_space(tmp_path):
    demo, b3 = load_search_space("tdnnf_demo", num_pdfs=84), load_search_space("tdnnf_demo_b3", num_pdfs=84)
    assert b3.name == "tdnnf_demo_b3" and b3.network == demo.network
    assert all(lay.bits == (1, 2, 3, 4, 8) and lay.bottlenecks == demo.layer(lay.name).bottlenecks
               for lay in b3.layers)
    (tmp_path / "same.yaml").write_text("name: same\nextends: tdnnf_demo\n")  # no choices: the base's
    same = load_search_space(str(tmp_path / "same.yaml"), num_pdfs=84)
    assert same.network == demo.network and same.layers == demo.layers
    (tmp_path / "b8.yaml").write_text("name: b8\nextends: same\nchoices: {default: {bits: [8]}}\n")
    with pytest.raises(SearchSpaceError, match="extends another space itself"):
        load_search_space(str(tmp_path / "b8.yaml"))  # found next to the file, refused: one level only
    with pytest.raises(SearchSpaceError, match="give one of extends, network"):
        search_space_from_dict({"name": "x", "extends": "tdnnf_demo", "network": {}})
    with pytest.raises(SearchSpaceError, match="no such file"):
        search_space_from_dict({"name": "x", "extends": "nope"})


@pytest.mark.parametrize("mutate,field", [
    (lambda d: d["choices"]["default"].__setitem__("bits", [INVALID_BITS, 4]), "choices.default.bits"),
    (lambda d: d["choices"]["default"].__setitem__("bits", []), "choices.default.bits"),
    (lambda d: d["choices"]["default"].__setitem__("bottleneck", [64, 32]), "choices.default.bottleneck"),
    (lambda d: d["choices"]["default"].__setitem__("bottleneck", [32, 4096]), "choices.default.bottleneck"),
    (lambda d: d["choices"].__setitem__("layers", {"tdnnf99": {"bits": [4]}}), "choices.layers.tdnnf99"),
    (lambda d: d["choices"].__setitem__("layers", {"output": {"bottleneck": [4]}}), "choices.layers.output.bottleneck"),
    (lambda d: d["choices"].__setitem__("layers", {"tdnn1": {"bitz": [4]}}), "choices.layers.tdnn1"),
    (lambda d: d["network"].__setitem__("time_strides", [1, 1]), "time_strides"),
    (lambda d: d["network"].__setitem__("hidden_dim", -1), "hidden_dim"),
    (lambda d: d["network"].__setitem__("colour", 1), "colour"),
    (lambda d: d.__setitem__("extra", 1), "extra"),
    (lambda d: d.pop("name"), "name"),
])
def test_space_errors_name_field(demo_dict, mutate, field):
    d = copy.deepcopy(demo_dict)
    mutate(d)
    with pytest.raises(SearchSpaceError, match=field.replace(".", r"\.")):
        search_space_from_dict(d)


def test_per_layer_overrides(demo_dict):
    d = copy.deepcopy(demo_dict)
    d["choices"]["layers"] = {"tdnn1": {"bits": [8, 32]}, "tdnnf2": {"bottleneck": [16, 24]}}
    s = search_space_from_dict(d, num_pdfs=10)
    assert s.layer("tdnn1").bits == (8, 32) and s.layer("tdnnf2").bottlenecks == (16, 24)
    assert s.network.bottleneck_dims[1] == 24
    with pytest.raises(GenotypeError, match="tdnn1"):
        Genotype.uniform(s, 4)


def test_genotype_roundtrip_and_config(tmp_path):
    space = load_search_space("tdnnf_demo", num_pdfs=84)
    bits = {l.name: b for l, b in zip(space.layers, [8, 4, 2, 1, 32, 4, 4, 8, 2, 8, 8])}
    dims = {f"tdnnf{i}": [32, 48, 64][i % 3] for i in range(1, 9)}
    g = Genotype.from_choices(space, bits, dims, source={"run": "exp/x", "epoch": 3})
    p = str(tmp_path / "genotype.json")
    g.save(p)
    g2 = Genotype.load(p, space)
    assert g2 == g and json.loads(open(p).read())["version"] == 1
    assert json.loads(g.to_json())["layers"][0] == {"name": "tdnn1", "bits": 8, "bottleneck": None}
    cfg = g.to_config(space)
    assert cfg.bottleneck_dims == [dims[f"tdnnf{i}"] for i in range(1, 9)]
    assert cfg.weight_bits["tdnnf1.linear"] == cfg.weight_bits["tdnnf1.affine"] == 4
    assert "tdnnf4.linear" not in cfg.weight_bits  # 32 = float
    assert cfg.weight_bits["prefinal_l"] == cfg.weight_bits["prefinal_chain.linear"] == 8
    m = TDNNF(cfg)
    assert m.tdnnfs[0].linear.shape == (48, 2 * 256)
    assert "total" in g.summary(space)


def test_uniform_and_full_precision():
    space = load_search_space("tdnnf_demo", num_pdfs=84)
    fp = Genotype.full_precision(space)
    assert all(l.bits == 32 for l in fp.layers) and fp.layers[1].bottleneck == 64
    assert fp.to_config(space).weight_bits == {}
    u = Genotype.uniform(space, 2, bottleneck="min")
    assert u.layers[1].bottleneck == 32 and u.expected_size_bytes < fp.expected_size_bytes
    nop = Genotype.uniform(load_search_space("tdnnf_demo"), 4)
    assert nop.expected_size_bytes is None


def _g(space):
    return Genotype.uniform(space, 4).to_dict()


@pytest.mark.parametrize("mutate,msg", [
    (lambda d: d["layers"][1].__setitem__("bits", INVALID_BITS), f"tdnnf1: bits {INVALID_BITS}"),
    (lambda d: d["layers"][1].__setitem__("bottleneck", 40), "tdnnf1: bottleneck 40"),
    (lambda d: d["layers"][0].__setitem__("bottleneck", 40), "tdnn1: bottleneck must be null"),
    (lambda d: d["layers"].pop(), "layers: 10 entries"),
    (lambda d: d["layers"][2].__setitem__("name", "x"), r"layers\[2\].name"),
    (lambda d: d.__setitem__("search_space", "other"), "search_space"),
    (lambda d: d.__setitem__("expected_size_bytes", 5), "expected_size_bytes"),
])
def test_genotype_validation_errors(mutate, msg):
    space = load_search_space("tdnnf_demo", num_pdfs=84)
    d = _g(space)
    mutate(d)
    with pytest.raises(GenotypeError, match=msg):
        Genotype.from_dict(d).validate(space)


@pytest.mark.parametrize("bad,msg", [
    ('{"version": 2, "search_space": "a", "layers": [{"name": "x", "bits": 4}]}', "version"),
    ('{"version": 1, "search_space": "a", "layers": []}', "layers"),
    ('{"version": 1, "search_space": "a", "layers": [{"name": "x", "bits": "4"}]}', "bits"),
    ('{"version": 1, "search_space": "a", "layers": [{"name": "x", "bits": 4, "foo": 1}]}', r"layers\[0\]"),
    ('{"version": 1, "search_space": "a", "layers": [{"name": "x", "bits": 4}], "x": 1}', "unknown"),
    ('__import__("os")', "JSON"),
])
def test_genotype_schema_errors(bad, msg):
    with pytest.raises(GenotypeError, match=msg):
        Genotype.from_json(bad)
