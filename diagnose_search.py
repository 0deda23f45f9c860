#!/usr/bin/env python
"""Diagnostics that say whether the search sees anything (each writes a JSON file and prints a table).

    python diagnose_search.py quant-error --model exp/demo/fp32/model.pt --space tdnnf_demo --out q.json
        relative weight error ||Q_b(W) - W||^2 / ||W||^2 per bit-width and scale mode, per genotype layer
        and over the whole model (it must fall with the bit-width);
    python diagnose_search.py slicing --model exp/demo/fp32/model.pt --data-dir data/synth_demo --out s.json
        dev LF-MMI objective of the fp32 model sliced to smaller bottlenecks (every TDNN-F layer at d),
        with its bottleneck units unordered, permuted by energy and PCA-rotated (models.bottleneck_order);
    python diagnose_search.py ranking --search exp/search_nopen --sensitivity kl.sensitivity.json --out r.json
        Spearman correlation between the per-layer preference for low bits of a search run without the
        size penalty and a KL/Hessian sensitivity ranking (does the search's task signal see what KL sees?);
    python diagnose_search.py oneshot --search exp/paper_demo/nas_r8/search --data-dir data/synth_demo \
            --systems exp/paper_demo/* --out o.json
        for every finished system (genotype.json + decode_dev/wer.json): the dev LF-MMI objective of its
        subnet with the supernet's inherited weights (BatchNorm statistics recalibrated on training
        batches) against its retrained dev WER (the mean over its fine-tunings: the system's own and
        those in its seed<k>/ dirs, run_experiments.py's seeds); Kendall's tau and Spearman's rho between
        the two rankings (does the supernet rank architectures the way retraining does?).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch

from models.bottleneck_order import order_bottlenecks_
from models.layout import copy_weights_to_bottlenecks
from models.quantizers import QUANTIZED_BITS, SCALE_MODES, fake_quant
from models.tdnnf import TDNNF
from search_spaces.genotype import Genotype
from search_spaces.space import load_search_space
from supernet.network import SuperNet
from training import checkpoint as ckpt
from training.cli import HelpFormatter, add_debug_flag, run_main
from training.evaluate import Evaluator
from training.experiment import config_section, lfmmi_options, load_corpus, load_sections, make_batches
from training.model_io import load_model_file

log = logging.getLogger("diagnose_search")


def quant_error(args) -> dict:
    model = load_model_file(args.model)
    space = load_search_space(args.space, num_pdfs=model.cfg.num_pdfs)
    params = model.weight_params(include_xent=False)
    bits_list = list(QUANTIZED_BITS)
    out = {"model": str(args.model), "bits": bits_list, "per_layer": {}, "total": {}}
    for mode in SCALE_MODES:
        num = {b: 0.0 for b in bits_list}
        den = 0.0
        for l in space.layers:
            row = {}
            ln = {b: 0.0 for b in bits_list}
            ld = 0.0
            for w in l.weights:
                W = params[w].detach()
                ld += float(W.square().sum())
                for b in bits_list:
                    ln[b] += float((fake_quant(W, b, model.cfg.quant_per_channel, mode) - W).square().sum())
            for b in bits_list:
                row[b] = ln[b] / ld
                num[b] += ln[b]
            den += ld
            out["per_layer"].setdefault(l.name, {})[mode] = row
        out["total"][mode] = {b: num[b] / den for b in bits_list}
    print("relative squared weight error (whole model):")
    print("scale    " + "  ".join(f"{b:>2d}-bit  " for b in bits_list))
    for mode, row in out["total"].items():
        print(f"{mode:8s} " + "  ".join(f"{row[b]:.5f}" for b in bits_list))
    out["monotone"] = {m: all(r[a] > r[b] for a, b in zip(bits_list, bits_list[1:])) for m, r in out["total"].items()}
    return out


def slicing(args) -> dict:
    import copy

    torch.set_num_threads(max(1, torch.get_num_threads()))
    corpus = load_corpus(args.data_dir)
    cfg = load_sections(args.config, ("train", "lfmmi", "quant", "distill"))
    config_section(args.config, lfmmi_options, cfg.get("lfmmi"))
    ev = Evaluator(corpus, cfg.get("lfmmi"))
    src = load_model_file(args.model)
    out = {"model": str(args.model), "split": args.split, "full": ev.objf(src, args.split)["objf_per_frame"],
           "sliced": {}}
    print(f"full rank: dev objf/frame {out['full']:.4f}")
    for method in ("none", "energy", "pca"):
        ordered = copy.deepcopy(src)
        order_bottlenecks_(ordered, method)
        for d in args.dims:
            net = TDNNF(src.cfg.replace(bottleneck_dims=[min(d, r) for r in src.cfg.bottleneck_dims]))
            copy_weights_to_bottlenecks(net, ordered.state_dict())
            v = ev.objf(net, args.split)["objf_per_frame"]
            out["sliced"].setdefault(method, {})[d] = v
            print(f"order {method:6s} bottleneck {d:3d}: {args.split} objf/frame {v:.4f}")
    return out


def _ranks(x) -> np.ndarray:
    """Average ranks (1-based; ties share their mean rank)."""
    x = np.asarray(x, dtype=float)
    order = np.argsort(x, kind="stable")
    r = np.empty(len(x))
    r[order] = np.arange(1, len(x) + 1)
    for v in np.unique(x):
        m = x == v
        r[m] = r[m].mean()
    return r


def spearman(a, b) -> float:
    """Spearman's rank correlation (Pearson on average ranks); NaN when either side is constant."""
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = float(np.sqrt((ra ** 2).sum() * (rb ** 2).sum()))
    return float((ra * rb).sum() / den) if den > 0 else float("nan")


