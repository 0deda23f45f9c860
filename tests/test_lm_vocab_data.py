"""LM vocabulary and batching: <unk> mapping, save/load, padding and the loss mask, resumable order."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lm.data import LMBatches, collate, encode_sentences, read_sentences
from lm.vocab import EOS, UNK, Vocab

TEXT = [["A", "B", "A"], ["C", "A"], ["B", "D"], ["A"]]


def test_build_orders_by_count_then_alphabetically():
    v = Vocab.build(TEXT)
    assert v.words == [EOS, UNK, "A", "B", "C", "D"]  # A:4, B:2, C:1, D:1
    assert v.eos_id == 0 and v.unk_id == 1
    assert Vocab.build(TEXT, min_count=2).words == [EOS, UNK, "A", "B"]
    assert Vocab.build(TEXT, max_size=3).words == [EOS, UNK, "A"]
    with pytest.raises(ValueError):
        Vocab.build(TEXT, max_size=2)


def test_unknown_words_map_to_unk_and_are_counted():
    v = Vocab.build(TEXT, min_count=2)
    ids, oov = v.encode(["A", "C", "Z", "B", UNK])
    assert ids == [2, 1, 1, 3, 1]
    assert oov == 3
    seqs, oov = encode_sentences([["A", "Q"], ["B"]], v)
    assert seqs == [[0, 2, 1, 0], [0, 3, 0]]
    assert oov == 1
    with pytest.raises(ValueError, match="reserved"):
        v.encode(["A", EOS])


def test_save_load_round_trip(tmp_path):
    v = Vocab.build(TEXT + [["DON'T", "O'BRIEN"]])
    v.save(tmp_path / "vocab.txt")
    lines = (tmp_path / "vocab.txt").read_text().splitlines()
    assert lines[:2] == [EOS, UNK] and len(lines) == len(v)
    w = Vocab.load(tmp_path / "vocab.txt")
    assert w == v and w.fingerprint() == v.fingerprint()
    assert w.id("O'BRIEN") == v.id("O'BRIEN") != v.unk_id


def test_bad_vocab_files(tmp_path):
    (tmp_path / "a.txt").write_text("A\nB\n")
    with pytest.raises(ValueError, match="must start with"):
        Vocab.load(tmp_path / "a.txt")
    (tmp_path / "b.txt").write_text(f"{EOS}\n{UNK}\nA\nA\n")
    with pytest.raises(ValueError, match="twice"):
        Vocab.load(tmp_path / "b.txt")


def test_first_difference_names_the_id():
    a = Vocab([EOS, UNK, "A", "B"])
    b = Vocab([EOS, UNK, "B", "A"])
    assert "id 2" in a.first_difference(b)
    assert a.first_difference(a) == ""


def test_read_sentences_rejects_empty_text(tmp_path):
    (tmp_path / "t.txt").write_text("\n  \n")
    with pytest.raises(ValueError, match="no sentences"):
        read_sentences(tmp_path / "t.txt")
    (tmp_path / "u.txt").write_text("A B\n\nC\n")
    assert read_sentences(tmp_path / "u.txt") == [["A", "B"], ["C"]]


def test_collate_shifts_pads_and_masks():
    b = collate([[0, 5, 6, 0], [0, 7, 0]], pad_id=0)
    assert b["inputs"].tolist() == [[0, 5, 6], [0, 7, 0]]
    assert b["targets"].tolist() == [[5, 6, 0], [7, 0, 0]]
    assert b["mask"].tolist() == [[True, True, True], [True, True, False]]


def test_batch_order_depends_only_on_seed_and_epoch():
    seqs = [[0, i + 2, 0] for i in range(23)]
    a = LMBatches(seqs, 5, 0, shuffle=True, seed=3)
    b = LMBatches(seqs, 5, 0, shuffle=True, seed=3)
    assert a.num_batches() == 5
    e0 = [x["index"].tolist() for x in a.epoch(0)]
    assert e0 == [x["index"].tolist() for x in b.epoch(0)]
    assert sorted(sum(e0, [])) == list(range(23))  # every sentence once per epoch
    assert e0 != [x["index"].tolist() for x in a.epoch(1)]
    assert e0 != [x["index"].tolist() for x in LMBatches(seqs, 5, 0, shuffle=True, seed=4).epoch(0)]
    # skipping batches leaves the rest unchanged (resume inside an epoch)
    assert [x["index"].tolist() for x in a.epoch(0, skip=2)] == e0[2:]
    for x in a.epoch(0):
        assert torch.equal(x["targets"][:, 0], torch.as_tensor([seqs[i][1] for i in x["index"].tolist()]))
    assert np.array_equal(LMBatches(seqs, 5, 0, shuffle=False).order(7), np.arange(23))
