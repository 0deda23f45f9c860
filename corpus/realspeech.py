"""A real-speech check set: the English prompts of Debian's ``asterisk-core-sounds-en`` packages.

The Asterisk PBX ships its voice prompts, read by one professional human speaker (Allison Smith,
licence CC-BY-SA-3.0), as 8 kHz 16-bit WAV files (``asterisk-core-sounds-en-wav``), and their
transcripts as a plain-text index (``core-sounds-en.txt.gz`` in ``asterisk-core-sounds-en``), one
``name: text`` line per prompt, ``name`` being the WAV path under ``en_US_f_Allison/`` without suffix.
Telephone-band, read, sentence- and phrase-level speech: the acoustic opposite of the 16 kHz TTS corpus,
and close to Switchboard's channel.

* :func:`fetch_asterisk` downloads the two packages with ``apt-get download`` (Debian's registry) and
  unpacks them with ``dpkg-deb -x``; it does nothing when they are unpacked already.
* :func:`prompt_text` turns an index text into the words spoken, or says why the prompt is left out:
  ``non_speech`` (tones, silence: nothing but bracketed markup) or ``ambiguous_text`` (numbers of three
  or more digits, ``H.323``-like tokens: how they were read is unknown).
* :func:`import_asterisk` returns dev and test CutSets (no training split: the set only evaluates), the
  prompts divided by a hash of their names, and counts every index entry and every file left out.
* :func:`write_prompt_lm_text` writes ``lm_prompts.txt``: the transcripts of every prompt kept (dev and
  test), the text of a closed-domain LM for this set.  Decoding with it is as favourable to the LM as it
  can be, so the WER measures the acoustic model; the demo corpus's LM (``lm_text.txt`` of the synthetic
  corpus) is the open-domain alternative.
"""
from __future__ import annotations

import gzip
import logging
import re
import shutil
import subprocess
import zlib
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from corpus.text import number_to_words
from corpus.importers import _file_problem
from corpus.validate import Problem, SkipLog

logger = logging.getLogger(__name__)

ASTERISK_PACKAGES = ("asterisk-core-sounds-en", "asterisk-core-sounds-en-wav")
INDEX = "usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz"
SOUNDS = "usr/share/asterisk/sounds/en_US_f_Allison"
SPEAKER = "asterisk_allison"
SYMBOL_WORDS = {"#": "POUND", "*": "STAR"}  # keys as the prompts read them ("press star", "followed by pound")
_MARKUP = re.compile(r"\[[^\]]*\]|\([^)]*\)|<[^>]*>")


