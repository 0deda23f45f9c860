#!/usr/bin/env python
"""Search per-matrix bit-widths of the Transformer LM under a size budget (DARTS-style, lm/search.py).

    python search_lm.py --init exp/lm/fp32/model.pt --data-dir data/synth_demo --budget-ratio 16 \\
        --out exp/lm/nas_r16/search [--space lm_demo] [--config configs/search_lm_demo.yaml] [--resume]
    python quantize_lm.py --init exp/lm/fp32/model.pt --data-dir data/synth_demo --method file \\
        --bits-from exp/lm/nas_r16/search/lm_bits.json --out exp/lm/nas_r16      # QAT + packed file

The supernet is the float LM with a Gumbel-softmax over the space's bit-widths for every matrix, all
widths sharing the matrix's one latent weight. Weight steps on the LM text, architecture steps (task loss
+ a two-sided size penalty on the argmax architecture + an entropy term) on a held-out tenth of it; dev and
test are never seen. The argmax is written as ``lm_bits.json`` (``quantize_lm.py --method file`` trains and
exports it). Outputs in --out: ``lm_bits.json``, ``arch_probs.json``, ``search_log.jsonl`` (per epoch:
losses, argmax / expected / target bytes, entropy, argmax bits), ``checkpoint.pt`` (per epoch; ``--resume``
continues from the last finished epoch) and TensorBoard under ``tb/`` (``arch/bits_heatmap``,
``arch/genotype_bars``, ``arch/argmax_mb`` vs ``arch/target_mb``, ...).
"""
from __future__ import annotations

import argparse
import logging
import random
import sys
from pathlib import Path

from training.cli import HelpFormatter, add_budget_args

log = logging.getLogger("search_lm")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--init", required=True, help="float LM model.pt (train_lm.py)")
    p.add_argument("--data-dir", required=True, help="prepared corpus: its LM text")
    p.add_argument("--out", required=True)
    p.add_argument("--space", default="lm_demo", help="LM search space name or YAML (default %(default)s)")
    p.add_argument("--config", default="configs/search_lm_demo.yaml", help="YAML with a search: section "
                   "(default %(default)s)")
    add_budget_args(p, default_ratio=16.0, what="LM")
    p.add_argument("--device", default="cpu")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    import json

    import numpy as np
    import torch

    from decoding.graph import default_lm_text
    from lm.data import LMBatches, encode_sentences, read_sentences
    from lm.mixed_precision import average_bits
    from lm.quant import lm_fp32_bytes, lm_size
    from lm.score import load_lm
    from lm.search import LMSearchOptions, LMSearchSpace, LMSupernet, run_search, split_held_out
    from training.cli import resolve_budget
    from training.experiment import load_sections
    from training.safe_io import write_json_atomic

    try:
        opts = LMSearchOptions.from_dict(load_sections(args.config, ("search",)).get("search"), source=args.config)
        space = LMSearchSpace.load(args.space)
        model, vocab = load_lm(args.init, args.device)
        sents = read_sentences(default_lm_text(args.data_dir))
    except (OSError, ValueError) as e:
        raise SystemExit(f"search_lm.py: {e}")
    random.seed(opts.seed)
    np.random.seed(opts.seed)
    torch.manual_seed(opts.seed)
    fp32 = lm_fp32_bytes(model.cfg)
    target = resolve_budget(args, fp32, default_ratio=16.0)
    net = LMSupernet(model, space, tau=opts.tau_start, hard=True)
    table = net.size_table()
    if target < table.min_bytes():
        raise SystemExit(f"search_lm.py: budget {target:.0f} bytes is below the smallest LM of this space "
                         f"({table.min_bytes():.0f} bytes)")
    seqs = [s for s in encode_sentences(sents, vocab)[0] if len(s) - 1 <= model.cfg.max_len]
    tr, ho = split_held_out(len(seqs), opts.held_out_fraction, opts.seed)
    train = LMBatches([seqs[i] for i in tr], opts.batch_size, vocab.eos_id, shuffle=True, seed=opts.seed)
    held = LMBatches([seqs[i] for i in ho], opts.batch_size, vocab.eos_id, shuffle=True, seed=opts.seed + 1)
    out = Path(args.out)
    log.info("LM search: %d matrices x bits %s, budget %d bytes (fp32 %d, %.1fx); %d training, %d held-out "
             "sentences", len(net.arch.layers), list(space.bits), target, fp32, fp32 / target, len(tr), len(ho))
    rec = run_search(net, train, held, opts, target, out, args.device, args.resume, not args.no_progress, log)
    bits = net.argmax_bits()
    cfg = model.cfg.replace(weight_bits={})
    size = lm_size(cfg.replace(weight_bits=bits)).total_bytes
    write_json_atomic({"format": "green-asr-lm-bits", "version": 1, "method": "nas", "init": args.init,
                       "weight_bits": bits, "allocation": {"budget_bytes": int(target), "bytes": size,
                                                           "search": rec, "space": space.name},
                       "bytes": size, "fp32_bytes": fp32, "bits_per_weight": average_bits(cfg.replace(weight_bits=bits))},
                      out / "lm_bits.json")
    print(json.dumps({"bytes": size, "budget_bytes": int(target), "ratio": round(fp32 / size, 2),
                      "bits_per_weight": round(average_bits(cfg.replace(weight_bits=bits)), 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
