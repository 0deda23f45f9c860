#!/usr/bin/env python
"""Quantize the Transformer LM: choose per-matrix bit-widths, fine-tune with QAT, write a packed low-bit file.

    python quantize_lm.py --init exp/lm/fp32/model.pt --data-dir data/synth_demo --method uniform --bits 2 \\
        --out exp/lm/uniform2
    python quantize_lm.py --init exp/lm/fp32/model.pt --data-dir data/synth_demo --method kl --budget-ratio 16 \\
        --out exp/lm/kl_r16          # mixed precision at 1/16 of the float LM's bytes (2 bits a weight)
    python quantize_lm.py ... --method hessian --budget-ratio 16 --out exp/lm/hessian_r16
    python quantize_lm.py ... --resume     # continue an interrupted fine-tuning exactly

Steps (lm/mixed_precision.py, lm/quant.py):

1. ``--method uniform``: every matrix at ``--bits``. ``file``: the ``weight_bits`` of ``--bits-from`` (the
   LM search's ``lm_bits.json``, search_lm.py). ``kl`` / ``hessian``: the sensitivity of every matrix at
   every ``--bit-choices`` width on dev sentences (never test), then the allocation of least total
   sensitivity whose packed LM fits ``fp32 bytes / --budget-ratio`` (or ``--budget-bytes``).
2. Quantization-aware fine-tuning from the float LM's weights on the LM text (``--config``'s ``train:``
   section, LMTrainOptions; ``--epochs 0``: post-training quantization), checkpointed for ``--resume``.
3. The packed file ``model.safetensors``, read back to compute dev and test perplexity.

Outputs in --out: ``model.safetensors`` (lm.quant), ``lm_bits.json`` (bits per matrix, method, budget,
allocation), ``sensitivity.json`` (kl / hessian), ``size.json`` (payload bytes = the cost model's,
float LM bytes, ratio, bits per weight, file and header bytes), ``ppl.json`` (as train_lm.py's, of the
packed model), ``train_log.jsonl``, ``checkpoint.pt``, ``tb/``.
"""
from __future__ import annotations

import argparse
import logging
import random
import sys
import time
from pathlib import Path

from training.cli import HelpFormatter, add_budget_args

