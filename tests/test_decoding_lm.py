"""ARPA estimator: normalisation per history, hand-worked probabilities, ARPA round trip."""
import pytest

from decoding.lm import EOS, NgramModel, estimate

SENTS = [s.split() for s in ["A B C", "A B", "B C A", "C C", "A"]]


def _histories(lm):
    hs = [()]
    for k in range(lm.order - 1):
        hs += [ng for ng in lm.probs[k] if ng[-1] != EOS]
    return hs + [("NEVER", "SEEN")]


@pytest.mark.parametrize("method", ["kn", "wb"])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_probabilities_sum_to_one_per_history(method, order):
    lm = NgramModel.from_arpa(estimate(SENTS, order, method, vocab=["D"]).to_arpa())
    V = lm.vocab
    assert set(V) == {"A", "B", "C", "D", EOS}
    for h in _histories(lm):
        total = sum(lm.prob(w, h) for w in V)
        assert total == pytest.approx(1.0, abs=1e-5), (h, total)
    assert lm.prob("D", ("A",)) > 0  # vocabulary word unseen in the text still has mass


def test_witten_bell_unigram_by_hand():
    # Text "A A B": tokens predicted = A A B </s> (4), types T = 3, vocab {A, B, </s>} (|V| = 3).
    # p(A) = (2 + 3 * 1/3) / (4 + 3) = 3/7;  p(B) = (1 + 1) / 7 = 2/7;  p(</s>) = 2/7.
    lm = estimate([["A", "A", "B"]], order=1, method="wb")
    assert lm.prob("A") == pytest.approx(3 / 7)
    assert lm.prob("B") == pytest.approx(2 / 7)
    assert lm.prob(EOS) == pytest.approx(2 / 7)


def test_kneser_ney_bigram_by_hand():
    # Text "A A B" (one sentence, order 2): bigrams <s>A, AA, AB, B</s> (each count 1).
    # Unigram continuation counts: A: {<s>, A} -> 2, B: {A} -> 1, </s>: {B} -> 1; total 4.
    # Unigram discount: n1 = 2 (B, </s>), n2 = 1 (A) -> D1 = 2 / (2 + 2) = 0.5.
    # gamma() = 0.5 * 3 / 4 = 3/8, |V| = 3 (A B </s>):
    #   p(A) = 1.5/4 + 3/8 * 1/3 = 0.5;  p(B) = 0.5/4 + 1/8 = 0.25;  p(</s>) = 0.25.
    # Bigram discount: n1 = 4, n2 = 0 -> fallback D2 = 0.5. History A: a(AA)=1, a(AB)=1, A=2,
    #   gamma(A) = 0.5 * 2 / 2 = 0.5; p(B|A) = 0.5/2 + 0.5 * 0.25 = 0.375;
    #   p(A|A) = 0.25 + 0.5 * 0.5 = 0.5; p(</s>|A) = 0.5 * 0.25 = 0.125 (back-off).
    lm = estimate([["A", "A", "B"]], order=2, method="kn")
    assert lm.prob("A") == pytest.approx(0.5)
    assert lm.prob("B") == pytest.approx(0.25)
    assert lm.prob("B", ["A"]) == pytest.approx(0.375)
    assert lm.prob("A", ["A"]) == pytest.approx(0.5)
    assert lm.prob(EOS, ["A"]) == pytest.approx(0.125)
    rt = NgramModel.from_arpa(lm.to_arpa())
    assert rt.prob(EOS, ["A"]) == pytest.approx(0.125, rel=1e-5)


def test_arpa_header_and_perplexity():
    lm = estimate(SENTS, 3, "kn")
    text = lm.to_arpa()
    assert "\\data\\" in text and "\\3-grams:" in text and text.rstrip().endswith("\\end\\")
    counts = {int(l.split("=")[0][6:]): int(l.split("=")[1]) for l in text.splitlines() if l.startswith("ngram ")}
    assert counts == {k + 1: len(lm.probs[k]) for k in range(3)}
    # a trigram model fits its own training text better than a unigram one
    assert lm.perplexity(SENTS) < estimate(SENTS, 1, "kn").perplexity(SENTS)
    assert lm.prob("NOT_IN_VOCAB", ["A"]) == 0.0
