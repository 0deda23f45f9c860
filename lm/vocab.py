"""Word vocabulary of the language model.

Ids: ``0 = <eos>`` (sentence boundary; it is both the first input token and the last predicted one),
``1 = <unk>`` (every word not in the vocabulary), then the words by decreasing count, ties broken
alphabetically, so a vocabulary is a deterministic function of the text and the limits.

File format (``vocab.txt``): one token a line in id order, the first two lines ``<eos>`` and ``<unk>``.
"""
from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

EOS = "<eos>"
UNK = "<unk>"
SPECIALS = (EOS, UNK)


class Vocab:
    """Bidirectional word <-> id map. ``words[0] == EOS`` and ``words[1] == UNK``."""

    eos_id = 0
    unk_id = 1

    def __init__(self, words: Sequence[str]):
        words = list(words)
        if words[:2] != [EOS, UNK]:
            raise ValueError(f"a vocabulary must start with {EOS} and {UNK}; got {words[:2]}")
        index: Dict[str, int] = {}
        for i, w in enumerate(words):
            if not w or any(c.isspace() for c in w):
                raise ValueError(f"vocabulary entry {i} ({w!r}) is empty or contains white space")
            if w in index:
                raise ValueError(f"word {w!r} appears twice in the vocabulary (ids {index[w]} and {i})")
            index[w] = i
        self.words: List[str] = words
        self._index = index

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(cls, sentences: Iterable[Sequence[str]], min_count: int = 1,
              max_size: Optional[int] = None) -> "Vocab":
        """Words of ``sentences`` seen at least ``min_count`` times, the most frequent first.

        ``max_size`` caps the total size including ``<eos>`` and ``<unk>`` (so at least 3)."""
        if min_count < 1:
            raise ValueError(f"min_count must be >= 1, got {min_count}")
        if max_size is not None and max_size < 3:
            raise ValueError(f"max_size must be >= 3 (<eos>, <unk> and one word), got {max_size}")
        counts: Counter = Counter()
        for s in sentences:
            counts.update(w for w in s if w not in SPECIALS)
        kept = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        if max_size is not None:
            kept = kept[: max_size - len(SPECIALS)]
        return cls(list(SPECIALS) + kept)

    @classmethod
    def load(cls, path) -> "Vocab":
        path = Path(path)
        with open(path, encoding="utf-8") as f:
            words = [line.rstrip("\n") for line in f]
        if words and words[-1] == "":
            words.pop()
        try:
            return cls(words)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from e

    def save(self, path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write("".join(w + "\n" for w in self.words))

    # ------------------------------------------------------------------ lookup
    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: str) -> bool:
        return word in self._index

    def __eq__(self, other) -> bool:
        return isinstance(other, Vocab) and self.words == other.words

    def id(self, word: str) -> int:
        """The id of ``word``, or ``unk_id``."""
        return self._index.get(word, self.unk_id)

    def encode(self, words: Sequence[str]) -> Tuple[List[int], int]:
        """-> (ids, number of words mapped to ``<unk>``). ``<eos>`` inside a sentence is an error."""
        ids, oov = [], 0
        for w in words:
            if w == EOS:
                raise ValueError(f"{EOS} is reserved for sentence boundaries; found it inside {' '.join(words)!r}")
            i = self._index.get(w, self.unk_id)
            if i == self.unk_id:
                oov += 1
            ids.append(i)
        return ids, oov

    def decode(self, ids: Iterable[int]) -> List[str]:
        return [self.words[int(i)] for i in ids]

    def fingerprint(self) -> str:
        """sha1 of the word list (identifies a vocabulary in model files and checkpoints)."""
        return hashlib.sha1("\n".join(self.words).encode("utf-8")).hexdigest()

    def first_difference(self, other: "Vocab") -> str:
        """Human-readable description of how two vocabularies differ ('' when equal)."""
        for i, (a, b) in enumerate(zip(self.words, other.words)):
            if a != b:
                return f"id {i} is {a!r} in one and {b!r} in the other"
        if len(self) != len(other):
            return f"sizes differ ({len(self)} vs {len(other)} words)"
        return ""
