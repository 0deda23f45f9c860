"""Genotype derivation (argmax per layer) and architecture logging (probability matrices, images,
TensorBoard scalars)."""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch

from nas.arch_params import ArchParams
from nas.penalty import SizeTable
from quant.knapsack import knapsack
from search_spaces.genotype import Genotype


def genotype_dict(arch: ArchParams, space_name: str, expected_size_bytes: Optional[float] = None,
                  source: Optional[Dict[str, Any]] = None, choices=None) -> Dict[str, Any]:
    """The genotype JSON (``search_spaces.genotype``) of ``choices`` (default: the argmax of ``arch``)."""
    choices = choices if choices is not None else arch.argmax_choices()
    layers = []
    for l, (b, d) in zip(arch.layers, choices):
        entry: Dict[str, Any] = {"name": l.name, "bits": int(b)}
        if d is not None:
            entry["bottleneck"] = int(d)
        layers.append(entry)
    out: Dict[str, Any] = {"version": 1, "search_space": space_name, "layers": layers}
    if expected_size_bytes is not None:
        out["expected_size_bytes"] = int(round(float(expected_size_bytes)))
    out["source"] = dict(source or {})
    return out


def derive_genotype(arch: ArchParams, space=None, source: Optional[Dict[str, Any]] = None,
                    table: Optional[SizeTable] = None, space_name: Optional[str] = None):
    """Argmax per layer and choice type -> ``search_spaces.genotype.Genotype``.

    With ``space`` (a ``search_spaces.SearchSpace`` with num_pdfs set) the genotype is validated against
    it and ``expected_size_bytes`` comes from ``quant.cost_model`` via ``Genotype.from_choices``. Without
    a space, ``table`` (e.g. ``SuperNet.size_table()``) gives the size and ``space_name`` the name.
    """
    choices = arch.argmax_choices()
    if space is not None:
        bits = {l.name: int(b) for l, (b, d) in zip(arch.layers, choices)}
        dims = {l.name: int(d) for l, (b, d) in zip(arch.layers, choices) if d is not None}
        return Genotype.from_choices(space, bits, dims, source)
    size = table.size(choices) if table is not None else None
    return Genotype.from_dict(genotype_dict(arch, space_name or "unknown", size, source, choices))


# ---------------------------------------------------------------------- logging
def probability_matrices(arch: ArchParams) -> Dict[str, Any]:
    """``{"bits": (L, n_bits) array, "dims": (L, n_dims) array, "bit_labels", "dim_labels", "layers"}``.

    Rows are layers, columns the union of candidates (ascending); a candidate a layer lacks is NaN.
    Layers without a bottleneck have a NaN row in ``dims``."""
    probs = [(b.detach().cpu().numpy(), d.detach().cpu().numpy()) for b, d in arch.probs()]
    bit_labels = sorted({b for l in arch.layers for b in l.bits})
    dim_labels = sorted({d for l in arch.layers for d in l.dims if d is not None})
    B = np.full((len(arch.layers), len(bit_labels)), np.nan, dtype=np.float32)
    D = np.full((len(arch.layers), max(1, len(dim_labels))), np.nan, dtype=np.float32)
    for i, (l, (pb, pd)) in enumerate(zip(arch.layers, probs)):
        for j, b in enumerate(l.bits):
            B[i, bit_labels.index(b)] = pb[j]
        for j, d in enumerate(l.dims):
            if d is not None:
                D[i, dim_labels.index(d)] = pd[j]
    return {"bits": B, "dims": D, "bit_labels": bit_labels, "dim_labels": dim_labels, "layers": arch.names}


def render_prob_image(matrix: np.ndarray, cell: int = 12) -> torch.Tensor:
    """Render a (layers x choices) probability matrix as a (3, H, W) float image in [0, 1] (no matplotlib).

    Each entry is a ``cell`` x ``cell`` square shaded white (0) -> dark blue (1); NaN entries are light grey;
    one-pixel grid lines separate the cells. Row i = layer i (top to bottom), column j = choice j."""
    m = np.asarray(matrix, dtype=np.float32)
    if m.ndim != 2:
        raise ValueError(f"expected a 2-D matrix, got shape {m.shape}")
    L, C = m.shape
    H, W = L * cell + 1, C * cell + 1
    img = np.zeros((3, H, W), dtype=np.float32) + 0.5  # grid lines: mid grey
    lo = np.array([1.0, 1.0, 1.0], dtype=np.float32)
    hi = np.array([0.03, 0.19, 0.42], dtype=np.float32)
    for i in range(L):
        for j in range(C):
            v = m[i, j]
            col = np.array([0.85, 0.85, 0.85], dtype=np.float32) if not np.isfinite(v) else \
                lo + (hi - lo) * float(np.clip(v, 0.0, 1.0))
            img[:, i * cell + 1:(i + 1) * cell, j * cell + 1:(j + 1) * cell] = col[:, None, None]
    return torch.from_numpy(img)


