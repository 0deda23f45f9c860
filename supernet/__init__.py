"""Weight-sharing searchable TDNN-F (the supernet of the architecture search).

``supernet.mixing``: composite weights (EdMIPS-style bit mixing, nested-rank mixing of a max-rank factor
pair). ``supernet.network.SuperNet``: the TDNN-F forward of ``models.tdnnf`` with every searchable weight
replaced by its composite, architecture weights read from a ``nas.ArchParams``; ``export_subnet`` copies
the shared weights into a standalone ``models.tdnnf.TDNNF``.
"""
from supernet.mixing import mix_bits, mix_rank_cols, mix_rank_rows, slice_cols, slice_rows
from supernet.network import SuperNet, layer_choices_for

__all__ = ["SuperNet", "layer_choices_for", "mix_bits", "mix_rank_cols",
           "mix_rank_rows", "slice_cols", "slice_rows"]
