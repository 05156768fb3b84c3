"""Bootstrap intervals and paired comparisons of ranking measures
(ped_fast.evaluate: evaluate, compare, judge), issue 16 points 1-3.

The batched per-resample measures are checked against the scalar ones
(themselves checked against scipy in test_evaluate.py) resample by
resample; the intervals against cases with a known answer."""
import contextlib
import io
import math
import pathlib
import re
import time

import numpy as np
import pytest

from ped_fast import evaluate as module
from ped_fast.evaluate import compare, evaluate, judge, kendall_tau, pearson, rel_at_k, weighted_tau

MEASURES = ("weighted_tau", "kendall_tau", "pearson", "rel@1", "rel@3")


def noisy(m, noise, seed):
    """m models whose accuracies follow their scores with `noise`."""
    rng = np.random.default_rng(seed)
    scores = rng.standard_normal(m)
    return list(scores), list(60 + 10 * scores + noise * 10 * rng.standard_normal(m))


def width(interval):
    return interval[1] - interval[0]


@pytest.mark.parametrize("seeds", [False, True])
def test_each_resample_is_the_scalar_measure_of_its_draw(seeds):
    """The batched computation gives, for every resample, the scalar
    measures of the drawn models (ties, duplicates and constant draws
    included) to 1e-12, and NaN for a resample that drew one model."""
    rng = np.random.default_rng(3)
    for trial in range(40):
        m = int(rng.integers(2, 20))
        xs = [rng.integers(0, 4, m).astype(float), rng.standard_normal(m)]
        if seeds:
            accuracies = [list(np.round(rng.standard_normal(int(rng.integers(1, 4))))) for _ in range(m)]
        else:
            accuracies = list(np.round(rng.standard_normal(m)) if trial % 2 else rng.standard_normal(m))
        truth = module._Truth.of(accuracies)
        samples = module._resample(truth, 12, trial)
        drawn = truth.mean[samples.models] if samples.accuracies is None else \
            np.take_along_axis(samples.accuracies, samples.models, axis=1)
        for x, values in zip(xs, module._bootstrap_values(xs, truth, (1,), 12, trial)):
            for b in range(12):
                xb, yb = x[samples.models[b]], drawn[b]
                for name, function in (("weighted_tau", weighted_tau), ("kendall_tau", kendall_tau),
                                       ("pearson", pearson)):
                    expected = math.nan if samples.degenerate[b] else function(xb, yb)
                    got = values[name][b]
                    assert (math.isnan(got) and math.isnan(expected)) or abs(got - expected) <= 1e-12
                if not samples.degenerate[b] and yb.max() > 0:
                    assert values["rel@1"][b] == rel_at_k(xb, yb, 1)


def test_a_seed_accuracy_is_the_mean_of_its_seeds_drawn_again():
    """Each model's accuracy in a resample is the mean of as many of its
    seeds, drawn with replacement, as it has: for two seeds a and b, one of
    a, (a + b) / 2, b, with probabilities 1/4, 1/2, 1/4."""
    truth = module._Truth.of([[0.0, 1.0], [5.0]])
    samples = module._resample(truth, 4000, 0)
    first = samples.accuracies[:, 0]
    assert set(np.unique(first)) == {0.0, 0.5, 1.0}
    assert np.mean(first == 0.5) == pytest.approx(0.5, abs=0.03)
    assert (samples.accuracies[:, 1] == 5.0).all()


def test_perfect_ranking_has_interval_one_one():
    scores = list(range(10))
    accuracies = [50.0 + 2 * s for s in scores]
    out = evaluate(scores, accuracies)
    for measure in ("weighted_tau", "kendall_tau", "rel@1", "rel@3"):
        assert out[measure] == 1.0 and out["interval"][measure] == [1.0, 1.0]
    assert out["pearson"] == pytest.approx(1.0) and out["interval"]["pearson"] == pytest.approx([1.0, 1.0])


def test_intervals_narrow_as_models_are_added():
    widths = [width(evaluate(*noisy(m, 1.0, seed=m))["interval"]["weighted_tau"]) for m in (10, 40, 160)]
    assert widths[0] > widths[1] > widths[2]
    assert widths[2] < widths[0] / 2


def test_the_same_seed_gives_the_same_interval():
    scores, accuracies = noisy(30, 1.0, seed=1)
    first = evaluate(scores, accuracies, seed=7)
    assert evaluate(scores, accuracies, seed=7) == first
    assert evaluate(scores, accuracies, seed=8)["interval"] != first["interval"]
    assert first["bootstrap"] == {"resamples": 1000, "confidence": 0.95, "seed": 7, "models": 30,
                                  "seeds_resampled": False, "undefined": dict.fromkeys(MEASURES, 0)}


