"""Experiment configs: unknown system keys are refused; genotype_from copies another system's genotype;
a per-system reference changes what the WER change is tested against."""
import json
from pathlib import Path

import pytest

import run_experiments as rx


def write(tmp_path, systems, **top):
    p = tmp_path / "exp.yaml"
    p.write_text(json.dumps({"data_dir": "d", "systems": systems, **top}))  # JSON is YAML
    return p


def record_commands(monkeypatch):
    """Replace the runner's ``run`` by a recorder: ``{"<system>:<script>": argv}``; a search writes an
    empty genotype.json."""
    cmds = {}

    def fake_run(cmd, log_file, *args):
        cmds[log_file.parent.name + ":" + Path(cmd[1]).name] = cmd
        if Path(cmd[1]).name == "train_search.py":
            out = Path(cmd[cmd.index("--out") + 1])
            out.mkdir(parents=True, exist_ok=True)
            (out / "genotype.json").write_text("{}")

    monkeypatch.setattr(rx, "run", fake_run)
    return cmds


def test_unknown_system_key_is_refused(tmp_path):
    p = write(tmp_path, [{"name": "fp32", "kind": "fp32"}, {"name": "u4", "kind": "uniform", "bits": 4,
                                                              "retrain_confg": "x.yaml"}])
    with pytest.raises(ValueError, match="u4: unknown key\\(s\\) \\['retrain_confg'\\]"):
        rx.load_config(p)


def test_genotype_from_copies_the_genotype(tmp_path):
    cfg = rx.load_config(write(tmp_path, [{"name": "fp32", "kind": "fp32"},
                                          {"name": "kl", "kind": "kl", "budget_ratio": 8},
                                          {"name": "kl_e3", "kind": "kl", "budget_ratio": 8, "genotype_from": "kl"}]))
    runner = rx.Runner(cfg, tmp_path / "exp", "cpu")
    with pytest.raises(RuntimeError, match="genotype_from 'kl' has no genotype yet"):
        runner.genotype(cfg.systems[2])
    (tmp_path / "exp" / "kl").mkdir(parents=True)
    (tmp_path / "exp" / "kl" / "genotype_in.json").write_text('{"version": 1}')
    g = runner.genotype(cfg.systems[2])
    assert g == tmp_path / "exp" / "kl_e3" / "genotype_in.json" and g.read_text() == '{"version": 1}'


def test_per_system_reference(tmp_path):
    cfg = rx.load_config(write(tmp_path, [{"name": "fp32", "kind": "fp32"}, {"name": "a", "kind": "fp32"},
                                          {"name": "b", "kind": "fp32", "reference": "a"}]))
    runner = rx.Runner(cfg, tmp_path / "exp", "cpu")
    refs = ["A B C D", "E F G H", "I J"]
    hyps = {"fp32": refs, "a": ["A B C X", "E F G H", "I J"], "b": ["A B C X", "E F G H", "I J"]}
    for name, h in hyps.items():
        d = tmp_path / "exp" / name / "decode_dev"
        d.mkdir(parents=True)
        (d / "refs.txt").write_text("".join(f"u{i} {r}\n" for i, r in enumerate(refs)))
        (d / "hyps.txt").write_text("".join(f"u{i} {x}\n" for i, x in enumerate(h)))
    assert runner.report.significance("b", "dev", "a")[2] == pytest.approx(0.0)  # same hyps as its reference
    assert runner.report.significance("b", "dev")[2] == pytest.approx(10.0)       # 1 error in 10 words vs fp32


