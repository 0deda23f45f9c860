"""KL-divergence sensitivity: quantize one genotype layer at a time, compare output posteriors.

For every genotype layer ``l`` (all weights of the layer share one bit-width, see
``search_spaces.space.LayerSpace.weights``) and every candidate bit-width ``b`` of that layer, the model is run
with *only* layer ``l`` fake-quantized to ``b`` bits (every other weight at full precision) and compared
with the full-precision model on held-out batches::

    KL(l, b) = (1 / #valid frames) * sum_{utt, t < out_len} sum_n P_fp(n | t) * (log P_fp(n | t) - log P_q(n | t))

with ``P = softmax(chain_out)`` per output frame (the chain output is unnormalised, Kaldi style), valid frames
only (``t < out_lengths[b]``). The model is in eval mode (BatchNorm running statistics, no dropout). A
32-bit choice is the reference itself and gets KL 0 without a forward pass.

    from sensitivity.kl import kl_sensitivity
    sens = kl_sensitivity(model, layers, batches)      # {layer: {bits: kl}}
"""
from __future__ import annotations

from typing import Callable, Dict, Iterable, List, Mapping, Optional, Tuple, Union

import torch
import torch.nn.functional as F

def layer_specs(layers) -> List[Tuple[str, Tuple[str, ...], Tuple[int, ...]]]:
    """Normalise the layer description to ``[(name, weight names, bit choices)]``.

    Accepts a ``SearchSpace`` (uses ``.layers``), a list of objects with ``.name/.weights/.bits`` (LayerSpace),
    or a mapping ``name -> (weight names, bit choices)``."""
    if hasattr(layers, "layers"):
        layers = layers.layers
    out = []
    if isinstance(layers, Mapping):
        for name, (ws, bits) in layers.items():
            out.append((str(name), tuple(ws), tuple(int(b) for b in bits)))
    else:
        for l in layers:
            out.append((l.name, tuple(l.weights), tuple(int(b) for b in l.bits)))
    if not out:
        raise ValueError("no layers given")
    return out


def _to(batch: dict, device) -> Tuple[torch.Tensor, torch.Tensor]:
    return batch["feats"].to(device), batch["lengths"].to(device)


def _valid_log_probs(model, feats: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """log softmax(chain_out) on the valid frames only, as (frames, num_pdfs) float64."""
    chain, _xent, out_len = model(feats, lengths)
    T = chain.shape[1]
    mask = torch.arange(T, device=chain.device).unsqueeze(0) < out_len.to(chain.device).unsqueeze(1)
    return F.log_softmax(chain[mask].to(torch.float64), dim=-1)


def kl_divergence_frames(logp_ref: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """Per-frame KL(P_ref || Q) from log-probabilities (frames, classes) -> (frames,). Never negative."""
    p = logp_ref.exp()
    return (p * (logp_ref - logq)).sum(-1).clamp_min(0.0)


@torch.no_grad()
def kl_sensitivity(model, layers, batches: Iterable[dict], device: Optional[Union[str, torch.device]] = None,
                   max_batches: Optional[int] = None, progress=None,
                   log_probs: Optional[Callable[[object, dict], torch.Tensor]] = None) -> Dict[str, Dict[int, float]]:
    """``{layer: {bits: mean per-frame KL(P_fp || P_quantized)}}`` over the valid frames of ``batches``.

    ``model``: a TDNNF (``set_weight_bits``, ``cfg.weight_bits``); its weight bits and train/eval mode are
    restored on return. ``layers``: see :func:`layer_specs`. ``batches``: dicts with ``feats (B,T,F)`` and
    ``lengths (B,)`` (held-out data, e.g. the dev split). ``progress(layer, bits, kl)`` is called after
    each measurement when given.

    Any other model with the same quantization interface (``weight_params``, ``set_weight_bits``,
    ``cfg.weight_bits``, ``quant_enabled``; the Transformer LM) is measured by passing
    ``log_probs(model, batch) -> (N, C)`` log-probabilities of its N predictions (float64); the batches
    are then given to it as they are (the LM: next-word distributions at the non-padding positions)."""
    specs = layer_specs(layers)
    known = set(model.weight_params(include_xent=True))
    for name, ws, _ in specs:
        bad = [w for w in ws if w not in known]
        if bad:
            raise ValueError(f"layer {name}: unknown weight name(s) {bad}")
    if device is None:
        device = next(model.parameters()).device
    data = []
    for i, b in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            break
        data.append(_to(b, device) if log_probs is None else b)
    if log_probs is None:
        def log_probs(m, d):
            return _valid_log_probs(m, *d)
    if not data:
        raise ValueError("no batches to measure the KL divergence on")

    saved_bits = dict(model.cfg.weight_bits)
    saved_quant = getattr(model, "quant_enabled", True)
    was_training = model.training
    model.eval()
    model.quant_enabled = True
    try:
        model.set_weight_bits({})
        ref = [log_probs(model, d) for d in data]
        frames = sum(r.shape[0] for r in ref)
        if frames == 0:
            raise ValueError("the batches have no valid output frames")
        out: Dict[str, Dict[int, float]] = {}
        for name, ws, bit_choices in specs:
            out[name] = {}
            for bits in bit_choices:
                if bits == 32:
                    kl = 0.0
                else:
                    model.set_weight_bits({w: bits for w in ws})
                    total = 0.0
                    for d, r in zip(data, ref):
                        total += float(kl_divergence_frames(r, log_probs(model, d)).sum())
                    kl = total / frames
                out[name][int(bits)] = kl
                if progress is not None:
                    progress(name, bits, kl)
    finally:
        model.set_weight_bits(saved_bits)
        model.quant_enabled = saved_quant
        model.train(was_training)
    return out