log = logging.getLogger("quantize_lm")
BITS_FORMAT = "green-asr-lm-bits"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--init", required=True, help="float LM model.pt (train_lm.py)")
    p.add_argument("--data-dir", required=True, help="prepared corpus: LM text, dev and test transcripts")
    p.add_argument("--out", required=True)
    p.add_argument("--method", required=True, choices=("uniform", "kl", "hessian", "file"),
                   help="file: the bits of --bits-from (e.g. search_lm.py's lm_bits.json)")
    p.add_argument("--bits-from", help="--method file: a JSON with weight_bits (lm_bits.json)")
    p.add_argument("--bits", type=int, help="uniform: the bit-width of every matrix")
    add_budget_args(p, what="LM (kl/hessian)")
    p.add_argument("--bit-choices", default="1,2,4,8", help="kl/hessian: widths a matrix may take (default %(default)s)")
    p.add_argument("--config", default="configs/lm_finetune_demo.yaml", help="YAML with a train: section "
                   "(default %(default)s)")
    p.add_argument("--epochs", type=int, help="override train.epochs (0: no fine-tuning)")
    p.add_argument("--sens-sentences", type=int, default=256, help="dev sentences for the sensitivities "
                   "(default %(default)s)")
    p.add_argument("--hessian-iters", type=int, default=30, help="Hutchinson iterations (default %(default)s)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--resume", action="store_true", help="continue from --out/checkpoint.pt")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.method == "file":
        if not args.bits_from:
            p.error("--method file needs --bits-from")
        if args.bits is not None or args.budget_ratio is not None or args.budget_bytes is not None:
            p.error("--method file takes its bits from --bits-from only")
    elif args.method == "uniform":
        if args.bits is None:
            p.error("--method uniform needs --bits")
        if args.budget_ratio is not None or args.budget_bytes is not None:
            p.error("--budget-ratio / --budget-bytes are for --method kl or hessian")
    else:
        if args.bits is not None:
            p.error(f"--bits is for --method uniform; --method {args.method} takes --budget-ratio or --budget-bytes")
        if args.budget_ratio is None and args.budget_bytes is None:
            p.error(f"--method {args.method} needs --budget-ratio or --budget-bytes")
        if args.budget_ratio is not None and args.budget_ratio < 1.0:
            p.error("--budget-ratio is a compression factor >= 1")
    try:
        args.bit_choices = sorted({int(b) for b in args.bit_choices.split(",") if b.strip()})
    except ValueError:
        p.error(f"--bit-choices: comma-separated integers, got {args.bit_choices!r}")
    return args


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    import json

    import numpy as np
    import torch

    from decoding.graph import default_lm_text
    from lm.data import LMBatches, encode_sentences, read_sentences, split_transcripts
    from lm.mixed_precision import (allocate_lm_bits, average_bits, heldout_batches, lm_hessian_sensitivity,
                                    lm_kl_sensitivity, uniform_bits)
    from lm.quant import export_packed_lm, header_bytes, lm_fp32_bytes, lm_size, load_packed_lm
    from lm.score import load_lm, perplexity
    from lm.train import LMTrainer, LMTrainOptions
    from models.quantizers import check_bits
    from training.cli import resolve_budget
    from training.experiment import load_sections
    from training.safe_io import write_json_atomic

    try:
        for b in ([args.bits] if args.bits is not None else []) + args.bit_choices:
            check_bits(b)
        topts = LMTrainOptions.from_dict(load_sections(args.config, ("train",)).get("train"), source=args.config)
        model, vocab = load_lm(args.init, args.device)
    except (OSError, ValueError) as e:
        raise SystemExit(f"quantize_lm.py: {e}")
    if model.cfg.weight_bits:
        raise SystemExit(f"quantize_lm.py: {args.init} is already quantized; start from the float LM")
    if args.epochs is not None:
        topts.epochs = args.epochs
    random.seed(topts.seed)
    np.random.seed(topts.seed)
    torch.manual_seed(topts.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        train_sents = read_sentences(default_lm_text(args.data_dir))
        dev = split_transcripts(args.data_dir, "dev")
        test = split_transcripts(args.data_dir, "test")
    except (OSError, ValueError) as e:
        raise SystemExit(f"quantize_lm.py: {e}")
    cfg = model.cfg
    fp32 = lm_fp32_bytes(cfg)

    # 1. bits per matrix
    if args.method == "uniform":
        bits, alloc = uniform_bits(cfg, args.bits), {"bits": args.bits}
    elif args.method == "file":
        try:
            src = json.loads(Path(args.bits_from).read_text())
            bits = {str(k): int(v) for k, v in src["weight_bits"].items()}
            cfg.replace(weight_bits=bits)  # validates names and widths
        except (OSError, KeyError, ValueError, AttributeError, TypeError) as e:
            raise SystemExit(f"quantize_lm.py: --bits-from {args.bits_from}: {e}")
        alloc = {"from": args.bits_from, "method": src.get("method"), "source": src.get("allocation")}
    else:
        budget = resolve_budget(args, fp32)
        sens_path = out / "sensitivity.json"
        if sens_path.is_file():
            sens = {k: {int(b): v for b, v in d.items()} for k, d in json.loads(sens_path.read_text())["sensitivity"].items()}
            log.info("sensitivities from %s", sens_path)
        else:
            seqs = encode_sentences(dev, vocab)[0][: args.sens_sentences]
            batches = heldout_batches(seqs, vocab.eos_id, 32, (len(seqs) + 31) // 32)
            t0 = time.time()
            if args.method == "kl":
                sens = lm_kl_sensitivity(model, batches, args.bit_choices)
                extra = {}
            else:
                sens, res = lm_hessian_sensitivity(model, batches, args.bit_choices, args.hessian_iters,
                                                   seed=topts.seed, return_traces=True)
                extra = {"traces": res.to_dict()}
            write_json_atomic({"method": args.method, "split": "dev", "sentences": len(seqs),
                               "seconds": round(time.time() - t0, 1), "sensitivity": sens, **extra}, sens_path)
            log.info("%s sensitivities of %d matrices in %.0f s", args.method, len(sens), time.time() - t0)
        bits, alloc = allocate_lm_bits(cfg, sens, budget, args.bit_choices)
        alloc["budget_ratio"] = args.budget_ratio
    model.set_weight_bits(bits)
    size = lm_size(model.cfg)
    write_json_atomic({"format": BITS_FORMAT, "version": 1, "method": args.method, "init": args.init,
                       "weight_bits": bits, "allocation": alloc, "bytes": size.total_bytes, "fp32_bytes": fp32,
                       "bits_per_weight": average_bits(model.cfg)}, out / "lm_bits.json")
    log.info("bits: %s (%.2f bits a weight, %d bytes, %.1fx)", bits, average_bits(model.cfg), size.total_bytes,
             fp32 / size.total_bytes)

    # 2. quantization-aware fine-tuning
    if topts.epochs > 0:
        seqs = [s for s in encode_sentences(train_sents, vocab)[0] if len(s) - 1 <= cfg.max_len]
        train = LMBatches(seqs, topts.batch_size, vocab.eos_id, shuffle=True, seed=topts.seed)
        trainer = LMTrainer(model, vocab, train, dev, topts, out, args.device, show_progress=not args.no_progress)
        t0 = time.time()
        trainer.fit(resume=args.resume)
        log.info("fine-tuned %d steps in %.0f s", trainer.step, time.time() - t0)
        model = trainer.model

    # 3. packed file, read back
    path = out / "model.safetensors"
    nbytes = export_packed_lm(model.cpu().eval(), vocab, str(path),
                              extra_metadata={"method": args.method, "init": args.init})
    packed, _ = load_packed_lm(path, args.device)
    ppl = {name: perplexity(packed, vocab, sents, topts.eval_batch_size) for name, sents in (("dev", dev), ("test", test))}
    for name, p in ppl.items():
        log.info("%s: ppl %.2f (packed model)", name, p["ppl"])
    write_json_atomic({"bytes": nbytes, "fp32_bytes": fp32, "ratio": fp32 / nbytes,
                       "bits_per_weight": average_bits(packed.cfg), "file_bytes": path.stat().st_size,
                       "header_bytes": header_bytes(path), "weight_bits": bits}, out / "size.json")
    write_json_atomic(ppl, out / "ppl.json")
    print(json.dumps({"bytes": nbytes, "ratio": round(fp32 / nbytes, 2), "dev_ppl": round(ppl["dev"]["ppl"], 2),
                      "test_ppl": round(ppl["test"]["ppl"], 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
