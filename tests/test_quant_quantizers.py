"""Quantizers: levels, STE, codes/dequantize consistency, errors."""
import pytest
from tests.conftest import INVALID_BITS
import torch

from quant.quantizers import (QUANTIZED_BITS, SUPPORTED_BITS, check_bits, compute_scales, dequantize, fake_quant, num_levels,
                              qmax_for, quantize_to_codes)

QBITS = list(QUANTIZED_BITS)


@pytest.mark.parametrize("bits", QBITS)
@pytest.mark.parametrize("scale", ["maxabs", "mse"])
@pytest.mark.parametrize("per_channel", [True, False])
def test_levels_and_exact_codes(bits, scale, per_channel):
    torch.manual_seed(bits)
    w = torch.randn(12, 200) * torch.rand(12, 1) * 3
    wq = fake_quant(w, bits, per_channel, scale)
    assert wq.shape == w.shape and wq.dtype == w.dtype
    for r in (wq if per_channel else wq.reshape(1, -1)):
        assert len(torch.unique(r)) <= 2 ** bits
        assert len(torch.unique(r)) <= num_levels(bits)
    codes, scales = quantize_to_codes(w, bits, per_channel, scale)
    assert codes.dtype == torch.int8 and codes.shape == w.shape
    assert scales.shape == ((12,) if per_channel else (1,))
    assert torch.equal(scales.half().float(), scales)       # fp16-exact scales
    assert torch.equal(dequantize(codes, scales, bits), wq)  # bit-exact
    assert int(codes.abs().max()) <= qmax_for(bits)
    if bits == 1:
        assert set(codes.unique().tolist()) <= {-1, 1}


def test_maxabs_grid_and_error_shrinks_with_bits():
    torch.manual_seed(0)
    w = torch.randn(8, 300)
    errs = [float((fake_quant(w, b) - w).square().mean()) for b in QUANTIZED_BITS if b >= 2]
    assert errs == sorted(errs, reverse=True) and errs[-1] < 1e-4
    # (max-abs ternary is worse than sign * mean|W| on Gaussian weights; 'mse' fixes that)
    assert float((fake_quant(w, 2, scale="mse") - w).square().mean()) < float((fake_quant(w, 1) - w).square().mean())
    # max-abs: the row maximum is a grid point
    wq = fake_quant(w, 4)
    assert torch.allclose(wq.abs().amax(1), w.abs().amax(1), rtol=1e-3)


def test_mse_scale_not_worse_than_maxabs():
    torch.manual_seed(0)
    w = torch.randn(16, 500)
    w[:, 0] = 12.0  # outliers: clipping helps
    for b in (2, 4):
        e_max = (fake_quant(w, b, scale="maxabs") - w).square().sum(1)
        e_mse = (fake_quant(w, b, scale="mse") - w).square().sum(1)
        assert bool((e_mse <= e_max + 1e-6).all()) and float(e_mse.sum()) < float(e_max.sum())


def test_one_bit_is_sign_times_mean_abs():
    torch.manual_seed(0)
    w = torch.randn(5, 64)
    wq = fake_quant(w, 1)
    ref = torch.where(w >= 0, 1.0, -1.0) * w.abs().mean(1, keepdim=True)
    assert torch.allclose(wq, ref, rtol=1e-3)  # scale rounded to fp16


@pytest.mark.parametrize("bits", QBITS)
def test_ste_gradient_identity_inside_range(bits):
    torch.manual_seed(0)
    w = torch.randn(6, 50, requires_grad=True)
    g = torch.randn(6, 50)
    fake_quant(w, bits).backward(g)
    assert torch.equal(w.grad, g)  # max-abs: everything inside the range
    w2 = torch.randn(6, 50)
    w2[:, 0] = 5.0
    w2.requires_grad_(True)
    fake_quant(w2, 2, scale="mse").backward(g)
    s = compute_scales(w2.detach(), 2, scale="mse")
    inside = w2.detach().abs() <= s[:, None] * qmax_for(2) * (1 + 2 ** -10)
    assert torch.equal(w2.grad, torch.where(inside, g, torch.zeros_like(g)))
    assert not bool(inside[:, 0].any())


def test_bits_32_is_identity_and_bad_bits_raise():
    w = torch.randn(3, 4)
    assert fake_quant(w, 32) is w
    for bad in (0, INVALID_BITS, 6, 16, 33, 4.0, True, "4"):
        with pytest.raises(ValueError, match="bit-width"):
            fake_quant(w, bad)
        with pytest.raises(ValueError):
            quantize_to_codes(w, bad)
    with pytest.raises(ValueError, match="scale mode"):
        fake_quant(w, 4, scale="minmax")
    with pytest.raises(ValueError):
        quantize_to_codes(w, 32)
    assert check_bits(8) == 8 and SUPPORTED_BITS == (1, 2, 3, 4, 8, 32)


def test_zero_and_tiny_rows():
    w = torch.zeros(3, 10)
    w[1] = 1e-9
    for b in QBITS:
        wq = fake_quant(w, b)
        assert torch.isfinite(wq).all()
        c, s = quantize_to_codes(w, b)
        assert torch.equal(dequantize(c, s, b), wq)


def test_dequantize_rejects_out_of_range_codes():
    with pytest.raises(ValueError, match="codes outside"):
        dequantize(torch.tensor([[8, 0]], dtype=torch.int8), torch.tensor([1.0]), 4)
    with pytest.raises(ValueError, match="1-bit"):
        dequantize(torch.tensor([[0, 1]], dtype=torch.int8), torch.tensor([1.0]), 1)


def test_two_bit_beats_one_bit_and_error_falls_with_bits():
    """With MSE-optimal clipping the ternary 2-bit quantizer is better than the 1-bit sign quantizer
    (max-abs ternary is worse than 1 bit: most weights round to 0); the error falls with the bits."""
    g = torch.Generator().manual_seed(0)
    for w in (torch.randn(64, 200, generator=g), torch.randn(64, 200, generator=g) ** 3):  # Gaussian, heavy-tailed
        err = {b: float(((fake_quant(w, b, True, "mse") - w) ** 2).sum() / (w ** 2).sum()) for b in QUANTIZED_BITS}
        assert err[1] > err[2] > err[4] > err[8]
    w = torch.randn(64, 200, generator=g)
    assert float(((fake_quant(w, 2, True, "maxabs") - w) ** 2).sum()) > float(((fake_quant(w, 1) - w) ** 2).sum())
