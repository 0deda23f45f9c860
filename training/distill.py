"""Knowledge distillation from a float teacher during quantization-aware training.

A compressed student (fewer bits, smaller bottlenecks) is fine-tuned with LF-MMI plus a frame-level
term that pulls its chain output towards the fp32 teacher's:

    distill = weight * T^2 * sum_{b, t < len_b} KL( softmax(y_teacher[b, t] / T) || softmax(y_student[b, t] / T) ) / F

where ``y`` is the chain output (B, T_out, num_pdfs) and F the number of valid frames. The softmax over
pdfs removes a per-frame constant, the one thing decoding ignores in a chain output (the decoder adds the
same constant to every arc of a frame), so the term is zero exactly when the student's decoding scores
equal the teacher's. The teacher runs in eval mode (BatchNorm running statistics, no dropout), without
gradients, on the same batch. Frames where either output is non-finite are left out.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Optional

import torch

from training.loop import TrainHook


@dataclass
class DistillOptions:
    """YAML ``distill:`` section of a retrain config (used only when a teacher is given)."""

    weight: float = 1.0
    temperature: float = 1.0

    @classmethod
    def from_dict(cls, d: Optional[Dict[str, Any]]) -> "DistillOptions":
        d = dict(d or {})
        known = {f for f in cls.__dataclass_fields__}
        bad = sorted(set(d) - known)
        if bad:
            raise ValueError(f"unknown distill option(s) {bad}; known: {sorted(known)}")
        o = cls(**{k: float(v) for k, v in d.items()})
        if not (math.isfinite(o.weight) and o.weight >= 0):
            raise ValueError(f"distill weight must be finite and >= 0, got {o.weight}")
        if not (math.isfinite(o.temperature) and o.temperature > 0):
            raise ValueError(f"distill temperature must be finite and > 0, got {o.temperature}")
        return o


def frame_kl(student: torch.Tensor, teacher: torch.Tensor, lengths: torch.Tensor,
             temperature: float = 1.0) -> torch.Tensor:
    """Mean over valid frames of KL(softmax(teacher/T) || softmax(student/T)) * T^2.

    student, teacher: (B, T, N) chain outputs; lengths: (B,) valid frames per sequence.
    Returns a scalar (0 when no frame is valid); gradients flow into ``student`` only."""
    if student.shape != teacher.shape:
        raise ValueError(f"student output {tuple(student.shape)} and teacher output {tuple(teacher.shape)} differ")
    B, T, _ = student.shape
    lengths = lengths.to(device=student.device, dtype=torch.long).clamp(0, T)
    mask = torch.arange(T, device=student.device)[None, :] < lengths[:, None]  # (B, T)
    teacher = teacher.detach()
    mask = mask & torch.isfinite(student.detach()).all(-1) & torch.isfinite(teacher).all(-1)
    zero = torch.zeros((), dtype=student.dtype, device=student.device)
    s = torch.where(mask[..., None], student, zero).float() / temperature
    t = torch.where(mask[..., None], teacher, zero).float() / temperature
    log_ps = torch.log_softmax(s, dim=-1)
    log_pt = torch.log_softmax(t, dim=-1)
    kl = (log_pt.exp() * (log_pt - log_ps)).sum(-1)  # (B, T)
    frames = mask.sum()
    total = torch.where(mask, kl, torch.zeros_like(kl)).sum()
    return total * (temperature ** 2) / frames.clamp(min=1).to(total.dtype)


class DistillHook(TrainHook):
    """Adds ``opts.weight * frame_kl(student, teacher)`` to every training step's loss.

    ``teacher``: a float model with the student's input/output interface (same features and pdfs)."""

    name = "distill"

    def __init__(self, teacher: torch.nn.Module, opts: DistillOptions):
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.opts = opts
        self._sum = 0.0
        self._n = 0

    def on_fit_start(self, trainer) -> None:
        self.teacher.to(trainer.device)

    def loss(self, trainer, batch, outputs) -> torch.Tensor:
        """``weight * frame_kl`` of the student ``outputs`` (chain, xent, out_lengths) on ``batch``."""
        chain, _, out_lengths = outputs
        feats = batch["feats"].to(trainer.device)
        lengths = batch["lengths"].to(trainer.device)
        with torch.no_grad():
            t_chain, _, t_lengths = self.teacher(feats, lengths)
        if not torch.equal(t_lengths.cpu(), out_lengths.cpu()):
            raise RuntimeError("teacher and student disagree on output lengths (different frame subsampling?)")
        return self.opts.weight * frame_kl(chain, t_chain, out_lengths, self.opts.temperature)

    def extra_loss(self, trainer, batch, outputs) -> Optional[torch.Tensor]:
        if self.opts.weight == 0:
            return None
        term = self.loss(trainer, batch, outputs)
        kl = float(term.detach()) / self.opts.weight
        self._sum += kl
        self._n += 1
        if trainer.dist.is_main and trainer.step % trainer.opts.log_every == 0:
            trainer.log_scalars("distill", {"kl_per_frame": kl})
        return term

    def on_epoch_end(self, trainer, epoch: int, valid: Dict[str, float]) -> None:
        if self._n:
            trainer.log_scalars("distill", {"kl_per_frame_epoch": self._sum / self._n}, step=epoch + 1)
        self._sum, self._n = 0.0, 0
