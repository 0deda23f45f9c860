"""Per-matrix bit-widths for the Transformer LM: uniform, KL-divergence and Hessian-trace allocation.

The methods are the acoustic model's, applied to the LM's weight matrices (``lm.model.matrix_names``):

* **KL** (``sensitivity.kl.kl_sensitivity``): quantize one matrix at a time to each candidate width and
  measure the mean KL divergence between the float LM's next-word distributions and the quantized LM's,
  over every non-padding position of held-out sentences.
* **Hessian** (``sensitivity.hessian.hessian_sensitivity``, HAWQ-V2): Hutchinson trace of the
  cross-entropy's Hessian block per matrix (exact double backward: the LM loss is twice
  differentiable) / its size, times ``||Q_b(W) - W||^2``.
* The allocation minimises the summed sensitivity under a byte budget with the one knapsack solver
  (``quant.knapsack.knapsack``) over the LM cost model's matrix sizes (``lm.quant.matrix_bytes``); biases and
  LayerNorm (``lm.quant.fixed_bytes``) are float32 at every allocation and come off the budget first.

Held-out sentences are the dev transcripts (never test).
"""
from __future__ import annotations

import math
from typing import Dict, List, Mapping, Sequence, Tuple

import torch
from torch.nn import functional as F

from lm.data import collate
from lm.model import TransformerLM, TransformerLMConfig, matrix_names
from lm.quant import fixed_bytes, lm_layout, lm_size, matrix_bytes
from lm.score import token_logprobs
from quant.knapsack import knapsack
from sensitivity.hessian import hessian_sensitivity
from sensitivity.kl import kl_sensitivity

METHODS = ("uniform", "kl", "hessian")


def matrix_specs(cfg: TransformerLMConfig, bit_choices: Sequence[int]) -> Dict[str, Tuple[List[str], List[int]]]:
    """``{matrix: ([matrix], bit choices)}``: every matrix is its own unit of allocation."""
    return {n: ([n], [int(b) for b in bit_choices]) for n in matrix_names(cfg)}


def heldout_batches(seqs: Sequence[Sequence[int]], pad_id: int, batch_size: int, max_batches: int) -> List[dict]:
    """The first ``max_batches`` batches of ``batch_size`` encoded sentences, in the given order."""
    out = []
    for start in range(0, len(seqs), batch_size):
        if len(out) >= max_batches:
            break
        out.append(collate(seqs[start: start + batch_size], pad_id))
    if not out:
        raise ValueError("no held-out sentences to measure sensitivities on")
    return out


def next_word_log_probs(model: TransformerLM, batch: dict) -> torch.Tensor:
    """(N, V) float64 log-probabilities of the next word at the N non-padding positions of ``batch``."""
    dev = next(model.parameters()).device
    logits = model(batch["inputs"].to(dev))
    return F.log_softmax(logits[batch["mask"].to(dev)].to(torch.float64), dim=-1)


def lm_kl_sensitivity(model: TransformerLM, batches: Sequence[dict], bit_choices: Sequence[int],
                      progress=None) -> Dict[str, Dict[int, float]]:
    """``{matrix: {bits: mean KL(P_fp || P_quantized) per predicted word}}``."""
    return kl_sensitivity(model, matrix_specs(model.cfg, bit_choices), batches, progress=progress,
                          log_probs=next_word_log_probs)


def lm_hessian_sensitivity(model: TransformerLM, batches: Sequence[dict], bit_choices: Sequence[int],
                           max_iters: int = 50, seed: int = 0, return_traces: bool = False):
    """``{matrix: {bits: Tr(H)/n * ||Q_b(W) - W||^2}}`` of the mean token cross-entropy on ``batches``
    (Hutchinson with exact Hessian-vector products)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def closure(b):
        def loss():
            # the math attention kernel: the fused CPU kernels have no double backward
            with sdpa_kernel([SDPBackend.MATH]):
                lp = token_logprobs(model, b)
            return -lp.sum() / b["mask"].sum()
        return loss

    return hessian_sensitivity(model, matrix_specs(model.cfg, bit_choices), [closure(b) for b in batches],
                               method="autograd", max_iters=max_iters, seed=seed, return_traces=return_traces)


def uniform_bits(cfg: TransformerLMConfig, bits: int) -> Dict[str, int]:
    return {n: int(bits) for n in matrix_names(cfg)}


def allocate_lm_bits(cfg: TransformerLMConfig, sensitivity: Mapping[str, Mapping[int, float]], budget_bytes: float,
                     bit_choices: Sequence[int]) -> Tuple[Dict[str, int], dict]:
    """The per-matrix bits of least total sensitivity whose packed LM fits ``budget_bytes`` (payload
    bytes, ``lm.quant.lm_size``). Returns ``(weight_bits, info)``; ``info`` has the budget, the
    allocation's bytes, the total sensitivity and whether the knapsack was exact."""
    missing = sorted(set(matrix_names(cfg)) - set(sensitivity))
    if missing:
        raise ValueError(f"no sensitivity for matrices {missing}")
    fixed = fixed_bytes(cfg)
    alloc = knapsack({k: dict(v) for k, v in sensitivity.items()}, matrix_bytes(cfg, bit_choices),
                     float(budget_bytes) - fixed)
    bits = {k: int(v) for k, v in alloc.bits.items()}
    total = lm_size(cfg.replace(weight_bits=bits)).total_bytes
    if total != alloc.total_bytes + fixed:
        raise RuntimeError(f"cost model mismatch: matrices {alloc.total_bytes} + fixed {fixed} != LM {total}")
    info = {"budget_bytes": int(math.floor(budget_bytes)), "bytes": total, "fixed_bytes": fixed,
            "total_sensitivity": alloc.total_sensitivity, "exact": alloc.exact,
            "bits_per_weight": average_bits(cfg.replace(weight_bits=bits))}
    return bits, info


def average_bits(cfg: TransformerLMConfig) -> float:
    """Mean bits per matrix element (weights only, the tied head once; scales and floats not counted)."""
    sizes = {t.name: math.prod(t.shape) for t in lm_layout(cfg) if t.kind == "weight"}
    total = sum(sizes.values())
    return sum(cfg.bits_of(n) * k for n, k in sizes.items()) / total