def test_distill_from_fp32_reaches_search_and_fine_tuning_but_not_fp32(tmp_path, monkeypatch):
    cfg = rx.load_config(write(tmp_path, [{"name": "fp32", "kind": "fp32"},
                                          {"name": "u4", "kind": "uniform", "bits": 4},
                                          {"name": "u4_plain", "kind": "uniform", "bits": 4, "distill_from_fp32": False},
                                          {"name": "nas", "kind": "nas", "budget_bytes": 1000}],
                               distill_from_fp32=True))
    runner = rx.Runner(cfg, tmp_path / "exp", "cpu")
    cmds = record_commands(monkeypatch)
    for s in cfg.systems:
        runner.retrain(s, runner.genotype(s))
    teacher = str(runner.exp.fp32_model())

    def teacher_of(key):
        c = cmds[key]
        return c[c.index("--distill-from") + 1] if "--distill-from" in c else None

    assert teacher_of("fp32:retrain.py") is None
    assert teacher_of("u4:retrain.py") == teacher
    assert teacher_of("u4_plain:retrain.py") is None
    assert teacher_of("nas:train_search.py") == teacher and teacher_of("nas:retrain.py") == teacher


def test_finetune_from_search_starts_from_the_search_subnet(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="u4 \\(uniform\\): finetune_from_search needs kind nas"):
        rx.load_config(write(tmp_path, [{"name": "fp32", "kind": "fp32"},
                                        {"name": "u4", "kind": "uniform", "bits": 4, "finetune_from_search": True}]))
    cfg = rx.load_config(write(tmp_path, [{"name": "fp32", "kind": "fp32"},
                                          {"name": "nas", "kind": "nas", "budget_bytes": 1000},
                                          {"name": "nas_si", "kind": "nas", "budget_bytes": 1000,
                                           "genotype_from": "nas", "finetune_from_search": True}]))
    runner = rx.Runner(cfg, tmp_path / "exp", "cpu")
    cmds = record_commands(monkeypatch)
    runner.retrain(cfg.systems[1], runner.genotype(cfg.systems[1]))
    with pytest.raises(RuntimeError, match="nas_si: finetune_from_search needs .*nas/search/subnet.pt"):
        runner.retrain(cfg.systems[2], runner.genotype(cfg.systems[2]))
    (tmp_path / "exp" / "nas" / "search" / "subnet.pt").write_text("")
    runner.retrain(cfg.systems[2], runner.genotype(cfg.systems[2]))
    plain, si = cmds["nas:retrain.py"], cmds["nas_si:retrain.py"]
    assert plain[plain.index("--init-from") + 1] == str(runner.exp.fp32_model())
    assert si[si.index("--init-from") + 1] == str(tmp_path / "exp" / "nas" / "search" / "subnet.pt")
    assert si[si.index("--bottleneck-order") + 1] == "none" and "--bottleneck-order" not in plain
    assert "nas_si:train_search.py" not in cmds  # the genotype and the weights come from nas's search


def test_real_speech_set_is_decoded_tabled_and_counts_for_lossless(tmp_path):
    p = tmp_path / "exp.yaml"
    base = {"data_dir": "d", "decode_args": ["--acoustic-scale", "1.2"],
            "systems": [{"name": "fp32", "kind": "fp32"}, {"name": "u4", "kind": "uniform", "bits": 4}]}
    p.write_text(json.dumps({**base, "real_speech": {"data_dir": "r", "lm_txt": "x"}}))
    with pytest.raises(ValueError, match="real_speech: unknown key\\(s\\) \\['lm_txt'\\]"):
        rx.load_config(p)
    p.write_text(json.dumps({**base, "real_speech": {"data_dir": "r", "lm_text": "r/lm_prompts.txt"}}))
    cfg = rx.load_config(p)
    runner = rx.Runner(cfg, tmp_path / "exp", "cpu")
    assert runner.exp.eval_sets == ["dev", "test", "real"]
    assert runner.decode_command("real") == ["--data-dir", "r", "--split", "test", "--lm-text", "r/lm_prompts.txt",
                                             "--acoustic-scale", "1.2"]
    assert runner.decode_command("dev") == ["--data-dir", "d", "--split", "dev", "--acoustic-scale", "1.2"]
    # lossless needs every evaluated set, the real one included
    d = {"delta_dev": 1.0, "delta_test": 1.0, "delta_real": 1.0}
    assert runner.report.lossless({"p_dev": 0.5, "p_test": 0.2, "p_real": 0.3, **d})
    assert not runner.report.lossless({"p_dev": 0.5, "p_test": 0.2, "p_real": 0.01, **d})
    # a significant decrease is no loss: lossless means no significant WER increase
    assert runner.report.lossless({"p_dev": 0.5, "p_test": 0.2, "p_real": 0.01, **d, "delta_real": -4.0})
    # a system is finished only once the real set is decoded too
    d = tmp_path / "exp" / "u4"
    for sp in ("dev", "test"):
        (d / f"decode_{sp}").mkdir(parents=True)
        (d / f"decode_{sp}" / "wer.json").write_text("{}")
    (d / "size.json").write_text("{}")
    assert not runner.exp.finished(cfg.systems[1])
    (d / "decode_real").mkdir()
    (d / "decode_real" / "wer.json").write_text("{}")
    assert runner.exp.finished(cfg.systems[1])


