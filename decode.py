#!/usr/bin/env python
"""Decode a prepared corpus split with an acoustic model and an HCLG graph; score it.

  python decode.py --model exp/x/model.pt --data-dir data/synth_demo --split test --out exp/x/decode_test
  python decode.py --build-graph-only --data-dir data/synth_demo [--lm-order 3]
  python decode.py ... --sweep-dev            # tune acoustic scale / LM weight on dev first
  python decode.py ... --sweep-dev --sweep-word-insertion-penalties 0,1,2,4   # and the insertion penalty
  python decode.py ... --compare exp/base/decode_test   # significance against a baseline's hyps

Writes hyps.txt, refs.txt, alignments.txt, per_utt.jsonl, wer.json (and sweep.json,
significance.json) into --out. All WER figures are percentages ("wer": 12.5 means 12.5 %); with
--compare, wer.json["compare"] holds "delta_wer" (this minus baseline, percent points), "mapsswe"
and "bootstrap" (each with "p_value"). The graph is cached under --graph-cache keyed by lexicon + LM.
An utterance that cannot be decoded (non-finite features or network output, no surviving path) is
named in the log and in wer.json["failed_utterances"] (id, reason; count in "num_failed") and scored
as an empty hypothesis.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

# the shared pieces (still importable as decode.<name>, e.g. decode.lexicon_for_model)
from decoding.cli import (add_graph_args, add_model_run_args, build_graph, failure_list, feature_extractor,
                          lexicon_for_model, load_lexicon, load_model_and_cmvn)
from decoding.decoder import DecoderConfig, compute_outputs, cut_references, decode_outputs, sweep
from decoding.significance import compare_systems
from decoding.wer import read_text_file, write_results
from training.cli import HelpFormatter, add_debug_flag, run_main

# training.data (and through it torch) is imported inside main(): importing torch takes seconds, and
# --help, argument errors and --build-graph-only do not need it.

log = logging.getLogger("decode")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    ap.add_argument("--config", help="YAML file whose keys override these options (dashes or underscores)")
    ap.add_argument("--model", help="model file for training.checkpoint.load_acoustic_model")
    ap.add_argument("--data-dir", required=False, default="data/synth_demo")
    ap.add_argument("--split", default="test")
    ap.add_argument("--out", help="output directory (default exp/decode_<split>)")
    add_graph_args(ap)
    ap.add_argument("--build-graph-only", action="store_true")
    ap.add_argument("--acoustic-scale", type=float, default=1.0)
    ap.add_argument("--beam", type=float, default=15.0)
    ap.add_argument("--max-active", type=int, default=7000)
    ap.add_argument("--lattice-beam", type=float, default=8.0)
    ap.add_argument("--lattice", action="store_true", help="LatticeSimpleDecoder instead of FasterDecoder")
    ap.add_argument("--word-insertion-penalty", type=float, default=0.0,
                    help="graph cost added per hypothesised word (> 0: fewer insertions, more deletions)")
    ap.add_argument("--sweep-dev", action="store_true",
                    help="tune acoustic scale (and LM weight, word insertion penalty) on dev")
    ap.add_argument("--sweep-acoustic-scales", default="0.5,0.7,0.85,1.0,1.2,1.5")
    ap.add_argument("--sweep-lm-weights", default="", help="comma list; rescoring raw lattices")
    ap.add_argument("--sweep-word-insertion-penalties", default="",
                    help="comma list tried with every acoustic scale (default: --word-insertion-penalty only)")
    ap.add_argument("--compare", help="baseline decode dir (hyps.txt) for MAPSSWE + paired bootstrap")
    add_model_run_args(ap)
    add_debug_flag(ap)
    args = ap.parse_args(argv)
    if args.config:
        import yaml

        with open(args.config) as f:
            cfg = yaml.safe_load(f) or {}
        defaults = vars(ap.parse_args([]))
        given = {a.lstrip("-").split("=")[0].replace("-", "_") for a in (argv or sys.argv[1:]) if a.startswith("--")}
        if not isinstance(cfg, dict):
            ap.error(f"{args.config}: expected a mapping of decode options")
        types = {a.dest: a.type for a in ap._actions}
        for k, v in cfg.items():
            k = k.replace("-", "_")
            if k not in defaults:
                ap.error(f"{args.config}: unknown config key {k!r}; known: {sorted(set(defaults) - {'config'})}")
            kind = types.get(k)
            if kind in (int, float) and (isinstance(v, bool) or not isinstance(v, (int, float))
                                         or (kind is int and not isinstance(v, int))):
                ap.error(f"{args.config}: {k} must be {'an integer' if kind is int else 'a number'}, got {v!r}")
            if k not in given:  # a command-line flag wins over the file
                setattr(args, k, v)
    return args


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    import numpy as np

    np.random.seed(args.seed)
    lexicon = load_lexicon(args)
    if args.build_graph_only:
        graph = build_graph(args, lexicon)
        print(json.dumps({"graph_dir": graph.directory, **graph.info}, indent=1))
        return 0
    if not args.model:
        raise SystemExit("--model is required unless --build-graph-only")

    import torch

    from training.data import load_cuts

    torch.manual_seed(args.seed)
    model, cmvn = load_model_and_cmvn(args.model, args.data_dir, args.device)
    lexicon, dropped_words = lexicon_for_model(lexicon, model)
    graph = build_graph(args, lexicon)
    progress = not args.no_progress
    feat_ex = feature_extractor(args.num_mel_bins)

    def run(split, failures):
        cuts = load_cuts(args.data_dir, split)
        t0 = time.time()
        outs = compute_outputs(model, cuts, cmvn, args.device, args.max_frames, 32, feat_ex,
                               args.sampling_rate, progress, failures)
        return cuts, outs, time.time() - t0

    cfg = DecoderConfig(acoustic_scale=args.acoustic_scale, beam=args.beam, max_active=args.max_active,
                        lattice_beam=args.lattice_beam, lattice=args.lattice,
                        word_insertion_penalty=args.word_insertion_penalty)
    out_dir = args.out or os.path.join("exp", f"decode_{args.split}")
    os.makedirs(out_dir, exist_ok=True)
    extra = {"words_without_model_phones": len(dropped_words)}
    if args.sweep_dev:
        dev_failed = {}
        dcuts, douts, _ = run("dev", dev_failed)
        if dev_failed:
            log.warning("dev sweep leaves out %d utterance(s) that could not be decoded", len(dev_failed))
            extra["sweep_failed_utterances"] = failure_list(dev_failed)
        scales = [float(x) for x in args.sweep_acoustic_scales.split(",") if x]
        lmws = [float(x) for x in args.sweep_lm_weights.split(",") if x] or None
        wips = [float(x) for x in args.sweep_word_insertion_penalties.split(",") if x] or None
        res = sweep(douts, cut_references(dcuts), graph, scales, lmws, cfg, progress, wips)
        with open(os.path.join(out_dir, "sweep.json"), "w") as f:
            json.dump(res, f, indent=1)
        cfg.acoustic_scale = res["best"]["acoustic_scale"]
        cfg.word_insertion_penalty = res["best"]["word_insertion_penalty"]
        extra["sweep_best"] = {k: res["best"][k]
                               for k in ("acoustic_scale", "word_insertion_penalty", "lm_weight", "wer")}
        if lmws:  # an LM weight w equals acoustic scale a / w with graph weight 1 (up to beams)
            cfg.acoustic_scale = res["best"]["acoustic_scale"] / res["best"]["lm_weight"]
        log.info("dev sweep best: %s", extra["sweep_best"])
    failed = {}
    cuts, outs, t_fwd = run(args.split, failed)
    t0 = time.time()
    hyps = decode_outputs(outs, graph, cfg, progress, failed)
    t_dec = time.time() - t0
    audio_s = sum(c.duration for c in cuts)
    extra.update(model=args.model, split=args.split, data_dir=args.data_dir, graph_dir=graph.directory,
                 decoder=dict(cfg.__dict__), forward_seconds=round(t_fwd, 2),
                 decode_seconds=round(t_dec, 2), audio_seconds=round(audio_s, 2),
                 rtf=round((t_fwd + t_dec) / max(audio_s, 1e-9), 4),
                 num_failed=len(failed), failed_utterances=failure_list(failed))
    if failed:
        log.warning("%d of %d utterance(s) could not be decoded (scored as empty hypotheses): %s",
                    len(failed), len(cuts), ", ".join(sorted(failed)))
    summary = write_results(out_dir, cut_references(cuts), hyps, extra)
    log.info("%s WER %.2f%% (%d/%d; S %d D %d I %d) SER %.2f%%", args.split, summary["wer"],
             summary["errors"], summary["ref_words"], summary["sub"], summary["del"], summary["ins"],
             summary["ser"])
    if args.compare:
        base = read_text_file(os.path.join(args.compare, "hyps.txt"))
        sig = compare_systems(cut_references(cuts), base, hyps, seed=args.seed)
        # A = baseline, B = this system; delta_wer = WER(this) - WER(baseline) in percent points
        compare = {"baseline": args.compare, "delta_wer": -sig["bootstrap"]["wer_diff"],
                   "baseline_wer": sig["bootstrap"]["wer_a"], **sig}
        with open(os.path.join(out_dir, "significance.json"), "w") as f:
            json.dump(compare, f, indent=1)
        summary["compare"] = compare
        with open(os.path.join(out_dir, "wer.json"), "w") as f:
            json.dump(summary, f, indent=1)
        log.info("vs %s: dWER %+.2f, bootstrap p=%.4g, MAPSSWE p=%.4g", args.compare,
                 compare["delta_wer"], sig["bootstrap"]["p_value"], sig["mapsswe"]["p_value"])
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
