"""diagnose_search.py's rank statistics against hand-worked values, and the retrained dev WERs the
one-shot check reads (one per fine-tuning of a run_experiments.py system)."""
import json

import pytest

from diagnose_search import kendall_tau, retrained_dev_wers, spearman


def test_kendall_tau_and_spearman_by_hand():
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert kendall_tau([1, 2, 3, 4], [40, 30, 20, 10]) == pytest.approx(-1.0)
    # pairs of (1,2,3) vs (1,3,2): (1,2) concordant, (1,3) concordant, (2,3) discordant -> 1/3
    assert kendall_tau([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)
    # tau-b with a tie in a: pairs (1,2) tie in a only, (1,3) conc, (2,3) conc: 2 / sqrt(3 * 2)
    assert kendall_tau([1, 1, 2], [1, 2, 3]) == pytest.approx(2 / 6 ** 0.5)
    # Spearman: 1 - 6 sum d^2 / (n (n^2 - 1)) without ties; ranks (1,2,3,4) vs (2,1,4,3): sum d^2 = 4
    assert spearman([1, 2, 3, 4], [2, 1, 4, 3]) == pytest.approx(1 - 6 * 4 / (4 * 15))


def test_retrained_dev_wers_reads_every_fine_tuning_in_seed_order(tmp_path):
    def put(d, wer):
        (d / "decode_dev").mkdir(parents=True)
        (d / "decode_dev" / "wer.json").write_text(json.dumps({"wer": wer}))

    put(tmp_path, 14.0)
    assert retrained_dev_wers(tmp_path) == [14.0]
    put(tmp_path / "seed10", 12.0)
    put(tmp_path / "seed2", 13.0)
    (tmp_path / "seed3").mkdir()        # not decoded yet: not counted
    (tmp_path / "seedling").mkdir()     # not a seed dir
    assert retrained_dev_wers(tmp_path) == [14.0, 13.0, 12.0]
