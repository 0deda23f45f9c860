"""Sentence source and text normalisation for the embedded synthetic corpus.

Text source: the Debian packages ``fortunes`` and ``fortunes-min`` (BSD fortune cookie files,
``/usr/share/games/fortunes``).  Why: they ship several MB of real, modern English prose (quotations,
aphorisms, anecdotes, literature excerpts) under a free licence, in a trivially parsed format, in a
small package that installs in seconds from Debian; its vocabulary (tens of thousands of words) is far
above the 2,000-word floor, and the offensive collection lives in a separate package (fortunes-off)
that we never use.  We skip the files that are mostly code, ASCII art or jokes in dialect.

Normalisation: entries are split into sentences; attributions (``-- Author``) and leading labels
(``Q:``, ``A:``, ``QOTD:``) are dropped; digit strings
are spelled out (``1984`` -> ``NINETEEN EIGHTY FOUR``, ``42`` -> ``FORTY TWO``, ``3.5`` ->
``THREE POINT FIVE``); hyphenated words are split; words are upper-cased and every word must be in the
pronunciation lexicon (CMUdict), otherwise the sentence is not used.
"""
from __future__ import annotations

import logging
import re
import shutil
import subprocess
from pathlib import Path
from typing import Callable, Iterable, Iterator, List, Optional

logger = logging.getLogger(__name__)

FORTUNE_DIR = Path("/usr/share/games/fortunes")
DEBIAN_PACKAGES = ("fortunes", "fortunes-min")
# Files with mostly prose; skipped: art/ascii-art (pictures), perl/linux/debian/computers (code, jargon),
# ethnic/men-women (stereotype jokes), zippy (nonsense), translate-me, knghtbrd (IRC logs).
FORTUNE_FILES = (
    "fortunes", "literature", "wisdom", "people", "platitudes", "humorists", "education", "food",
    "kids", "law", "love", "magic", "medicine", "miscellaneous", "news", "pets", "politics",
    "science", "sports", "work", "goedel", "cookie", "definitions", "songs-poems", "riddles",
    "paradoxum", "pratchett", "tao", "startrek", "drugs",
)


class TextSourceError(RuntimeError):
    """The text source is missing and could not be installed."""


def ensure_fortunes(install: bool = True) -> Path:
    """Return the fortunes directory, installing the Debian packages with apt-get when missing."""
    if (FORTUNE_DIR / "fortunes").is_file():
        return FORTUNE_DIR
    if install and shutil.which("apt-get"):
        logger.warning("text source missing: installing Debian packages %s with apt-get", DEBIAN_PACKAGES)
        cmd = ["apt-get", "install", "-y", "-qq", *DEBIAN_PACKAGES]
        env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        r = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if r.returncode != 0:  # package lists may be stale: update once and retry
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True, env=env)
            r = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if (FORTUNE_DIR / "fortunes").is_file():
            return FORTUNE_DIR
        logger.error("apt-get failed: %s", r.stderr.strip()[-500:])
    raise TextSourceError(
        "The synthetic corpus needs the Debian packages %s (text source, %s). Install them with: "
        "sudo apt-get install %s" % (" and ".join(DEBIAN_PACKAGES), FORTUNE_DIR, " ".join(DEBIAN_PACKAGES))
    )


def read_fortunes(directory: Path = FORTUNE_DIR, files: Iterable[str] = FORTUNE_FILES) -> Iterator[str]:
    """Yield fortune entries (one string per entry, attribution removed) in a fixed order."""
    for name in files:
        path = Path(directory) / name
        if not path.is_file():
            continue
        raw = path.read_bytes().decode("utf-8", errors="replace")
        for entry in re.split(r"^%\s*$", raw, flags=re.M):
            lines = []
            for line in entry.splitlines():
                if re.match(r"^\s*(--|-- |\u2014)", line):
                    break  # attribution: the rest of the entry is the source
                lines.append(line.strip())
            text = " ".join(l for l in lines if l)
            if text:
                yield text


# ------------------------------------------------------------------------------------- numbers
_ONES = ("ZERO ONE TWO THREE FOUR FIVE SIX SEVEN EIGHT NINE TEN ELEVEN TWELVE THIRTEEN FOURTEEN "
         "FIFTEEN SIXTEEN SEVENTEEN EIGHTEEN NINETEEN").split()
_TENS = "_ _ TWENTY THIRTY FORTY FIFTY SIXTY SEVENTY EIGHTY NINETY".split()


