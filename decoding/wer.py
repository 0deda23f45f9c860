"""Word error rate with a breakdown and per-utterance alignments (kaldialign)."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Dict, List, Mapping, Sequence, Tuple, Union

EPS = "*"

Words = Union[str, Sequence[str]]


def _words(x: Words) -> List[str]:
    return x.split() if isinstance(x, str) else list(x)


@dataclass
class UttErrors:
    utt_id: str
    ref_words: int
    sub: int
    dels: int
    ins: int
    alignment: List[Tuple[str, str]]

    @property
    def errors(self) -> int:
        return self.sub + self.dels + self.ins


def align_utterance(utt_id: str, ref: Words, hyp: Words) -> UttErrors:
    r, h = _words(ref), _words(hyp)
    ali = [tuple(p) for p in __import__("kaldialign").align(r, h, EPS)] if (r or h) else []
    sub = sum(1 for a, b in ali if a != EPS and b != EPS and a != b)
    dels = sum(1 for a, b in ali if b == EPS)
    ins = sum(1 for a, b in ali if a == EPS)
    return UttErrors(utt_id, len(r), sub, dels, ins, ali)


def utterance_errors(refs: Mapping[str, Words], hyps: Mapping[str, Words]) -> List[UttErrors]:
    """Per-utterance errors over the ids of `refs` (sorted); a missing hypothesis counts as empty."""
    return [align_utterance(u, refs[u], hyps.get(u, [])) for u in sorted(refs)]


def summarize(utts: Sequence[UttErrors]) -> Dict[str, float]:
    n = sum(u.ref_words for u in utts)
    sub = sum(u.sub for u in utts)
    dels = sum(u.dels for u in utts)
    ins = sum(u.ins for u in utts)
    err = sub + dels + ins
    sent_err = sum(1 for u in utts if u.errors > 0)
    pct = lambda x, d: (100.0 * x / d) if d else 0.0  # noqa: E731
    return {"wer": pct(err, n), "errors": err, "ref_words": n, "sub": sub, "del": dels, "ins": ins,
            "sub_rate": pct(sub, n), "del_rate": pct(dels, n), "ins_rate": pct(ins, n),
            "sentences": len(utts), "sentence_errors": sent_err, "ser": pct(sent_err, len(utts))}


def corpus_wer(refs: Mapping[str, Words], hyps: Mapping[str, Words]) -> Dict[str, float]:
    """{"wer" (%), "errors", "ref_words", "sub", "del", "ins", rates (%), "sentences",
    "sentence_errors", "ser" (%)}."""
    return summarize(utterance_errors(refs, hyps))


def format_alignment(u: UttErrors) -> str:
    """Kaldi-style per-utterance block: ref / hyp / op lines (C S D I) and the counts."""
    ref_t, hyp_t, op_t = [], [], []
    for a, b in u.alignment:
        w = max(len(a), len(b))
        op = "C" if a == b else ("I" if a == EPS else ("D" if b == EPS else "S"))
        ref_t.append(a.ljust(w))
        hyp_t.append(b.ljust(w))
        op_t.append(op.ljust(w))
    return (f"{u.utt_id} ref  {' '.join(ref_t)}\n{u.utt_id} hyp  {' '.join(hyp_t)}\n"
            f"{u.utt_id} op   {' '.join(op_t)}\n"
            f"{u.utt_id} #csid {u.ref_words - u.sub - u.dels} {u.sub} {u.ins} {u.dels}\n")


def write_results(out_dir: str, refs: Mapping[str, Words], hyps: Mapping[str, Words],
                  extra: Mapping = ()) -> Dict[str, float]:
    """Write hyps.txt, refs.txt, alignments.txt, per_utt.jsonl, wer.json into out_dir."""
    import os

    os.makedirs(out_dir, exist_ok=True)
    utts = utterance_errors(refs, hyps)
    with open(os.path.join(out_dir, "hyps.txt"), "w", encoding="utf-8") as f:
        for u in sorted(refs):
            f.write(f"{u} {' '.join(_words(hyps.get(u, [])))}\n".rstrip() + "\n")
    with open(os.path.join(out_dir, "refs.txt"), "w", encoding="utf-8") as f:
        for u in sorted(refs):
            f.write(f"{u} {' '.join(_words(refs[u]))}\n".rstrip() + "\n")
    with open(os.path.join(out_dir, "alignments.txt"), "w", encoding="utf-8") as f:
        for u in utts:
            f.write(format_alignment(u))
    with open(os.path.join(out_dir, "per_utt.jsonl"), "w", encoding="utf-8") as f:
        for u in utts:
            d = asdict(u)
            d.pop("alignment")
            f.write(json.dumps(d) + "\n")
    summary = dict(summarize(utts))
    summary.update(dict(extra))
    # wer.json marks the decode done for run_experiments.py: written last, atomically
    tmp = os.path.join(out_dir, "wer.json.tmp")
    with open(tmp, "w") as f:
        json.dump(summary, f, indent=1)
    os.replace(tmp, os.path.join(out_dir, "wer.json"))
    return summary


def read_text_file(path: str) -> Dict[str, List[str]]:
    """Kaldi text / hyps.txt: `utt_id word word ...` per line."""
    out = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            parts = line.split()
            if parts:
                out[parts[0]] = parts[1:]
    return out
