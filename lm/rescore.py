"""Second pass: re-rank n-best lists of the HCLG decoder with the Transformer LM.

Each hypothesis carries four costs, all natural-log units (``-ln p``), lower is better:

* ``acoustic``: scaled acoustic cost of its best alignment in the lattice (``decoding.nbest``);
* ``graph``: HCLG cost of that alignment (n-gram LM of G + lexicon silence/pronunciation costs);
* ``ngram``: ``-ln P_ngram(w)`` of the words under the graph's ARPA model (``decoding.lm``; the ARPA
  file's log10 values are converted to natural log), ``</s>`` included;
* ``nnlm``: ``-ln P_transformer(w)`` from ``lm.score.sentence_logprobs`` (``<eos>`` included; words
  outside its vocabulary scored as ``<unk>``).

The rescored cost is

    cost = acoustic + lm_weight * (graph - ngram + (1 - alpha) * ngram + alpha * nnlm)
         = acoustic + lm_weight * (graph + alpha * (nnlm - ngram))

``graph - ngram`` keeps the lexicon costs, ``alpha`` interpolates the two LMs in the log domain. With
``lm_weight = 1`` and ``alpha = 0`` the cost is the first pass's (``acoustic + graph``), so the ranking
is the decoder's. ``graph - ngram`` is the lexicon cost only when G's best path scores the words
exactly as the ARPA model does; G can take a back-off arc where the ARPA lists the n-gram (the
Viterbi best over G's paths is at most the ARPA cost), so it can differ slightly.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from decoding.wer import align_utterance
from lm.onnx import load_lm_onnx
from lm.score import load_lm, sentence_logprobs
from lm.vocab import Vocab

logger = logging.getLogger(__name__)

DEFAULT_LM_WEIGHTS = (0.5, 0.7, 0.85, 1.0, 1.2, 1.5, 2.0)
DEFAULT_ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)


@dataclass
class ScoredHypothesis:
    """One n-best entry with every cost the rescoring formula needs (see the module doc)."""

    words: List[str]
    acoustic: float
    graph: float
    ngram: float = 0.0
    nnlm: float = 0.0
    oov: int = 0  # words scored as <unk> by the Transformer LM

    def cost(self, lm_weight: float = 1.0, alpha: float = 0.0) -> float:
        return rescored_cost(self.acoustic, self.graph, self.ngram, self.nnlm, lm_weight, alpha)

    def to_json(self) -> dict:
        d = asdict(self)
        d["words"] = " ".join(self.words)
        return d

    @classmethod
    def from_json(cls, d: Mapping) -> "ScoredHypothesis":
        d = dict(d)
        d["words"] = d["words"].split()
        return cls(**d)


def rescored_cost(acoustic, graph, ngram, nnlm, lm_weight: float = 1.0, alpha: float = 0.0):
    """``acoustic + lm_weight * (graph - ngram + (1 - alpha) * ngram + alpha * nnlm)``; works on floats
    and numpy arrays alike."""
    return acoustic + lm_weight * (graph - ngram + (1.0 - alpha) * ngram + alpha * nnlm)


# ----------------------------------------------------------------------------- language models
def load_rescoring_lm(path, vocab_path=None, device: str = "cpu"):
    """(model, vocab) of a ``model.pt`` written by train_lm.py, or of its ONNX export (``.onnx``,
    ``lm.onnx``: scored through onnxruntime on the CPU).

    The vocabulary file ``vocab_path`` (default: ``vocab.txt`` beside the model, when present) must be
    the model's own; another one is refused with a ``ValueError`` naming the first difference."""
    p = Path(path)
    if p.suffix == ".onnx":
        if str(device) != "cpu":
            raise ValueError(f"{p}: ONNX language models run on onnxruntime's CPU provider; got --device {device}")
        vocab = Vocab.load(vocab_path) if vocab_path is not None else None
        try:
            return load_lm_onnx(str(p), vocab)
        except ValueError as e:
            if "is not the one" in str(e):
                raise ValueError(f"vocabulary file {vocab_path} does not match the language model {p}: {e}") from e
            raise
    if vocab_path is None and (p.parent / "vocab.txt").is_file():
        vocab_path = p.parent / "vocab.txt"
    vocab = None
    if vocab_path is not None:
        vocab = Vocab.load(vocab_path)
        try:
            return load_lm(p, device=device, vocab=vocab)
        except ValueError as e:
            if "is not the one" in str(e):
                raise ValueError(f"vocabulary file {vocab_path} does not match the language model {p}: {e}") from e
            raise
    return load_lm(p, device=device)


