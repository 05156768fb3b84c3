"""Scorer plugins: installed packages that register scorers through an
entry point in the "ped_fast.scorers" group, without the user importing
them, and broken ones reported by package without breaking the others.

The fixture packages tests/plugin_pkg (a working plugin) and
tests/plugin_pkg_broken (four that fail) are installed the way pip lays
out a package, a *.dist-info folder with METADATA and entry_points.txt
beside the modules, in a temporary folder put on sys.path: what
importlib.metadata reads for an installed package, without running pip
or changing the test environment. Each test starts with a registry of the
built-in scorers and plugins not yet loaded, and gets them back after.

Tolerances: the screen's score of the plugin's scorer against the scorer
called on the same float32 features, 1e-10 relative (the screen passes
the features as read from the .npy; float64 sums in another order).
"""
import json
import pathlib
import shutil
import sys
import warnings

import numpy as np
import pytest
import torch

import ped_fast
from ped_fast.__main__ import main
from ped_fast.scorers import SCORERS, PluginWarning, _registry, available, get, plugin_errors, unregister
from ped_fast.zoo import format_table, screen

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the test extra installs tomli
    import tomli as tomllib

HERE = pathlib.Path(__file__).parent
GOOD = HERE / "plugin_pkg"
BROKEN = HERE / "plugin_pkg_broken"
BUILT_IN = ["sfda", "logme", "nleep", "gbc", "leep", "nce", "hscore", "reg_hscore", "transrate", "parc", "knn"]
MODULES = ("ped_fast_example_scorers", "ped_fast_broken_scorers", "ped_fast_reentrant_scorers")


def install_distribution(site, name, version, entry_points, modules):
    """Lay out distribution `name` in `site` as pip installs one:
    name-version.dist-info (METADATA, entry_points.txt) and `modules`
    ({relative path: source}). entry_points: the text of entry_points.txt,
    or {entry point name: "module:function"} of the ped_fast.scorers group."""
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    if isinstance(entry_points, dict):
        entry_points = "[ped_fast.scorers]\n" + "".join(f"{key} = {value}\n" for key, value in entry_points.items())
    (info / "entry_points.txt").write_text(entry_points)
    for path, source in modules.items():
        (site / path).parent.mkdir(parents=True, exist_ok=True)
        (site / path).write_text(source)


def install_package(site, folder):
    """Install the fixture package in `folder` (pyproject.toml and its
    packages) into `site`, as install_distribution lays it out."""
    project = tomllib.loads((folder / "pyproject.toml").read_text())
    for package in project["tool"]["setuptools"]["packages"]:
        shutil.copytree(folder / package, site / package)
    meta = project["project"]
    install_distribution(site, meta["name"], meta["version"], dict(meta["entry-points"]["ped_fast.scorers"]), {})


@pytest.fixture
def site(tmp_path, monkeypatch):
    """An empty folder on sys.path for installing plugins into, with the
    registry and the plugins' state restored after the test."""
    folder = tmp_path / "site-packages"
    folder.mkdir()
    monkeypatch.setattr(_registry, "_REGISTRY", dict(_registry._REGISTRY))
    monkeypatch.setattr(_registry, "_PLUGINS", _registry._Plugins())
    monkeypatch.syspath_prepend(str(folder))
    yield folder
    for name in [name for name in sys.modules if name.split(".")[0] in MODULES]:
        del sys.modules[name]


def names():
    return [record.name for record in available()]


