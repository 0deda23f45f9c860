"""MAPSSWE and paired bootstrap against hand-worked examples."""
import math

import pytest

from decoding.significance import compare_run_means, compare_systems, mapsswe, nist_segments, paired_bootstrap


def test_mapsswe_by_hand():
    # Z = eA - eB = [1, 0, 2, 0]: mu = 3/4; deviations .25 -.75 1.25 -.75, squares sum = 2.75,
    # s^2 = 2.75 / 3 = 0.916667, se = sqrt(s^2 / 4) = 0.478714, W = 0.75 / 0.478714 = 1.566699,
    # p = 2 (1 - Phi(1.5667)) = 0.11718 (not significant at 0.05).
    # CI of mu: 0.75 +- 1.959964 * 0.478714 = [-0.18826, 1.68826]; with 8 ref words in 4 segments the
    # WER difference is 100 * 4/8 * mu = 37.5 points.
    r = mapsswe([2, 1, 3, 0], [1, 1, 1, 0], ref_words=8)
    assert r["mean_diff"] == pytest.approx(0.75)
    assert r["std_diff"] ** 2 == pytest.approx(2.75 / 3)
    assert r["W"] == pytest.approx(1.566699, abs=1e-5)
    assert r["p_value"] == pytest.approx(0.11718, abs=1e-4)
    assert r["mean_diff_ci"][0] == pytest.approx(-0.18826, abs=1e-4)
    assert r["mean_diff_ci"][1] == pytest.approx(1.68826, abs=1e-4)
    assert r["wer_diff"] == pytest.approx(37.5)
    assert not r["significant"]


def test_mapsswe_degenerate():
    assert mapsswe([1, 1], [1, 1])["p_value"] == 1.0  # identical systems
    r = mapsswe([2, 2, 2], [1, 1, 1])  # constant difference, zero variance
    assert r["p_value"] == 0.0 and math.isinf(r["W"])


def test_paired_bootstrap_exact_by_hand():
    # utt1: 2 ref words, A 1 error, B 0; utt2: 1 ref word, A 1 error, B 1.
    # All 2^2 = 4 ordered resamples (WER_A - WER_B in points):
    #   (1,1): A 2/4, B 0/4 -> +50;  (1,2), (2,1): A 2/3, B 1/3 -> +33.33;  (2,2): 1/1 - 1/1 -> 0.
    # poi = P(delta > 0) = 3/4; P(delta <= 0) = 1/4, P(delta >= 0) = 1 -> p = 2 * 1/4 = 0.5.
    # Observed: WER_A = 2/3 = 66.67, WER_B = 1/3 = 33.33, difference 33.33 points.
    r = paired_bootstrap([1, 1], [0, 1], [2, 1])
    assert r["exact"] and r["samples"] == 4
    assert r["poi"] == pytest.approx(0.75)
    assert r["p_value"] == pytest.approx(0.5)
    assert r["wer_diff"] == pytest.approx(100 / 3)
    assert r["wer_a"] == pytest.approx(200 / 3) and r["wer_b"] == pytest.approx(100 / 3)
    # Percentile CI, linear interpolation over the sorted deltas [0, 33.33, 33.33, 50]:
    # 2.5 % -> position 0.075: 0.075 * 33.33 = 2.5; 97.5 % -> position 2.925: 33.33 + 0.925 * 16.67 = 48.75.
    assert r["wer_diff_ci"][0] == pytest.approx(2.5) and r["wer_diff_ci"][1] == pytest.approx(48.75)


def test_paired_bootstrap_sampled():
    n = 50
    # B fixes one error in every utterance: always better -> poi 1, p 0, CI excludes 0
    r = paired_bootstrap([2] * n, [1] * n, [10] * n, num_samples=2000, seed=1)
    assert not r["exact"] and r["samples"] == 2000
    assert r["poi"] == 1.0 and r["p_value"] == 0.0 and r["wer_diff_ci"][0] > 0
    assert r["wer_diff"] == pytest.approx(10.0)
    # identical systems: p = 1, CI = [0, 0]
    r = paired_bootstrap([1, 0, 2] * 10, [1, 0, 2] * 10, [3] * 30, num_samples=500)
    assert r["p_value"] == 1.0 and r["wer_diff_ci"] == [0.0, 0.0]


