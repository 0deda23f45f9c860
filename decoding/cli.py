"""Command-line pieces shared by decode.py and rescore.py (and verify_transcripts.py): the decoding graph's
and the model run's option groups, and loading what they name (lexicon, cached HCLG graph, acoustic model
with its CMVN, the lexicon over the model's phone list, the feature extractor).

They used to live in decode.py; a CLI does not import another CLI (docs/ARCHITECTURE.md), so they are here
and decode.py re-exports them under their old names.
"""
from __future__ import annotations

import json
import logging
import os
import time

from lang.lexicon import Lexicon

from .graph import default_lm_text, extend_lexicon, get_graph
from .lm import read_sentences

log = logging.getLogger("decode")  # the logger name these messages have always carried


def add_graph_args(ap) -> None:
    """The decoding graph's options (lexicon, n-gram LM, cache), shared with rescore.py."""
    ap.add_argument("--lexicon", help="lexicon.txt (default DATA_DIR/lang/lexicon.txt)")
    ap.add_argument("--lm-text", help="LM training text (default DATA_DIR/lm_text.txt, else DATA_DIR/lm_train_text.txt)")
    ap.add_argument("--arpa", help="use this ARPA LM instead of estimating one")
    ap.add_argument("--lm-order", type=int, default=3)
    ap.add_argument("--lm-method", choices=["kn", "wb"], default="kn")
    ap.add_argument("--sil-prob", type=float, default=0.5)
    ap.add_argument("--extend-lexicon", action="store_true",
                    help="add LM-text words missing from the lexicon from CMUdict (phone set unchanged)")
    ap.add_argument("--graph-cache", default="exp/graphs")
    ap.add_argument("--rebuild-graph", action="store_true")


def add_model_run_args(ap) -> None:
    """Features, device and run options of running the acoustic model, shared with rescore.py."""
    ap.add_argument("--max-frames", type=int, default=20000, help="feature frames per forward batch")
    ap.add_argument("--sampling-rate", type=int, default=16000,
                    help="model's rate when features must be computed from audio")
    ap.add_argument("--num-mel-bins", type=int, default=40)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-progress", action="store_true")


def load_lexicon(args):
    path = args.lexicon or os.path.join(args.data_dir, "lang", "lexicon.txt")
    return Lexicon.load(path)


def build_graph(args, lexicon):
    lm_text = args.lm_text or default_lm_text(args.data_dir)
    if args.extend_lexicon and not args.arpa:
        vocab = {w for s in read_sentences(lm_text) for w in s}
        lexicon, added, skipped = extend_lexicon(lexicon, vocab)
        log.info("lexicon extended with %d CMUdict words; %d LM words left without pronunciation",
                 len(added), len(skipped))
    t0 = time.time()
    g = get_graph(lexicon, args.graph_cache, lm_text=None if args.arpa else lm_text, arpa=args.arpa,
                  order=args.lm_order, method=args.lm_method, sil_prob=args.sil_prob,
                  rebuild=args.rebuild_graph)
    log.info("graph %s: %s states, %s arcs (%.1fs)", g.directory, g.info.get("HCLG_states"),
             g.info.get("HCLG_arcs"), time.time() - t0)
    return g


def lexicon_for_model(lexicon, model):
    """``(lexicon, dropped words)``: the corpus lexicon over the model's own phone list (``model.phones``,
    recorded by retrain.py), so that output unit 2k/2k+1 means the model's phone k whatever phones the
    corpus's words use; words whose every pronunciation needs a phone the model lacks are left out (and
    returned). A model file without a phone list is decoded with the corpus's phones if the pdf counts
    agree, else refused with a clear error."""
    phones = getattr(model, "phones", None)
    n = getattr(getattr(model, "cfg", None), "num_pdfs", None)
    if phones is None:
        if n is not None and 2 * len(lexicon.phones) != n:
            raise ValueError(f"the model has {n} pdfs, the corpus lexicon's {len(lexicon.phones)} phones give "
                             f"{2 * len(lexicon.phones)}, and the model file records no phone list (written "
                             f"before phone lists were stored): decode with the lexicon it was trained with "
                             f"(--lexicon)")
        log.warning("the model file records no phone list: assuming the corpus lexicon's %d phones",
                    len(lexicon.phones))
        return lexicon, []
    lex, dropped = lexicon.with_phones(phones)
    if dropped:
        log.warning("%d word(s) need phones the model lacks and cannot be recognised: %s", len(dropped),
                    " ".join(dropped[:20]) + (" ..." if len(dropped) > 20 else ""))
    return lex, dropped


def load_model_and_cmvn(model_path, data_dir, device="cpu"):
    """(acoustic model in eval mode, CMVN stats): the model's own, else DATA_DIR/cmvn.json, else None. An
    ONNX model whose graph applies its CMVN (``model.cmvn_in_graph``) gets None: features go in raw."""
    # imported on call: training.checkpoint brings torch and the model code (seconds to import), which
    # decode.py --help and --build-graph-only never need (tests also substitute this module)
    from training.checkpoint import load_acoustic_model

    model = load_acoustic_model(model_path, device)
    cmvn = getattr(model, "cmvn", None)
    cmvn_path = os.path.join(data_dir, "cmvn.json")
    if cmvn is None and not getattr(model, "cmvn_in_graph", False) and os.path.isfile(cmvn_path):
        with open(cmvn_path) as f:
            cmvn = json.load(f)
    return model, cmvn


def feature_extractor(num_mel_bins: int = 40):
    """None (decoding.decoder's default 40-bin Fbank) or an Fbank with num_mel_bins bins."""
    if num_mel_bins == 40:
        return None
    from lhotse import Fbank, FbankConfig

    return Fbank(FbankConfig(num_mel_bins=num_mel_bins))


def failure_list(failures):
    """[{"id", "reason"}] sorted by utterance id, for wer.json."""
    return [{"id": k, "reason": failures[k]} for k in sorted(failures)]
