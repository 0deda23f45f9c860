"""Sentence log-probabilities, perplexity, and the ``model.pt`` file of a trained LM.

The log-probability of a sentence ``w1 .. wn`` (natural log) is
``sum_{i=1..n+1} log p(w_i | <eos> w1 .. w_{i-1})`` with ``w_{n+1} = <eos>``: its n words plus the
end of sentence, so it has n + 1 tokens. Words outside the vocabulary are scored as ``<unk>`` and
counted as OOV. Perplexity over a set of sentences is ``exp(-sum logprob / sum tokens)``.

``model.pt`` (read with ``torch.load(weights_only=True)``)::

    format       "green-asr-lm-v1"
    config       JSON of TransformerLMConfig
    vocab        list of str, the vocabulary in id order (vocab.txt's lines)
    vocab_sha1   Vocab.fingerprint()
    state_dict   the model's parameters (tok_emb.weight and lm_head.weight share storage when tied)
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch.nn import functional as F

from lm.data import collate, encode_sentences
from lm.model import TransformerLM, TransformerLMConfig
from lm.quant import load_packed_lm
from lm.vocab import Vocab
from training.safe_io import load, save_atomic

MODEL_FORMAT = "green-asr-lm-v1"


def token_logprobs(model: TransformerLM, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, L) float32: log p(targets[b, t] | inputs[b, :t+1]); 0 where ``mask`` is False."""
    dev = getattr(model, "device", None) or next(model.parameters()).device  # .device: lm.onnx's model
    logits = model(batch["inputs"].to(dev))
    lp = F.log_softmax(logits.float(), dim=-1).gather(-1, batch["targets"].to(dev).unsqueeze(-1)).squeeze(-1)
    return lp * batch["mask"].to(dev)


def check_length(seqs: Sequence[Sequence[int]], max_len: int) -> None:
    for i, s in enumerate(seqs):
        if len(s) - 1 > max_len:
            raise ValueError(f"sentence {i} has {len(s) - 2} words; the model reads at most {max_len - 1}")


@torch.no_grad()
def sentence_logprobs(model: TransformerLM, vocab: Vocab, sentences: Sequence[Sequence[str]],
                      batch_size: int = 64) -> Tuple[List[float], List[int], List[int]]:
    """-> (natural-log probability, tokens = words + 1, OOV words) per sentence, in input order.

    Sentences are batched in order of length (less padding); the model is put in eval mode."""
    if len(vocab) != model.cfg.vocab_size:
        raise ValueError(f"vocabulary has {len(vocab)} words, the model {model.cfg.vocab_size}")
    model.eval()
    seqs = []
    oovs = []
    for s in sentences:
        enc, oov = encode_sentences([s], vocab)
        seqs.append(enc[0])
        oovs.append(oov)
    check_length(seqs, model.cfg.max_len)
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    logp = [0.0] * len(seqs)
    for start in range(0, len(order), batch_size):
        idx = order[start: start + batch_size]
        batch = collate([seqs[i] for i in idx], vocab.eos_id, idx)
        sums = token_logprobs(model, batch).double().sum(dim=1).cpu()
        for i, v in zip(idx, sums.tolist()):
            logp[i] = v
    return logp, [len(s) - 1 for s in seqs], oovs


def perplexity(model: TransformerLM, vocab: Vocab, sentences: Sequence[Sequence[str]],
               batch_size: int = 64) -> Dict[str, float]:
    """{"ppl", "logprob" (natural-log total), "tokens" (words + one <eos> per sentence), "oov",
    "sentences"}."""
    logp, toks, oovs = sentence_logprobs(model, vocab, sentences, batch_size)
    total, tokens = math.fsum(logp), sum(toks)
    return {"ppl": math.exp(-total / tokens) if tokens else float("nan"), "logprob": total,
            "tokens": tokens, "oov": sum(oovs), "sentences": len(sentences)}


# ---------------------------------------------------------------------------- model.pt
def save_lm(model: TransformerLM, vocab: Vocab, path) -> None:
    """Write ``model.pt`` atomically (format in the module docstring)."""
    if len(vocab) != model.cfg.vocab_size:
        raise ValueError(f"vocabulary has {len(vocab)} words, the model {model.cfg.vocab_size}")
    sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if model.cfg.tie_embeddings:
        sd["lm_head.weight"] = sd["tok_emb.weight"]
    save_atomic({"format": MODEL_FORMAT, "config": model.cfg.to_json(), "vocab": list(vocab.words),
                 "vocab_sha1": vocab.fingerprint(), "state_dict": sd}, path)


def load_lm(path, device="cpu", vocab: Optional[Vocab] = None) -> Tuple[TransformerLM, Vocab]:
    """(model in eval mode, its vocabulary) from ``model.pt``, or from a packed low-bit LM
    (``model.safetensors`` of quantize_lm.py, ``lm.quant.load_packed_lm``).

    With ``vocab`` given, it must equal the model's vocabulary (ids index the embedding rows): a
    different one is refused with the first difference named."""
    p = Path(path)
    if p.suffix == ".safetensors":  # a packed low-bit LM (quantize_lm.py)
        return load_packed_lm(p, device, vocab)
    obj = load(p)
    if obj.get("format") != MODEL_FORMAT:
        raise ValueError(f"{p} is not a language model file written by train_lm.py (format={obj.get('format')!r})")
    model_vocab = Vocab(obj["vocab"])
    if model_vocab.fingerprint() != obj.get("vocab_sha1"):
        raise ValueError(f"{p}: the stored vocabulary does not match its recorded sha1 (corrupt file?)")
    if vocab is not None and vocab != model_vocab:
        raise ValueError(f"the vocabulary ({len(vocab)} words) is not the one {p} was trained with "
                         f"({len(model_vocab)} words): {model_vocab.first_difference(vocab)}")
    cfg = TransformerLMConfig.from_dict(json.loads(obj["config"]), source=str(p))
    if cfg.vocab_size != len(model_vocab):
        raise ValueError(f"{p}: config has vocab_size {cfg.vocab_size}, the stored vocabulary {len(model_vocab)} words")
    model = TransformerLM(cfg)
    try:
        model.load_state_dict(obj["state_dict"])
    except RuntimeError as e:
        raise RuntimeError(f"{p}: weights do not match the recorded config: {e}") from e
    return model.to(device).eval(), model_vocab
