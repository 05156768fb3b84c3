"""Two ``ped-fast screen`` processes started together on one zoo and one
cache (two terminals, two users, Ray workers on a shared file system): both
succeed with identical results, each model's features are computed by one
of them only (the other waits on the entry's lock and reads it), and no
temporary is left. Without the cache's entry locks both computed every
model."""
import json
import os
import subprocess
import sys
import time

import pytest

from zoo_helpers import small_checkpoint, write_image_folder

MODELS = (("m1", "test_resnet", 1), ("m2", "test_convnext", 2), ("m3", "test_resnet", 3), ("m4", "test_convnext", 4))
# Imports first (torch takes seconds), then both wait for one file, so that
# their screens start within milliseconds of each other and contend for
# every model; then the CLI's own main, as `python -m ped_fast` runs it.
LAUNCH = ("import os, sys, time\n"
          "import ped_fast.zoo\n"
          "from ped_fast.__main__ import main\n"
          "while not os.path.exists(sys.argv[1]):\n"
          "    time.sleep(0.002)\n"
          "sys.exit(main(sys.argv[2:]))\n")


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("two-screens")
    write_image_folder(root / "data", classes=3, per_class=40, size=32)
    write_image_folder(root / "reference", classes=2, per_class=20, size=32, seed=5, labelled=False)
    specs = ",".join(f"{name}:{arch}={small_checkpoint(root / name, arch, seed)}" for name, arch, seed in MODELS)
    return root, specs


def test_two_screens_on_one_cache_compute_each_model_once(zoo, tmp_path):
    root, specs = zoo
    cache, go = tmp_path / "cache", tmp_path / "go"
    processes = []
    for n in (1, 2):
        command = [sys.executable, "-c", LAUNCH, str(go), "screen", "--models", specs, "--data", str(root / "data"),
                   "--reference", str(root / "reference"), "--scorers", "sfda,logme", "--cache", str(cache),
                   "--out", str(tmp_path / f"report{n}"), "--batch-size", "8", "--models-per-pass", "1",
                   "--quiet"]
        processes.append(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}))
    time.sleep(1.0)
    go.write_text("")
    for process in processes:
        out, err = process.communicate(timeout=600)
        assert process.returncode == 0, err[-3000:]

    results = [json.loads((tmp_path / f"report{n}" / "results.json").read_text()) for n in (1, 2)]
    rows = [{row["name"]: row for row in result["models"]} for result in results]
    for name, *_ in MODELS:
        # A row times "extract" when its process computed the features (its
        # "cached" list is no witness: a process that finds every score
        # cached by the other lists every stage as cached).
        computed = [n for n in (0, 1) if "extract" in rows[n][name]["seconds"]]
        assert len(computed) == 1, (name, [rows[n][name]["seconds"] for n in (0, 1)])
        for key in ("dim", "n", "steps", "scores", "error", "identity"):
            assert rows[0][name][key] == rows[1][name][key], (name, key)
    leftovers = [p for p in cache.rglob("*") if p.name.startswith(".tmp-")]
    assert leftovers == []