def fetch_asterisk(dest: Path) -> Path:
    """Download and unpack :data:`ASTERISK_PACKAGES` into ``dest/root``; return that root.

    Raises ``RuntimeError`` naming the command when ``apt-get``/``dpkg-deb`` fail (no registry)."""
    dest = Path(dest)
    root = dest / "root"
    if (root / INDEX).is_file() and (root / SOUNDS).is_dir():
        return root
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise RuntimeError("%s not found: the Asterisk prompts come from Debian's registry" % tool)
    debs = dest / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    cmd = ["apt-get", "download", *ASTERISK_PACKAGES]
    r = subprocess.run(cmd, cwd=debs, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError("%s failed: %s" % (" ".join(cmd), (r.stderr or r.stdout).strip()[-400:]))
    tmp = dest / "root.part"
    shutil.rmtree(tmp, ignore_errors=True)
    for pkg in ASTERISK_PACKAGES:
        found = sorted(debs.glob(pkg + "_*.deb"))
        if not found:
            raise RuntimeError("apt-get download left no %s_*.deb in %s" % (pkg, debs))
        subprocess.run(["dpkg-deb", "-x", str(found[-1]), str(tmp)], check=True)
    shutil.rmtree(root, ignore_errors=True)
    tmp.rename(root)
    logger.info("fetched %s into %s", ", ".join(ASTERISK_PACKAGES), root)
    return root


def read_index(root: Path) -> List[Tuple[str, str]]:
    """``[(name, text)]`` of the transcript index, in file order (comments and blank lines dropped)."""
    path = Path(root) / INDEX
    if not path.is_file():
        raise FileNotFoundError("%s not found: is %s an unpacked asterisk-core-sounds-en?" % (path, root))
    out = []
    with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith(";") or ":" not in line:
                continue
            name, text = line.split(":", 1)
            out.append((name.strip(), text.strip()))
    return out


def prompt_text(text: str) -> Tuple[Optional[str], str]:
    """(UPPERCASE words spoken, "") or (None, reason) for an index text; reasons as in module docstring.

    >>> prompt_text("Press 1 to mute, or # to exit.")
    ('PRESS ONE TO MUTE OR POUND TO EXIT', '')
    >>> prompt_text("[this is a simple beep tone]")
    (None, 'non_speech')
    """
    spoken = _MARKUP.sub(" ", text)
    words: List[str] = []
    for tok in spoken.replace("-", " ").split():
        tok = tok.strip(".,;:!?\"'")
        if not tok:
            continue
        if tok in SYMBOL_WORDS:
            words.append(SYMBOL_WORDS[tok])
        elif re.fullmatch(r"\d{1,2}", tok):
            words += number_to_words(tok)
        elif re.fullmatch(r"[A-Za-z]+(?:'[A-Za-z]+)?", tok):
            words.append(tok.upper())
        else:  # 1234, 8500, H.323, 3D, e-mail addresses: how they were read is unknown
            return None, "ambiguous_text"
    if not words:
        return None, "non_speech"
    return " ".join(words), ""


def split_of(name: str) -> str:
    """'dev' or 'test' for a prompt name, by a stable hash (about half each)."""
    return "dev" if zlib.crc32(name.encode()) % 2 == 0 else "test"


def import_asterisk(root: Path, sample_rate: int, log: SkipLog) -> Dict[str, object]:
    """``{"train": empty, "dev", "test"}`` CutSets of the prompts under ``root`` (see module docstring).

    Entries without a readable WAV file, without speech or with ambiguous text are skipped and counted in
    ``log``; files under the sounds directory that no index entry names are counted too (``unindexed``).
    The recordings keep their own rate (8 kHz); the common stage resamples to ``sample_rate``."""
    from lhotse import CutSet, MonoCut, Recording, SupervisionSegment

    root = Path(root)
    sounds = root / SOUNDS
    entries = read_index(root)
    cuts: Dict[str, list] = {"dev": [], "test": []}
    seen = set()
    for name, raw in entries:
        split = split_of(name)
        log.count_input(split, 1)
        utt = SPEAKER + "_" + re.sub(r"[^A-Za-z0-9_-]", "_", name)
        wav = sounds / (name + ".wav")
        if name in seen:
            log.skip(Problem("duplicate_id", utt, str(wav), "prompt listed twice in the index", split))
            continue
        seen.add(name)
        text, reason = prompt_text(raw)
        if text is None:
            log.skip(Problem(reason, utt, str(wav), "index text %r" % raw[:80], split))
            continue
        bad = _file_problem(str(wav))
        if bad:
            log.skip(Problem(bad[0], utt, str(wav), bad[1], split))
            continue
        rec = Recording.from_file(wav, recording_id=utt)
        sup = SupervisionSegment(id=utt, recording_id=utt, start=0.0, duration=rec.duration, channel=0,
                                 text=text, speaker=SPEAKER, language="English",
                                 custom={"source": "asterisk-core-sounds-en", "prompt": name})
        cuts[split].append(MonoCut(id=utt, start=0.0, duration=rec.duration, channel=0, recording=rec,
                                   supervisions=[sup]))
    indexed = {name + ".wav" for name, _ in entries}
    unindexed = sorted(str(p.relative_to(sounds)) for p in sounds.rglob("*.wav") if str(p.relative_to(sounds)) not in indexed)
    if unindexed:
        logger.info("%d WAV file(s) have no transcript in the index (not used): %s", len(unindexed),
                    ", ".join(unindexed[:10]))
    log.note_unindexed(unindexed)
    n = {k: len(v) for k, v in cuts.items()}
    logger.info("asterisk prompts: %d index entries -> dev %d, test %d", len(entries), n["dev"], n["test"])
    return {"train": CutSet.from_cuts([]), "dev": CutSet.from_cuts(cuts["dev"]),
            "test": CutSet.from_cuts(cuts["test"])}


def write_prompt_lm_text(out_dir: Path) -> Path:
    """``out_dir/lm_prompts.txt``: the transcripts of the prepared dev and test cuts, one a line, sorted."""
    from lhotse import load_manifest

    out_dir = Path(out_dir)
    texts = set()
    for split in ("dev", "test"):
        path = out_dir / ("cuts_%s.jsonl.gz" % split)
        if path.is_file():
            texts |= {c.supervisions[0].text for c in load_manifest(path)}
    path = out_dir / "lm_prompts.txt"
    path.write_text("".join(t + "\n" for t in sorted(texts)), encoding="utf-8")
    return path