def test_onnx_system_needs_an_earlier_source_system(tmp_path):
    with pytest.raises(ValueError, match="onnx_from naming a system listed before it"):
        rx.load_config(write(tmp_path, [{"name": "fp32", "kind": "fp32"},
                                        {"name": "u4_onnx", "kind": "onnx", "onnx_from": "u4"},
                                        {"name": "u4", "kind": "uniform", "bits": 4}]))
    with pytest.raises(ValueError, match="onnx_from"):
        rx.load_config(write(tmp_path, [{"name": "fp32", "kind": "fp32"}, {"name": "x", "kind": "onnx"}]))
    cfg = rx.load_config(write(tmp_path, [{"name": "fp32", "kind": "fp32"}, {"name": "u4", "kind": "uniform", "bits": 4},
                                          {"name": "u4_onnx", "kind": "onnx", "onnx_from": "u4"}]))
    runner = rx.Runner(cfg, tmp_path / "exp", "cuda")
    s = cfg.systems[2]
    assert runner.genotype(s) is None and not runner.needs_fp32(s)
    with pytest.raises(RuntimeError, match="onnx_from 'u4' has no model yet"):
        runner.retrain(s, None)


def test_compare_prints_pairwise_tests_of_finished_systems(tmp_path, capsys):
    cfg = rx.load_config(write(tmp_path, [{"name": "fp32", "kind": "fp32"}, {"name": "a", "kind": "fp32"},
                                          {"name": "b", "kind": "fp32"}]))
    cfg.splits = ["dev"]
    runner = rx.Runner(cfg, tmp_path / "exp", "cpu")
    refs = ["A B C D", "E F G H", "I J"]
    for name, h in {"fp32": refs, "a": ["A B C X", "E F G H", "I J"], "b": ["A B C D", "E F G H", "I X"]}.items():
        d = tmp_path / "exp" / name / "decode_dev"
        d.mkdir(parents=True)
        (d / "refs.txt").write_text("".join(f"u{i} {r}\n" for i, r in enumerate(refs)))
        (d / "hyps.txt").write_text("".join(f"u{i} {x}\n" for i, x in enumerate(h)))
        (d / "wer.json").write_text("{}")
        (d.parent / "size.json").write_text("{}")
    runner.report.print_comparisons([("a", "fp32"), ("a", "b")])
    rows = capsys.readouterr().out.strip().splitlines()
    assert rows[0].startswith("| system | against | set |") and len(rows) == 4
    assert rows[2].startswith("| a | fp32 | dev | +10.00 |") and rows[3].startswith("| a | b | dev | +0.00 |")
    with pytest.raises(ValueError, match="finished systems"):
        runner.report.print_comparisons([("a", "nope")])


