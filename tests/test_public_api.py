"""The public API (docs/design.md §13): the names recorded here are what
ped_fast promises to keep within a major version. A name that leaves an
__all__ fails here, so that a removal is a decision (a deprecation, a
CHANGELOG entry), never an accident; a name added to an __all__ must be
recorded here too, and annotated.
"""
from __future__ import annotations

import importlib
import importlib.resources
import importlib.util
import inspect
import sys
from pathlib import Path

import numpy as np
import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

from ped_fast.zoo import cache as cache_module
from ped_fast.zoo.cache import Cache

PUBLIC = {
    "ped_fast": ("ped", "PEDResult", "ped_score", "ped_scores", "ped_sweep", "PEDScore", "available_backends",
                 "BackendStatus", "ops", "scorers", "evaluate"),
    "ped_fast.ops": ("class_stats", "pairwise_forces", "integrate", "Forces"),
    "ped_fast.scorers": ("sfda", "logme", "nleep", "gbc", "leep", "nce", "hscore", "reg_hscore", "transrate", "parc",
                         "knn", "SCORERS", "Scorer", "SharedWork", "Prepared", "ClassMoments", "available", "get",
                         "register", "unregister", "saturation", "plugin_errors", "PluginError", "PluginWarning"),
    "ped_fast.evaluate": ("evaluate", "compare", "judge", "weighted_tau", "kendall_tau", "pearson", "rel_at_k",
                          "ssl_resnet50_accuracies"),
    "ped_fast.zoo": ("screen", "screen_tasks", "summarize", "format_summary", "load_tasks", "Task", "failed",
                     "extract", "export_features", "reference_stats", "export_stats", "evaluation", "score_features",
                     "write_report", "format_table", "load_ground_truth", "Cache", "default_root", "FeatureSet",
                     "Predictions", "ReferenceStats", "RunningMoments", "stats_of", "load_stats_file",
                     "ExtractionError", "ImageSet", "image_folder", "image_files", "image_set", "source_kind",
                     "Model", "ModelSpec", "LoadedModel",
                     "parse_spec", "parse_models", "load_model", "weights_identity", "LocalExecutor", "ModelTask",
                     "screen_model"),
    "ped_fast.zoo.finetune": ("finetune_zoo", "finetune", "train", "accuracy", "Recipe", "FinetuneFailed"),
    "ped_fast.zoo.ray_executor": ("RayExecutor", "TaskFailed"),
    "ped_fast.integrations.transformer_ranker": ("PEDEstimator", "add_ped_estimators"),
}

ROOT = Path(__file__).resolve().parents[1]


def annotated_later():
    """The modules pyproject.toml's mypy configuration exempts as annotated
    later (ignore_errors): their signatures are not checked here either."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    later = [override["module"] for override in config.get("overrides", []) if override.get("ignore_errors")]
    return {name for modules in later for name in ([modules] if isinstance(modules, str) else modules)}


def public_objects():
    """(qualified name, object) of every recorded name that is a function or
    a class (modules have their own entries; SCORERS is a mapping)."""
    for module_name, names in PUBLIC.items():
        module = importlib.import_module(module_name)
        for name in names:
            value = getattr(module, name)
            if inspect.isfunction(value) or inspect.isclass(value):
                yield f"{module_name}.{name}", value


def unannotated(function, *, method=False):
    """The parts of `function`'s signature that carry no annotation: its
    parameters (self or cls of a method excepted) and its return."""
    signature = inspect.signature(function)
    parameters = list(signature.parameters.values())[1 if method else 0:]
    missing = [p.name for p in parameters if p.annotation is inspect.Parameter.empty]
    if signature.return_annotation is inspect.Signature.empty:
        missing.append("return")
    return missing


def class_gaps(cls):
    """{method: unannotated parts} of the public methods (and __init__) a
    class defines itself; properties by their getter's return."""
    gaps = {}
    for name, member in vars(cls).items():
        if name.startswith("_") and name != "__init__":
            continue
        if isinstance(member, property):
            missing = ["return"] if inspect.signature(member.fget).return_annotation is inspect.Signature.empty \
                else []
        elif isinstance(member, (staticmethod, classmethod)):
            missing = unannotated(member.__func__, method=isinstance(member, classmethod))
        elif inspect.isfunction(member):
            missing = unannotated(member, method=True)
        else:
            continue
        if missing:
            gaps[name] = missing
    return gaps


