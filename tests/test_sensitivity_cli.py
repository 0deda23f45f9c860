"""mixed_precision.py: allocation from a saved sensitivity file, budgets, errors (no corpus needed)."""
import json
import math

import pytest
import torch
import yaml

import mixed_precision
from models.quantizers import SUPPORTED_BITS
from search_spaces.genotype import Genotype
from search_spaces.space import load_search_space
from sensitivity.allocate import brute_force, layer_sizes

SPACE = {"name": "tiny_cli",
         "network": dict(feat_dim=5, tdnn1_dim=16, num_layers=2, hidden_dim=16, bottleneck_dims=8,
                         time_strides=[1, 3], prefinal_dim=8, prefinal_big_dim=12, num_pdfs=None),
         "choices": {"default": {"bits": list(SUPPORTED_BITS), "bottleneck": [4, 8]}}}


@pytest.fixture
def setup(tmp_path):
    from models.tdnnf import TDNNF
    from training.model_io import save_model_file

    space_path = tmp_path / "space.yaml"
    space_path.write_text(yaml.safe_dump(SPACE))
    space = load_search_space(str(space_path), num_pdfs=6)
    torch.manual_seed(0)
    model = TDNNF(space.network)
    model_path = tmp_path / "model.pt"
    save_model_file(model, model_path)
    sens = {l: {str(b): (0.0 if b == 32 else (i + 1) * 2.0 ** (-b)) for b in space.layer(l).bits}
            for i, l in enumerate(space.layer_names)}
    sens_path = tmp_path / "sens.json"
    sens_path.write_text(json.dumps({"method": "kl", "sensitivity": sens}))
    return tmp_path, space_path, space, model_path, sens_path, sens


def run(*argv):
    return mixed_precision.main([str(a) for a in argv])


def test_allocate_from_sensitivity_file(setup):
    tmp, space_path, space, model_path, sens_path, sens = setup
    out = tmp / "g" / "genotype.json"
    front = tmp / "front.json"
    assert run("--sensitivity-in", sens_path, "--model", model_path, "--space", space_path,
               "--budget-ratio", 0.2, "--out", out, "--frontier-out", front) == 0
    g = Genotype.load(str(out), space)
    fp32 = sum(r[32] for r in layer_sizes(space).values())
    assert g.expected_size_bytes <= 0.2 * fp32
    assert g.source["method"] == "kl" and g.source["budget_bytes"] == math.floor(0.2 * fp32)
    ref = brute_force(sens, layer_sizes(space), 0.2 * fp32)
    assert g.source["total_sensitivity"] == pytest.approx(ref.total_sensitivity)
    pts = json.loads(front.read_text())["points"]
    assert pts[0]["bytes"] < pts[-1]["bytes"] and pts[-1]["sensitivity"] == 0.0
    # --compression 4 == --budget-bytes fp32/4
    run("--sensitivity-in", sens_path, "--model", model_path, "--space", space_path, "--compression", 4,
        "--out", tmp / "c4.json")
    run("--sensitivity-in", sens_path, "--model", model_path, "--space", space_path, "--budget-bytes", fp32 / 4,
        "--out", tmp / "b4.json")
    run("--sensitivity-in", sens_path, "--model", model_path, "--space", space_path, "--budget-ratio", 4,
        "--out", tmp / "r4.json")
    run("--sensitivity-in", sens_path, "--model", model_path, "--space", space_path, "--target-ratio", 4,
        "--out", tmp / "t4.json")
    layers = Genotype.load(str(tmp / "c4.json")).layers
    assert layers != Genotype.load(str(out)).layers
    for name in ("b4.json", "r4.json", "t4.json"):
        assert Genotype.load(str(tmp / name)).layers == layers


def test_budget_too_small_and_bad_args(setup):
    tmp, space_path, space, model_path, sens_path, _ = setup
    with pytest.raises(SystemExit, match="smallest possible model"):
        run("--sensitivity-in", sens_path, "--model", model_path, "--space", space_path,
            "--budget-bytes", 100, "--out", tmp / "x.json")
    with pytest.raises(SystemExit):     # both a method and a sensitivity file
        run("--method", "kl", "--sensitivity-in", sens_path, "--model", model_path, "--budget-ratio", 0.5,
            "--out", tmp / "x.json")
    with pytest.raises(SystemExit):     # measuring needs data
        run("--method", "kl", "--model", model_path, "--budget-ratio", 0.5, "--out", tmp / "x.json")
    with pytest.raises(SystemExit, match="does not match search space"):
        run("--sensitivity-in", sens_path, "--model", model_path, "--space", "tdnnf_demo",
            "--budget-ratio", 0.5, "--out", tmp / "x.json")
