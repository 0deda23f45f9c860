#!/usr/bin/env python
"""The real-speech check set's own sentences, read by the synthetic corpus's test voices.

    python scripts/render_check_set.py --real data/real_asterisk --out data/asterisk_tts

Every utterance of the check set (``--splits``, default dev and test) keeps its id and transcript; the
synthetic corpus's test voices (``corpus.tts.speakers_for_split("test")``, in turn) read the transcript
at 8 kHz, the check set's own rate, and the result is prepared like the check set (``prepare_data.py
--corpus kaldi``, resampled to 16 kHz, CMUdict, no speed perturbation; the 8 kHz audio and the Kaldi
lists stay in ``OUT_raw`` next to ``--out``, and audio already there is not read again). Decoded with the same model, LM
and acoustic scale, the two sets have the same words in the same sentences and differ only in the voice:
the rendered set's WER is what the model does on these sentences in voices of the kind it was trained
on, so the gap to the real set is the voice's share of the errors, and the rendered set's own WER under
an LM is (roughly) the share that no acoustic training on this corpus removes.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--real", type=Path, required=True, help="prepared check set (prepare_data.py --corpus asterisk)")
    p.add_argument("--out", type=Path, required=True, help="prepared corpus dir to write")
    p.add_argument("--splits", default="dev,test")
    p.add_argument("--sample-rate", type=int, default=8000, help="rate the voices read at (the check set's)")
    args = p.parse_args(argv)
    from lhotse import CutSet

    from corpus import tts

    tts.check_engines()
    voices = tts.speakers_for_split("test")
    raw = args.out.with_name(args.out.name + "_raw")
    splits = [s for s in args.splits.split(",") if s]
    for split in splits:
        cuts = CutSet.from_file(args.real / f"cuts_{split}.jsonl.gz")
        items = []
        for i, c in enumerate(sorted(cuts, key=lambda c: c.id)):
            text = " ".join(s.text for s in c.supervisions)
            items.append(tts.SynthItem(c.id, text, voices[i % len(voices)]))
        wav_dir, kaldi = raw / "wav" / split, raw / f"kaldi_{split}"
        wav_dir.mkdir(parents=True, exist_ok=True)
        kaldi.mkdir(parents=True, exist_ok=True)
        by_engine = {}
        for it in items:
            by_engine.setdefault(it.speaker.base.engine, []).append(it)
        for engine, lst in sorted(by_engine.items()):
            todo = [it for it in lst if not (wav_dir / f"{it.utt_id}.wav").is_file()]
            if todo:
                tts.synthesize(todo, {it.utt_id: wav_dir / f"{it.utt_id}.wav" for it in todo}, args.sample_rate)
        (kaldi / "wav.scp").write_text("".join(f"{it.utt_id} {wav_dir / (it.utt_id + '.wav')}\n" for it in items))
        (kaldi / "text").write_text("".join(f"{it.utt_id} {it.text}\n" for it in items))
        (kaldi / "utt2spk").write_text("".join(f"{it.utt_id} {it.speaker.id}\n" for it in items))
        print(f"{split}: {len(items)} utterances read by {len({it.speaker.id for it in items})} voices", flush=True)
    # the first split stands in as the (unused) training split
    cmd = [sys.executable, str(ROOT / "prepare_data.py"), "--corpus", "kaldi", "--data-dir", str(raw / f"kaldi_{splits[0]}"),
           "--out", str(args.out), "--no-speed-perturb", "--oov", "skip", "--overwrite"]
    for split in splits:
        if split in ("dev", "test"):
            cmd += [f"--{split}-dir", str(raw / f"kaldi_{split}")]
    subprocess.run(cmd, check=True, cwd=ROOT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