@pytest.mark.parametrize("module_name", sorted(PUBLIC))
def test_recorded_names_exist(module_name):
    module = importlib.import_module(module_name)
    missing = [name for name in PUBLIC[module_name] if not hasattr(module, name)]
    assert not missing, f"{module_name} lost public names {missing}: deprecate before removing (docs/design.md §13)"


@pytest.mark.parametrize("module_name", sorted(PUBLIC))
def test_all_is_the_recorded_surface(module_name):
    """Nothing leaves an __all__ silently, and nothing joins it unrecorded.
    A public module without an __all__ may only be one annotated later."""
    module = importlib.import_module(module_name)
    if not hasattr(module, "__all__"):
        assert module_name in annotated_later(), f"{module_name} is public but has no __all__"
        return
    removed = sorted(set(PUBLIC[module_name]) - set(module.__all__))
    added = sorted(set(module.__all__) - set(PUBLIC[module_name]))
    assert not removed, f"{module_name}.__all__ lost {removed}: deprecate before removing (docs/design.md §13)"
    assert not added, (f"{module_name}.__all__ gained {added}: record them in tests/test_public_api.py and in "
                       f"CHANGELOG.md (docs/design.md §13)")


def test_public_functions_and_classes_are_annotated():
    later = annotated_later()
    gaps = {}
    for qualified, value in public_objects():
        if value.__module__ in later:
            continue
        if inspect.isclass(value):
            gaps.update({f"{qualified}.{method}": missing for method, missing in class_gaps(value).items()})
        else:
            missing = unannotated(value)
            if missing:
                gaps[qualified] = missing
    assert not gaps, f"unannotated parts of the public API: {gaps}"


def test_the_check_sees_a_missing_annotation():
    """The annotation check itself: a parameter, a return and a method
    without annotations are each found."""
    def plain(x, y: int):
        return x

    class Thing:
        def method(self, value: int):
            return value

        @property
        def size(self):
            return 1

    assert unannotated(plain) == ["x", "return"]
    assert class_gaps(Thing) == {"method": ["return"], "size": ["return"]}


def test_annotated_later_names_only_modules_that_exist():
    """The exemptions follow the code: a module renamed or removed leaves
    the list rather than exempting nothing."""
    for name in annotated_later():
        assert importlib.util.find_spec(name) is not None, f"pyproject.toml exempts {name}, which does not exist"


def test_the_package_is_marked_typed():
    """PEP 561: type checkers read ped_fast's annotations only when the
    installed package holds py.typed (setup.py ships it as package data)."""
    assert importlib.resources.files("ped_fast").joinpath("py.typed").is_file()


def test_cache_put_returns_the_entry_or_raises(tmp_path, monkeypatch):
    """put() is typed as returning a CacheEntry: when the entry it wrote
    cannot be read back it raises, naming the entry, instead of returning
    None for the caller to fail on later."""
    cache = Cache(tmp_path)
    assert cache.put("features", "k1", {"a": 1}, {"x": np.ones(3)}).meta == {"a": 1}

    def damaged(folder, info, *, memo):
        raise ValueError("damaged")

    monkeypatch.setattr(cache_module, "_open_array", damaged)
    with pytest.warns(RuntimeWarning, match="cannot be read"), pytest.raises(OSError, match="k2.json"):
        cache.put("features", "k2", {}, {"x": np.ones(3)})
