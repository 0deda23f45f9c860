"""Mixed-precision NAS for the Transformer LM: per-matrix bit-widths searched with the acoustic model's
machinery (``nas.arch_params.ArchParams``, ``nas.penalty.SizeTable`` / ``SizePenalty``, ``nas.architect.Architect``,
``nas.schedule``).

The supernet is the LM itself with one logit vector per matrix (``lm.model.matrix_names``) over the space's
bit-widths. Every forward pass draws the architecture weights (hard straight-through Gumbel-softmax in
training, so the loss is that of one real discrete subnet; argmax in eval) and uses each matrix as

    W_used = sum_b w_b * Q_b(W)        (one shared latent W per matrix; Q_32 = identity)

so the logits get the task gradient ``<dL/dW_used, Q_b(W)>`` and the weights a straight-through one.
Training alternates a weight step on training sentences with an architecture step (task loss + the size
penalty on the argmax architecture, two-sided band, + an entropy term that ramps up) on held-out LM-text
sentences (never dev or test), after a weights-only warm-up. The derived architecture is the argmax.

The search space (``search_spaces/lm_demo.yaml``): ``name`` and ``bits`` (the candidate widths of every
matrix). The feed-forward width is not searched.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from tqdm import tqdm

from lm.model import TransformerLM, _QuantState, matrix_names
from lm.quant import fixed_bytes, matrix_bytes
from models.quantizers import check_bits, fake_quant
from nas.arch_params import ArchParams, LayerChoices
from nas.architect import Architect
from nas.derive import log_arch_tensorboard
from nas.penalty import SizePenalty, SizeTable
from training.safe_io import load, save_atomic

SPACE_DIR = Path(__file__).resolve().parent.parent / "search_spaces"


@dataclass
class LMSearchSpace:
    name: str
    bits: Tuple[int, ...]

    @classmethod
    def load(cls, name_or_path: str) -> "LMSearchSpace":
        import yaml

        p = Path(name_or_path)
        if not p.suffix:
            p = SPACE_DIR / f"{name_or_path}.yaml"
        with open(p) as f:
            d = yaml.safe_load(f) or {}
        bad = sorted(set(d) - {"name", "bits"})
        if bad:
            raise ValueError(f"{p}: unknown key(s) {bad}; an LM search space has name and bits")
        if not d.get("bits"):
            raise ValueError(f"{p}: bits (the candidate widths) is required")
        bits = tuple(sorted({check_bits(int(b)) for b in d["bits"]}))
        return cls(str(d.get("name", p.stem)), bits)


@dataclass
class LMSearchOptions:
    """The ``search:`` section of search_lm.py's YAML (every key optional)."""

    epochs: int = 3
    warmup_epochs: float = 1.0
    batch_size: int = 64
    lr: float = 3e-4
    grad_clip: float = 1.0
    arch_lr: float = 0.1
    arch_optimizer: str = "adam_global"
    tau_start: float = 5.0
    tau_end: float = 0.5
    penalty: str = "band"
    penalty_source: str = "argmax"
    penalty_band: List[float] = field(default_factory=lambda: [0.9, 1.0])
    penalty_weight: float = 2.0
    entropy_weight: float = 0.3
    held_out_fraction: float = 0.1
    seed: int = 0
    log_every: int = 20

    @classmethod
    def from_dict(cls, d: Optional[Dict[str, Any]], source: str = "search config") -> "LMSearchOptions":
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        bad = sorted(set(d) - known)
        if bad:
            raise ValueError(f"{source}: unknown search option(s) {bad}; known: {sorted(known)}")
        o = cls(**d)
        if o.epochs < 1 or not 0 <= o.warmup_epochs < o.epochs:
            raise ValueError(f"{source}: need epochs >= 1 and 0 <= warmup_epochs < epochs")
        if not 0 < o.held_out_fraction < 1:
            raise ValueError(f"{source}: held_out_fraction must be in (0, 1)")
        return o

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


class _MixedQuantState(_QuantState):
    """The supernet's quantizer: each matrix as the architecture-weighted sum of its quantized copies."""

    def __init__(self, cfg, arch: ArchParams):
        super().__init__(cfg)
        self.arch = arch
        self.index = {n: i for i, n in enumerate(arch.names)}
        self.current = None

    def weight(self, name: str, w: torch.Tensor) -> torch.Tensor:
        if self.current is None:
            raise RuntimeError("the supernet's architecture weights are drawn in LMSupernet.forward")
        i = self.index[name]
        wb = self.current[i][0]
        out = None
        for k, b in enumerate(self.arch.layers[i].bits):
            q = w if b == 32 else fake_quant(w, b, self.cfg.quant_per_channel, self.cfg.quant_scale)
            term = wb[k] * q
            out = term if out is None else out + term
        return out


