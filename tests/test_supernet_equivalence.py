"""Supernet: one-hot architecture weights compute exactly what the exported standalone subnet computes;
sizes agree with the cost model; weight sharing, semi-orthogonality for every rank, arch/weight split."""
import math
import random

import pytest
import torch

from models.quantizers import SUPPORTED_BITS
from models.tdnnf import TDNNF, semi_orthogonality_error
from quant.cost_model import model_size
from search_spaces.space import search_space_from_dict
from supernet import SuperNet
from supernet.mixing import mix_bits, mix_rank_cols, slice_cols


def small_space(per_channel=True, scale="maxabs", name="tiny"):
    return search_space_from_dict({
        "name": name,
        "network": dict(feat_dim=6, tdnn1_dim=24, hidden_dim=24, num_layers=5, bottleneck_dims=12,
                        time_strides=[1, 1, 0, 3, 3], prefinal_dim=12, prefinal_big_dim=20, num_pdfs=11,
                        quant_per_channel=per_channel, quant_scale=scale),
        "choices": {"default": {"bits": list(SUPPORTED_BITS), "bottleneck": [4, 8, 12]},
                    "layers": {"tdnn1": {"bits": [4, 8, 32]}, "tdnnf3": {"bottleneck": [6, 12]},
                               "output": {"bits": [8, 32]}}},
    })


def randomize_(net, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in net.named_parameters():
            if n.startswith("arch."):
                continue
            p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1]))
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
    return net


def random_genotype(space, rng):
    return [(rng.choice(l.bits), rng.choice(l.bottlenecks) if l.has_bottleneck else None) for l in space.layers]