def prob_heatmap_figure(matrix: np.ndarray, layers, labels, title: str):
    """A labelled layer x choice heatmap (matplotlib Figure): the probability in every cell, the argmax
    of each layer outlined, layer names and choice labels on the axes; NaN (a choice the layer lacks)
    left blank."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.patches import Rectangle

    m = np.asarray(matrix, dtype=np.float32)
    L, C = m.shape
    fig, ax = plt.subplots(figsize=(1.0 + 0.9 * C, 0.8 + 0.38 * L), dpi=100)
    ax.imshow(np.ma.masked_invalid(m), cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto")
    for i in range(L):
        row = m[i]
        if not np.isfinite(row).any():
            continue
        j_max = int(np.nanargmax(row))
        for j in range(C):
            if np.isfinite(row[j]):
                ax.text(j, i, f"{row[j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if row[j] > 0.6 else "black")
        ax.add_patch(Rectangle((j_max - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=1.5))
    ax.set_xticks(range(C), [str(x) for x in labels])
    ax.set_yticks(range(L), list(layers))
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def genotype_bar_figure(arch: ArchParams, table: Optional[SizeTable] = None, title: str = ""):
    """Matplotlib figure of the argmax architecture, one bar group per layer: its bit-width (left axis,
    annotated) and its bottleneck dim (right axis; layers without a bottleneck have none), and with a
    size table each layer's share of the argmax model's bytes in the tick labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    choices = arch.argmax_choices()
    names = [l.name for l in arch.layers]
    bits = [b for b, _ in choices]
    dims = [d for _, d in choices]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(1.2 + 0.6 * len(names), 3.4), dpi=100)
    ax.bar(x - 0.2, bits, width=0.4, color="tab:blue", label="bits")
    for i, b in enumerate(bits):
        ax.text(i - 0.2, b, str(b), ha="center", va="bottom", fontsize=7)
    ax.set_ylabel("bits", color="tab:blue")
    ax.set_ylim(0, max(bits) * 1.25)
    ax2 = ax.twinx()
    dx = [i for i, d in enumerate(dims) if d is not None]
    ax2.bar(x[dx] + 0.2, [dims[i] for i in dx], width=0.4, color="tab:orange", label="bottleneck")
    for i in dx:
        ax2.text(i + 0.2, dims[i], str(dims[i]), ha="center", va="bottom", fontsize=7)
    ax2.set_ylabel("bottleneck dim", color="tab:orange")
    ax2.set_ylim(0, max([dims[i] for i in dx], default=1) * 1.25)
    labels = list(names)
    if table is not None:
        per_layer = table.layer_sizes(choices)
        total = table.const_bytes + sum(per_layer)
        labels = [f"{n}\n{100 * b / total:.0f}%" for n, b in zip(names, per_layer)]
    ax.set_xticks(x, labels, fontsize=7, rotation=0)
    ax.set_title(title or "derived (argmax) architecture", fontsize=9)
    fig.tight_layout()
    return fig


SIZE_CHART_LAYOUT = {"arch": {"size against the budget (MB)": ["Multiline", ["arch/argmax_mb", "arch/expected_mb",
                                                                               "arch/target_mb"]]}}