class LMSupernet(torch.nn.Module):
    """A float TransformerLM whose matrices take searched bit-widths: ``forward(tokens) -> logits``."""

    def __init__(self, model: TransformerLM, space: LMSearchSpace, tau: float = 5.0, hard: bool = True):
        super().__init__()
        if model.cfg.weight_bits:
            raise ValueError("the supernet starts from a float LM (its cfg.weight_bits must be empty)")
        self.model = model
        self.space = space
        self.arch = ArchParams([LayerChoices(n, space.bits) for n in matrix_names(model.cfg)], tau=tau, hard=hard)
        self.state = _MixedQuantState(model.cfg, self.arch)
        model._qstate = self.state
        for m in model.modules():
            if hasattr(m, "_qstate"):
                object.__setattr__(m, "_qstate", self.state)

    @property
    def cfg(self):
        return self.model.cfg

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        self.state.current = self.arch()
        return self.model(tokens)

    def weight_parameters(self) -> List[torch.nn.Parameter]:
        return list(self.model.parameters())

    def size_table(self) -> SizeTable:
        sizes = matrix_bytes(self.model.cfg, self.space.bits)
        return SizeTable.from_cost_fn(self.arch.layers, lambda l, b, d: sizes[l.name][b],
                                      const_bytes=fixed_bytes(self.model.cfg))

    def argmax_bits(self) -> Dict[str, int]:
        return {l.name: int(b) for l, (b, _d) in zip(self.arch.layers, self.arch.argmax_choices())}


def make_architect(net: LMSupernet, opts: LMSearchOptions, target_bytes: float) -> Architect:
    penalty = SizePenalty(net.size_table(), target_bytes, kind=opts.penalty, weight=opts.penalty_weight,
                          source=opts.penalty_source, band=tuple(opts.penalty_band))
    return Architect(net.arch, penalty, lr=opts.arch_lr, optimizer=opts.arch_optimizer,
                     warmup_epochs=opts.warmup_epochs, entropy_weight=0.0)


def token_loss(net, batch) -> torch.Tensor:
    """Mean next-word cross-entropy of ``batch`` (lm.data.collate) under ``net``."""
    from torch.nn import functional as F

    dev = next(net.parameters()).device
    logits = net(batch["inputs"].to(dev))
    lp = F.log_softmax(logits.float(), dim=-1).gather(-1, batch["targets"].to(dev).unsqueeze(-1)).squeeze(-1)
    mask = batch["mask"].to(dev)
    return -(lp * mask).sum() / mask.sum()


def split_held_out(n: int, fraction: float, seed: int) -> Tuple[List[int], List[int]]:
    """(training indices, held-out indices) of ``n`` sentences, a seeded random ``fraction`` held out."""
    g = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(n, generator=g).tolist()
    k = max(1, int(round(n * fraction)))
    return sorted(perm[k:]), sorted(perm[:k])


def entropy_weight_at(opts: LMSearchOptions, t: float) -> float:
    """0 until the warm-up ends, rising linearly to ``entropy_weight`` at the last epoch's end."""
    if t <= opts.warmup_epochs:
        return 0.0
    return opts.entropy_weight * min(1.0, (t - opts.warmup_epochs) / max(1e-9, opts.epochs - opts.warmup_epochs))


def tau_at(opts: LMSearchOptions, t: float) -> float:
    """Exponential from ``tau_start`` (end of warm-up) to ``tau_end`` (end of the search)."""
    frac = min(1.0, max(0.0, (t - opts.warmup_epochs) / max(1e-9, opts.epochs - opts.warmup_epochs)))
    return float(opts.tau_start * (opts.tau_end / opts.tau_start) ** frac)


def is_finite(x: torch.Tensor) -> bool:
    return bool(torch.isfinite(x).all()) and not math.isnan(float(x))