def ranking(args) -> dict:
    g = json.loads((Path(args.search) / "arch_probs.json").read_text())
    sens = json.loads(Path(args.sensitivity).read_text())
    table = sens.get("sensitivity", sens)
    layers = [l for l in g["layers"] if l["name"] in table]
    # preference for low bits: the probability mass below the layer's highest candidate, weighted by
    # how much lower (1 - bits/max): high = the search would cut this layer's precision
    pref, cost = [], []
    for l in layers:
        bits = [int(b) for b in l["bits"]]
        hi = max(bits)
        pref.append(sum(p * (1 - b / hi) for b, p in zip(bits, l["bit_probs"])))
        row = {int(b): float(v) for b, v in table[l["name"]].items()}
        lo = min(row)
        cost.append(row[lo])  # sensitivity of the layer at its lowest bit-width
    rho = spearman(pref, [-c for c in cost])
    out = {"layers": [l["name"] for l in layers], "search_low_bit_preference": pref,
           "sensitivity_at_lowest_bits": cost, "spearman": rho}
    print(f"Spearman(search preference for low bits, -sensitivity at lowest bits) = {rho:.3f} "
          f"over {len(layers)} layers")
    return out


def kendall_tau(a, b) -> float:
    """Kendall's tau-b between two sequences (ties handled as in tau-b); NaN when undefined."""
    import math

    n = len(a)
    conc = disc = ta = tb = 0
    for i in range(n):
        for j in range(i + 1, n):
            da, db = a[i] - a[j], b[i] - b[j]
            if da == 0 and db == 0:
                continue
            if da == 0:
                ta += 1
            elif db == 0:
                tb += 1
            elif (da > 0) == (db > 0):
                conc += 1
            else:
                disc += 1
    den = math.sqrt((conc + disc + ta) * (conc + disc + tb))
    return (conc - disc) / den if den > 0 else float("nan")


def retrained_dev_wers(d: Path) -> list:
    """Dev WER (%) of each fine-tuning of the run_experiments.py system in ``d``: its own
    (``decode_dev/wer.json``), then those of its ``seed<k>/`` dirs in seed order."""
    seeds = sorted((int(p.name[4:]), p) for p in d.glob("seed*") if p.name[4:].isdigit()
                   and (p / "decode_dev" / "wer.json").is_file())
    files = [d / "decode_dev" / "wer.json"] + [p / "decode_dev" / "wer.json" for _, p in seeds]
    return [float(json.loads(f.read_text())["wer"]) for f in files]