def ngram_costs(ngram_model, sentences: Sequence[Sequence[str]]) -> List[float]:
    """``-ln P(w </s> | <s>)`` per sentence under a ``decoding.lm.NgramModel`` (ARPA back-off rule)."""
    return [-ngram_model.sentence_logprob(s) for s in sentences]


def nnlm_costs(model, vocab, sentences: Sequence[Sequence[str]], batch_size: int = 64
               ) -> Tuple[List[float], List[int]]:
    """(``-ln P_transformer(w <eos>)``, number of words scored as ``<unk>``) per sentence; batched."""
    if not sentences:
        return [], []
    logp, _tokens, oov = sentence_logprobs(model, vocab, sentences, batch_size)
    return [-x for x in logp], list(oov)


def score_nbest(nbest: Mapping[str, Sequence], ngram_model, model, vocab, batch_size: int = 64
                ) -> Dict[str, List[ScoredHypothesis]]:
    """Add n-gram and Transformer costs to n-best lists ({utt: [decoding.nbest.Hypothesis or
    ScoredHypothesis]}); every hypothesis of every utterance is scored in one batched pass."""
    flat = [(u, h) for u in nbest for h in nbest[u]]
    sents = [list(h.words) for _, h in flat]
    ng = ngram_costs(ngram_model, sents)
    nn, oov = nnlm_costs(model, vocab, sents, batch_size)
    out: Dict[str, List[ScoredHypothesis]] = {u: [] for u in nbest}
    for (u, h), a, b, o in zip(flat, ng, nn, oov):
        out[u].append(ScoredHypothesis(list(h.words), float(h.acoustic), float(h.graph), a, b, o))
    return out


def rescore_nnlm(nbest: Mapping[str, Sequence[ScoredHypothesis]], model, vocab, batch_size: int = 64
                 ) -> Dict[str, List[ScoredHypothesis]]:
    """The same n-best lists with the Transformer costs (``nnlm``, ``oov``) of another LM; the acoustic,
    graph and n-gram costs are kept (e.g. lists read back with :func:`read_nbest_jsonl`)."""
    flat = [(u, h) for u in nbest for h in nbest[u]]
    nn, oov = nnlm_costs(model, vocab, [list(h.words) for _, h in flat], batch_size)
    out: Dict[str, List[ScoredHypothesis]] = {u: [] for u in nbest}
    for (u, h), b, o in zip(flat, nn, oov):
        out[u].append(ScoredHypothesis(list(h.words), float(h.acoustic), float(h.graph), float(h.ngram), b, o))
    return out


# ----------------------------------------------------------------------------- selection
def rescore(nbest: Mapping[str, Sequence[ScoredHypothesis]], lm_weight: float = 1.0, alpha: float = 0.0
            ) -> Dict[str, List[str]]:
    """{utt: words of the lowest-cost hypothesis}; an empty list gives an empty hypothesis. Ties go to
    the earlier hypothesis (the better one of the first pass)."""
    out = {}
    for u, hyps in nbest.items():
        if not hyps:
            out[u] = []
            continue
        costs = [h.cost(lm_weight, alpha) for h in hyps]
        out[u] = list(hyps[min(range(len(hyps)), key=lambda i: (costs[i], i))].words)
    return out


def first_pass(nbest: Mapping[str, Sequence[ScoredHypothesis]]) -> Dict[str, List[str]]:
    """{utt: first-pass 1-best} (the first hypothesis; n-best lists are in first-pass order)."""
    return {u: list(h[0].words) if h else [] for u, h in nbest.items()}


def counts(nbest: Mapping[str, Sequence[ScoredHypothesis]]) -> Dict[str, int]:
    """Utterances, hypotheses, empty n-best lists (decoding failed: an empty hypothesis is used),
    and OOV words (scored as ``<unk>``) over all hypotheses and in the first-pass 1-bests."""
    return {"utterances": len(nbest), "hypotheses": sum(len(h) for h in nbest.values()),
            "empty_nbest": sum(1 for h in nbest.values() if not h),
            "oov_words": sum(x.oov for h in nbest.values() for x in h),
            "oov_words_1best": sum(h[0].oov for h in nbest.values() if h)}


