"""Mixed-precision baselines: per-layer bit-widths from KL-divergence or Hessian-trace sensitivity under a
model-size budget (the paper's non-NAS baselines).

    python mixed_precision.py --method kl --model exp/fp32/model.pt --data-dir data/synth_demo \\
        --space tdnnf_demo --budget-ratio 0.125 --out exp/kl/genotype.json [--max-batches 4] [--device cpu]
    python mixed_precision.py --method hessian ... --budget-bytes 400000 --out exp/hawq/genotype.json
    # re-allocate under another budget without measuring again:
    python mixed_precision.py --sensitivity-in exp/kl/genotype.sensitivity.json --model exp/fp32/model.pt \\
        --budget-ratio 10 --out exp/kl_c10/genotype.json

1. Measures ``{layer: {bits: sensitivity}}`` of the float model on held-out batches (the ``--split``, dev
   by default): ``kl`` = mean per-frame KL(P_fp || P_q) of the chain-output posteriors with one layer
   quantized at a time (sensitivity/kl.py); ``hessian`` = HAWQ-V2, Hutchinson trace of the LF-MMI loss
   Hessian per layer / #params * ||Q_b(W) - W||^2 (sensitivity/hessian.py; Hv by finite differences of the
   LF-MMI gradient in output space + double backward through the network, float64 by default).
2. Picks one bit-width per layer minimising the total sensitivity under the budget (multiple-choice
   knapsack over cost-model bytes, sensitivity/allocate.py); the bottlenecks stay the model's.
3. Writes the genotype (``--out``), the sensitivity JSON (``--sensitivity-out``, default
   ``<out>.sensitivity.json`` beside it) and optionally the Pareto frontier (``--frontier-out``).

Budget (the same flags as train_search.py and quantize_lm.py, training.cli.add_budget_args): ``--budget-bytes
N`` (packed bytes) or ``--budget-ratio R`` (a compression factor: fp32 bytes / R). Deprecated spellings:
``--compression`` / ``--target-ratio`` (= ``--budget-ratio``), and ``--budget-ratio`` below 1 read as a
fraction of the fp32 bytes (with a warning). fp32 = the float model of the space's largest network (the project's
fp32 baseline, ``quant.cost_model.fp32_bytes(space.network)``), as train_search.py and retrain.py use.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from models.bottleneck_order import ORDER_METHODS, order_bottlenecks_
from quant.cost_model import fp32_bytes
from search_spaces.space import load_search_space
from sensitivity.allocate import (BudgetError, allocate_bits, fp32_model_bytes, layer_sizes, normalise_table,
                                  pareto_frontier)
from sensitivity.hessian import hessian_sensitivity, lfmmi_closures
from sensitivity.kl import kl_sensitivity
from training.cli import HelpFormatter, add_budget_args, add_debug_flag, number, resolve_budget, run_main
from training.experiment import config_section, lfmmi_options, load_corpus, load_sections, make_batches, make_lfmmi
from training.model_io import load_model_file

log = logging.getLogger("mixed_precision")

_SHAPE_FIELDS = ("feat_dim", "ivector_dim", "tdnn1_dim", "tdnn1_context", "num_layers", "hidden_dim", "time_strides",
                 "prefinal_dim", "prefinal_big_dim", "frame_subsampling_factor")
# the quantizer is the space's (every method uses the same one): a float model takes it on
_QUANT_FIELDS = ("quant_per_channel", "quant_scale")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--method", choices=["kl", "hessian"], help="sensitivity measure (not with --sensitivity-in)")
    p.add_argument("--sensitivity-in", default=None, help="reuse a sensitivity JSON written by this tool")
    p.add_argument("--model", required=True, help="float model.pt (retrain.py) to measure / size")
    p.add_argument("--data-dir", default=None, help="prepared corpus (needed to measure)")
    p.add_argument("--space", default="tdnnf_demo", help="search space name or YAML path")
    add_budget_args(p, required=True)
    p.add_argument("--out", required=True, help="genotype JSON to write")
    p.add_argument("--sensitivity-out", default=None, help="default: <out without .json>.sensitivity.json")
    p.add_argument("--frontier-out", default=None, help="also write the (bytes, sensitivity) Pareto frontier")
    p.add_argument("--split", default="dev", help="held-out cuts to measure on (dev)")
    p.add_argument("--max-batches", type=number(minimum=1, integer=True), default=4)
    p.add_argument("--max-duration", type=number(above=0), default=60.0, help="seconds of audio per batch")
    p.add_argument("--config", default=None, help="YAML with an lfmmi: section (retrain config); hessian only")
    p.add_argument("--bottleneck-order", choices=ORDER_METHODS, default="pca",
                   help="order the model's bottleneck units as retrain.py --init-from does (default: %(default)s)")
    p.add_argument("--bottlenecks", choices=["model", "max"], default="model",
                   help="TDNN-F ranks of the genotype: the model's (default) or the space's largest")
    p.add_argument("--hessian-method", choices=["fd_output", "fd", "autograd"], default="fd_output",
                   help="Hv: fd_output (default) = finite differences of the LF-MMI gradient in output space, "
                        "double backward through the network; fd = finite differences of weight gradients "
                        "(ReLU kinks add noise); autograd = double backward (wrong for LF-MMI: no second "
                        "derivative in its custom backward)")
    p.add_argument("--hessian-max-iters", type=int, default=50)
    p.add_argument("--hessian-min-iters", type=int, default=2)
    p.add_argument("--hessian-tol", type=float, default=1e-2, help="relative change of the running mean")
    p.add_argument("--hessian-atol", type=float, default=0.0, help="absolute change of the running mean")
    p.add_argument("--hessian-rel-eps", type=float, default=None, help="fd step / ||W|| (default by dtype)")
    p.add_argument("--hessian-dtype", choices=["float64", "float32"], default="float64")
    p.add_argument("--hessian-negative", choices=["clamp", "abs", "keep"], default="clamp",
                   help="what a negative average-trace estimate becomes (clamp: 0)")
    p.add_argument("--blockwise", action="store_true", help="one Hv per layer per iteration (no cross terms)")
    p.add_argument("--max-cells", type=int, default=200_000, help="knapsack DP grid size")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    add_debug_flag(p)
    args = p.parse_args(argv)
    if (args.method is None) == (args.sensitivity_in is None):
        p.error("give exactly one of --method and --sensitivity-in")
    if args.method is not None and not args.data_dir:
        p.error("--data-dir is needed to measure sensitivities")
    return args


def check_model_matches_space(model_cfg, space) -> None:
    net = space.network
    bad = [f for f in _SHAPE_FIELDS if getattr(model_cfg, f) != getattr(net, f)]
    if bad:
        raise SystemExit(f"model does not match search space {space.name}: field(s) "
                         + ", ".join(f"{f} (model {getattr(model_cfg, f)!r}, space {getattr(net, f)!r})" for f in bad))
    for l in space.layers:
        if l.has_bottleneck:
            d = model_cfg.bottleneck_dims[l.bottleneck_index]
            if d not in l.bottlenecks:
                raise SystemExit(f"model's {l.name} bottleneck {d} is not a choice of space {space.name} "
                                 f"({list(l.bottlenecks)})")


def _bits_str_keys(t):
    return {l: {str(b): v for b, v in row.items()} for l, row in t.items()}


def measure(args, model, space):
    """-> (sensitivity dict, extra info for the JSON)."""
    import torch

    corpus = load_corpus(args.data_dir)
    if corpus.num_pdfs != model.cfg.num_pdfs:
        raise SystemExit(f"model has {model.cfg.num_pdfs} pdfs, corpus {args.data_dir} has {corpus.num_pdfs}")
    cuts = corpus.cuts(args.split)
    batches = []
    for i, b in enumerate(make_batches(cuts, corpus, args.max_duration, False, args.seed).epoch(0)):
        if i >= args.max_batches:
            break
        batches.append(b)
    if not batches:
        raise SystemExit(f"no batches in split {args.split!r} of {args.data_dir}")
    n_utt = sum(len(b["cut_ids"]) for b in batches)
    frames = int(sum(int((b["lengths"] + 2).div(3, rounding_mode="floor").sum()) for b in batches))
    info = {"data_dir": str(args.data_dir), "split": args.split, "batches": len(batches), "utterances": n_utt,
            "output_frames": frames}
    log.info("measuring %s sensitivity on %d batches (%d utterances, %d output frames) of %s",
             args.method, len(batches), n_utt, frames, args.split)
    device = torch.device(args.device)
    model.to(device)
    if args.method == "kl":
        def progress(layer, bits, kl):
            log.info("  %-10s %2d bits  KL %.6g", layer, bits, kl)

        sens = kl_sensitivity(model, space, batches, device=device, progress=progress)
        return sens, info
    lcfg = load_sections(args.config, ("train", "lfmmi", "quant", "distill")).get("lfmmi")
    config_section(args.config, lfmmi_options, lcfg)  # an error names the file
    loss_fn, compiler, _den = make_lfmmi(corpus, lcfg)
    dtype = torch.float64 if args.hessian_dtype == "float64" else torch.float32
    model.to(dtype=dtype)
    closures = lfmmi_closures(model, batches, loss_fn.to(device), compiler, device=device, dtype=dtype)
    sens, res = hessian_sensitivity(model, space, closures, method=args.hessian_method,
                                    max_iters=args.hessian_max_iters, min_iters=args.hessian_min_iters,
                                    tol=args.hessian_tol, rel_eps=args.hessian_rel_eps, blockwise=args.blockwise,
                                    seed=args.seed, return_traces=True, atol=args.hessian_atol,
                                    negative=args.hessian_negative)
    log.info("Hutchinson: %d iterations, converged=%s", res.iters, res.converged)
    for l, t in res.avg_trace.items():
        log.info("  %-10s avg trace %.6g +- %.2g  (%d params)", l, t, res.stderr[l] / max(res.numel[l], 1),
                 res.numel[l])
    info["hessian"] = res.to_dict()
    info["hessian"].update({"dtype": args.hessian_dtype, "blockwise": args.blockwise,
                            "negative": args.hessian_negative,
                            "skipped_sequences": loss_fn.total_skipped})
    return sens, info


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    import torch

    torch.manual_seed(args.seed)
    model = load_model_file(args.model, device="cpu")
    space = load_search_space(args.space, num_pdfs=model.cfg.num_pdfs)
    check_model_matches_space(model.cfg, space)
    model.cfg = model.cfg.replace(**{f: getattr(space.network, f) for f in _QUANT_FIELDS})
    # the weights the retrain starts from (training.model_io.init_from orders the bottlenecks the same way)
    order_bottlenecks_(model, args.bottleneck_order)
    if args.bottlenecks == "model":
        bn = {l.name: model.cfg.bottleneck_dims[l.bottleneck_index] for l in space.layers
              if l.has_bottleneck}
    else:
        bn = {l.name: l.bottlenecks[-1] for l in space.layers if l.has_bottleneck}
    fp32 = fp32_bytes(space.network)            # the project's fp32 baseline (largest network of the space)
    fp32_here = fp32_model_bytes(space, bn)     # fp32 at the genotype's bottlenecks (== fp32 at max ranks)
    budget = resolve_budget(args, fp32)
    sizes = layer_sizes(space, bn)

    t0 = time.time()
    if args.sensitivity_in:
        with open(args.sensitivity_in) as fh:
            prev = json.load(fh)
        sens = normalise_table(prev["sensitivity"])
        method = prev.get("method", "unknown")
        info = {k: prev[k] for k in ("data_dir", "split", "batches", "utterances", "output_frames", "hessian")
                if k in prev}
        info["reused_from"] = args.sensitivity_in
        missing = [l for l in space.layer_names if l not in sens]
        if missing:
            raise SystemExit(f"{args.sensitivity_in} has no sensitivity for layer(s) {missing}")
    else:
        method = args.method
        sens, info = measure(args, model, space)
    elapsed = time.time() - t0

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sens_out = Path(args.sensitivity_out) if args.sensitivity_out else out.with_name(
        (out.name[:-5] if out.name.endswith(".json") else out.name) + ".sensitivity.json")
    record = {"method": method, "model": str(args.model), "space": space.name, "seed": args.seed,
              "measure_seconds": round(elapsed, 3), **info,
              "bottlenecks": bn, "fp32_bytes": fp32, "fp32_bytes_at_bottlenecks": fp32_here,
              "sensitivity": _bits_str_keys(sens), "layer_bytes": _bits_str_keys(sizes)}
    if not args.sensitivity_in:
        with open(sens_out, "w") as fh:
            json.dump(record, fh, indent=1)
        log.info("wrote %s", sens_out)

    try:
        geno = allocate_bits(space, sens, budget, bn, method=method, max_cells=args.max_cells,
                             extra_source={"fp32_bytes": fp32, "model": str(args.model),
                                           "sensitivity_file": str(args.sensitivity_in or sens_out)})
    except BudgetError as e:
        raise SystemExit(f"error: {e} (fp32 model: {fp32} bytes)")
    geno.save(str(out))
    log.info("budget %.0f bytes (%.4f of fp32 %d bytes)\n%s", budget, budget / fp32, fp32, geno.summary(space))
    log.info("total %s sensitivity %.6g; wrote %s", method, geno.source["total_sensitivity"], out)
    if args.frontier_out:
        front = pareto_frontier(sens, sizes)
        with open(args.frontier_out, "w") as fh:
            json.dump({"method": method, "fp32_bytes": fp32, "points": [p.to_dict() for p in front]}, fh)
        log.info("wrote %d Pareto points to %s", len(front), args.frontier_out)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
