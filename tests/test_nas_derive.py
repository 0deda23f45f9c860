"""Genotype derivation (argmax), probability matrices, image rendering, TensorBoard logging."""
import json

import numpy as np
import torch

from nas import derive_genotype, log_arch_tensorboard, probability_matrices, render_prob_image
from nas.penalty import size_table_from_cost_model
from search_spaces import Genotype, load_search_space
from supernet.network import SuperNet


def demo_arch(seed=0):
    space = load_search_space("tdnnf_demo", num_pdfs=40)
    arch = SuperNet.from_space(space).arch
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in arch.arch_parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return space, arch


def test_derive_is_argmax_and_sized_by_the_cost_model():
    for seed in range(3):
        space, arch = demo_arch(seed)
        geno = derive_genotype(arch, space, source={"run": "t", "epoch": seed})
        for l, gl, b, d in zip(arch.layers, geno.layers, arch.bit_logits, arch.dim_logits):
            assert gl.name == l.name
            assert gl.bits == l.bits[int(b.argmax())]
            assert gl.bottleneck == (l.dims[int(d.argmax())] if l.dims != (None,) else None)
        geno.validate(space)
        assert geno.expected_size_bytes == geno.size_bytes(space)
        table = size_table_from_cost_model(space.network, arch.layers)
        assert geno.expected_size_bytes == table.size(arch.argmax_choices())
        again = Genotype.from_json(geno.to_json())
        assert again.to_dict() == geno.to_dict() and again.source == {"run": "t", "epoch": seed}
        # without a space: the table gives the size
        g2 = derive_genotype(arch, table=table, space_name=space.name)
        assert g2.to_dict()["layers"] == geno.to_dict()["layers"]
        assert g2.expected_size_bytes == geno.expected_size_bytes


def test_probability_matrices_and_image():
    space, arch = demo_arch()
    m = probability_matrices(arch)
    L = len(arch.layers)
    nb = len(space.layers[0].bits)  # the space's own choice counts
    dims = list(space.layers[1].bottlenecks)
    assert m["bits"].shape == (L, nb) and m["dims"].shape == (L, len(dims)) and m["dim_labels"] == dims
    assert np.allclose(np.nansum(m["bits"], 1), 1.0, atol=1e-5)
    assert np.isnan(m["dims"][0]).all() and np.allclose(m["dims"][1].sum(), 1.0, atol=1e-5)
    img = render_prob_image(m["bits"], cell=4)
    assert img.shape == (3, L * 4 + 1, nb * 4 + 1) and img.dtype == torch.float32
    assert float(img.min()) >= 0.0 and float(img.max()) <= 1.0
    one = render_prob_image(np.array([[1.0, 0.0]]), cell=4)
    assert one[:, 2, 2].sum() < one[:, 2, 6].sum()  # p=1 is darker than p=0


class FakeWriter:
    def __init__(self):
        self.scalars, self.images = {}, {}

    def add_scalar(self, k, v, step):
        self.scalars[k] = (v, step)

    def add_image(self, k, img, step, dataformats="CHW"):
        self.images[k] = (tuple(img.shape), dataformats)

    def add_figure(self, k, fig, step):
        self.images[k] = fig


def test_tensorboard_logging():
    space, arch = demo_arch()
    table = size_table_from_cost_model(space.network, arch.layers)
    w = FakeWriter()
    out = log_arch_tensorboard(w, arch, 5, table=table)
    assert "arch/bits/tdnnf3/4" in w.scalars and "arch/dim/tdnnf3/48" in w.scalars and "arch/tau" in w.scalars
    assert "arch/dim/tdnn1/None" not in w.scalars
    assert w.scalars["arch/expected_mb"][1] == 5 and out["arch/argmax_mb"] > 0
    assert set(w.images) == {"arch/bits_matrix", "arch/dims_matrix", "arch/bits_heatmap", "arch/dims_heatmap",
                             "arch/genotype_bars"}
    json.dumps(out)


def test_genotype_bar_figure_shows_the_argmax_bits_and_bottlenecks():
    from nas.derive import genotype_bar_figure

    space, arch = demo_arch()
    table = size_table_from_cost_model(space.network, arch.layers)
    choices = arch.argmax_choices()
    fig = genotype_bar_figure(arch, table)
    ax_bits, ax_dims = fig.axes
    assert [round(p.get_height()) for p in ax_bits.patches] == [b for b, _ in choices]
    assert [round(p.get_height()) for p in ax_dims.patches] == [d for _, d in choices if d is not None]
    labels = [t.get_text() for t in ax_bits.get_xticklabels()]
    assert [l.split("\n")[0] for l in labels] == [l.name for l in arch.layers]
    # each layer's share of the argmax model's bytes, from the cost model
    shares = [float(l.split("\n")[1].rstrip("%")) for l in labels]
    sizes = table.layer_sizes(choices)
    total = table.size(choices)
    assert shares == [round(100 * b / total) for b in sizes] and total == table.const_bytes + sum(sizes)


def test_heatmap_figure_is_labelled_and_marks_the_argmax():
    space, arch = demo_arch()
    m = probability_matrices(arch)
    from nas.derive import prob_heatmap_figure

    fig = prob_heatmap_figure(m["bits"], m["layers"], m["bit_labels"], "t")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == m["layers"]
    assert [t.get_text() for t in ax.get_xticklabels()] == [str(b) for b in m["bit_labels"]]
    texts = [t.get_text() for t in ax.texts]
    assert len(texts) == int(np.isfinite(m["bits"]).sum())  # one number per cell
    boxes = [p for p in ax.patches]
    assert len(boxes) == len(m["layers"])
    for i, b in enumerate(boxes):  # the outlined cell is the layer's most probable choice
        assert b.get_xy()[0] + 0.5 == int(np.nanargmax(m["bits"][i]))
