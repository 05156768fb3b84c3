"""The scorer registry (docs/spec.md §2.13): listing, registering a scorer
with one call, shared work, and ped_score taking any registered name
without naming one itself.

Tolerances: a registered scorer's shared-work scores against the scorer
run on each feature set, 1e-12 relative (the test scorer's shared path
reads PED's moved features' class statistics, which the scorer computes
from the same features in another summation order).
"""
import ast
import pathlib

import numpy as np
import pytest
import torch
from conftest import assert_close, make_classes

import ped_fast
from ped_fast import scorers
from ped_fast.scorers import SCORERS, SharedWork, available, get, register, unregister

BUILT_IN = ["sfda", "logme", "nleep", "gbc", "leep", "nce", "hscore", "reg_hscore", "transrate", "parc", "knn"]


def problem():
    x, y = make_classes(300, 10, 5, seed=3, separation=0.8)
    g = torch.randn(200, 10, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    return x.numpy(), y.numpy(), g.numpy()


@pytest.fixture
def cleanup():
    """Names registered by a test, unregistered after it."""
    names = []
    yield names
    for name in names:
        if name in {s.name for s in available()}:
            unregister(name)


def test_available_lists_every_scorer():
    listed = available()
    assert [s.name for s in listed] == BUILT_IN
    for record in listed:
        assert record.source and record.reads
        assert record.ped_applies == (record.needs == "features")
        assert get(record.name) is record
    assert [s.name for s in listed if not s.ped_applies] == ["leep", "nce"]
    assert list(SCORERS) == [name for name in BUILT_IN if name not in ("leep", "nce")]
    assert SCORERS["knn"] is scorers.knn and "leep" not in SCORERS
    assert get("leep").reads.startswith("source-model probabilities")


def spread(features, labels, *, power=1.0):
    """A user's scorer: the features' overall standard deviation."""
    return float(np.asarray(features).std() ** power)


def test_register_a_scorer_with_one_call(cleanup):
    x, y, g = problem()
    cleanup.append("spread")
    record = register("spread", spread, source="a test")
    assert record.options == ("power",) and record.ped_applies and not record.takes_backend
    assert available()[-1] is record and SCORERS["spread"] is spread
    out = ped_fast.ped_score(x, y, "spread", reference=g, return_baseline=True, scorer_options={"power": 2.0})
    assert out.result.steps > 0
    assert out.baseline == spread(x, y, power=2.0)
    assert out.ped == spread(out.result.features, y, power=2.0)
    with pytest.raises(TypeError, match=r"scorer_options for 'spread' accepts \['power'\], got \['k'\]"):
        ped_fast.ped_score(x, y, "spread", reference=g, scorer_options={"k": 1})
    unregister("spread")
    assert "spread" not in SCORERS
    with pytest.raises(ValueError, match="scorer must be one of"):
        ped_fast.ped_score(x, y, "spread", reference=g)


def test_backend_reaches_a_registered_scorer_that_takes_it(cleanup):
    x, y, g = problem()
    seen = []

    def with_backend(features, labels, *, backend="auto"):
        seen.append(backend)
        return 1.0

    cleanup.append("with_backend")
    assert register("with_backend", with_backend).takes_backend
    ped_fast.ped_score(x, y, "with_backend", reference=g, return_baseline=True, backend="reference")
    assert seen == ["reference", "reference"]


def test_registered_shared_work_is_prepared_once(cleanup):
    """A scorer registered with SharedWork: ped_score prepares it from the
    input once and scores the input and PED's moved features from it, with
    the same values as the scorer on each feature set."""
    x, y, g = problem()
    calls = []

    def between_over_within(features, labels):
        f, labels = np.asarray(features), np.asarray(labels)
        means = np.stack([f[labels == c].mean(0) for c in np.unique(labels)])
        within = sum(f[labels == c].var(0).sum() * (labels == c).sum() for c in np.unique(labels))
        return float(((means - means.mean(0)) ** 2).sum() / within)

    def prepare(prep, moments, options):
        calls.append("prepare")
        return float((moments.variances.sum(1) * prep.counts).sum())  # the within-class scatter, shared

    def score(state, x, moments, last):
        calls.append(("score", last))
        means = moments.means
        return float(((means - means.mean(0)) ** 2).sum()) / state

    cleanup.append("between_over_within")
    register("between_over_within", between_over_within, shared=SharedWork(prepare, score))
    out = ped_fast.ped_score(x, y, "between_over_within", reference=g, return_baseline=True)
    assert calls == ["prepare", ("score", False), ("score", True)]
    assert_close(out.baseline, between_over_within(x, y), 1e-12, "shared baseline")
    assert_close(out.ped, between_over_within(out.result.features, y), 1e-12, "shared PED score")


def test_shared_scorer_without_dtype_when_the_shortcut_does_not_apply(cleanup):
    """When rounding of the moved features changes a class's spread, the
    scorer runs on the moved features itself, with the caller's options:
    a registered scorer that takes no dtype must not be handed one."""
    x, y, g = problem()

    def spread_ratio(features, labels):
        f = np.asarray(features, dtype=np.float64)
        return float(f.var(0).sum())

    cleanup.append("spread_ratio")
    register("spread_ratio", spread_ratio,
             shared=SharedWork(lambda prep, moments, options: None, lambda state, x, moments, last: 0.0))
    out = ped_fast.ped_score(x.astype(np.float32), y, "spread_ratio", reference=g, nsigma=1e6, time_step=10.0,
                             return_baseline=True)
    assert out.ped == spread_ratio(out.result.features, y)


def test_registered_saturation_reaches_the_result(cleanup):
    x, y, g = problem()
    cleanup.append("always_one")
    register("always_one", lambda features, labels: 1.0,
             saturation=lambda value, *, samples, dimensions, classes: f"{value} with {classes} classes")
    out = ped_fast.ped_score(x, y, "always_one", reference=g, return_baseline=True)
    assert out.saturation == {"baseline": "1.0 with 5 classes", "ped": "1.0 with 5 classes"}


def test_probabilities_scorer_is_not_moved_by_ped(cleanup):
    x, y, g = problem()
    cleanup.append("top1")
    register("top1", lambda probabilities, labels: 0.0, needs="probabilities")
    assert "top1" not in SCORERS
    with pytest.raises(ValueError, match="PED does not apply to 'top1'"):
        ped_fast.ped_score(x, y, "top1", reference=g)


def test_register_checks_its_arguments(cleanup):
    with pytest.raises(ValueError, match="already registered; pass replace=True"):
        register("sfda", spread)
    with pytest.raises(ValueError, match="a scorer name must be"):
        register("two words", spread)
    with pytest.raises(TypeError, match="function must be callable"):
        register("thing", 3)
    with pytest.raises(ValueError, match="needs must be one of 'features', 'probabilities'"):
        register("thing", spread, needs="logits")
    with pytest.raises(TypeError, match="shared must be a SharedWork"):
        register("thing", spread, shared=(len, len))
    with pytest.raises(ValueError, match="only a scorer with needs='features'"):
        register("thing", spread, needs="probabilities", shared=SharedWork(len, len))
    with pytest.raises(TypeError, match=r"called as f\(inputs, labels, \*\*options\)"):
        register("thing", lambda features: 0.0)
    assert "thing" not in {s.name for s in available()}
    cleanup.append("sfda_copy")
    original = get("sfda")
    register("sfda_copy", spread)
    register("sfda_copy", scorers.sfda, replace=True)
    assert get("sfda_copy").function is scorers.sfda and get("sfda") is original


def test_ped_score_names_no_scorer():
    """score.py compares no argument with a scorer's name and keeps no table
    keyed by names: the only name in its code is the paper's default,
    scorer="sfda"."""
    tree = ast.parse((pathlib.Path(ped_fast.__file__).parent / "score.py").read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef)) and node.body
                  and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    # ped_score and its typing overloads: the paper's default may stand in each signature.
    allowed = {id(value) for node in ast.walk(tree) if isinstance(node, ast.FunctionDef) and node.name == "ped_score"
               for value in node.args.defaults}
    named = [node.value for node in ast.walk(tree)
             if isinstance(node, ast.Constant) and node.value in BUILT_IN and id(node) not in docstrings | allowed]
    assert named == []
