#!/usr/bin/env python
"""Decode a prepared corpus split with an acoustic model and an HCLG graph; score it.

  python decode.py --model exp/x/model.pt --data-dir data/synth_demo --split test --out exp/x/decode_test
  python decode.py --build-graph-only --data-dir data/synth_demo [--lm-order 3]
  python decode.py ... --sweep-dev            # tune acoustic scale / LM weight on dev first
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

from training.cli import add_debug_flag

log = logging.getLogger("decode")


def add_graph_args(ap) -> None:
    """The decoding graph's options (lexicon, n-gram LM, cache), shared with rescore.py."""
    ap.add_argument("--lexicon", help="lexicon.txt (default DATA_DIR/lang/lexicon.txt)")
    ap.add_argument("--lm-text", help="LM training text (default DATA_DIR/lm_text.txt, else DATA_DIR/lm_train_text.txt)")
    ap.add_argument("--arpa", help="use this ARPA LM instead of estimating one")
    ap.add_argument("--lm-order", type=int, default=3)
    ap.add_argument("--lm-method", choices=["kn", "wb"], default="kn")
    ap.add_argument("--sil-prob", type=float, default=0.5)
    ap.add_argument("--extend-lexicon", action="store_true",
                    help="add LM-text words missing from the lexicon from CMUdict (phone set unchanged)")
    ap.add_argument("--graph-cache", default="exp/graphs")
    ap.add_argument("--rebuild-graph", action="store_true")


def add_model_run_args(ap) -> None:
    """Features, device and run options of running the acoustic model, shared with rescore.py."""
    ap.add_argument("--max-frames", type=int, default=20000, help="feature frames per forward batch")
    ap.add_argument("--sampling-rate", type=int, default=16000,
                    help="model's rate when features must be computed from audio")
    ap.add_argument("--num-mel-bins", type=int, default=40)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-progress", action="store_true")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    ap.add_argument("--sweep-dev", action="store_true", help="tune acoustic scale (and LM weight) on dev")
    ap.add_argument("--sweep-acoustic-scales", default="0.5,0.7,0.85,1.0,1.2,1.5")
    ap.add_argument("--sweep-lm-weights", default="", help="comma list; rescoring raw lattices")
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
        for k, v in cfg.items():
            k = k.replace("-", "_")
            if k not in defaults:
                ap.error(f"unknown config key {k!r}")
            if k not in given:
                setattr(args, k, v)
    return args


def load_lexicon(args):
    from lang.lexicon import Lexicon

    path = args.lexicon or os.path.join(args.data_dir, "lang", "lexicon.txt")
    return Lexicon.load(path)


def build_graph(args, lexicon):
    from decoding.graph import default_lm_text, extend_lexicon, get_graph
    from decoding.lm import read_sentences

    lm_text = args.lm_text or default_lm_text(args.data_dir)
    if args.extend_lexicon and not args.arpa:
        vocab = {w for s in read_sentences(lm_text) for w in s}
        lexicon, added, skipped = extend_lexicon(lexicon, vocab)
        log.info("lexicon extended with %d CMUdict words; %d LM words left without pronunciation",
                 len(added), len(skipped))
    t0 = time.time()
    g = get_graph(lexicon, args.graph_cache, lm_text=None if args.arpa else lm_text, arpa=args.arpa,
                  order=args.lm_order, method=args.lm_method, sil_prob=args.sil_prob,
                  rebuild=args.rebuild_graph)
    log.info("graph %s: %s states, %s arcs (%.1fs)", g.directory, g.info.get("HCLG_states"),
             g.info.get("HCLG_arcs"), time.time() - t0)
    return g


def lexicon_for_model(lexicon, model):
    """``(lexicon, dropped words)``: the corpus lexicon over the model's own phone list (``model.phones``,
    recorded by retrain.py), so that output unit 2k/2k+1 means the model's phone k whatever phones the
    corpus's words use; words whose every pronunciation needs a phone the model lacks are left out (and
    returned). A model file without a phone list is decoded with the corpus's phones if the pdf counts
    agree, else refused with a clear error."""
    phones = getattr(model, "phones", None)
    n = getattr(getattr(model, "cfg", None), "num_pdfs", None)
    if phones is None:
        if n is not None and 2 * len(lexicon.phones) != n:
            raise ValueError(f"the model has {n} pdfs, the corpus lexicon's {len(lexicon.phones)} phones give "
                             f"{2 * len(lexicon.phones)}, and the model file records no phone list (written "
                             f"before phone lists were stored): decode with the lexicon it was trained with "
                             f"(--lexicon)")
        log.warning("the model file records no phone list: assuming the corpus lexicon's %d phones",
                    len(lexicon.phones))
        return lexicon, []
    lex, dropped = lexicon.with_phones(phones)
    if dropped:
        log.warning("%d word(s) need phones the model lacks and cannot be recognised: %s", len(dropped),
                    " ".join(dropped[:20]) + (" ..." if len(dropped) > 20 else ""))
    return lex, dropped


def load_model_and_cmvn(model_path, data_dir, device="cpu"):
    """(acoustic model in eval mode, CMVN stats): the model's own, else DATA_DIR/cmvn.json, else None."""
    from training.checkpoint import load_acoustic_model

    model = load_acoustic_model(model_path, device)
    cmvn = getattr(model, "cmvn", None)
    cmvn_path = os.path.join(data_dir, "cmvn.json")
    if cmvn is None and os.path.isfile(cmvn_path):
        with open(cmvn_path) as f:
            cmvn = json.load(f)
    return model, cmvn


def feature_extractor(num_mel_bins: int = 40):
    """None (decoding.decoder's default 40-bin Fbank) or an Fbank with num_mel_bins bins."""
    if num_mel_bins == 40:
        return None
    from lhotse import Fbank, FbankConfig

    return Fbank(FbankConfig(num_mel_bins=num_mel_bins))


def failure_list(failures):
    """[{"id", "reason"}] sorted by utterance id, for wer.json."""
    return [{"id": k, "reason": failures[k]} for k in sorted(failures)]


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

    from decoding.decoder import DecoderConfig, compute_outputs, cut_references, decode_outputs, sweep
    from decoding.wer import write_results
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
                        lattice_beam=args.lattice_beam, lattice=args.lattice)
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
        res = sweep(douts, cut_references(dcuts), graph, scales, lmws, cfg, progress)
        with open(os.path.join(out_dir, "sweep.json"), "w") as f:
            json.dump(res, f, indent=1)
        cfg.acoustic_scale = res["best"]["acoustic_scale"]
        extra["sweep_best"] = {k: res["best"][k] for k in ("acoustic_scale", "lm_weight", "wer")}
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
        from decoding.significance import compare_systems
        from decoding.wer import read_text_file

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
    from training.cli import run_main

    sys.exit(run_main(main))