def _below_1000(n: int) -> List[str]:
    words: List[str] = []
    if n >= 100:
        words += [_ONES[n // 100], "HUNDRED"]
        n %= 100
        if n == 0:
            return words
    if n < 20:
        words.append(_ONES[n])
    else:
        words.append(_TENS[n // 10])
        if n % 10:
            words.append(_ONES[n % 10])
    return words


def number_to_words(digits: str) -> List[str]:
    """Spell a digit string: cardinals up to 999,999,999; years 1100-1999 in pairs; else digit by digit.

    Leading zeros (``007``) and long strings are read digit by digit.
    """
    if not digits.isdigit():
        raise ValueError("not a digit string: %r" % digits)
    if (len(digits) > 1 and digits[0] == "0") or len(digits) > 9:
        return [_ONES[int(d)] for d in digits]
    n = int(digits)
    if n == 0:
        return ["ZERO"]
    if len(digits) == 4 and 1100 <= n <= 1999 and n % 100 != 0:
        hi, lo = divmod(n, 100)
        return _below_1000(hi) + (["OH"] + _ONES[lo:lo + 1] if lo < 10 else _below_1000(lo))
    words: List[str] = []
    for value, name in ((1000000, "MILLION"), (1000, "THOUSAND")):
        if n >= value:
            words += _below_1000(n // value) + [name]
            n %= value
    if n:
        words += _below_1000(n)
    return words


# ------------------------------------------------------------------------------ normalisation
_ALLOWED = re.compile(r"^[A-Za-z0-9 ,.;:!?'\"()\-]+$")
_SENT_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[\"'(]?[A-Z0-9])")


def split_sentences(text: str) -> List[str]:
    """Split an entry into sentences at ``.!?`` followed by a capital or digit."""
    text = re.sub(r"\s+", " ", text).strip()
    return [s.strip() for s in _SENT_SPLIT.split(text) if s.strip()]


def normalise_sentence(sentence: str, in_vocab: Optional[Callable[[str], bool]] = None) -> Optional[str]:
    """UPPERCASE words separated by single spaces, digits spelled out; ``None`` if unusable.

    A sentence is unusable when it holds characters other than plain punctuation (URLs, code, symbols),
    abbreviations with inner dots, or (with ``in_vocab`` given) a word the lexicon lacks.
    """
    s = sentence.replace("\u2019", "'").replace("`", "'")
    s = re.sub(r"^\(?[A-Za-z]+\)?:\s+", "", s)  # dialogue / riddle labels: "Q: ...", "A: ...", "QOTD: ..."
    s = s.replace("--", " ")
    if not _ALLOWED.match(s):
        return None
    if re.search(r"[A-Za-z]\.[A-Za-z]", s):  # e.g. "U.S.", "e.g."
        return None
    if re.search(r"(^|\s)\(?[A-Za-z0-9]\)", s):  # list markers "a)", "(1)"
        return None
    # decimals: 3.5 -> 3 POINT 5 ; thousands separators 1,000 -> 1000
    s = re.sub(r"(\d),(\d{3})\b", r"\1\2", s)
    s = re.sub(r"(\d)\.(\d)", r"\1 point \2", s)
    s = re.sub(r"[,.;:!?\"()]", " ", s)
    s = s.replace("-", " ")
    words: List[str] = []
    for tok in s.split():
        tok = tok.strip("'")
        if not tok:
            continue
        if tok.isdigit():
            words += number_to_words(tok)
            continue
        if not re.fullmatch(r"[A-Za-z]+(?:'[A-Za-z]+)*", tok):
            return None  # mixed letters and digits (e.g. "1st", "B52")
        w = tok.upper()
        if in_vocab is not None and not in_vocab(w):
            return None
        words.append(w)
    return " ".join(words) if words else None


def load_sentences(
    in_vocab: Callable[[str], bool],
    min_words: int = 3,
    max_words: int = 20,
    install: bool = True,
) -> List[str]:
    """All distinct usable sentences of the text source, normalised, in source order."""
    directory = ensure_fortunes(install=install)
    seen = set()
    out: List[str] = []
    for entry in read_fortunes(directory):
        for sent in split_sentences(entry):
            norm = normalise_sentence(sent, in_vocab)
            if norm is None:
                continue
            n = norm.count(" ") + 1
            if n < min_words or n > max_words or norm in seen:
                continue
            seen.add(norm)
            out.append(norm)
    logger.info("text source: %d usable sentences", len(out))
    return out
