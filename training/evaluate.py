"""Per-frame LF-MMI objective of a model on a prepared split, outside a training run (diagnostics).

    corpus = load_corpus("data/synth_demo")
    ev = Evaluator(corpus, lfmmi_cfg)             # den graph and numerator compiler built once
    ev.objf(model, "dev")                         # {"objf_per_frame", "frames", "sequences"}

The model runs in eval mode (BatchNorm running statistics, no dropout), as in ``Trainer.validate``.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch

from training.experiment import Corpus, make_batches, make_lfmmi


class Evaluator:
    def __init__(self, corpus: Corpus, lfmmi_cfg: Optional[Dict[str, Any]] = None, max_duration: float = 300.0):
        self.corpus, self.max_duration = corpus, float(max_duration)
        self.loss_fn, self.compiler, self.den = make_lfmmi(corpus, lfmmi_cfg)
        self._batches: Dict[str, Any] = {}

    def batches(self, split: str):
        if split not in self._batches:
            self._batches[split] = make_batches(self.corpus.cuts(split), self.corpus, self.max_duration, False, 0)
        return self._batches[split]

    @torch.no_grad()
    def objf(self, model, split: str = "dev", device="cpu") -> Dict[str, float]:
        """Frame-weighted mean LF-MMI objective per frame (higher is better) over ``split``."""
        model.eval()
        tot = frames = seqs = 0.0
        for batch in self.batches(split).epoch(0):
            chain, xent, out_len = model(batch["feats"].to(device), batch["lengths"].to(device))
            _, st = self.loss_fn(chain, xent, out_len, self.compiler.compile(batch["texts"]))
            tot += st["objf_per_frame"] * st["frames"]
            frames += st["frames"]
            seqs += st["sequences"]
        # no frame measured (every sequence skipped): NaN, not a perfect-looking 0.0
        objf = tot / frames if frames > 0 else float("nan")
        return {"objf_per_frame": objf, "frames": frames, "sequences": seqs}