def test_a_ranking_that_is_noise_has_an_interval_containing_zero():
    rng = np.random.default_rng(5)
    for trial in range(5):
        out = evaluate(list(rng.standard_normal(25)), list(rng.standard_normal(25)), seed=trial)
        for measure in ("weighted_tau", "kendall_tau", "pearson"):
            low, high = out["interval"][measure]
            assert low < 0 < high, (trial, measure, out["interval"])


def test_a_signal_has_an_interval_above_zero():
    out = evaluate(*noisy(40, 0.3, seed=2))
    assert out["interval"]["weighted_tau"][0] > 0.5
    low, high = out["interval"]["weighted_tau"]
    assert low <= out["weighted_tau"] <= high


def test_confidence_sets_the_level():
    scores, accuracies = noisy(30, 1.0, seed=4)
    wide = evaluate(scores, accuracies, confidence=0.99)["interval"]["weighted_tau"]
    narrow = evaluate(scores, accuracies, confidence=0.5)["interval"]["weighted_tau"]
    assert wide[0] < narrow[0] and narrow[1] < wide[1]


def test_seeds_widen_the_interval_and_single_seeds_change_nothing():
    """The ground truth with several seeds per model: the mean ranks, the
    seed spread widens the interval; one-entry lists are plain numbers."""
    scores = list(range(12))
    means = [50.0 + s for s in scores]  # a perfect ranking of the means
    out = evaluate(scores, [[m - 3, m + 3] for m in means])
    assert out["weighted_tau"] == pytest.approx(1.0)
    assert out["interval"]["weighted_tau"][0] < 0.95 and out["bootstrap"]["seeds_resampled"]
    assert evaluate(scores, means)["interval"]["weighted_tau"] == pytest.approx([1.0, 1.0])
    assert evaluate(scores, [[m] for m in means]) == evaluate(scores, means) | {
        "bootstrap": evaluate(scores, means)["bootstrap"]}
    named = evaluate(dict(zip("abcdefghijkl", scores)), dict(zip("abcdefghijkl", [[m - 3, m + 3] for m in means])))
    assert named == out


