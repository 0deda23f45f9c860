"""Architecture search machinery: architecture parameters, Gumbel-softmax sampling, temperature
schedule, the expected-size penalty, the architect step and genotype derivation.

Everything here is independent of the network: the supernet (``supernet/``) reads its per-layer mixing
weights from an :class:`ArchParams`, and the size penalty reads a :class:`SizeTable` built from
``quant.cost_model`` (the one cost model).

Typical use (see each module's docstring)::

    net = SuperNet.from_space(space, num_pdfs)           # net.arch is an ArchParams
    sched = TemperatureSchedule(5.0, 0.5, total=epochs)
    penalty = SizePenalty(net.size_table(), target_bytes, kind="hinge", weight=1.0)
    architect = Architect(net.arch, penalty=penalty, lr=3e-3, warmup_epochs=1)
    ...
    net.arch.tau = sched(epoch_float)
    if architect.active(epoch): architect.step(lambda: lfmmi_loss_on(valid_batch))
    genotype = derive_genotype(net.arch, space, table=net.size_table())
"""
from nas.arch_params import ArchParams, LayerChoices
from nas.gumbel import gumbel_softmax, one_hot_like
from nas.schedule import TemperatureSchedule
from nas.penalty import SizeTable, SizePenalty, PENALTY_KINDS
from nas.architect import Architect
from nas.derive import derive_genotype, probability_matrices, render_prob_image, log_arch_tensorboard


def __getattr__(name):  # lazy: nas.hooks imports the trainer
    if name == "ArchSearchHook":
        from nas.hooks import ArchSearchHook

        return ArchSearchHook
    raise AttributeError(name)


__all__ = [
    "ArchParams", "LayerChoices", "gumbel_softmax", "one_hot_like", "TemperatureSchedule", "SizeTable",
    "SizePenalty", "PENALTY_KINDS", "Architect", "derive_genotype", "probability_matrices",
    "render_prob_image", "log_arch_tensorboard", "ArchSearchHook",
]