def run_search(net: LMSupernet, train, held, opts: LMSearchOptions, target_bytes: float, out_dir: Path,
               device: str = "cpu", resume: bool = False, progress: bool = True, log=None) -> Dict[str, Any]:
    """Search (``train``/``held``: lm.data.LMBatches of training / held-out sentences). Writes, in
    ``out_dir``: ``checkpoint.pt`` after every epoch (atomic; ``resume`` continues from the last finished
    epoch), ``search_log.jsonl`` (one line per epoch), ``arch_probs.json`` and TensorBoard under ``tb/``
    (the acoustic search's tags: ``arch/bits_heatmap``, ``arch/genotype_bars``, ``arch/argmax_mb``,
    ``arch/expected_mb``, ``arch/target_mb``, ``arch/entropy_mean``, ``arch/bits/<matrix>/<b>``, and
    ``search/loss``, ``search/arch_loss``, ``search/penalty``). Returns the last epoch's record."""
    out_dir.mkdir(parents=True, exist_ok=True)
    net.to(device)
    w_opt = torch.optim.Adam(net.weight_parameters(), lr=opts.lr)
    architect = make_architect(net, opts, target_bytes)
    table = net.size_table()
    start_epoch, step = 0, 0
    ckpt = out_dir / "checkpoint.pt"
    if resume and ckpt.is_file():
        st = load(ckpt)
        net.load_state_dict(st["net"])
        w_opt.load_state_dict(st["w_opt"])
        architect.load_state_dict(st["architect"])
        start_epoch, step = int(st["epoch"]), int(st["step"])
        torch.set_rng_state(st["rng"])
    writer = None
    try:
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(str(out_dir / "tb"))
    except ImportError:  # pragma: no cover
        pass
    held_iter = iter(())
    rec: Dict[str, Any] = {}
    for epoch in range(start_epoch, opts.epochs):
        n = train.num_batches()
        sums = {"loss": 0.0, "arch_loss": 0.0, "penalty": 0.0, "weight_steps": 0, "arch_steps": 0, "skipped": 0}
        bar = tqdm(total=n, desc=f"search epoch {epoch + 1}/{opts.epochs}", disable=not progress, leave=False)
        for i, batch in enumerate(train.epoch(epoch)):
            t = epoch + i / n
            net.arch.tau = tau_at(opts, t)
            architect.entropy_weight = entropy_weight_at(opts, t)
            net.train()
            loss = token_loss(net, batch)
            w_opt.zero_grad(set_to_none=True)
            if not is_finite(loss.detach()):
                sums["skipped"] += 1
                continue
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.weight_parameters(), opts.grad_clip)
            w_opt.step()
            sums["loss"] += float(loss.detach())
            sums["weight_steps"] += 1
            step += 1
            stats = {}
            if architect.active(t):
                try:
                    hb = next(held_iter)
                except StopIteration:
                    held_iter = iter(held.epoch(step))
                    hb = next(held_iter)
                stats = architect.step(lambda: token_loss(net, hb))
                sums["arch_loss"] += stats["arch_loss"]
                sums["penalty"] += stats["penalty"]
                sums["arch_steps"] += 1
            bar.update(1)
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}", tau=f"{net.arch.tau:.2f}")
            if writer is not None and step % opts.log_every == 0:
                writer.add_scalar("search/loss", float(loss.detach()), step)
                for k in ("arch_loss", "penalty"):
                    if k in stats:
                        writer.add_scalar(f"search/{k}", stats[k], step)
                log_arch_tensorboard(None, net.arch, step, table, target_bytes=target_bytes)
        bar.close()
        scalars = log_arch_tensorboard(writer, net.arch, step, table, target_bytes=target_bytes)
        argmax = net.argmax_bits()
        rec = {"epoch": epoch + 1, "step": step, "tau": net.arch.tau,
               "loss": sums["loss"] / max(1, sums["weight_steps"]),
               "arch_loss": sums["arch_loss"] / max(1, sums["arch_steps"]),
               "penalty": sums["penalty"] / max(1, sums["arch_steps"]), "arch_steps": sums["arch_steps"],
               "skipped_batches": sums["skipped"], "argmax_bytes": table.size(net.arch.argmax_choices()),
               "expected_bytes": float(table.expected(net.arch.probs()).detach()), "target_bytes": target_bytes,
               "entropy_mean": scalars.get("arch/entropy_mean"), "argmax_bits": argmax}
        with open(out_dir / "search_log.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")
        probs = {l.name: dict(zip([str(b) for b in l.bits], pb.tolist()))
                 for l, (pb, _pd) in zip(net.arch.layers, net.arch.probs())}
        tmp = out_dir / "arch_probs.json.tmp"
        tmp.write_text(json.dumps({"version": 1, "epoch": epoch + 1, "bits": probs}, indent=1))
        tmp.replace(out_dir / "arch_probs.json")
        save_atomic({"net": net.state_dict(), "w_opt": w_opt.state_dict(), "architect": architect.state_dict(),
                     "epoch": epoch + 1, "step": step, "rng": torch.get_rng_state(),
                     "options": json.dumps(opts.to_dict(), sort_keys=True)}, ckpt)
        if log is not None:
            log.info("epoch %d: loss %.3f, argmax %d bytes (target %d), entropy %.2f", epoch + 1, rec["loss"],
                     rec["argmax_bytes"], target_bytes, rec["entropy_mean"] or 0.0)
    if writer is not None:
        writer.close()
    return rec
