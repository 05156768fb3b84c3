"""Ranking measures against scipy.stats on random and tied inputs.

Tolerance 1e-12 absolute: the same sums of at most M(M-1)/2 = 435 terms of
size <= 2 as scipy's, in another order (measured ~1e-15).
"""
import math

import numpy as np
import pytest
from scipy import stats

from ped_fast.evaluate import evaluate, kendall_tau, pearson, rel_at_k, ssl_resnet50_accuracies, weighted_tau


def inputs(seed):
    """Continuous, heavily tied, and mixed pairs of length 2..30."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 31))
    kind = seed % 3
    if kind == 0:
        return rng.standard_normal(n), rng.standard_normal(n)
    if kind == 1:
        return rng.integers(0, 4, n).astype(float), rng.integers(0, 3, n).astype(float)
    return rng.standard_normal(n), np.round(rng.standard_normal(n))


def close(actual, expected):
    if math.isnan(expected):
        return math.isnan(actual)
    return abs(actual - expected) <= 1e-12


VARIANTS = {
    "defaults": {},
    "rank_none": {"rank": None},
    "rank_false": {"rank": False},
    "multiplicative": {"additive": False},
    "weigher": {"weigher": lambda r: 1.0 / (r + 1.0) ** 2},
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_weighted_tau_matches_scipy(variant):
    options = VARIANTS[variant]
    for seed in range(150):
        x, y = inputs(seed)
        expected = stats.weightedtau(x, y, **options).statistic
        assert close(weighted_tau(x, y, **options), expected), (variant, x, y)


def test_weighted_tau_explicit_rank_matches_scipy():
    x, y = inputs(3)
    rank = np.random.default_rng(0).permutation(x.size)
    assert close(weighted_tau(x, y, rank=rank), stats.weightedtau(x, y, rank=rank).statistic)
    with pytest.raises(ValueError, match="rank must be"):
        weighted_tau(x, y, rank=rank[:-1])


def test_kendall_and_pearson_match_scipy():
    for seed in range(150):
        x, y = inputs(seed)
        assert close(kendall_tau(x, y), stats.kendalltau(x, y).statistic), (x, y)
        if np.ptp(x) > 0 and np.ptp(y) > 0:
            assert close(pearson(x, y), stats.pearsonr(x, y).statistic), (x, y)


def test_constant_input_gives_nan_like_scipy():
    x, y = np.ones(5), np.arange(5.0)
    assert math.isnan(weighted_tau(x, y)) and math.isnan(stats.weightedtau(x, y).statistic)
    assert math.isnan(kendall_tau(x, y))
    assert math.isnan(pearson(x, y))


def test_rel_at_k():
    accuracies = [70.0, 90.0, 80.0, 60.0]
    scores = [0.3, 0.1, 0.9, 0.5]  # ranked: model 2 (80), 3 (60), 0 (70), 1 (90)
    assert rel_at_k(scores, accuracies, 1) == pytest.approx(80 / 90)
    assert rel_at_k(scores, accuracies, 3) == pytest.approx(80 / 90)
    assert rel_at_k(scores, accuracies, 4) == 1.0
    # Tied at the cut-off: the tie is resolved against the scorer.
    assert rel_at_k([1.0, 1.0, 0.0], [50.0, 100.0, 10.0], 1) == 0.5
    assert rel_at_k([1.0, 1.0, 0.0], [50.0, 100.0, 10.0], 2) == 1.0
    with pytest.raises(ValueError, match="k must be an integer in"):
        rel_at_k(scores, accuracies, 5)


def test_evaluate_dict_table_and_sequences():
    accuracies = {"a": 70.0, "b": 90.0, "c": 80.0, "d": 60.0}
    scores = {"d": 0.5, "a": 0.3, "b": 0.1, "c": 0.9}  # any order: matched by name
    x = [scores[m] for m in accuracies]
    y = list(accuracies.values())
    out = evaluate(scores, accuracies, ks=(1, 2), bootstrap=0)
    assert set(out) == {"weighted_tau", "kendall_tau", "pearson", "rel@1", "rel@2"}
    assert close(out["weighted_tau"], stats.weightedtau(x, y).statistic)
    assert close(out["kendall_tau"], stats.kendalltau(x, y).statistic)
    assert close(out["pearson"], stats.pearsonr(x, y).statistic)
    assert evaluate(x, y, ks=(1, 2), bootstrap=0) == pytest.approx(out, abs=1e-12)  # other summation order
    table = evaluate({"good": {"a": 2, "b": 4, "c": 3, "d": 1}, "given": scores}, accuracies, ks=(1, 2))
    assert {k: table["given"][k] for k in out} == out and table["good"]["weighted_tau"] == pytest.approx(1.0)
    assert set(table["given"]) == set(out) | {"interval", "bootstrap"}  # intervals by default


def test_evaluate_errors():
    with pytest.raises(ValueError, match="no entry for the scored models"):
        evaluate({"a": 1.0, "z": 2.0}, {"a": 1.0, "b": 2.0})
    with pytest.raises(ValueError, match="3 entries but accuracies has 2"):
        evaluate([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="non-finite"):
        evaluate([1.0, float("nan")], [1.0, 2.0])
    with pytest.raises(ValueError, match="at least 2 models"):
        evaluate([1.0], [1.0])
    with pytest.raises(TypeError, match="must be a"):
        evaluate({"a": 1.0, "b": 2.0}, [1.0, 2.0])


def test_ssl_resnet50_table():
    table = ssl_resnet50_accuracies()
    assert len(table) == 11 and all(len(models) == 12 for models in table.values())
    assert table["cifar10"]["byol"] == 96.98
    # Leave-one-dataset-out: the mean accuracy elsewhere as a score, as in
    # the README example; the best-on-average models also lead on cars.
    models = list(table["cars"])
    others = {m: np.mean([table[d][m] for d in table if d != "cars"]) for m in models}
    out = evaluate(others, table["cars"])
    assert out["weighted_tau"] > 0.5 and out["rel@3"] == 1.0