def test_installed_plugin_registers_without_import(site):
    install_package(site, GOOD)
    assert "ped_fast_example_scorers" not in sys.modules and not _registry._PLUGINS.done
    assert names() == BUILT_IN + ["class_separation"]
    assert "ped_fast_example_scorers" in sys.modules and plugin_errors() == ()
    record = get("class_separation")
    assert record.plugin == "ped-fast-example-scorers 0.1.0" and record.ped_applies
    assert record.source.startswith("between-class over within-class variance")
    assert get("sfda").plugin is None
    from ped_fast_example_scorers import class_separation
    assert SCORERS["class_separation"] is class_separation
    x = torch.randn(60, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = torch.arange(60) % 3
    out = ped_fast.ped_score(x, y, "class_separation", rescale="self", return_baseline=True)
    assert out.baseline == class_separation(x, y) and out.ped == class_separation(out.result.features, y)
    assert out.ped > out.baseline  # PED moves the classes apart


def test_plugins_load_once(site):
    """Loaded on the first lookup only: a plugin's scorer unregistered by the
    user stays unregistered."""
    install_package(site, GOOD)
    assert "class_separation" in SCORERS
    unregister("class_separation")
    assert names() == BUILT_IN and "class_separation" not in SCORERS and plugin_errors() == ()


def test_broken_plugins_are_reported_by_package_and_others_load(site):
    install_package(site, GOOD)
    install_package(site, BROKEN)
    original_sfda = _registry._REGISTRY["sfda"]
    with pytest.warns(PluginWarning) as caught:
        listed = names()
    assert listed == BUILT_IN + ["class_separation"]
    assert get("sfda") is original_sfda
    errors = {error.entry_point: error for error in plugin_errors()}
    assert list(errors) == ["half_registered = ped_fast_broken_scorers:register_then_fail",
                            "missing_dependency = ped_fast_broken_scorers.needs_missing:register",
                            "not_a_function = ped_fast_broken_scorers:NOT_A_FUNCTION",
                            "takes_sfda = ped_fast_broken_scorers:replace_sfda"]
    assert {error.distribution for error in errors.values()} == {"ped-fast-broken-scorers 0.2.0"}
    found = [error.error for error in errors.values()]
    assert found[0] == "RuntimeError: the plugin failed after registering half_registered"
    assert found[1] == "ModuleNotFoundError: No module named 'ped_fast_dependency_not_installed'"
    assert found[2] == ("TypeError: ped_fast_broken_scorers:NOT_A_FUNCTION must be a function that registers "
                        "scorers when called with no arguments, got str")
    assert found[3] == ("ValueError: it replaced or removed scorers registered before it (sfda); a plugin may only "
                        "add scorers")
    assert isinstance(errors["takes_sfda = ped_fast_broken_scorers:replace_sfda"].exception, ValueError)
    messages = [str(warning.message) for warning in caught]
    assert messages == [str(error) for error in errors.values()]
    assert messages[1] == ("scorer plugin 'missing_dependency = ped_fast_broken_scorers.needs_missing:register' of "
                           "package ped-fast-broken-scorers 0.2.0 failed to load, its scorers are left out: "
                           "ModuleNotFoundError: No module named 'ped_fast_dependency_not_installed'")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # reported once, not at every lookup
        assert names() == listed


def test_unreadable_entry_points_are_reported(site):
    """A package whose entry_points.txt cannot be parsed makes
    importlib.metadata.entry_points() itself raise: it is reported, and the
    other packages' plugins still load."""
    install_package(site, GOOD)
    install_distribution(site, "ped-fast-garbled", "1.0", "[ped_fast.scorers]\nno equals sign here\n", {})
    install_distribution(site, "unrelated-garbled", "1.0", "[console_scripts]\nno equals sign here\n", {})
    with pytest.warns(PluginWarning, match=r"^the scorer plugins of package ped-fast-garbled 1\.0 failed to load"):
        assert names() == BUILT_IN + ["class_separation"]
    [error] = plugin_errors()  # a package that declares no scorer plugin is not ours to report
    assert error.distribution == "ped-fast-garbled 1.0" and error.entry_point is None


def test_plugin_may_look_up_scorers_while_registering(site):
    """The first lookup loads the plugins; a plugin that looks the registry
    up while registering neither deadlocks nor loads them again, and another
    thread's lookup waits for the loading to finish."""
    source = '''
import threading

import ped_fast

seen = []
worker = threading.Thread(target=lambda: seen.append(ped_fast.scorers.get("late").name))


def register():
    worker.start()
    logme = ped_fast.scorers.get("logme")
    ped_fast.scorers.register("early", logme.function, source="logme again")
    worker.join(0.2)
    if not worker.is_alive():
        raise AssertionError("another thread looked scorers up while the plugins were loading")
    ped_fast.scorers.register("late", logme.function)
'''
    install_distribution(site, "ped-fast-reentrant-scorers", "1.0", {"plugin": "ped_fast_reentrant_scorers:register"},
                         {"ped_fast_reentrant_scorers.py": source})
    assert names() == BUILT_IN + ["early", "late"] and plugin_errors() == ()
    module = sys.modules["ped_fast_reentrant_scorers"]
    module.worker.join(5)
    assert module.seen == ["late"]


def write_features(folder, labels, models):
    folder.mkdir()
    np.save(folder / "labels.npy", labels)
    for name, x in models.items():
        np.save(folder / f"{name}.npy", x)


def test_screen_all_includes_plugin_scorer(site, tmp_path, capsys):
    """--scorers all is every registered scorer, a plugin's included: in the
    screen's results, its table and results.json."""
    install_package(site, GOOD)
    rng = np.random.default_rng(0)
    labels = np.arange(36) % 3
    models = {f"m{dim}": (rng.standard_normal((3, dim))[labels] + rng.standard_normal((36, dim))).astype(np.float32)
              for dim in (4, 5)}
    write_features(tmp_path / "f", labels, models)
    results = screen(features=tmp_path / "f", reference="self", scorers="all", cache=tmp_path / "c", progress=False)
    assert "class_separation" in results["scorers"] and results["scorers"] == names()
    from ped_fast_example_scorers import class_separation
    for row in results["models"]:
        score = row["scores"]["class_separation"]
        assert score["baseline"] == pytest.approx(class_separation(models[row["name"]], labels), rel=1e-10)
        assert score["ped"] > score["baseline"]
    assert "CLASS_SEPARATION" in format_table(results).upper()
    assert main(["screen", "--features", str(tmp_path / "f"), "--reference", "self", "--scorers", "all",
                 "--cache", str(tmp_path / "c"), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["scorers"] == names() and all("class_separation" in row["scores"] for row in saved["models"])
    assert "class_separation" in capsys.readouterr().out.lower()