LM_SECTION = {"systems": [{"name": "fp32", "kind": "fp32"}, {"name": "u2", "kind": "uniform", "bits": 2},
                          {"name": "kl", "kind": "kl", "budget_ratio": 16},
                          {"name": "nas", "kind": "nas", "budget_ratio": 16}],
              "acoustic": ["fp32", "u4"], "reference": ["fp32", "fp32"], "rescore_args": ["--nbest", 5]}


def lm_config(tmp_path, lm):
    p = tmp_path / "exp.yaml"
    p.write_text(json.dumps({"data_dir": "d", "systems": [{"name": "fp32", "kind": "fp32"},
                                                          {"name": "u4", "kind": "uniform", "bits": 4}], "lm": lm}))
    return p


@pytest.mark.parametrize("change, message", [
    ({"systems": [{"name": "u2", "kind": "uniform", "bits": 2}]}, "exactly one fp32 LM, listed first"),
    ({"acoustic": ["nope"]}, "lm.acoustic must list systems"),
    ({"reference": ["u4", "nope"]}, "lm.reference must be"),
    ({"rescore_arg": []}, "lm: unknown key"),
    ({"systems": [{"name": "fp32", "kind": "fp32"}, {"name": "k", "kind": "kl"}]}, "needs budget_ratio or budget_bytes"),
    ({"systems": [{"name": "fp32", "kind": "fp32"}, {"name": "u", "kind": "uniform"}]}, "needs bits"),
    ({"systems": [{"name": "fp32", "kind": "fp32"}, {"name": "u", "kind": "uniform", "bits": 2, "bit": 1}]},
     "unknown key"),
])
def test_lm_section_errors_name_the_problem(tmp_path, change, message):
    with pytest.raises(ValueError, match=message):
        rx.load_config(lm_config(tmp_path, dict(LM_SECTION, **change)))


