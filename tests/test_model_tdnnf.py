"""TDNN-F model: lengths, context/subsampling grid, factored == dense, semi-orthogonal step, sizes."""
import math

import pytest
import torch
import torch.nn.functional as F

from models.config import ConfigError, TDNNFConfig, contexts
from models.layout import layer_groups, tensor_layout, weight_names
from models.tdnnf import TDNNF, dropout_at, factored_tdnn, semi_orthogonal_step_, semi_orthogonality_error
from quant.cost_model import count_parameters, model_size
from tests.conftest import INVALID_BITS


def small_cfg(**kw):
    d = dict(tdnn1_dim=32, hidden_dim=32, num_layers=6, bottleneck_dims=8, time_strides=[1, 1, 0, 3, 3, 3],
             prefinal_dim=16, prefinal_big_dim=24, num_pdfs=10, feat_dim=5)
    d.update(kw)
    return TDNNFConfig.from_dict(d)


def randomize_(m, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1]))
    return m


@pytest.mark.parametrize("T", list(range(1, 40)) + [97, 150, 301])
def test_output_lengths(T):
    torch.manual_seed(0)
    m = TDNNF(small_cfg()).eval()
    lengths = torch.tensor([T, max(1, T - 2), 1])
    chain, xent, out_len = m(torch.randn(3, T, 5), lengths)
    assert chain.shape == (3, (T + 2) // 3, 10) and xent.shape == chain.shape
    assert out_len.tolist() == [(int(l) + 2) // 3 for l in lengths]
    assert torch.allclose(xent.exp().sum(-1), torch.ones(3, (T + 2) // 3), atol=1e-5)


def test_padding_does_not_leak_and_edge_replication():
    torch.manual_seed(0)
    m = randomize_(TDNNF(small_cfg())).eval()
    x = torch.randn(1, 23, 5)
    alone, _, _ = m(x, torch.tensor([23]))
    padded = torch.cat([x, 100 * torch.randn(1, 17, 5)], dim=1)
    batch = torch.cat([padded, torch.randn(1, 40, 5)])
    out, _, ol = m(batch, torch.tensor([23, 40]))
    assert ol[0] == 8
    assert torch.allclose(out[0, :8], alone[0], atol=1e-5)
    # tdnn1 (1) + strides 1,1,0 at full rate, 3 x stride 3 after subsampling
    assert (m.left_context, m.right_context) == (12, 12)
    # right edge: frames past the length repeat the last frame, so explicit replication changes nothing
    rep = torch.cat([x, x[:, -1:].expand(1, 10, 5)], dim=1)
    out2, _, _ = m(rep, torch.tensor([33]))
    assert torch.allclose(out2[0, :8], alone[0], atol=1e-5)


def test_receptive_field_and_output_grid():
    """Output frame j sees exactly input frames 3j-L .. 3j+R (Kaldi's grid for frame subsampling 3)."""
    torch.manual_seed(0)
    m = randomize_(TDNNF(small_cfg())).eval()
    T = 90
    x = torch.randn(1, T, 5)
    base, _, _ = m(x, torch.tensor([T]))
    L, R = m.left_context, m.right_context
    for t in (40, 41, 42):
        x2 = x.clone()
        x2[0, t] += 1.0
        out, _, _ = m(x2, torch.tensor([T]))
        changed = ((out - base).abs().amax(-1)[0] > 1e-6).nonzero().flatten().tolist()
        expect = [j for j in range(out.shape[1]) if 3 * j - L <= t <= 3 * j + R]
        assert changed == expect


def test_no_stride3_layer_subsamples_at_end():
    cfg = small_cfg(num_layers=3, time_strides=[1, 0, 2])
    m = TDNNF(cfg).eval()
    for T in (1, 5, 10, 31):
        c, _, _ = m(torch.randn(2, T, 5), torch.tensor([T, T]))
        assert c.shape[1] == (T + 2) // 3


def test_stride_after_subsampling_must_be_multiple_of_3():
    with pytest.raises(ConfigError, match="time_strides"):
        small_cfg(time_strides=[1, 1, 0, 3, 1, 3])


@pytest.mark.parametrize("stride", [0, 1, 2, 3])
def test_factored_layer_equals_dense_product(stride):
    torch.manual_seed(stride)
    D, b, T = 12, 4, 30
    k = 2 if stride else 1
    Lw, Aw, bias = torch.randn(b, k * D), torch.randn(D, k * b), torch.randn(D)
    x = torch.randn(2, D, T)
    y = factored_tdnn(x, Lw, Aw, bias, stride)
    if stride == 0:
        dense = (Aw @ Lw)[:, :, None]
        ref = F.conv1d(x, dense, bias)
    else:
        Lm, L0 = Lw[:, :D], Lw[:, D:]          # offsets -s, 0
        A0, As = Aw[:, :b], Aw[:, b:]          # offsets 0, +s
        dense = torch.stack([A0 @ Lm, A0 @ L0 + As @ Lm, As @ L0], dim=2)   # offsets -s, 0, +s
        ref = F.conv1d(x, dense, bias, dilation=stride)
    assert y.shape == ref.shape == (2, D, T - 2 * stride)
    assert torch.allclose(y, ref, atol=1e-4)


@pytest.mark.parametrize("shape", [(16, 80), (80, 16), (32, 32)])
def test_semi_orthogonal_step_converges(shape):
    torch.manual_seed(1)
    M = torch.randn(*shape) * 3.0
    errs = [semi_orthogonality_error(M)]
    for _ in range(60):
        semi_orthogonal_step_(M)
        errs.append(semi_orthogonality_error(M))
    assert errs[-1] < 1e-3 * max(errs[0], 1e-3) or errs[-1] < 1e-4
    assert errs[-1] < errs[0]
    W = M if shape[0] <= shape[1] else M.t()
    P = W @ W.t()
    s2 = torch.trace(P) / P.shape[0]
    assert torch.allclose(P / s2, torch.eye(P.shape[0]), atol=1e-3)


def test_model_apply_semi_orthogonal():
    torch.manual_seed(0)
    m = TDNNF(small_cfg())
    before = m.semi_orthogonality_errors()
    for _ in range(40):
        m.apply_semi_orthogonal_()
    after = m.semi_orthogonality_errors()
    assert set(before) == {f"tdnnf{i}.linear" for i in range(1, 7)} | {"prefinal_l", "prefinal_chain.linear",
                                                                        "prefinal_xent.linear"}
    assert all(after[k] < 0.1 * before[k] for k in before)


def test_dropout_schedule():
    s = "0,0@0.20,0.5@0.50,0"
    assert dropout_at(s, 0.0) == 0.0 and dropout_at(s, 0.2) == 0.0
    assert abs(dropout_at(s, 0.35) - 0.25) < 1e-9 and abs(dropout_at(s, 0.5) - 0.5) < 1e-9
    assert abs(dropout_at(s, 0.75) - 0.25) < 1e-9 and dropout_at(s, 1.0) == 0.0
    m = TDNNF(small_cfg())
    assert m.set_training_progress(0.5) == 0.5
    m.train()
    x = torch.randn(4, 30, 5)
    a, _, _ = m(x, torch.full((4,), 30))
    with pytest.raises(ConfigError, match="dropout_schedule"):
        small_cfg(dropout_schedule="0,0.5,0")


def test_tdnn_7r_parameter_count():
    from search_spaces.space import load_search_space

    cfg = load_search_space("tdnnf_swbd").network
    n_all, n_inf = count_parameters(cfg, True), count_parameters(cfg, False)
    # Kaldi tdnn_7r: 18.7M parameters, 16.4M without the xent branch (num_pdfs ~6000)
    assert abs(n_all - 18.7e6) / 18.7e6 < 0.003, n_all
    assert abs(n_inf - 16.4e6) / 16.4e6 < 0.003, n_inf
    m = TDNNF(cfg)
    assert m.num_parameters() == n_all == 18_685_152
    assert m.num_parameters(include_xent=False) == n_inf == 16_355_184
    assert abs(n_inf * 4 / 1e6 - 65.5) < 0.2  # fp32 MB of weights + biases
    # the model's tensors match the layout the cost model and packer use
    live = m.named_tensors(include_xent=True)
    layout = tensor_layout(cfg, include_xent=True)
    assert [t.name for t in layout] == list(live)
    assert all(tuple(live[t.name].shape) == t.shape for t in layout)


def test_ivector_input():
    cfg = small_cfg(ivector_dim=3)
    m = randomize_(TDNNF(cfg)).eval()
    x = torch.randn(2, 12, 5)
    a, _, _ = m(x, torch.tensor([12, 12]), torch.randn(2, 3))
    b, _, _ = m(x, torch.tensor([12, 12]))
    assert a.shape == b.shape and not torch.allclose(a, b)
    with pytest.raises(ValueError, match="ivectors"):
        m(x, torch.tensor([12, 12]), torch.randn(2, 4))


def test_quantized_forward_uses_fake_quant_and_trains():
    from quant.quantizers import fake_quant

    cfg = small_cfg()
    bits = {n: 4 for n in weight_names(cfg)}
    bits["tdnn1"] = 1
    m = randomize_(TDNNF(cfg.replace(weight_bits=bits)))
    m.train()
    x = torch.randn(2, 20, 5)
    c, xe, _ = m(x, torch.tensor([20, 20]))
    (c.square().mean() + xe.mean()).backward()
    assert all(p.grad is not None for p in m.parameters())
    m.eval()
    ref = TDNNF(cfg)
    ref.load_state_dict(m.state_dict())
    with torch.no_grad():
        for n, p in ref.weight_params().items():
            p.copy_(fake_quant(p, bits.get(n, 32)))
    ref.eval()
    assert torch.allclose(m(x, torch.tensor([20, 20]))[0], ref(x, torch.tensor([20, 20]))[0], atol=1e-5)


def test_config_errors_name_field():
    with pytest.raises(ConfigError, match="bottleneck_dims"):
        small_cfg(bottleneck_dims=[8, 8])
    with pytest.raises(ConfigError, match="weight_bits"):
        small_cfg(weight_bits={"tdnnf1.linear": INVALID_BITS})
    with pytest.raises(ConfigError, match="weight_bits"):
        small_cfg(weight_bits={"nope": 4})
    with pytest.raises(ConfigError, match="unknown network config"):
        TDNNFConfig.from_dict({"hidden": 3})
    with pytest.raises(ConfigError, match="num_pdfs"):
        TDNNF(small_cfg(num_pdfs=None))


def test_groups_cover_weights():
    cfg = small_cfg()
    covered = [w for _, ws, _ in layer_groups(cfg) for w in ws]
    assert covered == weight_names(cfg)
    assert contexts(cfg) == (3, 3, 9, 9)
    assert model_size(cfg).num_parameters == count_parameters(cfg, include_xent=False)


def test_rank_masking_hook_reproduces_smaller_bottleneck():
    """A max-rank model whose layer_weights() masks ranks >= d (quantizing the sliced affine columns)
    equals the standalone rank-d model: the contract the supernet relies on."""
    from quant.quantizers import fake_quant

    small = small_cfg(bottleneck_dims=[3, 8, 5, 8, 2, 6])
    bits = {n: 4 for n in weight_names(small)}
    small = small.replace(weight_bits=bits)
    big_cfg = small.replace(bottleneck_dims=[8] * 6)
    m_small = randomize_(TDNNF(small), seed=3)
    m_big = TDNNF(big_cfg)
    ranks = small.bottleneck_dims
    with torch.no_grad():
        sd = {k: v for k, v in m_small.state_dict().items() if ".linear" not in k and ".affine" not in k
              or "prefinal" in k}
        m_big.load_state_dict(sd, strict=False)
        for i, (ls, lb) in enumerate(zip(m_small.tdnnfs, m_big.tdnnfs)):
            d, k = ranks[i], (2 if lb.stride else 1)
            lb.linear.normal_()
            lb.linear[:d] = ls.linear
            lb.affine.normal_()
            A = lb.affine.view(lb.affine.shape[0], k, 8)
            A[:, :, :d] = ls.affine.view(ls.affine.shape[0], k, d)

    class Masked(TDNNF):
        def layer_weights(self, i):
            layer, d, k = self.tdnnfs[i], ranks[i], (2 if self.tdnnfs[i].stride else 1)
            mask = (torch.arange(8) < d).float()
            w_lin = fake_quant(layer.linear, 4) * mask[:, None]
            A = layer.affine.view(layer.affine.shape[0], k, 8)
            w_aff = torch.zeros_like(A)
            w_aff[:, :, :d] = fake_quant(A[:, :, :d].reshape(A.shape[0], k * d), 4).view(A.shape[0], k, d)
            return w_lin, w_aff.reshape(layer.affine.shape)

    masked = Masked(big_cfg)
    masked.load_state_dict(m_big.state_dict())
    m_small.eval(), masked.eval()
    x = torch.randn(2, 31, 5)
    lens = torch.tensor([31, 20])
    assert torch.allclose(m_small(x, lens)[0], masked(x, lens)[0], atol=1e-5)


def test_copy_to_smaller_bottlenecks_equals_switching_units_off():
    """Initialising a smaller-bottleneck network from a bigger one (retrain --init-from, export_subnet)
    gives the bigger network with bottleneck units d..r-1 switched off (their linear rows zeroed), for
    time strides 0 (one offset block) and > 0 (two offset blocks in the affine factor)."""
    from models.layout import copy_weights_to_bottlenecks

    big = randomize_(TDNNF(small_cfg()), seed=5)
    for m in big.modules():  # non-trivial BN statistics
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.uniform_(-0.2, 0.2), m.running_var.uniform_(0.5, 2.0)
    dims = [3, 8, 5, 2, 6, 1]
    small = TDNNF(small_cfg(bottleneck_dims=dims))
    copied, sliced = copy_weights_to_bottlenecks(small, big.state_dict())
    assert sliced == 2 * sum(d < 8 for d in dims) and copied + sliced == len(small.state_dict())
    with torch.no_grad():
        for layer, d in zip(big.tdnnfs, dims):
            layer.linear[d:] = 0.0
    big.eval(), small.eval()
    x, lens = torch.randn(2, 40, 5), torch.tensor([40, 29])
    assert torch.allclose(small(x, lens)[0], big(x, lens)[0], atol=1e-5)
    with pytest.raises(ValueError, match="bottleneck"):  # cannot grow a bottleneck
        copy_weights_to_bottlenecks(TDNNF(small_cfg(bottleneck_dims=9)), big.state_dict())


def test_batch_norm_mask_all_true_equals_batchnorm():
    from models.tdnnf import batch_norm

    torch.manual_seed(0)
    bn1, bn2 = torch.nn.BatchNorm1d(7, affine=False, eps=1e-3), torch.nn.BatchNorm1d(7, affine=False, eps=1e-3)
    x = torch.randn(3, 7, 11) * 2 + 1
    a = batch_norm(x, bn1, torch.ones(3, 1, 11, dtype=torch.bool))
    b = bn2(x)
    assert torch.allclose(a, b, atol=1e-5)
    assert torch.allclose(bn1.running_mean, bn2.running_mean) and torch.allclose(bn1.running_var, bn2.running_var)


def test_training_mode_ignores_padding_content():
    """With masked BN, what sits in the padding of an utterance changes nothing in training mode."""
    torch.manual_seed(0)
    m = randomize_(TDNNF(small_cfg())).train()
    x = torch.randn(2, 40, 5)
    lens = torch.tensor([40, 22])
    x2 = x.clone()
    x2[1, 22:] = 50 * torch.randn(18, 5)
    sd0 = {k: v.clone() for k, v in m.state_dict().items()}
    a, ax, _ = m(x, lens)
    sd_a = {k: v.clone() for k, v in m.state_dict().items()}
    m.load_state_dict(sd0)
    b, bx, _ = m(x2, lens)
    assert torch.allclose(a, b, atol=1e-5) and torch.allclose(ax, bx, atol=1e-5)
    assert all(torch.allclose(sd_a[k].float(), v.float(), atol=1e-6) for k, v in m.state_dict().items())
    assert not torch.allclose(sd_a["tdnn1_bn.running_mean"], sd0["tdnn1_bn.running_mean"])
    # nor does the amount of padding (plain BN over every frame counts the replicated frames)
    x3 = torch.cat([x, torch.randn(2, 30, 5)], dim=1)
    m.load_state_dict(sd0)
    c, _, _ = m(x3, lens)
    assert torch.allclose(a[0], c[0, :14], atol=1e-5) and torch.allclose(a[1, :8], c[1, :8], atol=1e-5)
    m2 = randomize_(TDNNF(small_cfg(bn_mask_padding=False))).train()
    assert not torch.allclose(m2(x, lens)[0][0], m2(x3, lens)[0][0, :14], atol=1e-3)


def test_layer_groups_name_their_bottleneck_index():
    from models.layout import LayerGroup, bottleneck_index
    cfg = TDNNFConfig.from_dict(dict(num_layers=3, bottleneck_dims=[4, 6, 8], time_strides=[1, 1, 3]))
    groups = layer_groups(cfg)
    assert [g.name for g in groups] == ["tdnn1", "tdnnf1", "tdnnf2", "tdnnf3", "prefinal", "output"]
    assert all(isinstance(g, LayerGroup) for g in groups)
    assert [cfg.bottleneck_dims[g.bottleneck_index] for g in groups if g.has_bottleneck] == [4, 6, 8]
    name, weights, hb = groups[2]  # still unpacks as (name, weights, has_bottleneck)
    assert (name, weights, hb) == ("tdnnf2", ["tdnnf2.linear", "tdnnf2.affine"], True)
    for bad in ("tdnn1", "output", "tdnnf", "tdnnf0", "tdnnfx"):
        with pytest.raises(ValueError, match="not a TDNN-F layer"):
            bottleneck_index(bad)
    with pytest.raises(ValueError, match="has no bottleneck"):
        groups[0].bottleneck_index


def test_masked_batch_norm_matches_composed_reference_and_gradcheck():
    """The fused masked BatchNorm gives the composed operations' output, statistics and gradient, and
    its closed-form backward passes a float64 gradcheck."""
    from models.tdnnf import _MaskedBatchNorm, masked_batch_norm_reference

    torch.manual_seed(0)
    x = (torch.randn(4, 5, 9, dtype=torch.float64) * 3 + 1).requires_grad_(True)
    m = (torch.rand(4, 1, 9) > 0.3).double()
    m[0, 0, :2] = 1.0
    assert torch.autograd.gradcheck(lambda v: _MaskedBatchNorm.apply(v, m, 1e-3)[0], (x,))
    y, mean, var = _MaskedBatchNorm.apply(x, m, 1e-3)
    y_ref, mean_ref, var_ref = masked_batch_norm_reference(x, m, 1e-3)
    assert torch.allclose(y, y_ref, atol=1e-12) and torch.allclose(mean, mean_ref) and torch.allclose(var, var_ref)
    g = torch.randn_like(y)
    (a,) = torch.autograd.grad(y, x, g)
    (b,) = torch.autograd.grad(y_ref, x, g)
    assert torch.allclose(a, b, atol=1e-12)
    # the masked-out frames enter no statistic: changing them changes only their own outputs
    x2 = x.detach().clone()
    x2[m.expand_as(x2) == 0] = 100.0
    y2, mean2, var2 = _MaskedBatchNorm.apply(x2, m, 1e-3)
    assert torch.allclose(mean2, mean) and torch.allclose(var2, var)
    assert torch.allclose(y2[m.expand_as(y2) == 1], y.detach()[m.expand_as(y) == 1])


def test_masked_batch_norm_updates_running_stats_like_the_reference():
    from models.tdnnf import batch_norm, masked_batch_norm_reference

    torch.manual_seed(1)
    bn = torch.nn.BatchNorm1d(6, affine=False, eps=1e-3, momentum=0.1)
    x = torch.randn(3, 6, 10) * 2 + 0.5
    mask = torch.rand(3, 1, 10) > 0.4
    y = batch_norm(x, bn, mask)
    y_ref, mean, var = masked_batch_norm_reference(x, mask.float(), 1e-3)
    n = mask.sum()
    assert torch.allclose(y, y_ref, atol=1e-5)
    assert torch.allclose(bn.running_mean, 0.1 * mean, atol=1e-6)
    assert torch.allclose(bn.running_var, 0.9 + 0.1 * var * n / (n - 1), atol=1e-6)
