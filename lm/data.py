"""Sentences -> padded batches of token ids for training and scoring.

A sentence ``w1 .. wn`` becomes the token sequence ``<eos> w1 .. wn <eos>``; the model reads all but
the last token and predicts all but the first. A batch is a dict::

    inputs   (B, L) int64  <eos> w1 .. wn, right-padded with <eos> ids
    targets  (B, L) int64  w1 .. wn <eos>, right-padded with <eos> ids
    mask     (B, L) bool   True at the n+1 predicted positions of each sentence
    index    (B,)   int64  position of each sentence in the encoded list

with ``L = max(n) + 1``. Padding sits on the right and attention is causal, so padded positions never
influence real ones and need no key mask.

:class:`LMBatches` cuts a list of encoded sentences into batches of ``batch_size`` sentences. With
``shuffle`` the order of an epoch is a permutation drawn from ``(seed, epoch)`` only, so a resumed run
sees exactly the batches an uninterrupted one would.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterator, List, Sequence, Tuple

import numpy as np
import torch

from lm.vocab import Vocab
from training.data import load_cuts


def read_sentences(path) -> List[List[str]]:
    """Non-empty lines of a text file, split on white space; an error if there are none."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    with open(path, encoding="utf-8") as f:
        sents = [line.split() for line in f if line.strip()]
    if not sents:
        raise ValueError(f"{path} holds no sentences (empty or only blank lines)")
    return sents


def split_transcripts(data_dir, split: str) -> List[List[str]]:
    """Transcripts (``supervisions[0].text``) of ``cuts_<split>.jsonl.gz`` in a prepared corpus."""
    sents = []
    for cut in load_cuts(data_dir, split):
        if len(cut.supervisions) != 1:
            raise ValueError(f"cut {cut.id} has {len(cut.supervisions)} supervisions; expected exactly 1")
        sents.append((cut.supervisions[0].text or "").split())
    if not sents:
        raise ValueError(f"{Path(data_dir) / f'cuts_{split}.jsonl.gz'} has no cuts")
    return sents


def encode_sentences(sentences: Sequence[Sequence[str]], vocab: Vocab) -> Tuple[List[List[int]], int]:
    """-> (``[<eos>, ids.., <eos>]`` per sentence, number of words mapped to ``<unk>``)."""
    out, oov = [], 0
    for s in sentences:
        ids, n = vocab.encode(s)
        oov += n
        out.append([vocab.eos_id] + ids + [vocab.eos_id])
    return out, oov


def collate(seqs: Sequence[Sequence[int]], pad_id: int, index: Sequence[int] = ()) -> Dict[str, torch.Tensor]:
    """Pad encoded sentences (each ``<eos> .. <eos>``, length >= 2) into a batch dict (see module doc)."""
    if not seqs:
        raise ValueError("cannot collate an empty batch")
    L = max(len(s) for s in seqs) - 1
    inputs = torch.full((len(seqs), L), pad_id, dtype=torch.int64)
    targets = torch.full((len(seqs), L), pad_id, dtype=torch.int64)
    mask = torch.zeros((len(seqs), L), dtype=torch.bool)
    for b, s in enumerate(seqs):
        if len(s) < 2:
            raise ValueError(f"sequence {b} has {len(s)} tokens; an encoded sentence has at least 2")
        t = torch.as_tensor(s, dtype=torch.int64)
        n = len(s) - 1
        inputs[b, :n] = t[:-1]
        targets[b, :n] = t[1:]
        mask[b, :n] = True
    idx = torch.as_tensor(list(index) if len(index) else range(len(seqs)), dtype=torch.int64)
    return {"inputs": inputs, "targets": targets, "mask": mask, "index": idx}


class LMBatches:
    """Batches of ``batch_size`` encoded sentences, optionally reshuffled every epoch."""

    def __init__(self, seqs: List[List[int]], batch_size: int, pad_id: int, shuffle: bool, seed: int = 0):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not seqs:
            raise ValueError("no sentences to batch")
        self.seqs, self.batch_size, self.pad_id = seqs, batch_size, pad_id
        self.shuffle, self.seed = shuffle, seed

    def num_batches(self) -> int:
        return (len(self.seqs) + self.batch_size - 1) // self.batch_size

    def order(self, epoch: int) -> np.ndarray:
        """Sentence order of ``epoch``: a function of (seed, epoch) only."""
        if not self.shuffle:
            return np.arange(len(self.seqs))
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.seqs))

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[Dict[str, torch.Tensor]]:
        """The batches of ``epoch`` after the first ``skip`` ones."""
        order = self.order(epoch)
        for start in range(skip * self.batch_size, len(order), self.batch_size):
            idx = order[start: start + self.batch_size].tolist()
            yield collate([self.seqs[i] for i in idx], self.pad_id, idx)