def test_lm_part_runs_train_quantize_rescore_and_writes_the_system_table(tmp_path, monkeypatch):
    """The commands of the LM part (fp32 LM trained, others quantized from it; the fp32 LM's rescoring
    decodes, the others reuse its n-best lists) and the system table's arithmetic and significance."""
    cfg = rx.load_config(lm_config(tmp_path, LM_SECTION))
    runner = rx.Runner(cfg, tmp_path / "exp", "cpu")
    refs = ["A B C D", "E F G H", "I J"]
    hyps = {"fp32": refs, "u2": ["A B C X", "E F G H", "I J"], "kl": refs, "nas": refs}
    am_bytes = {"fp32": 1000, "u4": 150}
    lm_bytes = {"fp32": 4000, "u2": 300, "kl": 250, "nas": 240}
    for am, n in am_bytes.items():  # finished acoustic systems
        d = tmp_path / "exp" / am
        d.mkdir(parents=True)
        (d / "size.json").write_text(json.dumps({"payload_bytes": n, "fp32_bytes": 1000, "file_bytes": n + 10}))
        for sp in ("dev", "test"):
            (d / f"decode_{sp}").mkdir()
            (d / f"decode_{sp}" / "wer.json").write_text("{}")
    cmds = []

    def fake_run(cmd, log_file, *args):
        cmds.append([str(c) for c in cmd])
        out = Path(cmd[cmd.index("--out") + 1])
        out.mkdir(parents=True, exist_ok=True)
        if Path(cmd[1]).name == "search_lm.py":
            (out / "lm_bits.json").write_text("{}")
            return
        if Path(cmd[1]).name in ("train_lm.py", "quantize_lm.py"):
            n = lm_bytes[out.name]
            (out / "size.json").write_text(json.dumps({"bytes": n, "bits_per_weight": 32 * n / 4000}))
            (out / "ppl.json").write_text("{}")
            # the model file: its payload plus 100 bytes of header and vocabulary
            (out / ("model.pt" if out.name == "fp32" else "model.safetensors")).write_bytes(b"x" * (n + 100))
            return
        lm = Path(cmd[cmd.index("--lm") + 1]).parent.name
        rep = {"weights": {"lm_weight": 1.0, "alpha": 0.5}}
        for sp in ("dev", "test"):
            rep[sp] = {"wer": {k: {"wer": 1.0} for k in ("first_pass", "rescored", "oracle")}}
            d = out / sp / "rescored"
            d.mkdir(parents=True)
            (d / "refs.txt").write_text("".join(f"u{i} {r}\n" for i, r in enumerate(refs)))
            (d / "hyps.txt").write_text("".join(f"u{i} {x}\n" for i, x in enumerate(hyps[lm])))
        (out / "rescore.json").write_text(json.dumps(rep))

    monkeypatch.setattr(rx, "run", fake_run)
    rows = runner.run_lm_part()
    scripts = [(Path(c[1]).name, Path(c[c.index("--out") + 1]).name) for c in cmds]
    assert scripts == [("train_lm.py", "fp32"), ("rescore.py", "rescore_fp32"), ("rescore.py", "rescore_fp32"),
                       ("quantize_lm.py", "u2"), ("rescore.py", "rescore_u2"), ("rescore.py", "rescore_u2"),
                       ("quantize_lm.py", "kl"), ("rescore.py", "rescore_kl"), ("rescore.py", "rescore_kl"),
                       ("search_lm.py", "search"), ("quantize_lm.py", "nas"), ("rescore.py", "rescore_nas"),
                       ("rescore.py", "rescore_nas")]
    by = {(Path(c[1]).name, c[c.index("--out") + 1]): c for c in cmds}
    q = by[("quantize_lm.py", str(tmp_path / "exp" / "lm" / "kl"))]
    assert q[q.index("--init") + 1] == str(tmp_path / "exp" / "lm" / "fp32" / "model.pt")
    assert q[q.index("--budget-ratio") + 1] == "16" and q[q.index("--method") + 1] == "kl"
    first = by[("rescore.py", str(tmp_path / "exp" / "u4" / "rescore_fp32"))]
    assert "--model" in first and "--nbest-from" not in first and first[-2:] == ["--nbest", "5"]
    again = by[("rescore.py", str(tmp_path / "exp" / "u4" / "rescore_u2"))]
    assert "--model" not in again and again[again.index("--nbest-from") + 1] == str(tmp_path / "exp" / "u4" / "rescore_fp32")
    assert again[again.index("--lm") + 1] == str(tmp_path / "exp" / "lm" / "u2" / "model.safetensors")
    row = {(r["am"], r["lm"]): r for r in rows}
    r = row[("u4", "kl")]
    assert r["system_bytes"] == 150 + 250 and r["system_ratio"] == pytest.approx((1000 + 4000) / 400)
    assert r["system_file_bytes"] == 160 + 350 and r["system_file_ratio"] == pytest.approx((1010 + 4100) / 510)
    assert r["delta_test"] == pytest.approx(0.0) and r["p_test"] is not None
    assert row[("u4", "u2")]["delta_lm_dev"] == pytest.approx(10.0)  # 1 error in 10 words vs u4 + fp32 LM
    assert row[("fp32", "fp32")]["p_dev"] is None
    q = by[("quantize_lm.py", str(tmp_path / "exp" / "lm" / "nas"))]
    assert q[q.index("--method") + 1] == "file" and "--budget-ratio" not in q
    assert q[q.index("--bits-from") + 1] == str(tmp_path / "exp" / "lm" / "nas" / "search" / "lm_bits.json")
    s = by[("search_lm.py", str(tmp_path / "exp" / "lm" / "nas" / "search"))]
    assert s[s.index("--budget-ratio") + 1] == "16"
    assert (tmp_path / "exp" / "system_results.md").read_text().count("\n") == 2 + 8
    n = len(cmds)
    runner.run_lm_part()  # finished: nothing is rerun
    assert len(cmds) == n


