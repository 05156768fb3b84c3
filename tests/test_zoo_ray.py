"""Screening on Ray (ped_fast.zoo.ray_executor): the same results as the
local executor, a worker killed mid-task retried, failing models as error
rows, cache misses counted when a node does not see the cache, and the CLI
and the core without Ray.

Run in CI (ray is in the test extra): one local cluster with 2 CPUs is
shared by the module; the kill test starts its own two-node cluster."""
import dataclasses
import importlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import ray
import torch
from ray.cluster_utils import Cluster

import ped_fast
from ped_fast.__main__ import main
from ped_fast.zoo import Cache, failed, screen
from ped_fast.zoo.images import write_image_folder
from ped_fast.zoo.ray_executor import RayExecutor
from zoo_helpers import small_checkpoint

# Ray start-up under load (other jobs on the 2 cores) can take tens of
# seconds; these are upper bounds for a hang, not expectations.
RAY_START = {"include_dashboard": False, "log_to_driver": False}
SCREEN = {"scorers": "sfda,logme", "batch_size": 10, "progress": False}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray")
    write_image_folder(root / "data", classes=3, per_class=8, size=32)
    write_image_folder(root / "reference", classes=2, per_class=5, size=32, seed=7, labelled=False)
    bad = root / "bad.safetensors"
    bad.write_bytes(b"not safetensors at all")
    return {
        "root": root, "data": root / "data", "reference": root / "reference",
        "specs": [f"a:test_convnext={small_checkpoint(root / 'a', 'test_convnext', 1)}",
                  f"b:test_convnext={small_checkpoint(root / 'b', 'test_convnext', 2)}",
                  f"c:test_resnet={small_checkpoint(root / 'c', 'test_resnet', 3)}"],
        "bad": f"bad:test_resnet={bad}",
    }


@pytest.fixture(scope="module")
def local_results(zoo):
    """The local executor's screen of the zoo plus the bad checkpoint, with
    one torch thread: Ray runs a 1-CPU task with OMP_NUM_THREADS=1, and
    oneDNN's convolutions round differently with 1 and 2 threads (the
    resnet's LogME moved by 1e-6 relative), so only equal thread counts
    give bit-identical features."""
    out = zoo["root"] / "local"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        screen(zoo["specs"] + [zoo["bad"]], zoo["data"], zoo["reference"], out=out,
               cache=zoo["root"] / "local-cache", **SCREEN)
    finally:
        torch.set_num_threads(threads)
    return json.loads((out / "results.json").read_text())


@pytest.fixture(scope="module")
def shared_cluster():
    ray.init(num_cpus=2, **RAY_START)
    yield
    ray.shutdown()


@pytest.fixture
def cluster(shared_cluster):
    """The module's 2-CPU cluster (started again if the kill test, which
    needs its own, ran before)."""
    if not ray.is_initialized():
        ray.init(num_cpus=2, **RAY_START)


class Wrapping:
    """A RayExecutor whose tasks run `wrapper(screen_model, task)`: how the
    tests inject faults with no hook in the production code."""
    extracts_per_unit = True

    def __init__(self, wrapper, **options):
        self.inner = RayExecutor(progress=False, **options)
        self.wrapper = wrapper

    def map(self, function, tasks):
        wrapper = self.wrapper

        def unit(task):
            return wrapper(function, task)

        return self.inner.map(unit, tasks)

    def summary(self):
        return self.inner.summary()


def comparable(results):
    """results.json without what differs between two runs of the same
    screen: "seconds" (the screen's and each row's: wall-clock timings) and
    "executor" (only the Ray executor writes it: its start-up time, nodes
    and cache misses)."""
    results = {k: v for k, v in results.items() if k not in ("seconds", "executor")}
    results["models"] = [{k: v for k, v in row.items() if k != "seconds"} for row in results["models"]]
    return results


def check_cache_intact(root):
    """Every entry reads back whole, and no temporary file is left (the
    killed writer's was swept by the retry)."""
    cache = Cache(root)
    manifests = [p for p in Path(root).rglob("*.json") if not p.name.startswith(".")]
    assert manifests
    for manifest in manifests:
        assert cache.get(manifest.parent.name, manifest.stem) is not None, manifest
    assert [p for p in Path(root).rglob(".tmp-*")] == []


def test_ray_results_identical_to_local(zoo, local_results, cluster, tmp_path):
    """Acceptance 1 and 3: bit-identical scores, the bad checkpoint an error
    row (the same as the local executor's) while the others complete."""
    results = screen(zoo["specs"] + [zoo["bad"]], zoo["data"], zoo["reference"], out=tmp_path / "out",
                     cache=tmp_path / "cache", executor="ray", **SCREEN)
    written = json.loads((tmp_path / "out" / "results.json").read_text())
    assert written == json.loads(json.dumps(results))
    assert comparable(written) == comparable(local_results)
    assert failed(written) == ["bad"]
    assert written["models"][3]["error"].startswith("ValueError: model 'bad': cannot read safetensors file")
    assert written["executor"]["name"] == "ray" and written["executor"]["cache_misses"] == 0
    check_cache_intact(tmp_path / "cache")