def test_compare_systems_end_to_end():
    refs = {"a": "X Y Z", "b": "P Q", "c": "R"}
    ha = {"a": "X Y", "b": "P W", "c": "R"}  # 2 errors
    hb = {"a": "X Y Z", "b": "P Q", "c": "R"}  # 0 errors
    r = compare_systems(refs, ha, hb, num_samples=100)
    assert r["ref_words"] == 6 and r["bootstrap"]["exact"]  # 3^3 = 27 resamples enumerated
    assert r["bootstrap"]["wer_diff"] == pytest.approx(100 * 2 / 6)
    assert r["mapsswe_utterance"]["mean_diff"] == pytest.approx(2 / 3)
    # NIST segments: "a" -> one segment (deletion of Z, A 1 / B 0), "b" -> (W for Q, 1 / 0); "c" clean
    assert r["mapsswe"]["segments"] == 2 and r["mapsswe"]["mean_diff"] == pytest.approx(1.0)


def test_compare_run_means_by_hand():
    refs = {"a": "X Y Z", "b": "P Q", "c": "R"}
    a_runs = [{"a": "X Y", "b": "P W", "c": "R"},   # errors 1 1 0
              {"a": "X Y Z", "b": "P Q", "c": "S"}]  # errors 0 0 1 -> mean 0.5 0.5 0.5
    b_runs = [{"a": "X Y Z", "b": "P Q", "c": "S"}]  # errors 0 0 1
    r = compare_run_means(refs, a_runs, b_runs, num_samples=100)
    assert (r["runs_a"], r["runs_b"], r["ref_words"]) == (2, 1, 6)
    assert r["wer_a"] == pytest.approx((100 * 2 / 6 + 100 * 1 / 6) / 2)  # the mean of the runs' WERs
    assert r["wer_diff"] == pytest.approx(100 * (1.5 - 1) / 6)
    # per-utterance differences z = 0.5, 0.5, -0.5: mu = 1/6, s^2 = 1/3, se = 1/3, W = 0.5
    assert r["mapsswe"]["mean_diff"] == pytest.approx(1 / 6) and r["mapsswe"]["W"] == pytest.approx(0.5)
    assert r["mapsswe"]["p_value"] == pytest.approx(math.erfc(0.5 / math.sqrt(2)))
    assert r["bootstrap"]["exact"] and r["bootstrap"]["wer_diff"] == pytest.approx(r["wer_diff"])
    # one run each: the utterance-segment MAPSSWE and the bootstrap of compare_systems
    one = compare_run_means(refs, a_runs[:1], b_runs, num_samples=100)
    ref = compare_systems(refs, a_runs[0], b_runs[0], num_samples=100)
    assert one["mapsswe"]["p_value"] == pytest.approx(ref["mapsswe_utterance"]["p_value"])
    assert one["bootstrap"]["p_value"] == pytest.approx(ref["bootstrap"]["p_value"])
    with pytest.raises(ValueError, match="at least one run"):
        compare_run_means(refs, [], b_runs)


def test_nist_segmentation_by_hand():
    refs = {"u1": "A B C D E F G H", "u2": "P Q"}
    hyps_a = {"u1": "A X C D E F G H", "u2": "P Q"}  # sub B->X
    hyps_b = {"u1": "A B C D E G H Y", "u2": "P"}  # del F, ins Y at the end; del Q
    # u1 tokens (gap/word): A ok | B: A err | C D E clean (3 words >= 2: separator) | F: B err |
    #   G H clean (2 words: separator) | final gap: B inserts Y.
    #   Segments: [g0 A g1 B] (1, 0, 2 words), [F] (0, 1, 1 word), [g8] (0, 1, 0 words).
    # u2: P clean (1 word, < 2: not a separator) -> one segment [P, Q] (0, 1, 2 words).
    segs = nist_segments(refs, hyps_a, hyps_b, min_good=2)
    assert segs == [(1, 0, 2), (0, 1, 1), (0, 1, 0), (0, 1, 2)]
    # Z = [1, -1, -1, -1]: mu = -0.5, s^2 = (2.25 + 3 * 0.25) / 3 = 1, se = 0.5, W = -1, p = 0.3173
    r = mapsswe([x[0] for x in segs], [x[1] for x in segs])
    assert r["W"] == pytest.approx(-1.0) and r["p_value"] == pytest.approx(0.31731, abs=1e-4)
    # with min_good=1 the single clean word P of u2 also separates: [P] is dropped, [Q] (0, 1, 1)
    assert nist_segments(refs, hyps_a, hyps_b, min_good=1)[-1] == (0, 1, 1)
