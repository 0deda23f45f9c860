"""Decoding and scoring: word n-gram LM (ARPA), HCLG graph, kaldi-decoder decoding, WER, significance.

Modules (kaldi wheels are imported lazily, inside the functions that need them):
  lm            estimate(sentences, order, method) -> NgramModel (.to_arpa(), .prob(), from_arpa)
  graph         get_graph(lexicon, cache_root, lm_text=|arpa=) -> DecodingGraph (HCLG + words)
  decoder       decode_matrix, decode_cuts, compute_outputs, decode_outputs, sweep
  nbest         lattice_nbest(raw lattice, words, n) -> n best distinct word sequences with costs
  wer           corpus_wer, utterance_errors, write_results
  significance  mapsswe, paired_bootstrap, compare_systems
"""
from .decoder import DecodeResult, DecoderConfig, compute_outputs, decode_cuts, decode_matrix, \
    decode_outputs, sweep
from .graph import DecodingGraph, build_graph, extend_lexicon, get_graph
from .lm import NgramModel, estimate, estimate_arpa, text_to_arpa
from .significance import compare_systems, mapsswe, paired_bootstrap
from .wer import corpus_wer, utterance_errors, write_results

__all__ = ["DecodeResult", "DecoderConfig", "compute_outputs", "decode_cuts", "decode_matrix",
           "decode_outputs", "sweep", "DecodingGraph", "build_graph", "extend_lexicon", "get_graph",
           "NgramModel", "estimate", "estimate_arpa", "text_to_arpa", "compare_systems", "mapsswe",
           "paired_bootstrap", "corpus_wer", "utterance_errors", "write_results"]