def test_task_that_keeps_failing_is_an_error_row(zoo, cluster, tmp_path):
    """A worker that dies on every attempt: after max_retries retries its
    model is an error row; the others are scored."""
    def die_on_b(function, task):
        if task.name == "b":
            os.kill(os.getpid(), signal.SIGKILL)
        return function(task)

    results = screen(zoo["specs"], zoo["data"], "self", cache=tmp_path, executor=Wrapping(die_on_b, max_retries=1),
                     **SCREEN)
    assert failed(results) == ["b"]
    assert "(after 1 retries)" in results["models"][1]["error"]
    assert all(row["scores"]["logme"]["ped"] is not None for row in results["models"] if row["name"] != "b")


def test_cache_not_shared_is_correct_and_counted(zoo, local_results, cluster, tmp_path):
    """Workers that see an empty cache of their own (a node-local disk)
    while the driver's holds everything: the same results, each recomputed
    stage counted as a cache miss."""
    specs = zoo["specs"] + [zoo["bad"]]
    screen(specs, zoo["data"], zoo["reference"], cache=tmp_path / "driver", executor="ray", **SCREEN)
    node_cache = str(tmp_path / "node")

    def on_node_disk(function, task):
        return function(dataclasses.replace(task, cache_root=node_cache))

    results = screen(specs, zoo["data"], zoo["reference"], cache=tmp_path / "driver",
                     executor=Wrapping(on_node_disk), **SCREEN)
    assert comparable(json.loads(json.dumps(results))) == comparable(local_results)
    # 3 models x (features, reference, scores); the bad one has nothing cached.
    assert results["executor"]["cache_misses"] == 9
    assert results["executor"]["cache_misses_by_model"] == {name: ["features", "reference", "scores"]
                                                            for name in "abc"}
    again = screen(specs, zoo["data"], zoo["reference"], cache=tmp_path / "driver", executor="ray", **SCREEN)
    assert again["executor"]["cache_misses"] == 0
    assert [row["cached"] for row in again["models"][:3]] == [["features", "reference", "scores"]] * 3


def test_cli_executor_ray(zoo, local_results, cluster, tmp_path, capsys):
    out = tmp_path / "out"
    status = main(["screen", "--models", ",".join(zoo["specs"]), "--data", str(zoo["data"]), "--reference",
                   str(zoo["reference"]), "--scorers", "sfda,logme", "--batch-size", "10", "--cache",
                   str(tmp_path / "cache"), "--out", str(out), "--executor", "ray", "--quiet"])
    assert status == 0
    written = json.loads((out / "results.json").read_text())
    expected = comparable(local_results)
    expected["models"] = expected["models"][:3]
    expected["warnings"] = [w for w in expected["warnings"] if "bad" not in w["models"]]
    assert comparable(written) == expected


def test_without_ray(zoo, monkeypatch, tmp_path, capsys):
    """--executor ray without Ray installed: a one-line error with the
    install command; the local executor works, and importing ped_fast and
    its zoo imports no Ray."""
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    with pytest.raises(SystemExit) as exit_info:
        main(["screen", "--models", zoo["specs"][0], "--data", str(zoo["data"]), "--reference", "self",
              "--cache", str(tmp_path), "--out", str(tmp_path / "out"), "--executor", "ray", "--quiet"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "pip install -e '.[ray]'" in error and error.startswith("ped-fast screen: error: --executor ray")
    assert main(["screen", "--models", zoo["specs"][0], "--data", str(zoo["data"]), "--reference", "self",
                 "--cache", str(tmp_path), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    code = "import sys, ped_fast, ped_fast.zoo, ped_fast.__main__; print('ray' in sys.modules)"
    imported = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                              cwd=Path(ped_fast.__file__).parent.parent)
    assert imported.stdout.strip() == "False"


def test_worker_killed_mid_task_is_retried(zoo, local_results, tmp_path):
    """Acceptance 2: on a two-node cluster, the worker running model b's
    task kills itself (SIGKILL) in the middle of its extraction, on its
    first attempt; Ray retries the task, the screen completes with the
    local executor's results and the cache holds no corrupt or temporary
    file."""
    ray.shutdown()  # this test needs its own cluster; `cluster` restarts the shared one for later tests
    nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    nodes.add_node(num_cpus=1)
    try:
        ray.init(address=nodes.address, log_to_driver=False)
        nodes.wait_for_nodes()
        attempts = tmp_path / "attempts"

        def die_midway_once(function, task):
            if task.name != "b":
                return function(task)
            extract_module = importlib.import_module("ped_fast.zoo.extract")  # the package exports a function extract
            with open(attempts, "a") as f:
                f.write(f"{os.getpid()}\n")
            first = len(attempts.read_text().split()) == 1
            original = extract_module._forward
            batches = []

            def forward(model, batch, precision):
                batches.append(1)
                if first and len(batches) == 2:  # the features file is half written
                    os.kill(os.getpid(), signal.SIGKILL)
                return original(model, batch, precision)

            extract_module._forward = forward
            try:
                return function(task)
            finally:
                extract_module._forward = original

        executor = Wrapping(die_midway_once, max_retries=2)
        results = screen(zoo["specs"] + [zoo["bad"]], zoo["data"], zoo["reference"], out=tmp_path / "out",
                         cache=tmp_path / "cache", executor=executor, **SCREEN)
        pids = attempts.read_text().split()
        assert len(pids) == 2 and pids[0] != pids[1]  # killed once, run again by a new worker
        assert results["executor"]["nodes"] == 2
        written = json.loads((tmp_path / "out" / "results.json").read_text())
        assert comparable(written) == comparable(local_results)
        check_cache_intact(tmp_path / "cache")
    finally:
        ray.shutdown()
        nodes.shutdown()
