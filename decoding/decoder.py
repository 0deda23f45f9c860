"""Decode network outputs with an HCLG graph (kaldi-decoder), and decode lhotse cuts with a model.

Network output: a [T, num_pdfs] matrix of unnormalised log pseudo-likelihoods (chain models) or
log-posteriors. The decoder maximises  acoustic_scale * sum_t y(t, pdf_t) - graph_cost
- word_insertion_penalty * (number of words).
Graph input label i reads column i - 1 (``DecodableCtc``), matching decoding/graph.py.

An utterance that cannot be decoded (features that cannot be loaded or are non-finite, a non-finite
network output, no surviving path) is never dropped silently: :func:`compute_outputs` and
:func:`decode_outputs` record ``{utterance id: reason}`` in their ``failures`` dict and log the id; its
hypothesis is empty, so scoring counts its words as deletions.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from .wer import corpus_wer

logger = logging.getLogger(__name__)


@dataclass
class DecoderConfig:
    acoustic_scale: float = 1.0  # Kaldi chain models decode with 1.0
    beam: float = 15.0
    max_active: int = 7000
    min_active: int = 200
    lattice_beam: float = 8.0
    lattice: bool = False  # True: LatticeSimpleDecoder (needed for LM-weight sweeps)
    word_insertion_penalty: float = 0.0  # added to the graph cost of every hypothesised word


def _fst(graph, cfg: DecoderConfig):
    """The graph's HCLG, with the config's word insertion penalty on its word arcs when it has one."""
    return graph.penalized_fst(cfg.word_insertion_penalty) if cfg.word_insertion_penalty else graph.fst


@dataclass
class DecodeResult:
    words: List[str]
    word_ids: List[int]
    cost: float  # total (graph + scaled acoustic) cost of the best path
    reached_final: bool
    num_frames: int
    error: Optional[str] = None  # why no hypothesis was found (the words are then empty)


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.ascontiguousarray(np.asarray(x, dtype=np.float32))


def _best_path_words(lattice) -> Tuple[List[int], float]:
    import kaldifst

    ok, _ilabels, olabels, w = kaldifst.get_linear_symbol_sequence(lattice)
    if not ok:
        raise RuntimeError("best path is not linear")
    return list(olabels), float(w.value1 + w.value2)


def decode_matrix(loglikes, graph, config: Optional[DecoderConfig] = None) -> DecodeResult:
    """Best word sequence for one utterance. loglikes: [T, num_pdfs] numpy array or torch tensor."""
    import kaldi_decoder

    cfg = config or DecoderConfig()
    m = _to_numpy(loglikes)
    if m.ndim != 2 or m.shape[1] != graph.num_pdfs:
        raise ValueError(f"expected [T, {graph.num_pdfs}] matrix, got {m.shape}")
    if m.shape[0] == 0:
        return DecodeResult([], [], 0.0, False, 0)
    if not np.isfinite(m).all():
        return DecodeResult([], [], math.inf, False, m.shape[0], error="non-finite network output")
    if cfg.acoustic_scale != 1.0:
        m = m * np.float32(cfg.acoustic_scale)
    decodable = kaldi_decoder.DecodableCtc(m)
    if cfg.lattice:
        lat_cfg = kaldi_decoder.LatticeSimpleDecoderConfig(beam=cfg.beam, lattice_beam=cfg.lattice_beam)
        dec = kaldi_decoder.LatticeSimpleDecoder(_fst(graph, cfg), lat_cfg)
        dec.decode(decodable)
        ok, best = dec.get_best_path(use_final_probs=True)
        reached = ok
        if not ok:
            ok, best = dec.get_best_path(use_final_probs=False)
    else:
        opts = kaldi_decoder.FasterDecoderOptions(beam=cfg.beam, max_active=cfg.max_active,
                                                  min_active=cfg.min_active)
        dec = kaldi_decoder.FasterDecoder(_fst(graph, cfg), opts)
        dec.decode(decodable)
        reached = dec.reached_final()
        ok, best = dec.get_best_path(use_final_probs=True)
        if not ok:
            ok, best = dec.get_best_path(use_final_probs=False)
    if not ok:
        return DecodeResult([], [], math.inf, False, m.shape[0], error="no surviving path")
    ids, cost = _best_path_words(best)
    return DecodeResult(graph.ids_to_words(ids), ids, cost, reached, m.shape[0])


def raw_lattice(loglikes, graph, config: Optional[DecoderConfig] = None):
    """State-level lattice (graph cost, acoustic cost per arc) with acoustic scale applied."""
    import kaldi_decoder

    cfg = config or DecoderConfig()
    m = _to_numpy(loglikes) * np.float32(cfg.acoustic_scale)
    dec = kaldi_decoder.LatticeSimpleDecoder(
        _fst(graph, cfg), kaldi_decoder.LatticeSimpleDecoderConfig(beam=cfg.beam, lattice_beam=cfg.lattice_beam))
    dec.decode(kaldi_decoder.DecodableCtc(m))
    ok, lat = dec.get_raw_lattice(use_final_probs=True)
    if not ok or lat.num_states == 0:
        ok, lat = dec.get_raw_lattice(use_final_probs=False)
    return lat


def best_path_with_lm_weight(lattice, graph, lm_weight: float) -> List[str]:
    """1-best of a raw lattice with the graph (LM) cost scaled by lm_weight (acoustic scale 1)."""
    import kaldifst

    lat = lattice.copy() if hasattr(lattice, "copy") else lattice
    kaldifst.scale_lattice(kaldifst.lattice_scale(lm_weight, 1.0), lat)
    best = kaldifst.shortest_path(lat)
    ids, _ = _best_path_words(best)
    return graph.ids_to_words(ids)


# ----------------------------------------------------------------------------- cuts + model
def _cut_features(cut, feature_extractor=None, sampling_rate: Optional[int] = None) -> np.ndarray:
    if cut.has_features and feature_extractor is None:
        return cut.load_features()
    if feature_extractor is None:
        from lhotse import Fbank, FbankConfig

        feature_extractor = Fbank(FbankConfig(num_mel_bins=40))
    audio = cut.load_audio()
    audio = audio[0] if audio.ndim == 2 else audio
    sr = cut.sampling_rate
    if sampling_rate is not None and sr != sampling_rate:
        audio, sr = resample(audio, sr, sampling_rate), sampling_rate
    return feature_extractor.extract(audio.astype(np.float32), sr)


def resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Band-limited resampling by zero-padding / truncating the spectrum (whole signal at once).

    lhotse's own Resample needs scipy or torchaudio, which are not installed here.
    """
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    m = int(round(n * sr_out / sr_in))
    if n == 0 or m == n:
        return x.astype(np.float32)
    X = np.fft.rfft(x)
    Y = np.zeros(m // 2 + 1, dtype=complex)
    k = min(len(X), len(Y))
    Y[:k] = X[:k]
    if m < n and m % 2 == 0:
        Y[-1] = Y[-1].real  # Nyquist bin of the shorter signal
    return (np.fft.irfft(Y, m) * (m / n)).astype(np.float32)


def _batches(items: Sequence, max_frames: int, max_batch: int) -> Iterable[List]:
    batch, longest = [], 0
    for it in items:
        n = it[1].shape[0]
        if batch and (max(longest, n) * (len(batch) + 1) > max_frames or len(batch) >= max_batch):
            yield batch
            batch, longest = [], 0
        batch.append(it)
        longest = max(longest, n)
    if batch:
        yield batch


def compute_outputs(forward_fn: Callable, cuts, cmvn: Optional[Dict[str, Sequence[float]]] = None,
                    device: str = "cpu", max_frames: int = 20000, max_batch: int = 32,
                    feature_extractor=None, sampling_rate: Optional[int] = None,
                    progress: bool = True, failures: Optional[Dict[str, str]] = None) -> Dict[str, np.ndarray]:
    """Run the model over cuts: {cut_id: chain output [T_out, num_pdfs] float32}.

    forward_fn(feats (B, T, F) float32 tensor, lengths (B,) int64) -> (chain_out, _, out_lengths).
    Features come from the cuts (or are computed with `feature_extractor`, resampling recordings to
    `sampling_rate` first); `cmvn` ({"mean", "std"}) is applied as the data loader does in training.
    A cut whose features cannot be loaded or are non-finite, or whose output is non-finite, is left out
    of the result and recorded in `failures` ({cut_id: reason}, when given) with a warning naming it.
    """
    import torch
    from tqdm import tqdm

    mean = std = None
    if cmvn is not None:  # {"mean", "std"} or an object with .mean / .std (training.data.Cmvn)
        get = (lambda k: cmvn[k]) if isinstance(cmvn, dict) else (lambda k: getattr(cmvn, k))
        mean = np.asarray(_to_numpy(get("mean")), dtype=np.float32).reshape(-1)
        std = np.asarray(_to_numpy(get("std")), dtype=np.float32).reshape(-1)
    failures = failures if failures is not None else {}
    feats = []
    for cut in cuts:
        try:
            f = np.asarray(_cut_features(cut, feature_extractor, sampling_rate), dtype=np.float32)
        except Exception as e:  # a broken file: this utterance fails, the others are decoded
            _fail(failures, cut.id, f"cannot load features: {' '.join(str(e).split())}")
            continue
        if not np.isfinite(f).all():
            _fail(failures, cut.id, "non-finite features")
            continue
        if mean is not None:
            f = (f - mean) / np.maximum(std, 1e-5)
        feats.append((cut.id, f))
    order = sorted(range(len(feats)), key=lambda i: -feats[i][1].shape[0])
    items = [feats[i] for i in order]
    out: Dict[str, np.ndarray] = {}
    bar = tqdm(total=len(items), desc="forward", disable=not progress, leave=False)
    with torch.no_grad():
        for batch in _batches(items, max_frames, max_batch):
            T = max(f.shape[0] for _, f in batch)
            F = batch[0][1].shape[1]
            x = np.zeros((len(batch), T, F), dtype=np.float32)
            for b, (_, f) in enumerate(batch):
                x[b, : f.shape[0]] = f  # zero padding, as training.data.collate does
            lens = torch.tensor([f.shape[0] for _, f in batch], dtype=torch.int64)
            y, _, ylens = forward_fn(torch.from_numpy(x).to(device), lens.to(device))
            y = y.float().cpu().numpy()
            for b, (cid, _) in enumerate(batch):
                yb = np.ascontiguousarray(y[b, : int(ylens[b])])
                if np.isfinite(yb).all():
                    out[cid] = yb
                else:
                    _fail(failures, cid, "non-finite network output")
            bar.update(len(batch))
    bar.close()
    return out


def _fail(failures: Dict[str, str], cut_id: str, reason: str) -> None:
    failures[cut_id] = reason
    logger.warning("utterance %s: %s; scored as an empty hypothesis", cut_id, reason)


def decode_outputs(outputs: Dict[str, np.ndarray], graph, config: Optional[DecoderConfig] = None,
                   progress: bool = True, failures: Optional[Dict[str, str]] = None) -> Dict[str, List[str]]:
    """{cut_id: words} for each [T, num_pdfs] output; an utterance the decoder fails on gets [] and,
    when `failures` is given, an entry {cut_id: reason} there (with a warning naming it)."""
    from tqdm import tqdm

    failures = failures if failures is not None else {}
    hyps = {}
    for cid in tqdm(list(outputs), desc="decode", disable=not progress, leave=False):
        try:
            res = decode_matrix(outputs[cid], graph, config)
        except RuntimeError as e:  # an error inside the decoder for this utterance only
            res = DecodeResult([], [], math.inf, False, 0, error=f"decoder error: {' '.join(str(e).split())}")
        if res.error:
            _fail(failures, cid, res.error)
        hyps[cid] = res.words
    return hyps


def decode_cuts(forward_fn: Callable, cuts, graph, config: Optional[DecoderConfig] = None,
                cmvn: Optional[Dict[str, Sequence[float]]] = None, device: str = "cpu",
                max_frames: int = 20000, max_batch: int = 32, feature_extractor=None,
                sampling_rate: Optional[int] = None, progress: bool = True,
                return_outputs: bool = False, failures: Optional[Dict[str, str]] = None):
    """Batch cuts through `forward_fn`, decode each utterance: {cut_id: [words]} (in cut order).

    With return_outputs=True returns (hyps, outputs) so a sweep can re-decode without the model.
    Utterances that could not be decoded get [] and are recorded in `failures` ({cut_id: reason}).
    """
    failures = failures if failures is not None else {}
    outputs = compute_outputs(forward_fn, cuts, cmvn, device, max_frames, max_batch,
                              feature_extractor, sampling_rate, progress, failures)
    ids = [c.id for c in cuts]
    dec = decode_outputs({i: outputs[i] for i in ids if i in outputs}, graph, config, progress, failures)
    hyps = {i: dec.get(i, []) for i in ids}
    return (hyps, outputs) if return_outputs else hyps


def cut_references(cuts) -> Dict[str, List[str]]:
    return {c.id: " ".join(s.text or "" for s in c.supervisions).split() for c in cuts}


def sweep(outputs: Dict[str, np.ndarray], refs: Dict[str, Sequence[str]], graph,
          acoustic_scales: Sequence[float] = (0.5, 0.7, 1.0, 1.2, 1.5),
          lm_weights: Optional[Sequence[float]] = None,
          config: Optional[DecoderConfig] = None, progress: bool = True,
          word_insertion_penalties: Optional[Sequence[float]] = None) -> dict:
    """Tune on dev: WER for each acoustic scale (re-decoding) and each word insertion penalty (default:
    the config's); with lm_weights, each acoustic scale's raw lattice is also rescored for every LM
    weight. Returns {"results": [...], "best": {...}}; ties go to the scale nearest 1, then the smallest
    penalty."""
    from tqdm import tqdm

    base = config or DecoderConfig()
    penalties = list(word_insertion_penalties) if word_insertion_penalties else [base.word_insertion_penalty]
    results = []
    ids = sorted(outputs)
    for wip in penalties:
        for a in acoustic_scales:
            cfg = DecoderConfig(**dict(base.__dict__, acoustic_scale=a, word_insertion_penalty=wip))
            row = {"acoustic_scale": a, "word_insertion_penalty": wip}
            if lm_weights:
                lats = {i: raw_lattice(outputs[i], graph, cfg)
                        for i in tqdm(ids, desc=f"lattices ac={a}", disable=not progress, leave=False)}
                for lw in lm_weights:
                    hyps = {i: best_path_with_lm_weight(lats[i], graph, lw) for i in ids}
                    s = corpus_wer({i: refs[i] for i in ids}, hyps)
                    results.append({**row, "lm_weight": lw, "wer": s["wer"], "summary": s})
            else:
                hyps = decode_outputs({i: outputs[i] for i in ids}, graph, cfg, progress=False)
                s = corpus_wer({i: refs[i] for i in ids}, hyps)
                results.append({**row, "lm_weight": 1.0, "wer": s["wer"], "summary": s})
    best = min(results, key=lambda r: (r["wer"], abs(r["acoustic_scale"] - 1.0), r["word_insertion_penalty"]))
    return {"results": results, "best": best}