def log_arch_tensorboard(writer, arch: ArchParams, step: int, table: Optional[SizeTable] = None,
                         prefix: str = "arch", target_bytes: Optional[float] = None) -> Dict[str, float]:
    """Write per-layer probabilities (``{prefix}/bits/<layer>/<b>``, ``{prefix}/dim/<layer>/<d>``), the
    per-layer normalised entropies (``{prefix}/entropy/<layer>/bits|dim``, 1 = uniform, 0 = one-hot) and
    their mean (``{prefix}/entropy_mean``), the layer x choice images (``{prefix}/bits_matrix``,
    ``{prefix}/dims_matrix``), ``tau`` and, with a table, the expected and argmax sizes in MB (and the
    budget, ``{prefix}/target_mb``, when given). Returns the scalars written (also handy without a
    writer)."""
    scalars: Dict[str, float] = {f"{prefix}/tau": arch.tau}
    with torch.no_grad():
        hs = []
        for l, (hb, hd) in zip(arch.layers, arch.entropies()):
            for kind, h in (("bits", hb), ("dim", hd)):
                if h is not None:
                    scalars[f"{prefix}/entropy/{l.name}/{kind}"] = float(h)
                    hs.append(float(h))
        if hs:
            scalars[f"{prefix}/entropy_mean"] = float(np.mean(hs))
        if target_bytes is not None:
            scalars[f"{prefix}/target_mb"] = float(target_bytes) / 1e6
        probs = arch.probs()
        for l, (pb, pd) in zip(arch.layers, probs):
            if len(l.bits) > 1:
                for b, p in zip(l.bits, pb.tolist()):
                    scalars[f"{prefix}/bits/{l.name}/{b}"] = p
            if len(l.dims) > 1:
                for d, p in zip(l.dims, pd.tolist()):
                    scalars[f"{prefix}/dim/{l.name}/{d}"] = p
        if table is not None:
            scalars[f"{prefix}/expected_mb"] = float(table.expected(probs)) / 1e6
            scalars[f"{prefix}/argmax_mb"] = table.size(arch.argmax_choices()) / 1e6
    if writer is not None:
        for k, v in scalars.items():
            writer.add_scalar(k, v, step)
        mats = probability_matrices(arch)
        writer.add_image(f"{prefix}/bits_matrix", render_prob_image(mats["bits"]), step, dataformats="CHW")
        if mats["dim_labels"]:
            writer.add_image(f"{prefix}/dims_matrix", render_prob_image(mats["dims"]), step, dataformats="CHW")
        if hasattr(writer, "add_figure"):  # labelled heatmaps (red box: the argmax that would be derived)
            writer.add_figure(f"{prefix}/bits_heatmap", prob_heatmap_figure(
                mats["bits"], mats["layers"], mats["bit_labels"], f"bit-width probabilities, step {step}"), step)
            if mats["dim_labels"]:
                keep = [i for i, l in enumerate(arch.layers) if l.dims != (None,)]
                writer.add_figure(f"{prefix}/dims_heatmap", prob_heatmap_figure(
                    mats["dims"][keep], [mats["layers"][i] for i in keep], mats["dim_labels"],
                    f"bottleneck probabilities, step {step}"), step)
            writer.add_figure(f"{prefix}/genotype_bars", genotype_bar_figure(
                arch, table, f"argmax architecture, step {step}"), step)
    return scalars


def derive_genotype_within_budget(arch: ArchParams, space, table: SizeTable, budget_bytes: float,
                                  source: Optional[Dict[str, Any]] = None):
    """The most probable architecture that fits the budget -> ``search_spaces.genotype.Genotype``.

    Maximises ``sum over layers of log p(bits) + log p(dim)`` under the architecture distribution subject
    to ``size <= budget_bytes`` (sizes from ``table``, i.e. the cost model): a multiple-choice knapsack,
    solved exactly by :func:`quant.knapsack.knapsack` with cost ``-log p``. When the plain argmax
    fits it is among the candidates, so the result is the argmax unless that is over budget; unlike the
    argmax, it also uses the budget when the search's distribution is spread (argmax far below target).
    """
    with torch.no_grad():
        probs = [(pb.detach().cpu(), pd.detach().cpu()) for pb, pd in arch.probs()]
    cost: Dict[str, Dict[int, float]] = {}
    sizes: Dict[str, Dict[int, float]] = {}
    keys: Dict[int, Tuple[int, Optional[int]]] = {}
    for l, (pb, pd), t in zip(arch.layers, probs, table.tables):
        cost[l.name], sizes[l.name] = {}, {}
        for i, b in enumerate(l.bits):
            for j, d in enumerate(l.dims):
                key = int(b) * 100000 + (0 if d is None else int(d))
                keys[key] = (int(b), d)
                cost[l.name][key] = -(math.log(max(float(pb[i]), 1e-30)) + math.log(max(float(pd[j]), 1e-30)))
                sizes[l.name][key] = float(t[i, j])
    alloc = knapsack(cost, sizes, float(budget_bytes) - table.const_bytes)
    choices = [keys[alloc.bits[l.name]] for l in arch.layers]
    src = dict(source or {})
    src.update({"derivation": "max-probability within budget", "budget_bytes": float(budget_bytes),
                "argmax_bytes": table.size(arch.argmax_choices())})
    bits = {l.name: b for l, (b, d) in zip(arch.layers, choices)}
    dims = {l.name: int(d) for l, (b, d) in zip(arch.layers, choices) if d is not None}
    return Genotype.from_choices(space, bits, dims, src)
