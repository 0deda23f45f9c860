"""Knowledge distillation (training.distill): the frame KL against a per-frame reference, its invariance
to the per-frame constant that decoding ignores, masking, and retrain.py --distill-from end to end."""
from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import run_cli
from training.distill import DistillOptions, frame_kl


def _reference_kl(student, teacher, lengths, temperature):
    """Per-frame loop over torch.nn.functional.kl_div, averaged over valid frames."""
    vals = []
    for b in range(student.shape[0]):
        for t in range(int(lengths[b])):
            ls = torch.log_softmax(student[b, t].double() / temperature, -1)
            lt = torch.log_softmax(teacher[b, t].double() / temperature, -1)
            vals.append(torch.nn.functional.kl_div(ls, lt, reduction="sum", log_target=True) * temperature ** 2)
    return torch.stack(vals).mean()


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_frame_kl_matches_a_per_frame_reference(temperature):
    g = torch.Generator().manual_seed(0)
    s = torch.randn(3, 7, 11, generator=g) * 3
    t = torch.randn(3, 7, 11, generator=g) * 3
    lengths = torch.tensor([7, 4, 1])
    got = frame_kl(s, t, lengths, temperature)
    ref = _reference_kl(s, t, lengths, temperature)
    assert torch.allclose(got.double(), ref, rtol=1e-5, atol=1e-6)


def test_frame_kl_ignores_per_frame_constants_and_padding():
    g = torch.Generator().manual_seed(1)
    t = torch.randn(2, 5, 6, generator=g)
    s = t + torch.randn(2, 5, 1, generator=g) * 10  # a per-frame offset: the same decoding scores
    lengths = torch.tensor([5, 3])
    s[1, 3:] = float("nan")  # padding may hold anything
    assert float(frame_kl(s, t, lengths)) == pytest.approx(0.0, abs=1e-5)
    s2 = t.clone()
    s2[0, 2, 0] += 4.0
    assert float(frame_kl(s2, t, lengths)) > 1e-3


def test_frame_kl_gradient_reaches_the_student_only():
    s = torch.randn(1, 4, 5, requires_grad=True)
    t = torch.randn(1, 4, 5, requires_grad=True)
    frame_kl(s, t, torch.tensor([4])).backward()
    assert s.grad is not None and float(s.grad.abs().sum()) > 0
    assert t.grad is None
    # gradient of KL(pt || ps) w.r.t. the student's logits = (ps - pt) / frames
    ps, pt = torch.softmax(s.detach(), -1), torch.softmax(t.detach(), -1)
    assert torch.allclose(s.grad, (ps - pt) / 4, atol=1e-6)


def test_distill_options_reject_bad_values():
    assert DistillOptions.from_dict({"weight": 2}).weight == 2.0
    with pytest.raises(ValueError, match="unknown distill option"):
        DistillOptions.from_dict({"wieght": 1})
    with pytest.raises(ValueError, match="temperature"):
        DistillOptions.from_dict({"temperature": 0})
    with pytest.raises(ValueError, match="weight"):
        DistillOptions.from_dict({"weight": float("nan")})


def test_retrain_distills_from_a_float_teacher(tiny_corpus, small_train_config, tmp_path):
    fp32 = tmp_path / "fp32"
    run_cli(["retrain.py", "--data-dir", tiny_corpus, "--config", small_train_config, "--max-steps", 2,
             "--no-progress", "--out", fp32])
    cfg = tmp_path / "ft.yaml"
    cfg.write_text(open(small_train_config).read() + "distill:\n  weight: 1.0\n  temperature: 1.0\n")
    out = tmp_path / "kd"
    r = run_cli(["retrain.py", "--data-dir", tiny_corpus, "--config", cfg, "--max-steps", 2,
                 "--uniform-bits", 2, "--init-from", fp32 / "model.pt", "--distill-from", fp32 / "model.pt",
                 "--no-progress", "--out", out])
    assert "distilling from" in r.stderr
    size = json.load(open(out / "size.json"))
    assert size["distill_from"] == str(fp32 / "model.pt")
    # the extra loss entered training: logged per step in TensorBoard's event file
    events = list((out / "tb").glob("events.*"))
    assert events and any(b"distill/kl_per_frame" in e.read_bytes() for e in events)


def test_search_distills_in_weight_and_architecture_steps(tiny_corpus, small_train_config, tmp_path):
    fp32 = tmp_path / "fp32"
    run_cli(["retrain.py", "--data-dir", tiny_corpus, "--config", small_train_config, "--max-steps", 2,
             "--no-progress", "--out", fp32])
    cfg = tmp_path / "search.yaml"
    cfg.write_text(open(small_train_config).read()
                   + "search:\n  warmup_epochs: 0\n  held_out_fraction: 0.3\n  log_every: 1\n"
                   + "distill:\n  weight: 0.5\n")
    out = tmp_path / "search"
    run_cli(["train_search.py", "--data-dir", tiny_corpus, "--config", cfg, "--target-ratio", 8,
             "--max-steps", 3, "--init-from", fp32 / "model.pt", "--distill-from", fp32 / "model.pt",
             "--no-progress", "--out", out])
    sc = json.load(open(out / "search_config.json"))
    assert sc["distill_from"] == str(fp32 / "model.pt") and sc["distill"] == {"weight": 0.5}
    data = b"".join(e.read_bytes() for e in (out / "tb").glob("events.*"))
    assert b"distill/kl_per_frame" in data      # weight steps
    assert b"arch/arch_distill" in data         # architecture steps on held-out batches
