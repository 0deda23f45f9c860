"""Architecture search machinery: architecture parameters, Gumbel-softmax sampling, temperature
schedule, the expected-size penalty, the architect step and genotype derivation.

Everything here is independent of the network: the supernet (``supernet/``) reads its per-layer mixing
weights from an :class:`ArchParams`, and the size penalty reads a :class:`SizeTable` built from
``quant.cost_model`` (the one cost model).

Typical use (see each module's docstring; ``nas.hooks.ArchSearchHook`` wires all of it into
``training.loop.Trainer``)::

    net = SuperNet.from_space(space, num_pdfs)           # net.arch is an ArchParams
    sched = TemperatureSchedule(5.0, 0.5, total=epochs, warmup=1)
    penalty = SizePenalty(net.size_table(), target_bytes, kind="hinge", weight=1.0)
    architect = Architect(net.arch, penalty=penalty, lr=3e-3, warmup_epochs=1)
    weight_opt = torch.optim.Adam(net.weight_parameters(), lr=2e-3)
    ...                                                  # per step, at fractional epoch ep:
    net.arch.tau = sched(ep)
    loss = lfmmi_loss_on(net, train_batch); loss.backward(); weight_opt.step()
    if architect.active(ep):
        stats = architect.step(lambda: lfmmi_loss_on(net, valid_batch))  # bi-level, first order
    genotype = derive_genotype(net.arch, space, source={"run": out_dir, "epoch": epoch})
"""
from nas.arch_params import ArchParams, LayerChoices
from nas.gumbel import gumbel_softmax, one_hot_like
from nas.schedule import RampSchedule, TemperatureSchedule
from nas.penalty import SizeTable, SizePenalty, PENALTY_KINDS
from nas.architect import Architect
from nas.derive import derive_genotype, probability_matrices, render_prob_image, log_arch_tensorboard
from nas.hooks import ArchSearchHook


__all__ = [
    "ArchParams", "LayerChoices", "gumbel_softmax", "one_hot_like", "TemperatureSchedule", "RampSchedule", "SizeTable",
    "SizePenalty", "PENALTY_KINDS", "Architect", "derive_genotype", "probability_matrices",
    "render_prob_image", "log_arch_tensorboard", "ArchSearchHook",
]
