#!/usr/bin/env python
"""Score sentences with a trained Transformer LM (train_lm.py's model.pt).

    python score_lm.py --model exp/lm/fp32/model.pt --text sentences.txt
    python score_lm.py --model exp/lm/fp32/model.pt --text hyps.txt --utt-ids --out scores.txt \
        --ppl-json ppl.json

Input: one sentence a line (words separated by white space); with ``--utt-ids`` the first field of a
line is an id and the rest the sentence (which may be empty). Without ids, blank lines are skipped and a
sentence's id is its 1-based line number.

Output (``--out`` or stdout): ``<id> <logprob> <tokens> <oov>`` per sentence, in input order, where logprob
is the natural-log probability of the words and the final ``<eos>`` and tokens = words + 1. The
perplexity over all sentences is logged, and written as JSON (``{"ppl", "logprob", "tokens", "oov",
"sentences"}``) with ``--ppl-json``.

``--vocab`` checks that a vocabulary file is the model's own (a model is refused with any other).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys

from training.cli import HelpFormatter

# lm.score and lm.vocab are imported inside main(): lm.score brings torch, seconds to import, which --help
# and argument errors do not need.

log = logging.getLogger("score_lm")


def read_scoring_text(path, utt_ids: bool):
    """-> (ids, sentences as word lists)."""
    ids, sents = [], []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            fields = line.split()
            if utt_ids:
                if not fields:
                    continue
                ids.append(fields[0])
                sents.append(fields[1:])
            elif fields:
                ids.append(str(n))
                sents.append(fields)
    if not sents:
        raise ValueError(f"{path} holds no sentences")
    return ids, sents


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--model", required=True, help="model.pt written by train_lm.py")
    p.add_argument("--text", required=True, help="sentences to score, one a line")
    p.add_argument("--utt-ids", action="store_true", help="the first field of each line is an id")
    p.add_argument("--vocab", default=None, help="vocab.txt that must match the model's vocabulary")
    p.add_argument("--out", default=None, help="per-sentence scores (default: stdout)")
    p.add_argument("--ppl-json", default=None, help="write the perplexity summary here")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="cpu")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from lm.onnx import load_lm_onnx
    from lm.score import load_lm, sentence_logprobs
    from lm.vocab import Vocab

    try:
        vocab = Vocab.load(args.vocab) if args.vocab else None
        if args.model.endswith(".onnx"):  # the LM's ONNX export (export_onnx.py --lm), onnxruntime on the CPU
            model, vocab = load_lm_onnx(args.model, vocab)
        else:
            model, vocab = load_lm(args.model, args.device, vocab=vocab)
        ids, sents = read_scoring_text(args.text, args.utt_ids)
        logp, toks, oovs = sentence_logprobs(model, vocab, sents, args.batch_size)
    except (OSError, ValueError, RuntimeError) as e:
        raise SystemExit(f"score_lm.py: {e}")
    lines = "".join(f"{i} {lp:.6f} {t} {o}\n" for i, lp, t, o in zip(ids, logp, toks, oovs))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(lines)
    else:
        sys.stdout.write(lines)
    total, tokens = math.fsum(logp), sum(toks)
    summary = {"ppl": math.exp(-total / tokens), "logprob": total, "tokens": tokens, "oov": sum(oovs),
               "sentences": len(sents)}
    log.info("%d sentences, %d tokens (%d OOV words): perplexity %.3f", len(sents), tokens, summary["oov"],
             summary["ppl"])
    if args.ppl_json:
        with open(args.ppl_json, "w") as f:
            json.dump(summary, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