def test_undefined_resamples_and_too_few_models():
    """Constant scores: the measures are NaN and have no interval; three
    models: some resamples draw one model and are left out (counted); two
    models: no interval at all."""
    out = evaluate([1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0])
    assert math.isnan(out["weighted_tau"]) and out["interval"]["weighted_tau"] is None
    assert out["bootstrap"]["undefined"]["weighted_tau"] == 1000
    assert out["interval"]["rel@1"] is not None  # rel@k is defined for constant scores
    three = evaluate([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    undefined = three["bootstrap"]["undefined"]["weighted_tau"]
    assert 1000 / 9 * 0.7 < undefined < 1000 / 9 * 1.3  # P(one model drawn 3 times) = 3 / 27
    assert three["interval"]["weighted_tau"] == [1.0, 1.0]
    two = evaluate([1.0, 2.0], [1.0, 2.0], ks=(1,))
    assert two["weighted_tau"] == 1.0 and two["interval"] == {m: None for m in MEASURES[:4]}


def test_compare_known_answers():
    scores, accuracies = noisy(40, 0.3, seed=6)
    rng = np.random.default_rng(0)
    noise = list(rng.standard_normal(40))
    better = compare(scores, noise, accuracies)
    assert better["delta_weighted_tau"][0] > 0 and better["p_better"] > 0.99
    assert better["delta"] == pytest.approx(weighted_tau(scores, accuracies) - weighted_tau(noise, accuracies))
    worse = compare(noise, scores, accuracies)
    assert worse["delta_weighted_tau"] == pytest.approx([-better["delta_weighted_tau"][1],
                                                         -better["delta_weighted_tau"][0]])
    assert compare(scores, scores, accuracies) == {"delta": 0.0, "delta_weighted_tau": [0.0, 0.0], "p_better": 0.5}
    by_pearson = compare(scores, noise, accuracies, measure="pearson")
    assert set(by_pearson) == {"delta", "delta_pearson", "p_better"}
    assert set(compare(scores, noise, accuracies, measure="rel@2")) == {"delta", "delta_rel@2", "p_better"}


def test_compare_is_paired():
    """Ranking a knows part of what ranking b misses: judged alone, their
    intervals overlap widely; paired on the same resamples, a's lead is
    resolved (and a ranking that differs from b in only two models is
    never worse, yet ties it in the resamples that miss those two, so its
    lead is not resolved: the interval starts at 0)."""
    rng = np.random.default_rng(9)
    signal, error = rng.standard_normal(20), rng.standard_normal(20)
    accuracies = list(signal + error)
    a, b = list(signal + 0.6 * error), list(signal)
    alone = evaluate(a, accuracies)["interval"]["weighted_tau"], evaluate(b, accuracies)["interval"]["weighted_tau"]
    assert alone[0][0] < alone[1][1]  # the intervals overlap
    versus = compare(a, b, accuracies)
    assert versus["delta_weighted_tau"][0] > 0 and versus["p_better"] > 0.975
    order = np.argsort(accuracies)
    two = list(b)
    two[order[-1]], two[order[0]] = max(b) + 1.0, min(b) - 1.0  # the best model first, the worst last
    versus = compare(two, b, accuracies)
    assert versus["delta_weighted_tau"][0] == 0.0 < versus["delta_weighted_tau"][1]


def test_judge_shares_resamples_and_checks_pairs():
    scores, accuracies = noisy(15, 1.0, seed=3)
    names = [f"m{i}" for i in range(15)]
    truth = dict(zip(names, accuracies))
    a = dict(zip(names, scores))
    b = dict(zip(reversed(names), scores))  # other scores, keys in another order
    measures, comparisons = judge({"a": a, "b": b}, truth, pairs=[("a", "b")])
    assert measures["a"] == evaluate(a, truth) and measures["b"] == evaluate(b, truth)
    assert comparisons["a", "b"] == compare(a, b, truth)
    with pytest.raises(ValueError, match="must score the same models"):
        judge({"a": a, "c": {n: 1.0 for n in names[:5]}}, truth, pairs=[("a", "c")])
    with pytest.raises(ValueError, match="pairs names 'z'"):
        judge({"a": a}, truth, pairs=[("a", "z")])


@pytest.mark.parametrize("options, message", [
    ({"bootstrap": -1}, "bootstrap must be an integer >= 0"),
    ({"bootstrap": 1.5}, "bootstrap must be an integer"),
    ({"confidence": 1.0}, "confidence must be a number strictly between 0 and 1"),
    ({"confidence": "95%"}, "confidence must be a number"),
    ({"seed": -2}, "seed must be a non-negative integer"),
])
def test_bootstrap_option_errors(options, message):
    with pytest.raises(ValueError, match=message):
        evaluate([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], **options)


def test_accuracy_errors():
    with pytest.raises(TypeError, match=r"non-empty lists of numbers .* got \[\] at position 1"):
        evaluate([1.0, 2.0], [1.0, []])
    with pytest.raises(TypeError, match="got 'high' at position 0"):
        evaluate([1.0, 2.0], ["high", 2.0])
    with pytest.raises(ValueError, match="non-finite values"):
        evaluate([1.0, 2.0], [[1.0, float("nan")], 2.0])
    with pytest.raises(ValueError, match="bootstrap must be an integer >= 1"):
        compare([1.0, 2.0, 3.0], [3.0, 2.0, 1.0], [1.0, 2.0, 3.0], bootstrap=0)
    with pytest.raises(ValueError, match="only one of them scores"):
        compare({"a": 1.0, "b": 2.0}, {"a": 1.0, "c": 2.0}, {"a": 1.0, "b": 2.0, "c": 3.0})
    with pytest.raises(ValueError, match="measure must be one of"):
        compare([1.0, 2.0, 3.0], [3.0, 2.0, 1.0], [1.0, 2.0, 3.0], measure="tau")


def test_a_thousand_resamples_of_two_hundred_models_take_well_under_a_second():
    """The batched bootstrap (docs/spec.md §4 has the measured figures).
    CPU time, which a busy machine does not inflate the way it does the
    wall clock."""
    scores, accuracies = noisy(200, 1.0, seed=0)
    truth = module._Truth.of(accuracies)
    module._bootstrap_values([np.asarray(scores)], truth, (1, 3), 10, 0)  # warm-up
    start = time.process_time()
    module._bootstrap_values([np.asarray(scores)], truth, (1, 3), 1000, 0)
    assert time.process_time() - start < 1.0


def test_the_study_template_prints_what_the_docs_show():
    """Issue 16.8: docs/screening.md's study across the 11 tasks of the
    shipped accuracies (intervals, paired comparisons, win rates) runs and
    prints the output shown under it."""
    text = (pathlib.Path(__file__).parent.parent / "docs" / "screening.md").read_text()
    match = re.search(r"<!-- study-template -->\n```python\n(.*?)```\n```\n(.*?)```\n", text, re.S)
    assert match, "docs/screening.md has no study template"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(match.group(1), "study-template", "exec"), {"__name__": "study"})
    assert printed.getvalue() == match.group(2)
    assert "wins on 7 of 11 tasks (1 resolved at 95%)" in printed.getvalue()
