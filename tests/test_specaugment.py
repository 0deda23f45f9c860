"""SpecAugment on the training features: the masks are what the options say (bands of channels, runs of
frames, inside each utterance's frames, zero), deterministic per (seed, step), off by default, and bad
options are refused by name."""
from __future__ import annotations

import pytest
import torch

from training.loop import TrainOptions
from training.specaugment import SpecAugment


def runs(mask_1d):
    """(start, width) of each run of True in a 1-D bool tensor."""
    out, start = [], None
    for i, v in enumerate(mask_1d.tolist() + [False]):
        if v and start is None:
            start = i
        if not v and start is not None:
            out.append((start, i - start))
            start = None
    return out


def test_masks_are_bands_and_runs_inside_each_utterance():
    torch.manual_seed(0)
    B, T, F = 6, 120, 40
    feats = torch.randn(B, T, F) + 5.0  # no natural zeros
    before = feats.clone()
    lengths = torch.tensor([120, 100, 80, 30, 12, 5])
    aug = SpecAugment(freq_masks=2, freq_width=8, time_masks=2, time_width=20)
    for step in range(20):
        out = aug(feats, lengths, seed=3, step=step)
        assert not torch.equal(out, feats) and torch.equal(feats, before)  # a masked copy
        zero = out == 0
        changed = out != feats
        assert torch.equal(zero, changed)  # only zeros, and every change is a zero
        for b in range(B):
            n = int(lengths[b])
            assert not zero[b, n:].any()  # padding untouched
            rows = zero[b, :n].all(dim=1)  # fully masked frames: the time runs
            assert sum(w for _, w in runs(rows)) <= min(n, 2 * 20)
            if rows.all():  # a short utterance the time masks covered
                continue
            cols = zero[b, :n][~rows].all(dim=0)  # channels masked in every other frame: the bands
            # every zero lies in a fully masked frame or a fully masked channel
            assert torch.equal(zero[b, :n], rows[:, None] | cols[None, :])
            assert sum(w for _, w in runs(cols)) <= 2 * 8


def test_the_same_seed_and_step_give_the_same_masks():
    feats = torch.randn(3, 50, 40) + 5.0
    lengths = torch.tensor([50, 40, 30])
    aug = SpecAugment()
    assert torch.equal(aug(feats, lengths, 0, 7), aug(feats, lengths, 0, 7))
    assert not torch.equal(aug(feats, lengths, 0, 7), aug(feats, lengths, 0, 8))
    assert not torch.equal(aug(feats, lengths, 0, 7), aug(feats, lengths, 1, 7))


def test_zero_widths_change_nothing_and_the_default_is_off():
    feats = torch.randn(2, 30, 40)
    lengths = torch.tensor([30, 20])
    assert torch.equal(SpecAugment(2, 0, 2, 0)(feats, lengths, 0, 0), feats)
    assert TrainOptions().spec_augment is None and SpecAugment.from_dict(None) is None


@pytest.mark.parametrize("bad, message", [
    ({"freq_mask": 2}, "unknown train.spec_augment"),
    ({"freq_width": -1}, "integer >= 0"),
    ({"time_width": 2.5}, "integer >= 0"),
    ({"time_masks": True}, "integer >= 0"),
    ([1, 2], "mapping or null"),
])
def test_bad_options_are_refused_by_name(bad, message):
    with pytest.raises(ValueError, match=message):
        TrainOptions.from_dict({"spec_augment": bad})