def oracle(nbest: Mapping[str, Sequence[ScoredHypothesis]], refs: Mapping[str, Sequence[str]]
           ) -> Dict[str, List[str]]:
    """{utt: the hypothesis with the fewest word errors} (first such in list order)."""
    out = {}
    for u, hyps in nbest.items():
        if not hyps:
            out[u] = []
            continue
        errs = [align_utterance(u, refs[u], h.words).errors for h in hyps]
        out[u] = list(hyps[errs.index(min(errs))].words)
    return out


@dataclass
class GridResult:
    lm_weight: float
    alpha: float
    wer: float  # percent
    errors: int
    changed: int  # utterances whose choice differs from the first-pass 1-best


@dataclass
class GridSearch:
    best: GridResult
    results: List[GridResult] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"best": asdict(self.best), "results": [asdict(r) for r in self.results]}


def grid_search(nbest: Mapping[str, Sequence[ScoredHypothesis]], refs: Mapping[str, Sequence[str]],
                lm_weights: Iterable[float] = DEFAULT_LM_WEIGHTS, alphas: Iterable[float] = DEFAULT_ALPHAS
                ) -> GridSearch:
    """WER of every (lm_weight, alpha) on the utterances of ``refs`` (tune on dev only).

    The best is the lowest WER; ties go to the smaller change from the first pass: fewer utterances
    whose choice differs from the first-pass 1-best, then smaller ``alpha``, then ``lm_weight``
    closer to 1."""
    import numpy as np

    lm_weights, alphas = [float(x) for x in lm_weights], [float(x) for x in alphas]
    if not lm_weights or not alphas:
        raise ValueError("the grid needs at least one lm_weight and one alpha")
    utts = sorted(refs)
    ref_words = sum(len(list(refs[u])) for u in utts)
    per_utt = []  # (acoustic, graph, ngram, nnlm arrays, errors per hypothesis) or errors of ""
    for u in utts:
        hyps = list(nbest.get(u, []))
        if not hyps:
            per_utt.append((None, align_utterance(u, refs[u], []).errors))
            continue
        arr = np.array([[h.acoustic, h.graph, h.ngram, h.nnlm] for h in hyps], dtype=np.float64)
        errs = np.array([align_utterance(u, refs[u], h.words).errors for h in hyps])
        per_utt.append((arr, errs))
    results = []
    for lw in lm_weights:
        for al in alphas:
            errors = changed = 0
            for arr, errs in per_utt:
                if arr is None:
                    errors += errs
                    continue
                c = rescored_cost(arr[:, 0], arr[:, 1], arr[:, 2], arr[:, 3], lw, al)
                k = int(np.argmin(c))  # first minimum: ties go to the first-pass order
                errors += int(errs[k])
                changed += int(k != 0)
            wer = 100.0 * errors / ref_words if ref_words else 0.0
            results.append(GridResult(lw, al, wer, errors, changed))
    best = min(results, key=lambda r: (r.errors, r.changed, r.alpha, abs(r.lm_weight - 1.0), r.lm_weight))
    return GridSearch(best, results)


# ----------------------------------------------------------------------------- files
def write_nbest_jsonl(path, nbest: Mapping[str, Sequence[ScoredHypothesis]],
                      refs: Optional[Mapping[str, Sequence[str]]] = None) -> None:
    """One line per utterance (sorted ids): ``{"utt", "ref" (if known), "hyps": [{"words", "acoustic",
    "graph", "ngram", "nnlm", "oov"}, ...]}`` in first-pass order."""
    import json

    with open(path, "w", encoding="utf-8") as f:
        for u in sorted(nbest):
            d = {"utt": u}
            if refs is not None and u in refs:
                d["ref"] = " ".join(refs[u])
            d["hyps"] = [h.to_json() for h in nbest[u]]
            f.write(json.dumps(d) + "\n")


def read_nbest_jsonl(path) -> Dict[str, List[ScoredHypothesis]]:
    import json

    out = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                d = json.loads(line)
                out[d["utt"]] = [ScoredHypothesis.from_json(h) for h in d["hyps"]]
    return out
