#!/usr/bin/env python
"""Two-pass decoding: n-best lists from the HCLG decoder (n-gram LM), re-ranked with the Transformer LM.

  python rescore.py --model exp/x/model.safetensors --lm exp/lm/fp32/model.pt --data-dir data/synth_demo \\
      --out exp/x/rescore [--nbest 20] [--acoustic-scale 1.2] [--graph-cache exp/graphs]

Dev and test are decoded into n-best lists of distinct word sequences (decoding.nbest), each hypothesis
scored with the graph's ARPA n-gram model and the Transformer LM, and ranked by

    cost = acoustic + lm_weight * (graph - ngram + (1 - alpha) * ngram + alpha * nnlm)

(lm.rescore). (lm_weight, alpha) is chosen on dev by WER over the --lm-weights x --alphas grid and
applied unchanged to test. Outputs in --out:

  <split>/nbest.jsonl           per utterance: utt, ref, hyps [{words, acoustic, graph, ngram, nnlm, oov}]
  <split>/{first_pass,ngram_only,rescored,oracle}/  hyps.txt, refs.txt, alignments.txt, per_utt.jsonl,
                                wer.json (ngram_only: the lists re-ranked by the n-gram alone, alpha = 0,
                                at its dev-best lm_weight)
  rescore.json                  WERs (first pass, n-best oracle, rescored) per split, the chosen weights,
                                the dev grid, counts (OOV words, empty n-best lists), MAPSSWE and
                                bootstrap significance of rescored vs first pass

WERs are percentages. The graph is built (or loaded from --graph-cache) as decode.py does.

  python rescore.py --nbest-from exp/x/rescore --lm exp/lm/kl_r16/model.safetensors --data-dir data/synth_demo \
      --out exp/x/rescore_kl_r16

reuses the n-best lists of an earlier run (its <split>/nbest.jsonl: words, acoustic, graph and n-gram
costs) and only scores them with another LM (a packed low-bit LM of quantize_lm.py, say): no acoustic
model, no decoding, the same lists for every LM compared.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

from decoding.cli import (add_graph_args, add_model_run_args, build_graph, feature_extractor, lexicon_for_model,
                          load_lexicon, load_model_and_cmvn)
from decoding.decoder import DecoderConfig, compute_outputs, cut_references
from decoding.lm import NgramModel
from decoding.nbest import nbest_outputs
from decoding.significance import compare_systems
from decoding.wer import write_results
from training.cli import HelpFormatter

# lm.rescore and training.data (and through them torch) are imported inside main(): importing torch takes
# seconds, and --help and argument errors do not need it.

log = logging.getLogger("rescore")


def _floats(text: str):
    return [float(x) for x in text.split(",") if x.strip()]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    ap.add_argument("--model", help="acoustic model (training.checkpoint.load_acoustic_model)")
    ap.add_argument("--nbest-from", help="output dir of an earlier rescore.py run: rescore its n-best lists "
                    "instead of decoding (then --model is not used)")
    ap.add_argument("--lm", required=True, help="Transformer LM: model.pt (train_lm.py), model.safetensors "
                    "(quantize_lm.py) or model.onnx (export_onnx.py --lm)")
    ap.add_argument("--lm-vocab", help="vocabulary file the LM must match (default: vocab.txt beside --lm)")
    ap.add_argument("--data-dir", default="data/synth_demo")
    ap.add_argument("--out", required=True)
    ap.add_argument("--dev-split", default="dev")
    ap.add_argument("--test-split", default="test")
    ap.add_argument("--nbest", type=int, default=20, help="distinct word sequences per utterance")
    ap.add_argument("--acoustic-scale", type=float, default=1.0)
    ap.add_argument("--beam", type=float, default=15.0)
    ap.add_argument("--lattice-beam", type=float, default=8.0)
    ap.add_argument("--lm-weights", default="0.5,0.7,0.85,1.0,1.2,1.5,2.0", help="grid, comma list")
    ap.add_argument("--alphas", default="0,0.25,0.5,0.75,1.0", help="grid of Transformer LM weights in [0, 1]")
    ap.add_argument("--lm-batch-size", type=int, default=64)
    add_graph_args(ap)
    add_model_run_args(ap)
    args = ap.parse_args(argv)
    if args.nbest < 1:
        ap.error("--nbest must be >= 1")
    if (args.model is None) == (args.nbest_from is None):
        ap.error("give exactly one of --model (decode) and --nbest-from (reuse n-best lists)")
    args.lm_weights, args.alphas = _floats(args.lm_weights), _floats(args.alphas)
    if not args.lm_weights or not args.alphas:
        ap.error("--lm-weights and --alphas need at least one value each")
    if any(not 0.0 <= a <= 1.0 for a in args.alphas):
        ap.error("--alphas must lie in [0, 1]")
    return args


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    import numpy as np
    import torch

    from lm.rescore import counts, first_pass, grid_search, load_rescoring_lm, oracle, read_nbest_jsonl, rescore, \
        rescore_nnlm, score_nbest, write_nbest_jsonl
    from training.data import load_cuts
    from training.safe_io import write_json_atomic

    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    # the LM first: a vocabulary mismatch fails before any decoding
    lm_model, lm_vocab = load_rescoring_lm(args.lm, args.lm_vocab, args.device)
    os.makedirs(args.out, exist_ok=True)
    splits = {}
    if args.nbest_from:
        prev_path = os.path.join(args.nbest_from, "rescore.json")
        try:
            with open(prev_path) as f:
                prev = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise SystemExit(f"rescore.py: --nbest-from {args.nbest_from}: cannot read rescore.json ({e})")
        graph_dir, arpa, cfg_json, nbest_n = prev["graph_dir"], prev["arpa"], prev["decoder"], prev["nbest"]
        am_model = prev.get("model")
        for split in (args.dev_split, args.test_split):
            path = os.path.join(args.nbest_from, split, "nbest.jsonl")
            if not os.path.isfile(path):
                raise SystemExit(f"rescore.py: --nbest-from: {path} does not exist")
            refs = cut_references(load_cuts(args.data_dir, split))
            prev_nb = read_nbest_jsonl(path)
            if set(prev_nb) != set(refs):
                raise SystemExit(f"rescore.py: {path} has {len(prev_nb)} utterances, {args.data_dir} {split} "
                                 f"{len(refs)}: not the same set")
            t0 = time.time()
            scored = rescore_nnlm(prev_nb, lm_model, lm_vocab, args.lm_batch_size)
            d = os.path.join(args.out, split)
            os.makedirs(d, exist_ok=True)
            write_nbest_jsonl(os.path.join(d, "nbest.jsonl"), scored, refs)
            splits[split] = {"refs": refs, "nbest": scored, "seconds": {"lm_scoring": round(time.time() - t0, 2)}}
    else:
        am_model = args.model
        model, cmvn = load_model_and_cmvn(args.model, args.data_dir, args.device)
        graph = build_graph(args, lexicon_for_model(load_lexicon(args), model)[0])
        graph_dir, arpa = graph.directory, os.path.join(graph.directory, "G.arpa")
        ngram = NgramModel.load_arpa(arpa)
        feat_ex = feature_extractor(args.num_mel_bins)
        cfg = DecoderConfig(acoustic_scale=args.acoustic_scale, beam=args.beam, lattice_beam=args.lattice_beam,
                            lattice=True)
        cfg_json, nbest_n = dict(cfg.__dict__), args.nbest
        progress = not args.no_progress
        for split in (args.dev_split, args.test_split):
            cuts = load_cuts(args.data_dir, split)
            t0 = time.time()
            outs = compute_outputs(model, cuts, cmvn, args.device, args.max_frames, 32, feat_ex,
                                   args.sampling_rate, progress)
            t1 = time.time()
            nb = nbest_outputs(outs, graph, args.nbest, cfg, progress)
            t2 = time.time()
            scored = score_nbest(nb, ngram, lm_model, lm_vocab, args.lm_batch_size)
            t3 = time.time()
            refs = cut_references(cuts)
            missing = sorted(set(refs) - set(scored))
            for u in missing:  # no network output: an empty n-best list
                scored[u] = []
            d = os.path.join(args.out, split)
            os.makedirs(d, exist_ok=True)
            write_nbest_jsonl(os.path.join(d, "nbest.jsonl"), scored, refs)
            splits[split] = {"refs": refs, "nbest": scored,
                             "seconds": {"forward": round(t1 - t0, 2), "nbest": round(t2 - t1, 2),
                                         "lm_scoring": round(t3 - t2, 2)}}
    for split, s in splits.items():
        c = counts(s["nbest"])
        log.info("%s: %d utterances, %d hypotheses, %d empty n-best lists, %d OOV words for the LM",
                 split, c["utterances"], c["hypotheses"], c["empty_nbest"], c["oov_words"])

    dev = splits[args.dev_split]
    gs = grid_search(dev["nbest"], dev["refs"], args.lm_weights, args.alphas)
    lw, alpha = gs.best.lm_weight, gs.best.alpha
    log.info("dev grid best: lm_weight %g alpha %g WER %.2f%% (%d utterances changed)", lw, alpha, gs.best.wer,
             gs.best.changed)
    # the same lists re-ranked by the n-gram alone at its dev-best weight (alpha = 0): how much of the gain
    # is the Transformer's and how much a retuned LM weight's
    lw0 = grid_search(dev["nbest"], dev["refs"], args.lm_weights, [0.0]).best.lm_weight

    report = {"model": am_model, "nbest_from": args.nbest_from, "lm": args.lm, "data_dir": args.data_dir,
              "graph_dir": graph_dir, "arpa": arpa, "nbest": nbest_n, "decoder": cfg_json,
              "weights": {"lm_weight": lw, "alpha": alpha, "tuned_on": args.dev_split},
              "ngram_only_weights": {"lm_weight": lw0, "alpha": 0.0, "tuned_on": args.dev_split},
              "formula": "acoustic + lm_weight * (graph - ngram + (1 - alpha) * ngram + alpha * nnlm)",
              "grid": gs.to_json()}
    for split, s in splits.items():
        refs, nb = s["refs"], s["nbest"]
        systems = {"first_pass": first_pass(nb), "ngram_only": rescore(nb, lw0, 0.0), "rescored": rescore(nb, lw, alpha),
                   "oracle": oracle(nb, refs)}
        wers = {}
        for name, hyps in systems.items():
            summ = write_results(os.path.join(args.out, split, name), refs, hyps,
                                 {"split": split, "system": name})
            wers[name] = {k: summ[k] for k in ("wer", "errors", "ref_words", "sub", "del", "ins", "ser")}
        sig = compare_systems(refs, systems["first_pass"], systems["rescored"], seed=args.seed)
        report[split] = {"wer": wers, "counts": counts(nb), "seconds": s["seconds"],
                         "changed": sum(systems["rescored"][u] != systems["first_pass"][u] for u in refs),
                         "significance": {"a": "first_pass", "b": "rescored",
                                          "delta_wer": wers["rescored"]["wer"] - wers["first_pass"]["wer"],
                                          "mapsswe": sig["mapsswe"], "bootstrap": sig["bootstrap"]}}
        sig0 = compare_systems(refs, systems["ngram_only"], systems["rescored"], seed=args.seed)
        report[split]["significance_vs_ngram_only"] = {
            "a": "ngram_only", "b": "rescored", "delta_wer": wers["rescored"]["wer"] - wers["ngram_only"]["wer"],
            "mapsswe": sig0["mapsswe"], "bootstrap": sig0["bootstrap"]}
        log.info("%s WER: first pass %.2f%%, rescored %.2f%%, oracle %.2f%% (MAPSSWE p=%.4g)", split,
                 wers["first_pass"]["wer"], wers["rescored"]["wer"], wers["oracle"]["wer"],
                 sig["mapsswe"]["p_value"])
    write_json_atomic(report, os.path.join(args.out, "rescore.json"))  # last: its presence marks a finished run
    print(json.dumps({sp: report[sp]["wer"] for sp in splits} | {"weights": report["weights"]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
