"""Bad inputs to every CLI, built on the tiny corpus; each must end in its outcome class:

- ``error``: exit status 2, the last stderr line is a one-line ``error: ...`` naming the problem, no
  traceback, and nothing written to a training ``--out``;
- ``refusal``: exit status 2 and the existing output directory is byte for byte unchanged;
- ``skip``: exit status 0 and the bad item counted (and named) in the run's JSON output.

Arguments and configs fail before any training, so most cases take a few seconds.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys

import pytest

from tests.conftest import INVALID_BITS, ROOT, corpus_with_nan_features, run_cli

EVIL = "evil-pickle"
CORRUPT = "corrupt-bytes"


def _retrain(*extra):
    return ["retrain.py", "--data-dir", "{data}", "--out", "{out}", "--max-steps", "1", "--no-progress", *extra]


def _search(*extra):
    return ["train_search.py", "--data-dir", "{data}", "--out", "{out}", "--max-steps", "1", "--no-progress",
            *extra]


def _decode(*extra):
    return ["decode.py", "--data-dir", "{data}", "--out", "{out}", "--graph-cache", "{graphs}", "--lm-order", "2",
            "--no-progress", *extra]


def _mp(*extra):
    return ["mixed_precision.py", "--model", "{fp32}", "--data-dir", "{data}", "--out", "{out}/g.json", *extra]


def _runner(*extra):
    return ["run_experiments.py", "--config", "{yaml}", "--out", "{out}", *extra]


RUNNER_OK = "data_dir: {data}\nsystems:\n  - {name: fp32, kind: fp32}\n"

# (id, argv, files {name: text} under the case dir ({yaml} = config.yaml), expected message regex)
ERROR_CASES = [
    # retrain.py: arguments
    ("retrain-uniform-bits-0", _retrain("--uniform-bits", "0"), {}, r"--uniform-bits: must be an integer >= 1"),
    ("retrain-uniform-bits-invalid", _retrain("--uniform-bits", str(INVALID_BITS)), {}, r"bits"),
    ("retrain-epochs-0", _retrain("--epochs", "0"), {}, r"--epochs: must be an integer >= 1"),
    ("retrain-epochs-two", _retrain("--epochs", "two"), {}, r"--epochs: must be an integer"),
    ("retrain-max-steps-negative", _retrain("--max-steps", "-3"), {}, r"--max-steps"),
    ("retrain-missing-data-dir", ["retrain.py", "--data-dir", "{case}/nowhere", "--out", "{out}"], {},
     r"lexicon.txt not found"),
    ("retrain-data-dir-without-cuts", ["retrain.py", "--data-dir", "{nocuts}", "--out", "{out}"], {},
     r"cuts_train.jsonl.gz not found"),
    ("retrain-unknown-space", _retrain("--space", "no_such_space"), {}, r"no_such_space"),
    ("retrain-missing-genotype", _retrain("--genotype", "{case}/none.json"), {}, r"none.json"),
    ("retrain-genotype-not-json", _retrain("--genotype", "{case}/g.json"), {"g.json": "{layers: 3"}, r"g.json"),
    ("retrain-genotype-wrong-layers", _retrain("--genotype", "{case}/g.json"),
     {"g.json": json.dumps({"version": 1, "search_space": "tdnnf_demo",
                            "layers": [{"name": "tdnn1", "bits": 8, "bottleneck": None}]})}, r"entries"),
    ("retrain-init-from-missing", _retrain("--init-from", "{case}/none.pt"), {}, r"none.pt does not exist"),
    ("retrain-init-from-corrupt", _retrain("--init-from", "{case}/m.pt"), {"m.pt": CORRUPT}, r"cannot read"),
    ("retrain-init-from-pickle", _retrain("--init-from", "{case}/m.pt"), {"m.pt": EVIL}, r"cannot read"),
    ("retrain-distill-from-missing", _retrain("--distill-from", "{case}/none.pt"), {}, r"none.pt"),
    ("retrain-config-missing", _retrain("--config", "{case}/none.yaml"), {}, r"none.yaml"),
    ("retrain-config-bad-yaml", _retrain("--config", "{yaml}"), {"config.yaml": "train: [1, 2\n"}, r"."),
    ("retrain-config-not-mapping", _retrain("--config", "{yaml}"), {"config.yaml": "- train\n"}, r"mapping"),
    ("retrain-config-unknown-section", _retrain("--config", "{yaml}"), {"config.yaml": "trian: {}\n"},
     r"unknown section.*trian"),
    ("retrain-quant-typo", _retrain("--config", "{yaml}"), {"config.yaml": "quant: {trainr: admm}\n"},
     r"config.yaml: unknown quant option.*trainr"),
    ("retrain-quant-trainer", _retrain("--config", "{yaml}"), {"config.yaml": "quant: {trainer: adam}\n"},
     r"config.yaml: quant.trainer must be one of \['ste', 'admm'\]"),
    ("retrain-quant-rho-nan", _retrain("--config", "{yaml}"), {"config.yaml": "quant: {admm_rho: .nan}\n"},
     r"quant.admm_rho"),
    ("retrain-epochs-string", _retrain("--config", "{yaml}"), {"config.yaml": "train: {epochs: two}\n"},
     r"config.yaml: train.epochs must be an integer, got 'two'"),
    ("retrain-lr-nan", _retrain("--config", "{yaml}"), {"config.yaml": "train: {lr: .nan}\n"}, r"train.lr"),
    ("retrain-max-duration-0", _retrain("--config", "{yaml}"), {"config.yaml": "train: {max_duration: 0}\n"},
     r"train.max_duration must be > 0"),
    ("retrain-train-typo", _retrain("--config", "{yaml}"), {"config.yaml": "train: {epochz: 3}\n"},
     r"unknown train option.*epochz"),
    ("retrain-lfmmi-typo", _retrain("--config", "{yaml}"), {"config.yaml": "lfmmi: {den_ordr: 2}\n"},
     r"config.yaml: unknown lfmmi option.*den_ordr"),
    ("retrain-distill-typo", _retrain("--config", "{yaml}"), {"config.yaml": "distill: {wieght: 1}\n"},
     r"wieght"),
    ("retrain-skip-fraction", _retrain("--config", "{yaml}"),
     {"config.yaml": "train: {max_skip_fraction: 5}\n"}, r"max_skip_fraction"),
    # train_search.py: budgets and search options
    ("search-target-ratio-0", _search("--target-ratio", "0"), {}, r"--target-ratio: must be a finite number >= 1"),
    ("search-target-ratio-nan", _search("--target-ratio", "nan"), {}, r"--target-ratio: must be a finite number"),
    ("search-target-ratio-inf", _search("--target-ratio", "inf"), {}, r"--target-ratio"),
    ("search-target-ratio-text", _search("--target-ratio", "eight"), {}, r"--target-ratio"),
    ("search-target-bytes-0", _search("--target-bytes", "0"), {}, r"--target-bytes: must be a finite number > 0"),
    ("search-target-bytes-negative", _search("--target-bytes", "-5"), {}, r"--target-bytes"),
    ("search-target-mb-nan", _search("--target-mb", "nan"), {}, r"--target-mb"),
    ("search-target-below-space", _search("--target-bytes", "10"), {}, r"below the smallest model"),
    ("search-penalty-weight-negative", _search("--penalty-weight", "-1"), {}, r"--penalty-weight"),
    ("search-penalty-band-flag", _search("--penalty-band", "1.0", "0.9"), {}, r"search.penalty_band must be"),
    ("search-warmup-epochs-negative", _search("--warmup-epochs", "-1"), {}, r"--warmup-epochs"),
    ("search-weights-frozen-bilevel", _search("--config", "{yaml}"), {"config.yaml": "search: {weights: frozen}\n"},
     r"weights: frozen needs mode: single"),
    ("search-mode", _search("--config", "{yaml}"), {"config.yaml": "search: {mode: trilevel}\n"},
     r"search.mode must be"),
    ("search-band", _search("--config", "{yaml}"), {"config.yaml": "search: {penalty_band: [1.0, 0.5]}\n"},
     r"penalty_band"),
    ("search-typo", _search("--config", "{yaml}"), {"config.yaml": "search: {arch_lrr: 0.1}\n"}, r"arch_lrr"),
    ("search-quant-section", _search("--config", "{yaml}"), {"config.yaml": "quant: {trainer: ste}\n"},
     r"unknown section"),
    ("search-tau-0", _search("--config", "{yaml}"), {"config.yaml": "search: {tau_end: 0}\n"},
     r"config.yaml: search.tau_start and tau_end must be > 0"),
    ("search-lfmmi-typo", _search("--config", "{yaml}"), {"config.yaml": "lfmmi: {den_ordr: 2}\n"},
     r"config.yaml: unknown lfmmi option.*den_ordr"),
    ("search-distill-typo", _search("--config", "{yaml}"), {"config.yaml": "distill: {wieght: 1}\n"},
     r"config.yaml: unknown distill option.*wieght"),
    # decode.py
    ("decode-model-missing", _decode("--model", "{case}/none.pt"), {}, r"none.pt does not exist"),
    ("decode-model-corrupt", _decode("--model", "{case}/m.pt"), {"m.pt": CORRUPT}, r"cannot read checkpoint"),
    ("decode-model-pickle", _decode("--model", "{case}/m.pt"), {"m.pt": EVIL}, r"cannot read checkpoint"),
    ("decode-packed-corrupt", _decode("--model", "{case}/m.safetensors"), {"m.safetensors": CORRUPT},
     r"m.safetensors"),
    ("decode-model-nan", _decode("--model", "{nanmodel}"), {}, r"refusing to read .*non-finite"),
    ("decode-split-missing", _decode("--model", "{fp32}", "--split", "eval"), {}, r"cuts_eval.jsonl.gz not found"),
    ("decode-config-typo", _decode("--model", "{fp32}", "--config", "{yaml}"), {"config.yaml": "beem: 10\n"},
     r"config.yaml: unknown config key 'beem'"),
    ("decode-config-type", _decode("--model", "{fp32}", "--config", "{yaml}"), {"config.yaml": "beam: wide\n"},
     r"config.yaml: beam must be a number, got 'wide'"),
    ("decode-max-frames-text", _decode("--model", "{fp32}", "--max-frames", "many"), {}, r"--max-frames"),
    # mixed_precision.py
    ("mp-budget-bytes-nan", _mp("--method", "kl", "--budget-bytes", "nan"), {}, r"--budget-bytes: must be"),
    ("mp-budget-bytes-0", _mp("--method", "kl", "--budget-bytes", "0"), {}, r"--budget-bytes"),
    ("mp-budget-ratio-0", _mp("--method", "kl", "--budget-ratio", "0"), {}, r"--budget-ratio"),
    ("mp-compression-half", _mp("--method", "kl", "--compression", "0.5"), {}, r"--compression"),
    ("mp-max-batches-0", _mp("--method", "kl", "--budget-ratio", "8", "--max-batches", "0"), {}, r"--max-batches"),
    ("mp-model-missing", ["mixed_precision.py", "--method", "kl", "--model", "{case}/none.pt", "--data-dir", "{data}",
                          "--budget-ratio", "8", "--out", "{out}/g.json"], {}, r"none.pt does not exist"),
    ("mp-sensitivity-in-missing", ["mixed_precision.py", "--sensitivity-in", "{case}/s.json", "--model", "{fp32}",
                                   "--budget-ratio", "8", "--out", "{out}/g.json"], {}, r"s.json"),
    ("mp-budget-below-space", ["mixed_precision.py", "--sensitivity-in", "{case}/s.json", "--model", "{fp32}",
                               "--budget-bytes", "10", "--out", "{out}/g.json"], {"s.json": "{sens}"}, r"budget"),
    # run_experiments.py
    ("runner-config-missing", ["run_experiments.py", "--config", "{case}/none.yaml"], {}, r"none.yaml"),
    ("runner-no-systems", _runner(), {"config.yaml": "data_dir: {data}\n"}, r"missing required key 'systems'"),
    ("runner-top-level-typo", _runner(), {"config.yaml": RUNNER_OK + "retrain_confg: x.yaml\n"},
     r"unknown key.*retrain_confg"),
    ("runner-system-typo", _runner(), {"config.yaml": RUNNER_OK + "  - {name: u4, kind: uniform, bitz: 4}\n"},
     r"unknown key.*bitz"),
    ("runner-kind", _runner(), {"config.yaml": RUNNER_OK + "  - {name: x, kind: magic}\n"}, r"kind must be one of"),
    ("runner-duplicate-name", _runner(), {"config.yaml": RUNNER_OK + "  - {name: fp32, kind: fp32}\n"},
     r"duplicate system name"),
    ("runner-budget-ratio-0", _runner(), {"config.yaml": RUNNER_OK + "  - {name: n, kind: nas, budget_ratio: 0}\n"},
     r"budget_ratio must be a finite number >= 1, got 0"),
    ("runner-budget-ratio-nan", _runner(),
     {"config.yaml": RUNNER_OK + "  - {name: n, kind: kl, budget_ratio: .nan}\n"}, r"budget_ratio"),
    ("runner-budget-bytes-negative", _runner(),
     {"config.yaml": RUNNER_OK + "  - {name: n, kind: kl, budget_bytes: -1}\n"}, r"budget_bytes"),
    ("runner-only-unknown", _runner("--only", "nosuch"), {"config.yaml": RUNNER_OK}, r"no system\(s\) \['nosuch'\]"),
    # prepare_data.py
    ("prepare-kaldi-missing", ["prepare_data.py", "--corpus", "kaldi", "--data-dir", "{case}/none", "--out",
                               "{out}"], {}, r"none"),
]


@pytest.fixture(scope="module")
def world(tiny_corpus, small_train_config, tmp_path_factory):
    """Shared inputs: the tiny corpus, one without cuts, a 2-step fp32 model, that model with a NaN, a
    sensitivity table for it, and a graph cache."""
    import shutil

    import torch

    base = tmp_path_factory.mktemp("fuzz")
    fp32 = base / "fp32"
    run_cli(["retrain.py", "--data-dir", tiny_corpus, "--config", small_train_config, "--max-steps", 2,
             "--no-progress", "--out", fp32])
    obj = torch.load(fp32 / "model.pt", weights_only=True)
    name = next(k for k in obj["state_dict"] if k.endswith("running_var"))
    obj["state_dict"][name][0] = float("nan")
    torch.save(obj, base / "nan_model.pt")
    nocuts = base / "nocuts"
    shutil.copytree(tiny_corpus, nocuts)
    (nocuts / "cuts_train.jsonl.gz").unlink()
    from search_spaces.space import load_search_space

    space = load_search_space("tdnnf_demo")
    sens = {"method": "kl", "sensitivity": {l.name: {str(b): 1.0 / b for b in l.bits} for l in space.layers}}
    return {"data": str(tiny_corpus), "fp32": str(fp32 / "model.pt"), "nanmodel": str(base / "nan_model.pt"),
            "nocuts": str(nocuts), "graphs": str(base / "graphs"), "sens": json.dumps(sens), "root": base}


def _fill(text: str, subs) -> str:
    for k, v in subs.items():
        text = text.replace("{" + k + "}", v)
    return text


def _write_input(path, text, subs):
    if text == EVIL:
        import torch

        class Evil:
            def __reduce__(self):
                return (os.system, ("echo pwned",))

        torch.save({"x": Evil()}, path)
    elif text == CORRUPT:
        path.write_bytes(bytes(range(256)) * 4)
    else:
        path.write_text(_fill(text, subs))


def run_case(argv, files, world, case_dir):
    case_dir.mkdir(parents=True, exist_ok=True)
    subs = {k: v for k, v in world.items() if isinstance(v, str)}
    subs.update(case=str(case_dir), out=str(case_dir / "out"), yaml=str(case_dir / "config.yaml"))
    for name, text in files.items():
        _write_input(case_dir / name, text, subs)
    args = [_fill(a, subs) for a in argv]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable] + args, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)


def assert_clear_error(r, pattern):
    assert r.returncode == 2, f"exit {r.returncode}, expected 2:\n{r.stderr[-3000:]}"
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    last = [l for l in r.stderr.splitlines() if l.strip()][-1]
    assert re.match(r"^(error: |\S+: error: )", last), f"last line is not a one-line error: {last!r}"
    assert re.search(pattern, last), f"{pattern!r} not in {last!r}"


@pytest.mark.parametrize("case_id,argv,files,pattern", ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
def test_bad_input_is_a_clear_error(case_id, argv, files, pattern, world, tmp_path):
    r = run_case(argv, files, world, tmp_path / "case")
    assert_clear_error(r, pattern)
    if argv[0] in ("retrain.py", "train_search.py"):
        assert not (tmp_path / "case" / "out").exists(), "a failed run created its --out"


def test_debug_flag_shows_the_traceback(world, tmp_path):
    r = run_case(_retrain("--config", "{yaml}", "--debug"), {"config.yaml": "quant: {trainr: admm}\n"}, world,
                 tmp_path / "case")
    assert r.returncode == 2 and "Traceback" in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: ")


def _snapshot(d):
    return {str(p.relative_to(d)): hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*"))
            if p.is_file()}


@pytest.mark.parametrize("extra", [["--uniform-bits", "4"], ["--uniform-bits", "2"], ["--seed", "7"],
                                   ["--init-from", "{fp32}"]], ids=["u4", "u2", "seed", "init-from"])
def test_resume_of_another_run_is_a_refusal(extra, world, tmp_path):
    out = world["root"] / "fp32"  # the fp32 run of the fixture
    before = _snapshot(out)
    argv = ["retrain.py", "--data-dir", "{data}", "--out", str(out), "--max-steps", "3", "--no-progress",
            "--resume", *extra]
    r = run_case(argv, {}, world, tmp_path / "case")
    assert_clear_error(r, r"refusing to --resume .*: it holds a different run")
    assert _snapshot(out) == before


def test_nan_test_utterance_is_a_counted_skip(world, tmp_path):
    from pathlib import Path

    data = tmp_path / "data"
    bad = corpus_with_nan_features(Path(world["data"]), data, "test", num_cuts=2)
    r = run_case(_decode("--model", "{fp32}", "--data-dir", str(data)), {}, world, tmp_path / "case")
    assert r.returncode == 0, r.stderr[-3000:]
    w = json.loads((tmp_path / "case" / "out" / "wer.json").read_text())
    assert w["num_failed"] == 2 and [f["id"] for f in w["failed_utterances"]] == sorted(bad)
    assert all(f"utterance {b}: non-finite features" in r.stderr for b in bad)
    assert w["sentences"] == 8  # every utterance scored


def test_budget_flags_are_one_name_everywhere_with_deprecated_aliases(capsys):
    """--budget-bytes / --budget-ratio in every CLI; the older spellings set the same value with a warning."""
    import argparse

    from training.cli import add_budget_args, resolve_budget
    p = argparse.ArgumentParser()
    add_budget_args(p, default_ratio=8.0)
    assert resolve_budget(p.parse_args([]), 800.0, default_ratio=8.0) == 100.0
    assert resolve_budget(p.parse_args(["--budget-ratio", "4"]), 800.0) == 200.0
    assert resolve_budget(p.parse_args(["--budget-bytes", "123"]), 800.0) == 123.0
    assert capsys.readouterr().err == ""
    for old, want in ((["--target-ratio", "4"], 200.0), (["--compression", "4"], 200.0),
                      (["--target-bytes", "123"], 123.0), (["--target-mb", "0.0001"], 100.0)):
        assert resolve_budget(p.parse_args(old), 800.0) == pytest.approx(want)
        assert f"{old[0]} is deprecated" in capsys.readouterr().err
    assert resolve_budget(p.parse_args(["--budget-ratio", "0.25"]), 800.0) == 200.0  # old fraction reading
    assert "deprecated" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        p.parse_args(["--budget-ratio", "4", "--target-bytes", "5"])  # one budget only
