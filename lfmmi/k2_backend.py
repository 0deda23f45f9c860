"""k2 backend with the same interface as the torch backend (icefall LFMMILoss style).

``k2.intersect_dense`` of the graphs with a ``DenseFsaVec`` of the clamped network output, then
``get_tot_scores(log_semiring=True, use_double_scores=True)``. k2 needs the supervision segments sorted
by duration in decreasing order: we sort, and put the results back in batch order.

k2 has no leaky HMM: the den graph is used as is (eta = 0). Kaldi-style initial probabilities are
expressed exactly by a new start state whose arcs are every state's arcs weighted by its init prob.
k2 needs one den FSA per sequence: it is replicated with ``k2.index_fsa`` as icefall does.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np
import torch

from .fsa import Fsa
from .torch_backend import OUTPUT_LIMIT

__all__ = ["k2_available", "den_log_z_k2", "num_log_z_k2", "den_to_k2"]

DEFAULT_BEAM = 1.0e4  # effectively exact (no pruning); icefall trains with 6-8


def k2_available() -> bool:
    try:
        import k2  # noqa: F401
    except Exception:  # pragma: no cover - depends on the environment
        return False
    return True


def den_to_k2(den_graph, device) -> "object":
    """k2 FsaVec (one FSA) for the den graph, cached on the DenGraph per device."""
    import k2

    cache: Dict[str, object] = den_graph.__dict__.setdefault("_k2_cache", {})
    key = str(device)
    if key not in cache:
        init = den_graph.init
        if np.count_nonzero(init) == 1 and init[den_graph.fsa.start] == 1.0:
            fsa = den_graph.fsa.to_k2()
        else:
            with np.errstate(divide="ignore"):
                fsa = den_graph.fsa.to_k2(init_logprobs=np.log(init))
        cache[key] = k2.create_fsa_vec([fsa]).to(device)
    return cache[key]


def _dense(y: torch.Tensor, lengths: torch.Tensor):
    import k2

    lengths = lengths.to("cpu", torch.int64)
    order = torch.argsort(-lengths, stable=True)  # decreasing duration, as k2 requires
    seg = torch.stack([order, torch.zeros_like(order), lengths[order]], dim=1).to(torch.int32)
    log_probs = y.clamp(-OUTPUT_LIMIT, OUTPUT_LIMIT).to(torch.float32)
    return k2.DenseFsaVec(log_probs, seg), order


def den_log_z_k2(y: torch.Tensor, lengths: torch.Tensor, den_graph,
                 output_beam: float = DEFAULT_BEAM) -> torch.Tensor:
    """log Z_den (B,) with eta = 0, differentiable w.r.t. y (B, T, N)."""
    import k2

    dense, order = _dense(y, lengths)
    den = den_to_k2(den_graph, y.device)
    # k2's a_to_b_map needs one a-FSA per sequence, so the den graph is replicated (by index, as
    # icefall's replicate_den); only the torch backend shares a single copy.
    dens = k2.index_fsa(den, torch.zeros(y.shape[0], dtype=torch.int32, device=y.device))
    lat = k2.intersect_dense(dens, dense, output_beam=output_beam)
    tot = lat.get_tot_scores(log_semiring=True, use_double_scores=True)
    out = torch.empty_like(tot)
    out = out.index_put((order.to(tot.device),), tot)
    return out.to(y.dtype)


def num_log_z_k2(y: torch.Tensor, lengths: torch.Tensor, fsas: Sequence[Fsa],
                 output_beam: float = DEFAULT_BEAM) -> torch.Tensor:
    """log Z_num (B,), differentiable w.r.t. y (B, T, N); -inf where the graph cannot fit T_b frames."""
    import k2

    dense, order = _dense(y, lengths)
    graphs = k2.create_fsa_vec([fsas[i].to_k2() for i in order.tolist()]).to(y.device)
    lat = k2.intersect_dense(graphs, dense, output_beam=output_beam)
    tot = lat.get_tot_scores(log_semiring=True, use_double_scores=True)
    out = torch.empty_like(tot)
    out = out.index_put((order.to(tot.device),), tot)
    return out.to(y.dtype)
