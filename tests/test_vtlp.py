"""VTLP on log-mel features: a spectral peak moves to alpha times its frequency, alpha = 1 changes
nothing, the CMVN round trip equals warping the raw features, padding is untouched, the warps are
deterministic per (seed, step) and inside [low, high], and bad options are refused by name."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from training.loop import TrainOptions
from training.vtlp import Vtlp, channel_centres_mel, inverse_mel, mel, warp_matrix

F, LO, HI = 40, 20.0, 7600.0


def peak_hz(frame: np.ndarray, centres_hz: np.ndarray) -> float:
    """Frequency of a frame's maximum, refined by a parabola through the top channel and its two
    neighbours on the mel scale."""
    k = int(np.argmax(frame))
    k = min(max(k, 1), len(frame) - 2)
    y0, y1, y2 = frame[k - 1], frame[k], frame[k + 1]
    d = 0.5 * (y0 - y2) / (y0 - 2 * y1 + y2)
    m = mel(centres_hz)
    return float(inverse_mel(m[k] + d * (m[k + 1] - m[k])))


@pytest.mark.parametrize("alpha", [0.9, 0.95, 1.05, 1.1])
@pytest.mark.parametrize("f0", [500.0, 1200.0, 2500.0])
def test_a_formant_moves_to_alpha_times_its_frequency(alpha, f0):
    centres = inverse_mel(channel_centres_mel(F, LO, HI))
    # a smooth formant-like bump: log energy a Gaussian in mel around f0
    frame = np.exp(-0.5 * ((mel(centres) - mel(f0)) / 120.0) ** 2).astype(np.float32)
    warped = (torch.from_numpy(frame)[None] @ warp_matrix(alpha, F, LO, HI))[0].numpy()
    assert peak_hz(warped, centres) == pytest.approx(alpha * f0, rel=0.03)
    assert peak_hz(frame, centres) == pytest.approx(f0, rel=0.03)


def test_identity_columns_and_edges():
    assert torch.allclose(warp_matrix(1.0, F, LO, HI), torch.eye(F), atol=1e-6)
    for alpha in (0.8, 1.25):
        W = warp_matrix(alpha, F, LO, HI)
        assert torch.allclose(W.sum(0), torch.ones(F))  # each output channel: a convex mix of two inputs
        assert (W >= 0).all() and ((W > 0).sum(0) <= 2).all()
    # alpha > 1 reads below each centre: the first channels clamp to channel 0
    assert warp_matrix(1.25, F, LO, HI)[0, 0] == 1.0
    # alpha < 1 reads above: the last channel clamps to the last input
    assert warp_matrix(0.8, F, LO, HI)[F - 1, F - 1] == 1.0


def test_cmvn_round_trip_padding_and_determinism():
    torch.manual_seed(0)
    B, T = 4, 30
    raw = torch.randn(B, T, F) * 2.0 - 5.0
    mean, std = raw.mean((0, 1)), raw.std((0, 1))
    lengths = torch.tensor([30, 20, 9, 1])
    normed = (raw - mean) / std
    for b in range(B):
        normed[b, int(lengths[b]):] = 0.0  # batch padding, as collate writes it
    aug = Vtlp(low=0.85, high=1.15)
    before = normed.clone()
    out = aug(normed, lengths, seed=2, step=5, mean=mean, std=std)
    assert torch.equal(normed, before)  # a warped copy
    assert torch.equal(out, aug(normed, lengths, seed=2, step=5, mean=mean, std=std))
    assert not torch.equal(out, aug(normed, lengths, seed=2, step=6, mean=mean, std=std))
    assert not torch.equal(out, aug(normed, lengths, seed=3, step=5, mean=mean, std=std))
    g = torch.Generator().manual_seed((2 * 1_000_003 + 5 + 7_919) % (2 ** 63))
    for b in range(B):
        n = int(lengths[b])
        assert torch.equal(out[b, n:], normed[b, n:])  # padding untouched
        alpha = 0.85 + 0.3 * float(torch.rand((), generator=g, dtype=torch.float64))
        expect = (raw[b, :n] @ warp_matrix(alpha, F, LO, HI) - mean) / std  # warp the raw features
        assert torch.allclose(out[b, :n], expect, atol=1e-4)
    # without CMVN statistics the features themselves are warped
    plain = aug(raw, lengths, seed=2, step=5)
    assert torch.allclose(plain[0], raw[0] @ warp_matrix(0.85 + 0.3 * float(torch.rand(
        (), generator=torch.Generator().manual_seed((2 * 1_000_003 + 5 + 7_919) % (2 ** 63)),
        dtype=torch.float64)), F, LO, HI), atol=1e-5)


def test_off_by_default_and_bad_options_refused():
    assert TrainOptions().vtlp is None and Vtlp.from_dict(None) is None
    assert Vtlp.from_dict({"low": 0.9, "high": 1.1}) == Vtlp(0.9, 1.1)
    assert TrainOptions.from_dict({"vtlp": {"low": 0.95, "high": 1.05}}).vtlp == {"low": 0.95, "high": 1.05}
    for bad, word in [({"lo": 0.9}, "unknown"), ({"low": 1.2, "high": 1.1}, "exceed"),
                      ({"low": 0.0}, "low"), ({"high": float("nan")}, "high"), ({"low": True}, "low"),
                      ({"low_hz": 8000.0}, "low_hz"), ([0.9, 1.1], "mapping")]:
        with pytest.raises(ValueError, match=word):
            TrainOptions.from_dict({"vtlp": bad})