def oneshot(args) -> dict:
    corpus = load_corpus(args.data_dir)
    cfg = load_sections(args.config, ("train", "lfmmi", "quant", "search", "distill"))
    config_section(args.config, lfmmi_options, cfg.get("lfmmi"))
    ev = Evaluator(corpus, cfg.get("lfmmi"))
    sdir = Path(args.search)
    scfg = json.loads((sdir / "search_config.json").read_text())
    space = load_search_space(scfg["space"], num_pdfs=corpus.num_pdfs)
    if not scfg.get("bottleneck_search", True):
        space = space.bits_only()
    sup = SuperNet.from_space(space, corpus.num_pdfs)
    sup.load_state_dict(ckpt.load(sdir / "checkpoint.pt")["model"])
    calib = make_batches(corpus.cuts("train"), corpus, 300.0, True, 0)
    rows, skipped = [], []
    for d in sorted(Path(p) for p in args.systems):
        gf, wf = d / "genotype.json", d / "decode_dev" / "wer.json"
        if not (gf.is_file() and wf.is_file()):
            continue
        try:
            g = Genotype.load(str(gf), space)
            net = sup.export_subnet(g)
        except Exception as e:  # a genotype outside this supernet's space (e.g. bits-only vs low-rank)
            skipped.append({"system": d.name, "reason": str(e)})
            continue
        if all(l.bits == 32 for l in g.layers):
            continue
        for m in net.modules():  # recalibrate BatchNorm: cumulative statistics of this subnet
            if isinstance(m, torch.nn.BatchNorm1d):
                m.reset_running_stats()
                m.momentum = None
        net.train()
        net.dropout_p = 0.0
        with torch.no_grad():
            for i, b in enumerate(calib.epoch(0)):
                if i >= args.bn_batches:
                    break
                net(b["feats"], b["lengths"])
        objf = ev.objf(net, "dev")["objf_per_frame"]
        wers = retrained_dev_wers(d)
        wer = sum(wers) / len(wers)
        rows.append({"system": d.name, "inherited_dev_objf": objf, "retrained_dev_wer": wer,
                     "retrained_dev_wer_runs": wers, "bytes": g.size_bytes(space)})
        print(f"{d.name:16s} {rows[-1]['bytes']:>9,d} bytes  inherited dev objf {objf:8.4f}  "
              f"retrained dev WER {wer:6.2f} ({len(wers)} run{'s' if len(wers) > 1 else ''})")
    loss = [-r["inherited_dev_objf"] for r in rows]
    wer = [r["retrained_dev_wer"] for r in rows]
    out = {"search": str(sdir), "bn_batches": args.bn_batches, "systems": rows, "skipped": skipped,
           "kendall_tau": kendall_tau(loss, wer), "spearman": spearman(loss, wer)}
    print(f"{len(rows)} genotypes: Kendall tau {out['kendall_tau']:.3f}, Spearman {out['spearman']:.3f} "
          f"(inherited-weight dev loss vs retrained dev WER; 1 = same ranking)")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_debug_flag(p)  # before the sub-command: diagnose_search.py --debug slicing ...
    sub = p.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("quant-error", formatter_class=HelpFormatter, help="relative weight error per bit-width")
    q.add_argument("--model", required=True)
    q.add_argument("--space", default="tdnnf_demo")
    s = sub.add_parser("slicing", formatter_class=HelpFormatter, help="dev objective of the fp32 model sliced to smaller bottlenecks")
    s.add_argument("--model", required=True)
    s.add_argument("--data-dir", required=True)
    s.add_argument("--config", default=None, help="YAML with an lfmmi section (default: built-in defaults)")
    s.add_argument("--split", default="dev")
    s.add_argument("--dims", type=int, nargs="+", default=[32, 48])
    r = sub.add_parser("ranking", formatter_class=HelpFormatter, help="penalty-free search vs a sensitivity ranking")
    r.add_argument("--search", required=True, help="train_search.py output dir (arch_probs.json)")
    r.add_argument("--sensitivity", required=True, help="*.sensitivity.json of mixed_precision.py")
    o = sub.add_parser("oneshot", formatter_class=HelpFormatter, help="inherited-weight dev loss vs retrained dev WER")
    o.add_argument("--search", required=True, help="train_search.py output dir (checkpoint.pt)")
    o.add_argument("--data-dir", required=True)
    o.add_argument("--config", default=None, help="YAML with an lfmmi section")
    o.add_argument("--systems", nargs="+", required=True, help="system dirs of run_experiments.py")
    o.add_argument("--bn-batches", type=int, default=8, help="training batches for BatchNorm recalibration")
    for x in (q, s, r, o):
        x.add_argument("--out", required=True, help="JSON result")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    res = {"quant-error": quant_error, "slicing": slicing, "ranking": ranking, "oneshot": oneshot}[args.cmd](args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
