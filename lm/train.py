"""Training loop of the Transformer LM.

:class:`LMTrainer` runs Adam with a linear warm-up and an exponential decay from ``lr`` to
``final_lr`` over the whole run (``epochs`` x batches per epoch; the schedule of training/loop.py),
gradient-norm clipping, dev perplexity after every epoch, TensorBoard scalars (``<out>/tb``), tqdm
progress, one ``train_log.jsonl`` line per epoch and atomic checkpoints (``<out>/checkpoint.pt``) every
``checkpoint_every`` steps and at each epoch end. ``fit(resume=True)`` continues exactly where a stopped
or killed run left off: parameters, optimizer, scheduler, random generators (dropout), position in the
epoch and the epoch's running loss; the batch order is a function of (seed, epoch) (lm.data).

``max_steps`` stops training after that many optimizer steps without changing the schedule, so a run
stopped that way and resumed ends with the same weights as an uninterrupted one.
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch
from tqdm import tqdm

from lm.data import LMBatches
from lm.model import TransformerLM, TransformerLMConfig
from lm.score import perplexity, token_logprobs
from lm.vocab import Vocab
from training import checkpoint as ckpt

log = logging.getLogger(__name__)


@dataclass
class LMTrainOptions:
    """Optimisation and vocabulary settings (YAML ``train:`` section; every field has a default)."""

    epochs: int = 10
    batch_size: int = 32  # sentences per batch
    lr: float = 1e-3
    final_lr: float = 1e-4
    warmup_steps: int = 200
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    checkpoint_every: int = 200
    log_every: int = 10
    eval_batch_size: int = 64
    seed: int = 0
    max_steps: Optional[int] = None  # stop after this many optimizer steps (schedule unchanged)
    vocab_min_count: int = 1
    vocab_max_size: Optional[int] = None  # including <eos> and <unk>

    @classmethod
    def from_dict(cls, d: Optional[Dict[str, Any]], source: str = "train config") -> "LMTrainOptions":
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        bad = sorted(set(d) - known)
        if bad:
            raise ValueError(f"{source}: unknown train option(s) {bad}; known: {sorted(known)}")
        opts = cls(**d)
        if opts.epochs < 1 or opts.batch_size < 1 or opts.eval_batch_size < 1:
            raise ValueError(f"{source}: epochs, batch_size and eval_batch_size must be >= 1")
        if opts.lr <= 0 or opts.final_lr <= 0:
            raise ValueError(f"{source}: lr and final_lr must be > 0")
        return opts


def lr_factor(step: int, warmup_steps: int, total_steps: int, lr: float, final_lr: float) -> float:
    """Multiplier of ``lr`` after ``step`` optimizer steps: linear warm-up times exponential decay."""
    warm = min(1.0, (step + 1) / max(1, warmup_steps))
    frac = min(1.0, step / max(1, total_steps))
    return warm * math.exp(frac * math.log(final_lr / lr))


class LMTrainer:
    """Train ``model`` on ``train`` batches; dev perplexity on ``dev_sentences`` after each epoch.

    Args:
        model: :class:`lm.model.TransformerLM`.
        vocab: its vocabulary (recorded in checkpoints; a resume with another vocabulary is refused).
        train: :class:`lm.data.LMBatches` over the encoded training sentences (shuffled).
        dev_sentences: list of word lists (may be empty: no validation).
        out_dir: ``checkpoint.pt``, ``train_log.jsonl``, ``tb/``.
    """

    def __init__(self, model: TransformerLM, vocab: Vocab, train: LMBatches,
                 dev_sentences: Sequence[Sequence[str]], opts: LMTrainOptions, out_dir, device="cpu",
                 show_progress: bool = True):
        self.opts = opts
        self.out_dir = Path(out_dir)
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.vocab = vocab
        self.train_batches = train
        self.dev_sentences = list(dev_sentences)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(self.params, lr=opts.lr, weight_decay=opts.weight_decay)
        self.steps_per_epoch = train.num_batches()
        self.total_steps = self.steps_per_epoch * opts.epochs
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, opts.warmup_steps, self.total_steps, opts.lr, opts.final_lr))
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.epoch_nll = 0.0  # summed token NLL of this epoch's batches so far
        self.epoch_tokens = 0
        self.skipped_batches = 0
        self.history: List[Dict[str, Any]] = []
        self.show_progress = show_progress
        self._tb = None

    # ------------------------------------------------------------------ logging
    @property
    def tb(self):
        if self._tb is None:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.out_dir / "tb"))
        return self._tb

    def log_scalars(self, prefix: str, d: Dict[str, float], step: int) -> None:
        for k, v in d.items():
            if isinstance(v, (int, float)) and math.isfinite(float(v)):
                self.tb.add_scalar(f"{prefix}/{k}", float(v), step)

    # ------------------------------------------------------------------ checkpoints
    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / "checkpoint.pt"

    def state_dict(self) -> Dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
            "epoch_nll": self.epoch_nll, "epoch_tokens": self.epoch_tokens,
            "skipped_batches": self.skipped_batches,
            "rng": ckpt.rng_state(),
            "history": json.dumps(self.history),
            "config": self.model.cfg.to_json(),
            "vocab_sha1": self.vocab.fingerprint(),
            "opts": json.dumps(asdict(self.opts)),
        }

    def save_checkpoint(self) -> None:
        ckpt.save_atomic(self.state_dict(), self.checkpoint_path)
        log.info("saved checkpoint at step %d (epoch %d, batch %d)", self.step, self.epoch, self.batch_in_epoch)

    def load_checkpoint(self, path=None) -> None:
        path = path or self.checkpoint_path
        st = ckpt.load(path, map_location="cpu")  # RNG states must stay CPU tensors; load_state_dict moves the rest
        if st.get("vocab_sha1") != self.vocab.fingerprint():
            raise RuntimeError(f"checkpoint {path} was trained with another vocabulary (was the LM text or "
                               f"the vocabulary options changed?)")
        try:  # compared as configs: a checkpoint written before a field existed has that field's default
            same = TransformerLMConfig.from_dict(json.loads(st.get("config") or "{}")) == self.model.cfg
        except (TypeError, ValueError):
            same = False
        if not same:
            raise RuntimeError(f"checkpoint {path} has model config {st.get('config')}, this run "
                               f"{self.model.cfg.to_json()}")
        saved = json.loads(st["opts"])
        changed = sorted(k for k, v in asdict(self.opts).items() if k != "max_steps" and saved.get(k) != v)
        if changed:
            log.warning("resuming with train options that differ from the checkpoint's: %s (the run will not "
                        "match an uninterrupted one)", ", ".join(f"{k} {saved.get(k)} -> {getattr(self.opts, k)}"
                                                             for k in changed))
        self.model.load_state_dict(st["model"])
        self.optimizer.load_state_dict(st["optimizer"])
        self.scheduler.load_state_dict(st["scheduler"])
        self.step, self.epoch, self.batch_in_epoch = int(st["step"]), int(st["epoch"]), int(st["batch_in_epoch"])
        self.epoch_nll, self.epoch_tokens = float(st["epoch_nll"]), int(st["epoch_tokens"])
        self.skipped_batches = int(st["skipped_batches"])
        self.history = json.loads(st["history"])
        ckpt.set_rng_state(st["rng"])
        log.info("resumed from %s at epoch %d, batch %d, step %d", path, self.epoch, self.batch_in_epoch, self.step)

    def write_log(self) -> None:
        """Rewrite ``train_log.jsonl`` from the (checkpointed) history, one line per epoch, so a resumed
        run never repeats or loses an epoch's line."""
        path = self.out_dir / "train_log.jsonl"
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w") as f:
            f.write("".join(json.dumps(r) + "\n" for r in self.history))
        tmp.replace(path)

    # ------------------------------------------------------------------ steps
    def train_step(self, batch: Dict[str, torch.Tensor]) -> Dict[str, float]:
        """One optimizer step on the mean token negative log-likelihood of ``batch``."""
        self.model.train()
        lp = token_logprobs(self.model, batch)
        tokens = int(batch["mask"].sum())
        nll = -lp.sum()
        loss = nll / tokens
        self.optimizer.zero_grad(set_to_none=True)
        if not torch.isfinite(loss.detach()):
            self.skipped_batches += 1
            log.warning("non-finite loss at step %d; batch skipped (%d so far)", self.step, self.skipped_batches)
            return {"skipped_batch": 1.0}
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(self.params, self.opts.grad_clip)
        if not torch.isfinite(gnorm):
            self.skipped_batches += 1
            log.warning("non-finite gradient at step %d; batch skipped", self.step)
            self.optimizer.zero_grad(set_to_none=True)
            return {"skipped_batch": 1.0}
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        self.epoch_nll += float(nll.detach())
        self.epoch_tokens += tokens
        return {"loss": float(loss.detach()), "grad_norm": float(gnorm),
                "lr": self.optimizer.param_groups[0]["lr"], "tokens": float(tokens)}

    def validate(self) -> Dict[str, float]:
        if not self.dev_sentences:
            return {}
        return perplexity(self.model, self.vocab, self.dev_sentences, self.opts.eval_batch_size)

    # ------------------------------------------------------------------ main loop
    def fit(self, resume: bool = False) -> Dict[str, float]:
        """Train for ``opts.epochs`` (or until ``opts.max_steps``); return the last dev statistics."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            if self.checkpoint_path.is_file():
                self.load_checkpoint()
            else:
                log.warning("--resume given but %s does not exist: starting from scratch", self.checkpoint_path)
        valid: Dict[str, float] = {}
        max_steps = self.opts.max_steps
        while self.epoch < self.opts.epochs:
            if max_steps is not None and self.step >= max_steps:
                break
            t0 = time.time()
            bar = tqdm(total=self.steps_per_epoch, initial=self.batch_in_epoch,
                       desc=f"epoch {self.epoch + 1}/{self.opts.epochs}", disable=not self.show_progress,
                       leave=False)
            stopped = False
            for batch in self.train_batches.epoch(self.epoch, skip=self.batch_in_epoch):
                stats = self.train_step(batch)
                self.batch_in_epoch += 1
                bar.update(1)
                if "loss" in stats:
                    bar.set_postfix(loss=f"{stats['loss']:.3f}")
                if self.step % self.opts.log_every == 0:
                    self.log_scalars("train", stats, self.step)
                if self.opts.checkpoint_every > 0 and self.step % self.opts.checkpoint_every == 0:
                    self.save_checkpoint()
                if max_steps is not None and self.step >= max_steps:
                    stopped = True
                    break
            bar.close()
            if stopped and self.batch_in_epoch < self.steps_per_epoch:
                self.save_checkpoint()
                log.info("stopped after %d steps (max_steps)", self.step)
                break
            valid = self.validate()
            train_ppl = math.exp(self.epoch_nll / max(1, self.epoch_tokens))
            rec = {"epoch": self.epoch + 1, "step": self.step, "seconds": time.time() - t0,
                   "train_ppl": train_ppl, "lr": self.optimizer.param_groups[0]["lr"],
                   "dev": valid, "skipped_batches": self.skipped_batches}
            self.history.append(rec)
            self.log_scalars("train_epoch", {"ppl": train_ppl}, self.epoch + 1)
            self.log_scalars("dev", {"ppl": valid.get("ppl", float("nan"))}, self.epoch + 1)
            self.write_log()
            log.info("epoch %d: train ppl %.2f, dev ppl %.2f (%.0f s)", self.epoch + 1, train_ppl,
                     valid.get("ppl", float("nan")), rec["seconds"])
            self.epoch += 1
            self.batch_in_epoch = 0
            self.epoch_nll, self.epoch_tokens = 0.0, 0
            self.save_checkpoint()
        if self._tb is not None:
            self._tb.flush()
        return valid
