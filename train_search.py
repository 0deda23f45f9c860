#!/usr/bin/env python
"""Search per-layer bit-widths and bottleneck dims: a Gumbel-softmax supernet trained with LF-MMI under a
model-size penalty; writes ``genotype.json`` (argmax architecture) for ``retrain.py``.

    python train_search.py --data-dir data/synth_demo --space tdnnf_demo --budget-bytes 500000 --out exp/search
    python train_search.py ... --budget-ratio 8        # budget = fp32 size / 8
    python train_search.py ... --resume                # continue a killed search exactly
    torchrun --nproc_per_node 2 train_search.py ...    # DistributedDataParallel

Weights train on the training split, one hard-sampled subnet per step; with ``mode: bilevel``
(default, first-order DARTS) the architecture logits are updated on a held-out split of the training
recordings by the task loss of a fresh hard sample, a two-sided band penalty on the argmax size and an
entropy term that ramps up after the warm-up (``docs/SEARCH.md``); ``mode: single`` updates both from
the same batch (EdMIPS). The architecture is frozen for ``warmup_epochs``. Each epoch writes
``genotype_epochN.json``, ``genotype.json`` and ``arch_probs.json``; the end writes ``subnet.pt``, the
final genotype cut out of the supernet with its shared weights (a float model file: ``retrain.py
--init-from subnet.pt --bottleneck-order none`` fine-tunes the weights the search trained). TensorBoard
(``tb/``) shows per-layer probabilities and entropies of every bit-width and dimension, labelled layer x
choice heatmaps, argmax / expected / target size, tau, LF-MMI and penalty terms and the
semi-orthogonality error.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from models.bottleneck_order import ORDER_METHODS
from nas import Architect, RampSchedule, SizePenalty, TemperatureSchedule
from nas.derive import SIZE_CHART_LAYOUT, derive_genotype, derive_genotype_within_budget
from nas.hooks import ArchSearchHook
from nas.options import WEIGHT_SAMPLINGS, SearchOptions
from quant.cost_model import fp32_bytes
from search_spaces.genotype import Genotype
from supernet.network import SuperNet
from training import distributed
from training.checkpoint import has_checkpoint
from training.cli import HelpFormatter, add_budget_args, add_debug_flag, number, resolve_budget, run_main
from training.distill import DistillHook, DistillOptions
from training.experiment import (config_section, lfmmi_options, load_sections, make_batches, make_lfmmi, split_train,
                                 start_run)
from training.loop import TrainOptions, Trainer
from training.model_io import init_from, load_model_file, save_model_file
from training.rundir import abspath_or_none, check_identity, claim_out_dir, config_hash

log = logging.getLogger("train_search")

def make_search_hook(architect, schedule, held, space, table, log_every, out_dir, target_bytes,
                     derivation="argmax", entropy_schedule=None, arch_extra_losses=()):
    class _Hook(ArchSearchHook):
        def write_genotype(self, trainer, epoch: int):
            arch = self.architect.arch
            src = {"run": str(out_dir), "epoch": epoch, "step": trainer.step, "target_bytes": target_bytes,
                   "argmax_bytes": table.size(arch.argmax_choices()),
                   "expected_bytes": float(table.expected(arch.probs())),
                   "entropy_mean": float(arch.mean_entropy().detach())}
            if derivation == "budget":
                g = derive_genotype_within_budget(arch, space, table, target_bytes, src)
            else:
                g = derive_genotype(arch, space, source=src)
                if src["argmax_bytes"] > target_bytes:
                    log.warning("epoch %d: the argmax architecture (%d bytes) is over the budget (%d bytes)",
                                epoch, src["argmax_bytes"], target_bytes)
            g.save(str(Path(out_dir) / f"genotype_epoch{epoch}.json"))
            g.save(str(Path(out_dir) / "genotype.json"))
            # the derived genotype as text, one entry per epoch (TensorBoard's Text tab; indented = verbatim)
            trainer.tb.add_text("arch/genotype", "    " + g.summary(space).replace("\n", "\n    "), epoch)
            write_arch_probs(arch, Path(out_dir) / "arch_probs.json", src)
            return g

        def after_optimizer_step(self, trainer):
            super().after_optimizer_step(trainer)
            if trainer.dist.is_main and log_every and trainer.step % log_every == 0:
                errs = trainer.raw_model.semi_orthogonality_errors()
                if errs:
                    trainer.log_scalars("search", {"semi_orth_error_max": max(errs.values())})

        def on_fit_start(self, trainer):
            super().on_fit_start(trainer)
            if trainer.dist.is_main:  # argmax, expected and target size on one TensorBoard chart
                trainer.tb.add_custom_scalars(SIZE_CHART_LAYOUT)

        def on_epoch_end(self, trainer, epoch, valid):
            if trainer.dist.is_main:
                g = self.write_genotype(trainer, epoch + 1)
                log.info("epoch %d genotype (tau %.2f):\n%s", epoch + 1, self.architect.arch.tau,
                         g.summary(space))

        def on_fit_end(self, trainer):
            if trainer.dist.is_main:
                self.write_genotype(trainer, trainer.epoch)

    return _Hook(architect, schedule, arch_batches=held, space=space, table=table, log_every=log_every,
                 entropy_schedule=entropy_schedule, target_bytes=target_bytes,
                 arch_extra_losses=arch_extra_losses)


def write_arch_probs(arch, path: Path, source: dict) -> None:
    """The architecture distribution as JSON: per layer its candidates and their probabilities."""
    import torch

    with torch.no_grad():
        layers = [{"name": l.name, "bits": list(l.bits), "bit_probs": [float(x) for x in pb],
                   "bottlenecks": [d for d in l.dims], "bottleneck_probs": [float(x) for x in pd]}
                  for l, (pb, pd) in zip(arch.layers, arch.probs())]
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"version": 1, "source": source, "layers": layers}, indent=1) + "\n")
    tmp.replace(path)


def save_subnet(net: SuperNet, out: Path, corpus) -> None:
    """Write ``out/subnet.pt``: the genotype of ``out/genotype.json`` with the supernet's shared weights
    (``SuperNet.export_subnet``: the first d bottleneck units, BatchNorm statistics as they are), the
    CMVN and the phone list -- the start of a fine-tuning that keeps what the search trained."""
    g = Genotype.load(str(out / "genotype.json"))
    save_model_file(net.export_subnet(g), out / "subnet.pt", corpus.cmvn, corpus.lexicon.phones)
    log.info("wrote %s (the genotype's subnet with the supernet's weights)", out / "subnet.pt")


def load_config(path):
    return load_sections(path, ("train", "lfmmi", "search", "distill"))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--space", default="tdnnf_demo")
    p.add_argument("--config", default=None, help="YAML with train/lfmmi/search sections")
    p.add_argument("--out", required=True)
    add_budget_args(p, default_ratio=8.0, what="model (the space's largest network)")
    p.add_argument("--init-from", default=None,
                   help="start the shared weights from this float model.pt (e.g. the fp32 baseline)")
    p.add_argument("--bottleneck-order", choices=ORDER_METHODS, default="pca",
                   help="order the --init-from model's bottleneck units by importance first (default: %(default)s)")
    p.add_argument("--no-bottleneck-search", action="store_true", help="search bits only (max dims)")
    p.add_argument("--distill-from", default=None,
                   help="float teacher model.pt: weight steps and architecture steps add the frame-level KL "
                        "to its chain output (training.distill; the config's distill: section)")
    p.add_argument("--mode", choices=["bilevel", "single"], default=None)
    p.add_argument("--weight-sampling", choices=WEIGHT_SAMPLINGS, default=None,
                   help="override search.weight_sampling: the subnets the weight steps train (uniform: a "
                        "uniformly random one at every step, whatever the architecture distribution)")
    p.add_argument("--penalty-weight", type=number(minimum=0), default=None,
                   help="override search.penalty_weight (0: no size penalty, a diagnostic of the task signal)")
    p.add_argument("--penalty-band", type=number(minimum=0), nargs=2, default=None, metavar=("LOW", "HIGH"),
                   help="override search.penalty_band: the band of the budget the argmax size must land in")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--epochs", type=number(minimum=1, integer=True), default=None)
    p.add_argument("--warmup-epochs", type=number(minimum=0), default=None,
                   help="override search.warmup_epochs: epochs of weights-only warm-up before the architecture "
                        "moves (with --epochs, keeps a search's steps when an epoch holds fewer batches)")
    p.add_argument("--max-steps", type=number(minimum=1, integer=True), default=None)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    add_debug_flag(p)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cfg = load_config(args.config)
    topts = config_section(args.config, TrainOptions.from_dict, cfg.get("train"))
    sopts = config_section(args.config, SearchOptions.from_dict, cfg.get("search"))
    sopts = sopts.replace(mode=args.mode, penalty_weight=args.penalty_weight,  # flags over YAML
                          weight_sampling=args.weight_sampling, penalty_band=args.penalty_band,
                          warmup_epochs=args.warmup_epochs)
    if sopts.weights == "frozen" and not args.init_from:
        raise SystemExit("search.weights: frozen needs --init-from (the model whose weights are searched)")
    topts = topts.replace(seed=args.seed, epochs=args.epochs, max_steps=args.max_steps)
    lfmmi_cfg = cfg.get("lfmmi")
    config_section(args.config, lfmmi_options, lfmmi_cfg)  # checked now: an error names the file
    dopts = config_section(args.config, DistillOptions.from_dict, cfg.get("distill"))
    dinfo, device, out, corpus, space = start_run(args.device, topts.seed, args.out, args.data_dir, args.space)
    search_space = space.bits_only() if args.no_bottleneck_search else space
    net = SuperNet.from_space(search_space, corpus.num_pdfs, init=sopts.init, tau=sopts.tau_start,
                              hard=sopts.hard)
    fp32 = fp32_bytes(space.network)
    target = resolve_budget(args, fp32, default_ratio=8.0)
    table = net.size_table()
    if target < table.min_bytes():
        raise SystemExit(f"target {target:.0f} bytes is below the smallest model of this space "
                         f"({table.min_bytes():.0f} bytes)")
    identity = {"kind": "search", "space": space.name, "bottleneck_search": not args.no_bottleneck_search,
                "target_bytes": target, "config_hash": config_hash(cfg, search=sopts.to_dict()),
                "data_dir": abspath_or_none(args.data_dir), "seed": topts.seed,
                "init_from": abspath_or_none(args.init_from), "distill_from": abspath_or_none(args.distill_from)}
    check_identity(out, identity, args.resume)  # fail fast; claimed below, once every input has loaded
    if args.init_from and not (args.resume and has_checkpoint(out / "checkpoint.pt")):
        init_from(net, args.init_from, args.bottleneck_order)
    log.info("size budget %.0f bytes (fp32 %d bytes, ratio %.1fx); space spans %.0f..%.0f bytes",
             target, fp32, fp32 / target, table.min_bytes(), table.max_bytes())
    penalty = SizePenalty(table, target, kind=sopts.penalty, weight=float(sopts.penalty_weight),
                          source=sopts.penalty_source, band=tuple(float(x) for x in sopts.penalty_band))
    architect = Architect(net.arch, penalty=penalty, lr=float(sopts.arch_lr), mode=sopts.mode,
                          warmup_epochs=float(sopts.warmup_epochs), optimizer=sopts.arch_optimizer)
    schedule = TemperatureSchedule(float(sopts.tau_start), float(sopts.tau_end),
                                   total=float(topts.epochs), kind=sopts.tau_schedule,
                                   warmup=min(float(sopts.warmup_epochs), 0.5 * float(topts.epochs)))
    entropy = RampSchedule(float(sopts.entropy_weight), float(sopts.warmup_epochs), float(topts.epochs))
    if sopts.weights == "frozen":  # only the logits learn; no semi-orthogonal step moves the weights either
        for p in net.weight_parameters():
            p.requires_grad_(False)
        topts = topts.replace(orth_every=0)
    if sopts.mode == "bilevel":
        net.arch_grad = False  # weight steps compute only the sampled subnet; the logits learn on held-out data
        net.weight_sampling = sopts.weight_sampling

    loss_fn, compiler, den = make_lfmmi(corpus, lfmmi_cfg)
    all_train = corpus.cuts("train")
    frac = float(sopts.held_out_fraction) if sopts.mode == "bilevel" else 0.0
    train_cuts, held_cuts = split_train(all_train, frac)
    if sopts.mode == "bilevel" and (held_cuts is None or len(held_cuts) == 0):
        raise SystemExit("bilevel search needs a non-empty held-out split: raise search.held_out_fraction")
    train = make_batches(train_cuts, corpus, topts.max_duration, True, topts.seed, dinfo)
    held = make_batches(held_cuts, corpus, topts.max_duration, True, topts.seed + 1, dinfo) \
        if held_cuts is not None else None
    valid = make_batches(corpus.cuts("dev"), corpus, topts.valid_max_duration, False, 0, dinfo)
    hooks = []
    if args.distill_from:
        teacher = load_model_file(args.distill_from)
        if (teacher.cfg.num_pdfs, teacher.cfg.feat_dim) != (corpus.num_pdfs, space.network.feat_dim):
            raise SystemExit(f"--distill-from {args.distill_from}: teacher has {teacher.cfg.num_pdfs} pdfs and "
                             f"{teacher.cfg.feat_dim}-dim features, the corpus/space {corpus.num_pdfs} and "
                             f"{space.network.feat_dim}")
        hooks.append(DistillHook(teacher, dopts))
        log.info("distilling from %s", args.distill_from)
    hook = make_search_hook(architect, schedule, held, space, table, sopts.log_every, out, target,
                            sopts.derivation, entropy, arch_extra_losses=hooks)
    claim_out_dir(out, identity, args.resume, dinfo.is_main)  # the first write into --out
    trainer = Trainer(net, loss_fn.to(device), compiler, train, valid, topts, out, device, dinfo, hooks + [hook],
                      params=net.weight_parameters(), show_progress=not args.no_progress)
    with open(out / "search_config.json", "w") as f:
        json.dump({"train": vars(topts), "search": sopts.to_dict(), "target_bytes": target, "fp32_bytes": fp32,
                   "distill_from": args.distill_from, "distill": cfg.get("distill"),
                   "space": space.name, "bottleneck_search": not args.no_bottleneck_search}, f, indent=1)
    trainer.fit(resume=args.resume)
    if dinfo.is_main:
        save_subnet(net, out, corpus)
    distributed.cleanup(dinfo)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
