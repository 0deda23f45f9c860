"""Lexicon contract (docs/INTERFACES.md) and text normalisation of the synthetic corpus."""
from __future__ import annotations

import pytest

from corpus.importers import normalise_swbd, normalise_transcript
from corpus.text import normalise_sentence, number_to_words, split_sentences
from lang.lexicon import Lexicon, OOVError, cmudict_prons


def test_phones_sil_first_then_sorted():
    lex = Lexicon({"B": [("B", "IY")], "A": [("AH",), ("EY",)], "HI": [("HH", "AY")]})
    assert lex.phones == ["SIL", "AH", "AY", "B", "EY", "HH", "IY"]
    assert lex.silence_phone == "SIL"
    assert lex.pronunciations("A") == [("AH",), ("EY",)]


def test_oov_error_lists_all_missing_words():
    lex = Lexicon({"A": [("AH",)]})
    with pytest.raises(OOVError) as e:
        lex.pronunciations("ZZZ")
    assert e.value.words == ["ZZZ"]
    with pytest.raises(OOVError) as e:
        lex.check(["A", "QQ", "ZZ", "QQ"])
    assert e.value.words == ["QQ", "ZZ"]
    assert "QQ" in str(e.value) and "ZZ" in str(e.value)
    assert not isinstance(e.value, KeyError)


def test_save_load_roundtrip_and_phones_txt(tmp_path):
    lex = Lexicon({"READ": [("R", "EH", "D"), ("R", "IY", "D")], "A": [("AH",)]})
    lex.save(tmp_path / "lexicon.txt")
    lines = (tmp_path / "lexicon.txt").read_text().splitlines()
    assert lines == ["A AH", "READ R EH D", "READ R IY D"]
    phones = (tmp_path / "phones.txt").read_text().splitlines()
    assert phones[0] == "<eps> 0" and phones[1] == "SIL 1"
    assert [l.split()[0] for l in phones[1:]] == lex.phones
    assert [int(l.split()[1]) for l in phones] == list(range(len(lex.phones) + 1))
    back = Lexicon.load(tmp_path / "lexicon.txt")
    assert back.pronunciations("READ") == lex.pronunciations("READ") and back.phones == lex.phones


def test_cmudict_stress_removed_and_39_phones():
    prons = cmudict_prons()
    assert ("D", "OW", "N", "T") in prons["DON'T"]
    lex = Lexicon.from_cmudict(["HELLO", "WORLD", "DON'T"])
    assert all(not ph[-1].isdigit() for p in lex.pronunciations("HELLO") for ph in p)
    full = Lexicon.from_cmudict()
    assert len(full.phones) == 40 and full.phones[0] == "SIL" and "SIL" not in full.phones[1:]
    with pytest.raises(OOVError) as e:
        Lexicon.from_cmudict(["HELLO", "QWXZPT"])
    assert e.value.words == ["QWXZPT"]


def test_numbers_spelled_out():
    assert number_to_words("42") == ["FORTY", "TWO"]
    assert number_to_words("1984") == ["NINETEEN", "EIGHTY", "FOUR"]
    assert number_to_words("1905") == ["NINETEEN", "OH", "FIVE"]
    assert number_to_words("2001") == ["TWO", "THOUSAND", "ONE"]
    assert number_to_words("1000000") == ["ONE", "MILLION"]
    assert number_to_words("007") == ["ZERO", "ZERO", "SEVEN"]


def test_normalise_sentence():
    cmu = cmudict_prons()
    ok = lambda w: w in cmu  # noqa: E731
    assert normalise_sentence("Don't panic, it's only 42 days.", ok) == "DON'T PANIC IT'S ONLY FORTY TWO DAYS"
    assert normalise_sentence("Visit http://x.org now", ok) is None
    assert normalise_sentence("A: None, the bulb is fine.", ok) == "NONE THE BULB IS FINE"
    assert normalise_sentence("The U.S. army", ok) is None
    assert normalise_sentence("He said qwxzpt twice", ok) is None
    assert split_sentences("One. Two!  Three?") == ["One.", "Two!", "Three?"]


def test_importer_transcript_normalisation():
    assert normalise_transcript("hello, World [noise] <unk> 3 cats") == "HELLO WORLD THREE CATS"
    assert normalise_transcript("") == ""
    assert normalise_swbd("[laughter-yes] i th[e]- the [noise] [bocket/bucket] uh-huh") == "YES I THE BUCKET UH-HUH"


def test_missing_text_source_is_a_clear_error(tmp_path, monkeypatch):
    import corpus.text as text

    monkeypatch.setattr(text, "FORTUNE_DIR", tmp_path / "nothing")
    with pytest.raises(text.TextSourceError) as e:
        text.ensure_fortunes(install=False)
    assert "apt-get install fortunes fortunes-min" in str(e.value)
