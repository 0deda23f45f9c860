"""The typed YAML sections of the search and of quantized training: unknown keys and bad values are
errors that name them, values stay as written, command-line overrides are checked like the file."""
from __future__ import annotations

import pytest

from nas.options import CHOICES, SearchOptions
from quant.options import TRAINERS, QuantOptions
from training.experiment import config_section


def test_search_options_defaults_round_trip_and_keep_values_as_written():
    d = {"arch_lr": 1, "penalty_band": [0.9, 1.0], "mode": "single"}
    o = SearchOptions.from_dict(d)
    assert o.arch_lr == 1 and isinstance(o.arch_lr, int)  # not coerced: a run's identity hash is unchanged
    assert SearchOptions.from_dict(o.to_dict()) == o
    assert SearchOptions.from_dict(None) == SearchOptions()
    assert set(CHOICES) <= set(SearchOptions().to_dict())


@pytest.mark.parametrize("d,msg", [
    ({"arch_lrr": 0.1}, r"unknown search option\(s\) \['arch_lrr'\]"),
    ({"mode": "trilevel"}, r"search.mode must be one of"),
    ({"penalty": "quadratic"}, r"search.penalty must be one of"),
    ({"penalty_band": [1.0, 0.5]}, r"penalty_band"),
    ({"entropy_weight": float("nan")}, r"search.entropy_weight must be a finite number"),
    ({"held_out_fraction": 1.0}, r"held_out_fraction must be in \[0, 1\)"),
    ({"hard": "yes"}, r"search.hard must be true or false"),
    ({"log_every": 2.5}, r"search.log_every must be an integer"),
    ({"weight_sampling": "fair"}, r"search.weight_sampling must be one of"),
    ({"weight_sampling": "uniform", "mode": "single"}, r"weight_sampling: uniform needs mode: bilevel"),
])
def test_bad_search_options_name_the_key_and_the_file(d, msg):
    with pytest.raises(ValueError, match=msg):
        SearchOptions.from_dict(d)
    with pytest.raises(ValueError, match=r"^cfg.yaml: "):
        config_section("cfg.yaml", SearchOptions.from_dict, d)


def test_overrides_keep_unset_flags_and_are_checked():
    o = SearchOptions.from_dict({"penalty_weight": 3.0})
    assert o.replace(mode=None, penalty_weight=None) == o
    assert o.replace(penalty_weight=0.0).penalty_weight == 0.0 and o.penalty_weight == 3.0
    with pytest.raises(ValueError, match="penalty_weight"):
        o.replace(penalty_weight=-1.0)
    assert o.replace(penalty_band=[0.99, 1.0]).penalty_band == [0.99, 1.0]
    with pytest.raises(ValueError, match="penalty_band"):
        o.replace(penalty_band=[1.0, 0.9])


def test_quant_options():
    assert QuantOptions.from_dict({}) == QuantOptions()
    assert QuantOptions.from_dict({"trainer": "admm"}).replace(trainer=None).trainer == "admm"
    assert QuantOptions().replace(trainer="admm").trainer == "admm"
    for d, msg in [({"trainr": "admm"}, r"unknown quant option\(s\) \['trainr'\]"),
                   ({"trainer": "adam"}, r"quant.trainer must be one of"),
                   ({"admm_rho": 0}, r"quant.admm_rho must be a finite number > 0"),
                   ({"admm_update_every": 0}, r"quant.admm_update_every must be an integer >= 1")]:
        with pytest.raises(ValueError, match=msg):
            QuantOptions.from_dict(d)
    assert set(TRAINERS) == {"ste", "admm"}
