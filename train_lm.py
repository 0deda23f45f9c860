#!/usr/bin/env python
"""Train the word-level Transformer LM (lm/) on a prepared corpus's LM text.

    python train_lm.py --data-dir data/synth_demo --config configs/lm_demo.yaml --out exp/lm/fp32
    python train_lm.py ... --resume            # continue from --out/checkpoint.pt exactly
    python train_lm.py ... --max-steps 50      # stop early (the schedule stays that of the full run)

Training text: ``<data-dir>/lm_text.txt`` (one normalised sentence a line; ``lm_train_text.txt`` in
directories prepared before it existed). Dev and test perplexities are computed on the transcripts of
``cuts_dev.jsonl.gz`` and ``cuts_test.jsonl.gz``, which are never in the LM text.

Outputs in --out: ``model.pt`` (config + vocabulary + weights; lm.score), ``vocab.txt``, ``ppl.json``
(``{"dev": {"ppl", "tokens", "oov", ...}, "test": {...}}``), ``size.json`` (``bytes``: the float LM's size
by the cost model, lm.quant.lm_size, the reference of the LM's compression ratios), ``checkpoint.pt`` (for --resume),
``train_log.jsonl`` (one line per epoch) and TensorBoard logs under ``tb/``.
"""
from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import time
from pathlib import Path

from training.cli import HelpFormatter

# The project modules (lm.*, training.experiment, decoding.graph) are imported inside the functions: lm.*
# and training.* bring torch, seconds to import, which --help and argument errors do not need.

log = logging.getLogger("train_lm")

SECTIONS = ("model", "train")


def load_config(path):
    """(TransformerLMConfig fields without vocab_size, LMTrainOptions) from a YAML with model:/train:."""
    from lm.model import TransformerLMConfig
    from lm.train import LMTrainOptions
    from training.experiment import load_sections

    cfg = load_sections(path, SECTIONS)
    src = str(path) if path else "defaults"
    model_d = dict(cfg.get("model") or {})
    if "vocab_size" in model_d:
        raise ValueError(f"{src}: model.vocab_size is set by the vocabulary; use train.vocab_min_count / "
                         f"train.vocab_max_size to size it")
    TransformerLMConfig.from_dict(dict(model_d, vocab_size=3), source=src)  # validate names and values now
    return model_d, LMTrainOptions.from_dict(cfg.get("train"), source=src)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--data-dir", required=True, help="prepared corpus (prepare_data.py)")
    p.add_argument("--config", default=None, help="YAML with model: and train: sections")
    p.add_argument("--out", required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--max-steps", type=int, default=None,
                   help="stop after this many optimizer steps; --resume continues to the end")
    p.add_argument("--resume", action="store_true", help="continue from --out/checkpoint.pt")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    import numpy as np
    import torch

    from decoding.graph import default_lm_text
    from lm.data import LMBatches, encode_sentences, read_sentences, split_transcripts
    from lm.model import TransformerLM, TransformerLMConfig
    from lm.quant import lm_size
    from lm.score import check_length, perplexity, save_lm
    from lm.train import LMTrainer
    from lm.vocab import Vocab
    from training.safe_io import write_json_atomic

    try:
        model_d, topts = load_config(args.config)
    except (OSError, ValueError) as e:
        raise SystemExit(f"train_lm.py: {e}")
    if args.seed is not None:
        topts.seed = args.seed
    if args.epochs is not None:
        topts.epochs = args.epochs
    if args.max_steps is not None:
        topts.max_steps = args.max_steps
    random.seed(topts.seed)
    np.random.seed(topts.seed)
    torch.manual_seed(topts.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    try:
        text_path = default_lm_text(args.data_dir)
        train_sents = read_sentences(text_path)
        dev = split_transcripts(args.data_dir, "dev")
        test = split_transcripts(args.data_dir, "test")
    except (OSError, ValueError) as e:
        raise SystemExit(f"train_lm.py: {e}")
    vocab = Vocab.build(train_sents, topts.vocab_min_count, topts.vocab_max_size)
    vocab.save(out / "vocab.txt")
    seqs, oov = encode_sentences(train_sents, vocab)
    cfg = TransformerLMConfig.from_dict(dict(model_d, vocab_size=len(vocab)), source=args.config or "defaults")
    too_long = [s for s in seqs if len(s) - 1 > cfg.max_len]
    if too_long:
        log.warning("%d training sentences of more than %d words (max_len %d) are left out", len(too_long),
                    cfg.max_len - 1, cfg.max_len)
        seqs = [s for s in seqs if len(s) - 1 <= cfg.max_len]
        if not seqs:
            raise SystemExit(f"train_lm.py: every sentence of {text_path} is longer than max_len; raise model.max_len")
    for name, sents in (("dev", dev), ("test", test)):
        try:
            check_length(encode_sentences(sents, vocab)[0], cfg.max_len)
        except ValueError as e:
            raise SystemExit(f"train_lm.py: {name}: {e}; raise model.max_len")
    log.info("LM text %s: %d sentences, %d words; vocabulary %d (min count %d), %d training words -> <unk>",
             text_path, len(train_sents), sum(map(len, train_sents)), len(vocab), topts.vocab_min_count, oov)

    model = TransformerLM(cfg)
    log.info("model: %s, %d parameters", cfg.to_json(), model.num_parameters())
    train = LMBatches(seqs, topts.batch_size, vocab.eos_id, shuffle=True, seed=topts.seed)
    trainer = LMTrainer(model, vocab, train, dev, topts, out, args.device, show_progress=not args.no_progress)
    t0 = time.time()
    trainer.fit(resume=args.resume)
    log.info("trained %d steps in %.0f s", trainer.step, time.time() - t0)

    model = trainer.model.eval()
    ppl = {}
    for name, sents in (("dev", dev), ("test", test)):
        ppl[name] = perplexity(model, vocab, sents, topts.eval_batch_size)
        log.info("%s: ppl %.2f over %d tokens (%d OOV words)", name, ppl[name]["ppl"], ppl[name]["tokens"],
                 ppl[name]["oov"])
    save_lm(model.cpu(), vocab, out / "model.pt")
    write_json_atomic(ppl, out / "ppl.json")
    # the float LM's size as the cost model counts it (the payload of its packed file at 32 bits): the
    # reference of every compression ratio of the LM (quantize_lm.py's size.json has the same keys)
    nbytes = lm_size(model.cfg).total_bytes
    write_json_atomic({"bytes": nbytes, "fp32_bytes": nbytes, "ratio": 1.0, "bits_per_weight": 32.0,
                       "num_parameters": model.num_parameters(), "weight_bits": {}}, out / "size.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
