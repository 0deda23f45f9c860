"""``ArchSearchHook``: plugs the architecture search into ``training.loop.Trainer`` (a TrainHook).

    net = SuperNet.from_space(space, num_pdfs, hard=False)
    architect = Architect(net.arch, SizePenalty(net.size_table(), target, "hinge", 1.0), lr=3e-3,
                          mode="bilevel", warmup_epochs=1)
    hook = ArchSearchHook(architect, TemperatureSchedule(5.0, 0.5, total=epochs, warmup=1),
                          arch_batches=held_out_batches, space=space, table=net.size_table())
    trainer = Trainer(net, loss_fn, compiler, train_batches, valid_batches, opts, out_dir, device,
                      hooks=[hook], params=net.weight_parameters())
    trainer.fit(resume=args.resume)       # writes out_dir/genotype.json at every epoch end

Per weight step (``after_optimizer_step``): the temperature (and, with ``entropy_schedule``, the
architect's entropy weight) is set from the schedule at the fractional epoch; after the warm-up, bi-level mode takes one architect step on the next held-out batch
(``arch_batches``, a ``training.data.ResumableBatches`` walked in order, epoch after epoch, resumable),
single-level mode steps the logits with the gradients of the trainer's own backward (the penalty is added
to the trainer's loss by ``extra_loss``). Every ``log_every`` steps: per-layer probabilities, the
layer x choice images, tau, expected / argmax size (MB) and the architect's stats go to TensorBoard.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Optional, Sequence

import torch

from nas.architect import Architect
from nas.derive import derive_genotype, log_arch_tensorboard
from nas.penalty import SizeTable
from nas.schedule import TemperatureSchedule
from training.loop import TrainHook

log = logging.getLogger(__name__)


class ArchSearchHook(TrainHook):
    name = "arch_search"

    def __init__(self, architect: Architect, schedule: Optional[TemperatureSchedule] = None,
                 arch_batches=None, space=None, table: Optional[SizeTable] = None, log_every: Optional[int] = None,
                 genotype_name: str = "genotype.json", entropy_schedule: Optional[Callable[[float], float]] = None,
                 target_bytes: Optional[float] = None, arch_extra_losses: Sequence[Any] = ()):
        if architect.mode == "bilevel" and arch_batches is None:
            raise ValueError("bi-level search needs arch_batches (a held-out split)")
        self.architect, self.schedule, self.arch_batches = architect, schedule, arch_batches
        self.entropy_schedule, self.target_bytes = entropy_schedule, target_bytes
        # objects with ``loss(trainer, batch, outputs) -> Tensor`` added to the architecture step's task
        # loss (e.g. training.distill.DistillHook: the held-out KL to a float teacher)
        self.arch_extra_losses = list(arch_extra_losses)
        self.space, self.table, self.log_every, self.genotype_name = space, table, log_every, genotype_name
        self._epoch, self._pos = 0, 0  # position in arch_batches
        self._it: Optional[Iterator] = None
        self.last: Dict[str, float] = {}

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def epoch_float(trainer) -> float:
        """Fractional epoch at which the current step started."""
        return trainer.epoch + trainer.batch_in_epoch / max(1, trainer.steps_per_epoch)

    def _next_arch_batch(self):
        for _ in range(2):
            if self._it is None:
                self._it = iter(self.arch_batches.epoch(self._epoch, skip=self._pos))
            try:
                b = next(self._it)
                self._pos += 1
                return b
            except StopIteration:
                self._epoch, self._pos, self._it = self._epoch + 1, 0, None
        raise RuntimeError("arch_batches yields no batch")

    def _arch_loss(self, trainer, batch):
        model = trainer.raw_model  # not the DDP wrapper: only the logits are differentiated here
        model.train()
        feats, lengths = batch["feats"].to(trainer.device), batch["lengths"].to(trainer.device)
        if hasattr(model, "arch_gradients"):
            with model.arch_gradients(True):
                chain, xent, out_lengths = model(feats, lengths)
        else:
            chain, xent, out_lengths = model(feats, lengths)
        loss, stats = trainer.loss_fn(chain, xent, out_lengths, trainer.compiler.compile(batch["texts"]))
        stats = {f"arch_{k}": v for k, v in stats.items() if isinstance(v, (int, float))}
        for i, extra in enumerate(self.arch_extra_losses):
            term = extra.loss(trainer, batch, (chain, xent, out_lengths))
            stats[f"arch_{getattr(extra, 'name', f'extra{i}')}"] = float(term.detach())
            loss = loss + term
        return loss, stats

    # ------------------------------------------------------------------ TrainHook
    def extra_loss(self, trainer, batch, outputs) -> Optional[torch.Tensor]:
        if self.architect.mode != "single" or not self.architect.active(self.epoch_float(trainer)):
            return None
        pen, _ = self.architect.penalty_term()
        return pen

    def after_optimizer_step(self, trainer) -> None:
        ep = self.epoch_float(trainer)
        if self.schedule is not None:
            self.architect.arch.tau = self.schedule(ep)
        if self.entropy_schedule is not None:
            self.architect.entropy_weight = self.entropy_schedule(ep)
        if not self.architect.active(ep):
            self.architect.zero_grad()  # gradients the weight step left on the logits
            self.last = {}
        elif self.architect.mode == "single":
            self.architect.step_from_grads()
            pen, expected = self.architect.penalty_term()
            self.last = {"penalty": float(pen.detach()), "expected_bytes": float(expected.detach())}
        else:
            batch = self._next_arch_batch()
            model = trainer.raw_model
            buffers = {k: b.detach().clone() for k, b in model.named_buffers()}
            self.last = self.architect.step(lambda: self._arch_loss(trainer, batch))
            if self.last.get("skipped"):  # non-finite held-out loss or gradient: logits and BN stats unchanged
                with torch.no_grad():
                    for k, b in model.named_buffers():
                        b.copy_(buffers[k])
                log.warning("architecture step at step %d skipped: non-finite gradient on held-out cuts %s "
                            "(%d skipped so far)", trainer.step, ", ".join(batch.get("cut_ids", [])),
                            self.architect.skipped_steps)
        every = self.log_every or getattr(getattr(trainer, "opts", None), "log_every", 10)
        if getattr(trainer, "dist", None) is not None and not trainer.dist.is_main:
            return
        if every and trainer.step % every == 0:
            tb = trainer.tb
            log_arch_tensorboard(tb, self.architect.arch, trainer.step, self.table, target_bytes=self.target_bytes)
            tb.add_scalar("arch/entropy_weight", self.architect.entropy_weight, trainer.step)
            for k, v in self.last.items():
                tb.add_scalar(f"arch/{k}", v, trainer.step)

    def on_epoch_end(self, trainer, epoch: int, valid: Dict[str, float]) -> None:
        if self.space is None or (getattr(trainer, "dist", None) is not None and not trainer.dist.is_main):
            return
        g = derive_genotype(self.architect.arch, self.space, source={"run": str(trainer.out_dir), "epoch": epoch + 1})
        g.save(str(Path(trainer.out_dir) / self.genotype_name))

    def state_dict(self) -> Dict[str, Any]:
        return {"architect": self.architect.state_dict(), "arch_epoch": self._epoch, "arch_pos": self._pos}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.architect.load_state_dict(state["architect"])
        self._epoch, self._pos, self._it = int(state["arch_epoch"]), int(state["arch_pos"]), None