def test_a_system_may_use_another_space_and_sensitivities_are_reused_only_within_one(tmp_path, monkeypatch):
    cfg = rx.load_config(write(tmp_path, [{"name": "fp32", "kind": "fp32"},
                                          {"name": "kl8", "kind": "kl", "budget_ratio": 8},
                                          {"name": "kl8_b3", "kind": "kl", "budget_ratio": 8, "space": "tdnnf_demo_b3"},
                                          {"name": "kl12_b3", "kind": "kl", "budget_ratio": 12, "space": "tdnnf_demo_b3"},
                                          {"name": "u3", "kind": "uniform", "bits": 3, "space": "tdnnf_demo_b3"}]))
    assert [s.space for s in cfg.systems] == ["tdnnf_demo"] * 2 + ["tdnnf_demo_b3"] * 3
    runner = rx.Runner(cfg, tmp_path / "exp", "cpu")
    (runner.exp.sys_dir("fp32")).mkdir(parents=True)
    (runner.exp.sys_dir("fp32") / "size.json").write_text(json.dumps({"fp32_bytes": 1200}))
    (runner.exp.sys_dir("kl8")).mkdir(parents=True)
    (runner.exp.sys_dir("kl8") / "genotype_in.sensitivity.json").write_text("{}")
    cmds = {}

    def fake_run(cmd, log_file, *args):
        cmds[log_file.parent.name + ":" + Path(cmd[1]).name] = cmd
        if Path(cmd[1]).name == "mixed_precision.py":
            out = Path(cmd[cmd.index("--out") + 1])
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text("{}")
            out.with_suffix(".sensitivity.json").write_text("{}")

    monkeypatch.setattr(rx, "run", fake_run)
    for s in cfg.systems[2:]:
        runner.retrain(s, runner.genotype(s))

    def arg(key, flag):
        c = cmds[key]
        return c[c.index(flag) + 1] if flag in c else None

    assert arg("kl8_b3:mixed_precision.py", "--space") == "tdnnf_demo_b3"
    assert arg("kl8_b3:mixed_precision.py", "--sensitivity-in") is None  # kl8 measured other widths
    assert arg("kl12_b3:mixed_precision.py", "--sensitivity-in").endswith("kl8_b3/genotype_in.sensitivity.json")
    assert arg("u3:retrain.py", "--space") == "tdnnf_demo_b3" and arg("u3:retrain.py", "--uniform-bits") == "3"
    runner.check_spaces()  # tdnnf_demo_b3 extends tdnnf_demo: the same network
    other = rx.Runner(rx.load_config(write(tmp_path, [{"name": "fp32", "kind": "fp32"},
                                                      {"name": "w", "kind": "uniform", "bits": 3, "space": "tdnnf_wide"}])),
                      tmp_path / "exp2", "cpu")
    with pytest.raises(ValueError, match="system w: space 'tdnnf_wide' has another network"):
        other.check_spaces()


def test_inherited_switches_are_resolved_once_and_checked(tmp_path):
    cfg = rx.ExperimentConfig.from_dict(
        {"data_dir": "d", "distill_from_fp32": True,
         "systems": [{"name": "fp32", "kind": "fp32"}, {"name": "u4", "kind": "uniform", "bits": 4},
                     {"name": "u4_nokd", "kind": "uniform", "bits": 4, "distill_from_fp32": False}]})
    s = {x.name: x for x in cfg.systems}
    assert s["u4"].distill_from_fp32 is True and s["u4_nokd"].distill_from_fp32 is False
    assert s["u4"].finetune_from_fp32 is True and s["u4"].search_bottleneck is True
    p = tmp_path / "c.yaml"
    p.write_text("data_dir: d\nsystems:\n  - {name: fp32, kind: fp32}\n"
                 "  - {name: u4, kind: uniform, bits: 4, finetune_from_fp32: 'no'}\n")
    with pytest.raises(ValueError, match=r"c.yaml: system u4: finetune_from_fp32 must be true or false"):
        rx.load_config(p)


