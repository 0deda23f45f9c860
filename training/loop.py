"""The LF-MMI training loop used by ``retrain.py`` and ``train_search.py``.

One :class:`Trainer` owns the model (optionally wrapped in DistributedDataParallel), the optimizer
(Adam), the learning-rate schedule (linear warm-up, then exponential decay from ``lr`` to ``final_lr``
as Kaldi's chain recipes do), gradient clipping, Kaldi's semi-orthogonal constraint every
``orth_every`` steps, validation each epoch, TensorBoard scalars, tqdm progress and atomic checkpoints
every ``checkpoint_every`` steps and at each epoch end (the one before kept as ``checkpoint.prev.pt``,
the fallback when the latest is corrupt). A batch with non-finite features, output, loss or gradient is
skipped without changing any state, counted per epoch, and bounded by ``max_skip_fraction``. ``fit(resume=True)`` continues exactly where a
killed run stopped: parameters, optimizer and scheduler state, random generators, and the position
inside the epoch.

Extensions (quantization-aware training, ADMM, the architecture search) plug in as :class:`TrainHook`
objects, whose state is checkpointed with the rest.
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch
from tqdm import tqdm

from training import checkpoint as ckpt
from training.data import ResumableBatches
from training.distributed import DistInfo, all_reduce_sum, average_buffers
from training.specaugment import SpecAugment
from training.vtlp import Vtlp

log = logging.getLogger(__name__)


@dataclass
class TrainOptions:
    """Optimisation settings (YAML ``train:`` section; every field has a working default)."""

    epochs: int = 6
    max_duration: float = 300.0  # seconds of audio per batch (per rank)
    lr: float = 2e-3
    final_lr: float = 2e-4
    warmup_steps: int = 30
    weight_decay: float = 0.0
    grad_clip: float = 20.0
    orth_every: int = 4
    checkpoint_every: int = 100
    log_every: int = 10
    seed: int = 0
    max_steps: Optional[int] = None  # stop after this many optimizer steps (tests, smoke runs)
    valid_max_duration: float = 600.0
    # A batch with non-finite features, network output, loss or gradient is skipped. An epoch may skip
    # at most max(1, floor(max_skip_fraction * batches per epoch)) batches; one more ends the run with
    # an error. At least one is always tolerated, so one bad utterance does not stop a small corpus.
    max_skip_fraction: float = 0.01
    # SpecAugment masks on the training features (training/specaugment.py), e.g. {freq_masks: 2,
    # freq_width: 8, time_masks: 2, time_width: 20}; null: none
    spec_augment: Optional[Dict[str, Any]] = None
    # vocal tract length perturbation of the training features (training/vtlp.py), e.g. {low: 0.9,
    # high: 1.1}; null: none. Applied before SpecAugment.
    vtlp: Optional[Dict[str, Any]] = None

    @classmethod
    def from_dict(cls, d: Optional[Dict[str, Any]]) -> "TrainOptions":
        d = dict(d or {})
        known = {f for f in cls.__dataclass_fields__}
        bad = sorted(set(d) - known)
        if bad:
            raise ValueError(f"unknown train option(s) {bad}; known: {sorted(known)}")
        opts = cls(**d)
        opts.validate()
        return opts

    def replace(self, **kw) -> "TrainOptions":
        """A copy with ``kw`` set (command-line overrides over the YAML; None = keep), validated."""
        opts = replace(self, **{k: v for k, v in kw.items() if v is not None})
        opts.validate()
        return opts

    def validate(self) -> None:
        """Raise ValueError naming the first option whose value has the wrong type or range."""
        ints = ("epochs", "warmup_steps", "orth_every", "checkpoint_every", "log_every", "seed")
        floats = ("max_duration", "lr", "final_lr", "weight_decay", "grad_clip", "valid_max_duration",
                  "max_skip_fraction")
        for k in ints:
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"train.{k} must be an integer, got {v!r}")
        for k in floats:
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"train.{k} must be a finite number, got {v!r}")
        if self.max_steps is not None and (isinstance(self.max_steps, bool) or not isinstance(self.max_steps, int)):
            raise ValueError(f"train.max_steps must be an integer or null, got {self.max_steps!r}")
        positive = ("epochs", "max_duration", "lr", "final_lr", "valid_max_duration")
        for k in positive:
            if getattr(self, k) <= 0:
                raise ValueError(f"train.{k} must be > 0, got {getattr(self, k)!r}")
        for k in ("warmup_steps", "orth_every", "checkpoint_every", "log_every", "weight_decay", "grad_clip"):
            if getattr(self, k) < 0:
                raise ValueError(f"train.{k} must be >= 0, got {getattr(self, k)!r}")
        if not 0 <= self.max_skip_fraction <= 1:
            raise ValueError(f"train.max_skip_fraction must be in [0, 1], got {self.max_skip_fraction!r}")
        SpecAugment.from_dict(self.spec_augment)
        Vtlp.from_dict(self.vtlp)


class TooManySkippedBatches(RuntimeError):
    """More batches of one epoch were skipped (non-finite values) than ``max_skip_fraction`` allows."""


class TrainHook:
    """Extension point. Every method is optional; state is saved in checkpoints."""

    name = "hook"

    def on_fit_start(self, trainer: "Trainer") -> None: ...

    def extra_loss(self, trainer: "Trainer", batch, outputs) -> Optional[torch.Tensor]:
        return None

    def after_optimizer_step(self, trainer: "Trainer") -> None: ...

    def on_epoch_end(self, trainer: "Trainer", epoch: int, valid: Dict[str, float]) -> None: ...

    def on_fit_end(self, trainer: "Trainer") -> None: ...

    def state_dict(self) -> Dict[str, Any]:
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None: ...


def _reason(what: str, here: bool) -> str:
    """A skip's reason; under DDP the batch of a rank may be skipped for another rank's values."""
    return what if here else f"{what} on another rank"


class Trainer:
    """Train ``model`` with ``loss_fn`` (an :class:`lfmmi.LFMMILoss`) on batches of ``train``.

    Args:
        model: network with ``forward(feats, lengths) -> (chain_out, xent_out, out_lengths)``.
        loss_fn: ``loss_fn(chain_out, xent_out, out_lengths, num_graphs) -> (loss, stats)``.
        compiler: numerator graph compiler with ``compile(texts) -> graphs``.
        train, valid: :class:`training.data.ResumableBatches` (valid may be None).
        out_dir: checkpoints (``checkpoint.pt``), TensorBoard logs (``tb/``), ``train_log.jsonl``.
    """

    def __init__(self, model: torch.nn.Module, loss_fn, compiler, train: ResumableBatches,
                 valid: Optional[ResumableBatches], opts: TrainOptions, out_dir, device,
                 dist_info: Optional[DistInfo] = None, hooks: Sequence[TrainHook] = (),
                 params: Optional[List[torch.nn.Parameter]] = None, tb_writer=None,
                 show_progress: bool = True):
        self.opts = opts
        self.spec_augment = SpecAugment.from_dict(opts.spec_augment)  # None: no masks
        self.vtlp = Vtlp.from_dict(opts.vtlp)  # None: no warping
        self.out_dir = Path(out_dir)
        self.device = torch.device(device)
        self.dist = dist_info or DistInfo()
        self.raw_model = model.to(self.device)
        self.model = self.raw_model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DDP(self.raw_model, device_ids=ids, find_unused_parameters=False)
        self.loss_fn = loss_fn
        self.compiler = compiler
        self.train_batches = train
        self.valid_batches = valid
        self.hooks = list(hooks)
        params = params if params is not None else [p for p in self.raw_model.parameters() if p.requires_grad]
        self.params = list(params)
        self.optimizer = torch.optim.Adam(params, lr=opts.lr, weight_decay=opts.weight_decay)
        self.steps_per_epoch = max(1, train.num_batches(0))
        self.total_steps = self.steps_per_epoch * opts.epochs
        if opts.max_steps is not None:
            self.total_steps = min(self.total_steps, opts.max_steps) if opts.max_steps > 0 else self.total_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.skipped_batches = 0
        self.skipped_sequences = 0
        self.epoch_skips: List[Dict[str, Any]] = []  # batches skipped in the current epoch
        self.history: List[Dict[str, Any]] = []
        self.show_progress = show_progress and self.dist.is_main
        self._tb = tb_writer
        self._tb_owned = False
        self._saved_position = None  # (step, epoch, batch_in_epoch) of the last checkpoint written

    # ------------------------------------------------------------------ schedule
    def _lr_factor(self, step: int) -> float:
        warm = min(1.0, (step + 1) / max(1, self.opts.warmup_steps))
        frac = min(1.0, step / max(1, self.total_steps))
        decay = math.exp(frac * math.log(self.opts.final_lr / self.opts.lr))
        return warm * decay

    @property
    def progress(self) -> float:
        """Fraction of training done, in [0, 1] (drives the dropout schedule)."""
        return min(1.0, self.step / max(1, self.total_steps))

    # ------------------------------------------------------------------ logging
    @property
    def tb(self):
        if self._tb is None and self.dist.is_main:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.out_dir / "tb"))
            self._tb_owned = True
        return self._tb

    def log_scalars(self, prefix: str, d: Dict[str, float], step: Optional[int] = None) -> None:
        if not self.dist.is_main:
            return
        for k, v in d.items():
            if isinstance(v, (int, float)) and math.isfinite(float(v)):
                self.tb.add_scalar(f"{prefix}/{k}", float(v), self.step if step is None else step)

    # ------------------------------------------------------------------ checkpoints
    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / "checkpoint.pt"

    def state_dict(self) -> Dict[str, Any]:
        return {
            "model": self.raw_model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "skipped_batches": self.skipped_batches,
            "skipped_sequences": self.skipped_sequences,
            "epoch_skips": json.dumps(self.epoch_skips),
            "rng": ckpt.rng_state(),
            "hooks": {h.name: h.state_dict() for h in self.hooks},
            "history": json.dumps(self.history),
            "opts": json.dumps(asdict(self.opts)),
        }

    def save_checkpoint(self) -> None:
        """Write ``checkpoint.pt`` (rank 0); a model with a non-finite tensor is never written."""
        position = (self.step, self.epoch, self.batch_in_epoch)
        if position == self._saved_position:  # already saved (e.g. max_steps on a checkpoint step):
            return                             # saving again would rotate the previous one away
        self._saved_position = position
        if self.dist.is_main:
            state = self.state_dict()
            ckpt.check_finite(state["model"], self.checkpoint_path)
            ckpt.save_rotating(state, self.checkpoint_path)  # the previous one stays as checkpoint.prev.pt
            log.info("saved checkpoint at step %d (epoch %d, batch %d)", self.step, self.epoch,
                     self.batch_in_epoch)

    def load_checkpoint(self, path=None) -> None:
        """Restore the training state from ``path`` (default: ``checkpoint.pt``, else, with a warning,
        ``checkpoint.prev.pt`` when the latest is missing or corrupt)."""
        if path is None:
            st, path = ckpt.load_latest(self.checkpoint_path, map_location=self.device)
        else:
            st = ckpt.load(path, map_location=self.device)
        try:
            self.raw_model.load_state_dict(st["model"])
        except RuntimeError as e:
            raise RuntimeError(
                f"checkpoint {path} does not match this model's architecture "
                f"(was it written by another config or genotype?): {e}"
            ) from e
        self.optimizer.load_state_dict(st["optimizer"])
        self.scheduler.load_state_dict(st["scheduler"])
        self.step, self.epoch = int(st["step"]), int(st["epoch"])
        self.batch_in_epoch = int(st["batch_in_epoch"])
        self.skipped_batches = int(st["skipped_batches"])
        self.skipped_sequences = int(st["skipped_sequences"])
        self.epoch_skips = json.loads(st.get("epoch_skips", "[]"))
        self.history = json.loads(st["history"])
        for h in self.hooks:
            if h.name in st["hooks"]:
                h.load_state_dict(st["hooks"][h.name])
        ckpt.set_rng_state(st["rng"])
        log.info("resumed from %s at epoch %d, batch %d, step %d", path,
                 self.epoch, self.batch_in_epoch, self.step)

    # ------------------------------------------------------------------ steps
    def forward_loss(self, batch, train: bool = True):
        feats = batch["feats"]
        lengths = batch["lengths"]
        if train and self.vtlp is not None:  # the network's input only: hooks see the batch as it is
            cmvn = getattr(self.train_batches, "cmvn", None)
            feats = self.vtlp(feats, lengths, self.opts.seed, self.step,
                              None if cmvn is None else cmvn.mean, None if cmvn is None else cmvn.std)
        if train and self.spec_augment is not None:
            feats = self.spec_augment(feats, lengths, self.opts.seed, self.step)
        feats, lengths = feats.to(self.device), lengths.to(self.device)
        model = self.model if train else self.raw_model
        chain, xent, out_lengths = model(feats, lengths)
        graphs = self.compiler.compile(batch["texts"])
        loss, stats = self.loss_fn(chain, xent, out_lengths, graphs)
        return loss, stats, (chain, xent, out_lengths)

    def train_step(self, batch) -> Dict[str, float]:
        """One optimizer step on ``batch``, or a counted skip that changes no state.

        A batch is skipped when its features (B, T, F), the network's chain output, the loss or the
        gradient norm is non-finite. Features are checked before the forward; for the later checks the
        model's buffers (BatchNorm running statistics, ``num_batches_tracked``) are restored to their
        values before the forward, and no gradient reaches the optimizer. Under DDP every rank skips
        together (the decision is all-reduced)."""
        self.raw_model.train()
        if hasattr(self.raw_model, "set_training_progress"):  # dropout schedule
            self.raw_model.set_training_progress(self.progress)
        bad_feats = not bool(torch.isfinite(batch["feats"]).all())
        if self._any_rank(bad_feats):
            return self._skip_batch(batch, _reason("non-finite features", bad_feats))
        buffers = self._snapshot_buffers()
        loss, stats, outputs = self.forward_loss(batch, train=True)
        extra_total = 0.0
        for h in self.hooks:
            extra = h.extra_loss(self, batch, outputs)
            if extra is not None:
                loss = loss + extra
                extra_total += float(extra.detach())
        if not loss.requires_grad:  # every sequence skipped: keep DDP's collective calls in step
            loss = loss + 0.0 * outputs[0].sum()
        bad_output = not bool(torch.isfinite(outputs[0].detach()).all())
        bad_loss = not bool(torch.isfinite(loss.detach()))
        if self._any_rank(bad_output or bad_loss):
            self._restore_buffers(buffers)
            what = "non-finite network output" if bad_output else "non-finite loss"
            return self._skip_batch(batch, _reason(what, bad_output or bad_loss))
        self.skipped_sequences += int(stats.get("skipped", 0))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(self.params, self.opts.grad_clip)
        if not torch.isfinite(gnorm):  # gradients are already all-reduced: every rank agrees
            self._restore_buffers(buffers)
            return self._skip_batch(batch, "non-finite gradient")
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        if self.opts.orth_every > 0 and self.step % self.opts.orth_every == 0 and hasattr(
                self.raw_model, "apply_semi_orthogonal_"):
            with torch.no_grad():
                self.raw_model.apply_semi_orthogonal_()
        for h in self.hooks:
            h.after_optimizer_step(self)
        out = {k: float(v) for k, v in stats.items() if isinstance(v, (int, float))}
        out.update({"loss": float(loss.detach()), "grad_norm": float(gnorm),
                    "lr": self.optimizer.param_groups[0]["lr"], "extra_loss": extra_total})
        return out

    # ------------------------------------------------------------------ skipped batches
    def _any_rank(self, flag: bool) -> bool:
        """True when ``flag`` holds on any rank (an all-reduce under DDP, so all ranks agree)."""
        if not self.dist.enabled:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        return float(all_reduce_sum(t, self.dist)) > 0

    def _snapshot_buffers(self) -> Dict[str, torch.Tensor]:
        return {k: b.detach().clone() for k, b in self.raw_model.named_buffers()}

    def _restore_buffers(self, snapshot: Dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for k, b in self.raw_model.named_buffers():
                b.copy_(snapshot[k])

    @property
    def max_skips_per_epoch(self) -> int:
        """Skipped batches tolerated in one epoch (at least 1, see ``TrainOptions.max_skip_fraction``)."""
        return max(1, int(self.opts.max_skip_fraction * self.steps_per_epoch))

    def _skip_batch(self, batch, reason: str) -> Dict[str, float]:
        """Count a skipped batch (no state has changed); fail when the epoch has skipped too many."""
        self.optimizer.zero_grad(set_to_none=True)
        self.skipped_batches += 1
        self.epoch_skips.append({"step": self.step, "batch": self.batch_in_epoch, "reason": reason,
                                 "cut_ids": list(batch.get("cut_ids", []))})
        n = len(self.epoch_skips)
        log.warning("%s at step %d (epoch %d, batch %d, cuts %s): batch skipped (%d this epoch, %d allowed)",
                    reason, self.step, self.epoch + 1, self.batch_in_epoch, ", ".join(batch.get("cut_ids", [])),
                    n, self.max_skips_per_epoch)
        self.log_scalars("train", {"skipped_batches": n})
        if n > self.max_skips_per_epoch:
            raise TooManySkippedBatches(
                f"epoch {self.epoch + 1} skipped {n} of {self.steps_per_epoch} batches for non-finite values "
                f"(allowed: {self.max_skips_per_epoch}, train.max_skip_fraction={self.opts.max_skip_fraction}); "
                f"last: {reason} in cuts {', '.join(batch.get('cut_ids', []))}")
        return {"skipped_batch": 1.0}

    @torch.no_grad()
    def validate(self) -> Dict[str, float]:
        """Per-frame LF-MMI objective on the validation batches (summed over ranks)."""
        if self.valid_batches is None:
            return {}
        self.raw_model.eval()
        sums = torch.zeros(4, dtype=torch.float64)  # objf*frames, num*frames, frames, skipped
        for batch in self.valid_batches.epoch(0):
            _, stats, _ = self.forward_loss(batch, train=False)
            fr = float(stats.get("frames", 0))
            sums += torch.tensor([stats.get("objf_per_frame", 0.0) * fr,
                                  stats.get("num_per_frame", 0.0) * fr, fr,
                                  float(stats.get("skipped", 0))], dtype=torch.float64)
        sums = all_reduce_sum(sums.to(self.device), self.dist).cpu()
        frames = float(sums[2])
        if frames <= 0:  # no objective was measured: NaN, not a perfect-looking 0.0
            log.warning("validation measured 0 frames (%d sequences skipped): objf/frame is NaN",
                        int(sums[3]))
            return {"objf_per_frame": math.nan, "num_per_frame": math.nan, "frames": 0.0,
                    "skipped": float(sums[3])}
        return {"objf_per_frame": float(sums[0]) / frames, "num_per_frame": float(sums[1]) / frames,
                "frames": frames, "skipped": float(sums[3])}

    # ------------------------------------------------------------------ main loop
    def fit(self, resume: bool = False) -> Dict[str, Any]:
        """Train for ``opts.epochs`` (or ``opts.max_steps``); return the last validation stats."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            if ckpt.has_checkpoint(self.checkpoint_path):
                self.load_checkpoint()
            else:
                log.warning("--resume given but %s does not exist: starting from scratch",
                            self.checkpoint_path)
        for h in self.hooks:
            h.on_fit_start(self)
        valid: Dict[str, float] = {}
        log_path = self.out_dir / "train_log.jsonl"
        # a run resumed after it reached max_steps (killed after its last checkpoint, before its outputs
        # were written) takes no further step, so its model is the uninterrupted run's
        done = self.step > 0 and self.opts.max_steps is not None and self.step >= self.opts.max_steps
        while self.epoch < self.opts.epochs and not done:
            t0 = time.time()
            bar = tqdm(total=self.steps_per_epoch, initial=self.batch_in_epoch,
                       desc=f"epoch {self.epoch + 1}/{self.opts.epochs}",
                       disable=not self.show_progress, leave=False)
            for batch in self.train_batches.epoch(self.epoch, skip=self.batch_in_epoch):
                stats = self.train_step(batch)
                self.batch_in_epoch += 1
                bar.update(1)
                if "objf_per_frame" in stats:
                    bar.set_postfix(objf=f"{stats['objf_per_frame']:.4f}")
                if self.dist.is_main and self.step % self.opts.log_every == 0:
                    self.log_scalars("train", stats)
                if self.opts.checkpoint_every > 0 and self.step % self.opts.checkpoint_every == 0:
                    self.save_checkpoint()
                if self.opts.max_steps is not None and self.step >= self.opts.max_steps:
                    done = True
                    break
            bar.close()
            if done:
                self.save_checkpoint()
                break
            valid = self.validate()
            rec = {"epoch": self.epoch + 1, "step": self.step, "seconds": time.time() - t0,
                   "valid": valid, "skipped_batches": self.skipped_batches,
                   "skipped_sequences": self.skipped_sequences,
                   "epoch_skipped_batches": len(self.epoch_skips), "epoch_skips": self.epoch_skips}
            self.history.append(rec)
            if self.dist.is_main:
                self.log_scalars("valid", valid, step=self.epoch + 1)
                self.log_scalars("train", {"skipped_batches_epoch": len(self.epoch_skips)}, step=self.epoch + 1)
                with open(log_path, "a") as f:
                    f.write(json.dumps(rec) + "\n")
                log.info("epoch %d: valid objf/frame %.4f (%.0f s)", self.epoch + 1,
                         valid.get("objf_per_frame", float("nan")), rec["seconds"])
            for h in self.hooks:
                h.on_epoch_end(self, self.epoch, valid)
            self.epoch += 1
            self.batch_in_epoch = 0
            self.epoch_skips = []
            self.save_checkpoint()
        average_buffers(self.raw_model, self.dist)
        for h in self.hooks:
            h.on_fit_end(self)
        if self._tb_owned and self._tb is not None:
            self._tb.flush()
        return valid