def batch(seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(3, 31, 6, generator=g), torch.tensor([31, 25, 7])


@pytest.mark.parametrize("per_channel,scale", [(True, "maxabs"), (False, "maxabs"), (True, "mse")])
def test_one_hot_supernet_equals_standalone_subnet(per_channel, scale):
    space = small_space(per_channel, scale)
    torch.manual_seed(0)
    net = randomize_(SuperNet.from_space(space)).eval()
    x, L = batch()
    rng = random.Random(per_channel * 7 + len(scale))
    genos = [random_genotype(space, rng) for _ in range(4)]
    genos.append([(l.bits[0], l.bottlenecks[0] if l.has_bottleneck else None) for l in space.layers])  # smallest
    genos.append([(32, l.bottlenecks[-1] if l.has_bottleneck else None) for l in space.layers])  # largest
    table = net.size_table()
    for geno in genos:
        net.arch.set_choices(geno)
        c1, x1, l1 = net(x, L)
        sub = net.export_subnet(geno).eval()
        assert isinstance(sub, TDNNF) and not isinstance(sub, SuperNet)
        c2, x2, l2 = sub(x, L)
        assert c1.shape == (3, (31 + 2) // 3, 11)
        assert torch.equal(l1, l2)
        assert torch.allclose(c1, c2, atol=1e-5, rtol=1e-5), float((c1 - c2).abs().max())
        assert torch.allclose(x1, x2, atol=1e-5, rtol=1e-5)
        # the expected size under one-hot weights is the cost model's size of that genotype
        exp_bytes = table.expected(net.arch.one_hot(geno))
        assert float(exp_bytes) == model_size(sub.cfg).total_bytes == table.size(geno)
    net.arch.clear_fixed()


def test_one_hot_train_mode_and_gradients_match_subnet():
    space = small_space()
    torch.manual_seed(0)
    net = randomize_(SuperNet.from_space(space)).train()
    x, L = batch(2)
    geno = random_genotype(space, random.Random(3))
    sub = net.export_subnet(geno).train()
    net.arch.set_choices(geno)
    c1, x1, _ = net(x, L)
    c2, x2, _ = sub(x, L)
    assert torch.allclose(c1, c2, atol=1e-5, rtol=1e-5)
    (c1.square().mean() + x1.mean()).backward()
    (c2.square().mean() + x2.mean()).backward()
    for i, (d, l_super, l_sub) in enumerate(zip([g[1] for g in geno[1:6]], net.tdnnfs, sub.tdnnfs)):
        k = 2 if l_super.stride > 0 else 1
        assert torch.allclose(l_super.linear.grad[:d], l_sub.linear.grad, atol=1e-6)
        assert torch.allclose(slice_cols(l_super.affine.grad, k, d), l_sub.affine.grad, atol=1e-6)
        assert float(l_super.linear.grad[d:].abs().max() if d < l_super.linear.shape[0] else 0) == 0.0
    assert torch.allclose(net.output.grad, sub.output.grad, atol=1e-6)


def test_train_mode_samples_and_arch_gets_gradient():
    space = small_space()
    torch.manual_seed(0)
    net = randomize_(SuperNet.from_space(space, hard=True)).train()
    x, L = batch()
    c, xe, ol = net(x, L)
    assert c.shape == (3, 11, 11) and ol.tolist() == [11, 9, 3]
    c.square().mean().backward()
    g = [p.grad for p in net.arch_parameters() if p.numel() > 1]
    assert all(t is not None for t in g) and sum(float(t.abs().sum()) for t in g) > 0
    # the hard sample of the last forward is one-hot
    for (wb, wd) in net.arch.last:
        v = sorted(wb.detach().tolist())
        assert v[-1] == pytest.approx(1.0, abs=1e-6) and all(x == 0.0 for x in v[:-1])


def test_parameter_split():
    net = SuperNet.from_space(small_space())
    a = {id(p) for p in net.arch_parameters()}
    w = {id(p) for p in net.weight_parameters()}
    assert not (a & w) and (a | w) == {id(p) for p in net.parameters()}
    assert all(n.startswith("arch.") for n, p in net.named_parameters() if id(p) in a)
    assert "arch._tau" in net.state_dict()


def test_genotype_helpers():
    space = small_space()
    net = SuperNet.from_space(space)
    g = net.genotype({"epoch": 1})
    g.validate(space)
    assert g.expected_size_bytes == net.size_table().size(net.arch.argmax_choices())
    assert net.size_table().min_bytes() < net.expected_size_bytes() < net.size_table().max_bytes()


def test_eval_mode_uses_argmax():
    space = small_space()
    net = randomize_(SuperNet.from_space(space)).eval()
    with torch.no_grad():
        for p in net.arch_parameters():
            p.copy_(torch.randn(p.shape))
    x, L = batch()
    c1, _, _ = net(x, L)
    geno = net.arch.argmax_choices()
    c2, _, _ = net.export_subnet(geno).eval()(x, L)
    assert torch.allclose(c1, c2, atol=1e-5)


def test_semi_orthogonal_holds_for_every_rank():
    space = small_space()
    torch.manual_seed(0)
    net = SuperNet.from_space(space)
    for _ in range(150):
        net.apply_semi_orthogonal_()
    for layer, ls in zip(net.tdnnfs, space.layers[1:6]):
        for d in ls.bottlenecks:
            assert semi_orthogonality_error(layer.linear[:d]) < 1e-3


def test_mixing_matches_definitions():
    torch.manual_seed(0)
    w = torch.randn(5, 2 * 6)
    wd = torch.softmax(torch.randn(3), 0)
    wb = torch.softmax(torch.randn(2), 0)
    # float: the rank mask sum_k w_k 1[r < d_k], the same in every offset block
    got = mix_rank_cols(w, 2, (2, 4, 6), wd, (32,), torch.ones(1))
    m = sum(wd[j] * (torch.arange(6) < d).float() for j, d in enumerate((2, 4, 6)))
    assert torch.allclose(got, w * m.repeat(2))
    # bits at weight level: sum_b w_b Q_b(W)
    from quant.quantizers import fake_quant
    got = mix_bits(w, (4, 32), wb)
    assert torch.allclose(got, wb[0] * fake_quant(w, 4) + wb[1] * w)
    # quantized ranks: each candidate quantized on its own columns, zero-padded
    got = mix_rank_cols(w, 2, (2, 6), wd[:2], (4,), torch.ones(1))
    q2 = fake_quant(slice_cols(w, 2, 2), 4).reshape(5, 2, 2)
    pad = torch.nn.functional.pad(q2, (0, 4)).reshape(5, 12)
    assert torch.allclose(got, wd[0] * pad + wd[1] * fake_quant(w, 4))


def test_from_config_and_subnet_config_agree_with_space_builder():
    space = small_space()
    net = SuperNet.from_space(space)
    net2 = SuperNet(space.network, list(net.arch.layers))
    geno = random_genotype(space, random.Random(5))
    assert net.subnet_config(geno) == net2.subnet_config(geno)


def test_hard_sampling_shortcut_keeps_every_gradient():
    """Zero-valued candidates of a hard sample are computed without autograd: same values and gradients."""
    space = small_space()
    grads = []
    for freeze in (False, True):
        torch.manual_seed(0)
        net = randomize_(SuperNet.from_space(space, hard=True)).train()
        net.freeze_unsampled = freeze
        net.arch.generator = torch.Generator().manual_seed(4)
        x, L = batch()
        c, xe, _ = net(x, L)
        (c.square().mean() + xe.mean()).backward()
        grads.append({n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        assert torch.allclose(grads[0][n], grads[1][n], atol=1e-6, rtol=1e-5), n
    assert any(float(g.abs().sum()) > 0 for n, g in grads[1].items() if n.startswith("arch."))


@pytest.mark.parametrize("arch_grad", [True, False])
def test_hard_sample_computes_exactly_the_sampled_subnet(arch_grad):
    """Train mode, hard straight-through Gumbel samples: the supernet's output is the output of the
    standalone subnet of the sampled choices (BatchNorm on batch statistics, as in training). The sample
    is exactly one-hot; outputs agree to float rounding (a zero-padded rank-d matmul sums in another
    order than the sliced one)."""
    space = small_space(True, "mse")
    torch.manual_seed(0)
    net = randomize_(SuperNet.from_space(space, hard=True)).train()
    net.arch.generator = torch.Generator().manual_seed(3)
    net.arch_grad = arch_grad
    x, L = batch()
    seen = set()
    for _ in range(6):
        out = net(x, L)[0]
        sample = net.arch.last
        choices = []
        for l, (wb, wd) in zip(net.choices, sample):
            assert sorted(wb.tolist()) == [0.0] * (len(wb) - 1) + [1.0]  # exactly one-hot
            choices.append((l.bits[int(wb.argmax())], l.dims[int(wd.argmax())]))
        seen.add(tuple(choices))
        sub = net.export_subnet(choices).train()
        assert torch.allclose(out, sub(x, L)[0], atol=1e-5, rtol=1e-5)
        if arch_grad:
            out.sum().backward()  # the logits get a gradient through the straight-through sample
            assert any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in net.arch_parameters())
            net.zero_grad()
        else:
            assert not out.requires_grad or all(p.grad is None for p in net.arch_parameters())
    assert len(seen) > 1


def test_uniform_weight_sampling_trains_every_subnet_whatever_the_logits():
    """``weight_sampling = "uniform"``: a forward pass without gradients to the logits (a bi-level weight
    step) computes a uniformly random subnet even when the logits are sharp, and it is exactly that
    standalone subnet; a forward pass with gradients to the logits (an architecture step) still samples
    the distribution. ``"arch"`` (the default) follows the logits in both."""
    space = small_space(True, "mse")
    torch.manual_seed(0)
    net = randomize_(SuperNet.from_space(space, hard=True, tau=0.5)).train()
    net.arch.generator = torch.Generator().manual_seed(5)
    with torch.no_grad():  # every layer's distribution sharp on its first candidate
        for p in net.arch_parameters():
            p.zero_()
            p[0] = 50.0
    first = [(l.bits[0], l.dims[0]) for l in net.choices]
    x, L = batch()

    def picked():
        return [(l.bits[int(wb.argmax())], l.dims[int(wd.argmax())]) for l, (wb, wd) in zip(net.choices, net.arch.last)]

    net.arch_grad = False
    assert net.weight_sampling == "arch"
    net(x, L)
    assert picked() == first
    net.weight_sampling = "uniform"
    counts = {}  # (layer, bits) -> times drawn
    for _ in range(40):
        out = net(x, L)[0]
        choices = picked()
        for l, (b, _d) in zip(net.choices, choices):
            counts[(l.name, b)] = counts.get((l.name, b), 0) + 1
        assert not out.requires_grad or all(p.grad is None for p in net.arch_parameters())
    for l in net.choices:  # every candidate drawn, none more than about its share
        n = [counts.get((l.name, b), 0) for b in l.bits]
        assert min(n) > 0 and max(n) <= 40 * (1.0 / len(l.bits)) + 15, (l.name, n)
    sub = net.export_subnet(choices).train()
    assert torch.allclose(out, sub(x, L)[0], atol=1e-5, rtol=1e-5)
    with net.arch_gradients(True):  # the architecture step samples the (sharp) distribution
        out = net(x, L)[0]
    assert picked() == first
    out.sum().backward()
    assert any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in net.arch_parameters())
    net.arch.set_choices(first[:1] + [(l.bits[-1], l.dims[-1]) for l in net.choices[1:]])
    net.arch_grad = False
    net(x, L)  # fixed choices win over the weight sampling
    assert picked()[1:] == [(l.bits[-1], l.dims[-1]) for l in net.choices[1:]]