@pytest.mark.parametrize("system,message", [
    ({"name": "u", "kind": "uniform"}, r"system u \(uniform\) needs bits"),
    ({"name": "u", "kind": "uniform", "bits": "4"}, r"system u: bits must be an integer, got '4'"),
    ({"name": "u", "kind": "uniform", "bits": 4, "retrain_args": "--epochs 3"}, r"retrain_args must be a list"),
    ({"name": "k", "kind": "kl", "budget_ratio": 0.5}, r"budget_ratio must be a finite number >= 1"),
    ({"name": "u", "kind": "uniform", "bits": 4, "seeds": [1, 1]}, r"seeds must be distinct integers >= 0"),
    ({"name": "u", "kind": "uniform", "bits": 4, "seeds": ["1"]}, r"seeds must be distinct integers >= 0"),
    ({"name": "f", "kind": "fp32", "seeds": [1]}, r"system f \(fp32\): seeds are more fine-tunings"),
])
def test_system_values_are_typed(tmp_path, system, message):
    with pytest.raises(ValueError, match=message):
        rx.load_config(write(tmp_path, [{"name": "fp32", "kind": "fp32"}, system]))


def test_shipped_experiment_configs_load_and_their_spaces_share_one_network():
    import yaml
    from search_spaces.space import load_search_space

    configs = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
    experiments = [p for p in configs if "systems" in (yaml.safe_load(p.read_text()) or {})]
    assert {"demo.yaml", "paper_demo.yaml", "paper_wide.yaml"} <= {p.name for p in experiments}
    for p in experiments:
        cfg = rx.load_config(p)
        base = load_search_space(cfg.space, num_pdfs=80).network
        for s in cfg.systems:  # one fp32 baseline serves every system: same network in every space
            assert load_search_space(s.space, num_pdfs=80).network == base, (p.name, s.name)


def write_decode(d: Path, refs, hyps) -> None:
    d.mkdir(parents=True)
    (d / "refs.txt").write_text("".join(f"u{i} {r}\n" for i, r in enumerate(refs)))
    (d / "hyps.txt").write_text("".join(f"u{i} {x}\n" for i, x in enumerate(hyps)))
    words = sum(len(r.split()) for r in refs)
    errs = sum(sum(a != b for a, b in zip(r.split(), h.split())) for r, h in zip(refs, hyps))  # substitutions only
    (d / "wer.json").write_text(json.dumps({"wer": 100.0 * errs / words}))


