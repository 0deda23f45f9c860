"""Order the bottleneck units of every TDNN-F layer by importance, without changing the network's function.

A TDNN-F layer is ``y = A * (L * x)`` with the linear factor ``L`` (r, k*Din) and the affine factor ``A``
(D, k*r) in Kaldi layout (k = 2 time-offset blocks for a stride > 0, else 1; :func:`models.layout.slice_cols`).
Nothing sits between the two factors (no bias, no nonlinearity), so for any orthogonal ``Q`` (r, r)

    L' = Q^T L,    A'_j = A_j Q   for every offset block j of A

computes exactly the same layer, and ``L'`` stays row-orthonormal (up to its scale) when ``L`` is, so the
semi-orthogonal constraint keeps holding. Slicing a layer to its first d units
(:func:`models.layout.copy_weights_to_bottlenecks`, the supernet's nested ranks) keeps the units with
index < d, so which d units come first matters. In a freshly trained network they come in no order.

Methods (both use the weights only, no data):

* ``"pca"`` (default): ``Q`` = eigenvectors of ``M = sum_j A_j^T A_j`` by decreasing eigenvalue. For a
  row-orthonormal ``L`` and white bottleneck input, unit i then carries output energy ``lambda_i`` and
  the first d units span the d-dimensional subspace that keeps the most of it (Eckart-Young on the
  stacked ``[A_1; A_2]``);
* ``"energy"``: a permutation by ``M_ii * ||L_i||^2`` (the units themselves are kept, only their order
  changes; quantized per output channel, a full-rank network is then bit-for-bit the same model).

    order_bottlenecks_(model, "pca")      # in place; returns {layer: eigen/energy values, descending}
"""
from __future__ import annotations

from typing import Dict, List

import torch

ORDER_METHODS = ("pca", "energy", "none")


def _blocks(a: torch.Tensor, k: int) -> torch.Tensor:
    """(D, k*r) -> (k, D, r): the k offset blocks of an affine factor."""
    d_out, cols = a.shape
    return a.reshape(d_out, k, cols // k).permute(1, 0, 2)


def _unblocks(b: torch.Tensor) -> torch.Tensor:
    """(k, D, r) -> (D, k*r)."""
    k, d_out, r = b.shape
    return b.permute(1, 0, 2).reshape(d_out, k * r)


@torch.no_grad()
def order_bottleneck_pair(linear: torch.Tensor, affine: torch.Tensor, k: int, method: str = "pca"):
    """Reordered copies ``(linear', affine', importance)`` of one layer's factors.

    ``linear`` (r, k_in*Din) rows are the bottleneck units; ``affine`` (D, k*r); ``importance`` (r,) is
    descending (eigenvalues of ``M`` for pca, ``M_ii ||L_i||^2`` for energy)."""
    if method not in ORDER_METHODS:
        raise ValueError(f"unknown bottleneck order {method!r}; choose one of {ORDER_METHODS}")
    r = linear.shape[0]
    if affine.shape[1] != k * r:
        raise ValueError(f"affine factor has {affine.shape[1]} columns, expected k*r = {k}*{r}")
    dt = linear.dtype
    L, A = linear.to(torch.float64), _blocks(affine.to(torch.float64), k)  # (r, .), (k, D, r)
    M = torch.einsum("jdr,jds->rs", A, A)  # (r, r)
    if method == "none":
        return linear.clone(), affine.clone(), torch.diagonal(M).to(dt)
    if method == "energy":
        score = torch.diagonal(M) * L.square().sum(1)
        perm = torch.argsort(score, descending=True, stable=True)
        return (linear[perm].clone(), _unblocks(_blocks(affine, k)[:, :, perm]).contiguous(), score[perm].to(dt))
    evals, evecs = torch.linalg.eigh(M)  # ascending
    order = torch.argsort(evals, descending=True, stable=True)
    Q = evecs[:, order]
    # a deterministic sign per eigenvector: its largest-magnitude entry is positive
    idx = Q.abs().argmax(0)
    Q = Q * torch.sign(Q[idx, torch.arange(r)])[None, :]
    L2 = Q.t() @ L
    A2 = _unblocks(A @ Q)
    return L2.to(dt), A2.to(dt), evals[order].clamp_min(0).to(dt)


@torch.no_grad()
def order_bottlenecks_(model, method: str = "pca") -> Dict[str, List[float]]:
    """Reorder the bottleneck units of every TDNN-F layer of ``model`` (a ``models.tdnnf.TDNNF`` or a
    subclass) in place; the network computes the same function (up to float rounding). Returns
    ``{"tdnnf<i>": importance values, descending}``."""
    out: Dict[str, List[float]] = {}
    if method == "none":
        return out
    for i, layer in enumerate(model.tdnnfs):
        k = 2 if model.cfg.time_strides[i] > 0 else 1
        L2, A2, imp = order_bottleneck_pair(layer.linear, layer.affine, k, method)
        layer.linear.copy_(L2)
        layer.affine.copy_(A2)
        out[f"tdnnf{i + 1}"] = [float(x) for x in imp]
    return out
