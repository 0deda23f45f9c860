"""LF-MMI (Kaldi "chain") loss: graphs, a pure-PyTorch backend (default) and a k2 backend.

    from lfmmi import LFMMILoss, LFMMIOptions
    from lfmmi.graphs import build_den_graph, NumeratorCompiler
"""
from __future__ import annotations

from .fsa import Fsa
from .graphs import DenGraph, DictLexicon, NumeratorCompiler, build_den_graph
from .loss import LFMMILoss, LFMMIOptions

__all__ = ["Fsa", "DenGraph", "DictLexicon", "NumeratorCompiler", "build_den_graph", "LFMMILoss",
           "LFMMIOptions"]