def test_seeds_fine_tune_the_genotype_again_and_the_table_gives_the_mean(tmp_path, monkeypatch):
    cfg = rx.load_config(write(tmp_path, [{"name": "fp32", "kind": "fp32"},
                                          {"name": "ref", "kind": "uniform", "bits": 32},
                                          {"name": "kl", "kind": "kl", "budget_ratio": 8, "seeds": [1, 2],
                                           "retrain_args": ["--seed", 7]}],
                               reference="ref", splits=["dev"]))
    runner = rx.Runner(cfg, tmp_path / "exp", "cpu")
    kl = cfg.systems[2]
    exp = tmp_path / "exp"
    (exp / "kl").mkdir(parents=True)
    (exp / "kl" / "genotype_in.json").write_text("{}")
    cmds = []
    monkeypatch.setattr(rx, "run", lambda cmd, log_file, *a: cmds.append((log_file.parent, cmd)))
    runner.retrain(kl, runner.genotype(kl))
    assert [d for d, _ in cmds] == [exp / "kl", exp / "kl" / "seed1", exp / "kl" / "seed2"]
    for d, cmd in cmds:  # the same genotype and start; the run's seed last, over the system's own --seed
        assert cmd[cmd.index("--genotype") + 1] == str(exp / "kl" / "genotype_in.json")
        assert cmd[cmd.index("--out") + 1] == str(d)
        assert cmd[-2:] == (["--seed", "7"] if d.name == "kl" else ["--seed", d.name[4:]])
    # finished only when every run is packed and decoded
    refs = ["A B C D", "E F G H", "I J"]
    write_decode(exp / "ref" / "decode_dev", refs, refs)
    (exp / "ref" / "size.json").write_text("{}")
    runs = {"kl": ["A B C X", "E F G H", "I J"], "kl/seed1": ["A B C X", "E F G Y", "I J"]}
    for name, hyps in runs.items():
        write_decode(exp / name / "decode_dev", refs, hyps)
        (exp / name / "size.json").write_text(json.dumps({"file_bytes": 10, "payload_bytes": 8, "fp32_bytes": 64}))
    (exp / "kl" / "genotype.json").write_text(json.dumps({"layers": [{"bits": 4}]}))
    assert not runner.exp.finished(kl)
    write_decode(exp / "kl" / "seed2" / "decode_dev", refs, ["A B C X", "E F G H", "Z J"])
    (exp / "kl" / "seed2" / "size.json").write_text("{}")
    assert runner.exp.finished(kl)
    r = runner.report.row(kl)
    # 1, 2 and 2 errors in 10 words: the mean WER and the change of the means (the reference makes none)
    assert r["runs"] == 3 and r["wer_dev_runs"] == pytest.approx([10.0, 20.0, 20.0])
    assert r["wer_dev"] == pytest.approx(50 / 3) and r["delta_dev"] == pytest.approx(50 / 3)
    from decoding.significance import compare_run_means
    from decoding.wer import read_text_file

    ref = compare_run_means(read_text_file(str(exp / "ref" / "decode_dev" / "refs.txt")),
                            [read_text_file(str(exp / name / "decode_dev" / "hyps.txt"))
                             for name in ("kl", "kl/seed1", "kl/seed2")],
                            [read_text_file(str(exp / "ref" / "decode_dev" / "hyps.txt"))])
    assert r["p_dev"] == pytest.approx(ref["mapsswe"]["p_value"])
    from runner.report import wer_cell

    assert wer_cell(r, "dev") == "16.67 ±5.77 (3 runs)"


def test_a_search_takes_its_config_and_its_start_from_the_system(tmp_path, monkeypatch):
    for bad, got in (({"kind": "kl", "budget_ratio": 8, "search_from": "fp32"}, "kind 'kl'"),
                     ({"kind": "nas", "budget_ratio": 8, "search_from": "later"}, "search_from 'later'")):
        with pytest.raises(ValueError, match=f"x: search_from needs kind nas and a system listed before it, "
                                             f"got .*{got}"):
            rx.load_config(write(tmp_path, [{"name": "fp32", "kind": "fp32"}, {"name": "x", **bad}]))
    cfg = rx.load_config(write(tmp_path, [{"name": "fp32", "kind": "fp32"},
                                          {"name": "u3", "kind": "uniform", "bits": 3},
                                          {"name": "nas", "kind": "nas", "budget_bytes": 1000},
                                          {"name": "nas_op", "kind": "nas", "budget_bytes": 1000, "search_from": "u3",
                                           "search_config": "frozen.yaml"}], search_config="top.yaml"))
    runner = rx.Runner(cfg, tmp_path / "exp", "cpu")
    cmds = record_commands(monkeypatch)
    runner.genotype(cfg.systems[2])
    with pytest.raises(RuntimeError, match="nas_op: search_from 'u3' has no model yet"):
        runner.genotype(cfg.systems[3])
    (tmp_path / "exp" / "u3").mkdir(parents=True)
    (tmp_path / "exp" / "u3" / "model.pt").write_text("")
    runner.genotype(cfg.systems[3])
    plain, op = cmds["nas:train_search.py"], cmds["nas_op:train_search.py"]
    assert plain[plain.index("--config") + 1] == "top.yaml"
    assert plain[plain.index("--init-from") + 1] == str(runner.exp.fp32_model())
    assert op[op.index("--config") + 1] == "frozen.yaml" and op.count("--config") == 1
    assert op[op.index("--init-from") + 1] == str(tmp_path / "exp" / "u3" / "model.pt")
    assert op.count("--init-from") == 1
