"""Screening on Ray (ped_fast.zoo.ray_executor): the same results as the
local executor, a worker killed mid-task and transient failures retried and
counted, failing models as error rows, cache misses counted when a node
does not see the cache, the image sets put in the object store once, what
each task reserves and where its device is resolved, and the CLI and the
core without Ray.

Run in CI (ray is in the test extra): one local cluster with 2 CPUs is
shared by the module; the kill test starts its own two-node cluster, the
resources test its own cluster declaring a (fake) GPU."""
import dataclasses
import errno
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
from ped_fast.zoo import Cache, failed, ray_executor, screen
from ped_fast.zoo.extract import Settings
from ped_fast.zoo.images import ImageSet
from ped_fast.zoo.ray_executor import RayExecutor
from ped_fast.zoo.screen import ModelTask
from zoo_helpers import small_checkpoint, write_image_folder

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
    """A RayExecutor whose tasks run `wrapper(screen_model, task,
    raise_transient=...)`: how the tests inject faults with no hook in the
    production code."""
    extracts_per_unit = True

    def __init__(self, wrapper, **options):
        self.inner = RayExecutor(progress=False, **options)
        self.wrapper = wrapper

    def map(self, function, tasks):
        wrapper = self.wrapper

        def unit(task, **options):
            return wrapper(function, task, **options)

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


def check_cache_intact(root, killed=()):
    """Every entry reads back whole, and the only temporary files are those
    of the `killed` writers' stages, which no live writer holds: the next
    screen's sweep removes them."""
    cache = Cache(root)
    manifests = [p for p in Path(root).rglob("*.json") if not p.name.startswith(".")]
    assert manifests
    for manifest in manifests:
        assert cache.get(manifest.parent.name, manifest.stem) is not None, manifest
    left = sorted(Path(root).rglob(".tmp-*"))
    assert {path.parent.name for path in left} == set(killed)
    assert sorted(map(Path, cache.sweep())) == left
    assert list(Path(root).rglob(".tmp-*")) == []


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
    # A bad checkpoint is no transient failure: not retried.
    assert written["executor"]["retries"] == 0 and written["executor"]["retries_by_model"] == {}
    check_cache_intact(tmp_path / "cache")


def test_task_that_keeps_failing_is_an_error_row(zoo, cluster, tmp_path):
    """A worker that dies on every attempt: after max_retries retries its
    model is an error row that says so in one line; the others are scored."""
    def die_on_b(function, task, **options):
        if task.name == "b":
            os.kill(os.getpid(), signal.SIGKILL)
        return function(task, **options)

    results = screen(zoo["specs"], zoo["data"], "self", cache=tmp_path, executor=Wrapping(die_on_b, max_retries=1),
                     **SCREEN)
    assert failed(results) == ["b"]
    error = results["models"][1]["error"]
    assert error.startswith("TaskFailed: WorkerCrashedError: ") and error.endswith(" (after 1 retry)"), error
    assert "\n" not in error
    assert results["executor"]["retries_by_model"] == {"b": 1}
    assert all(row["scores"]["logme"]["ped"] is not None for row in results["models"] if row["name"] != "b")


def test_cache_not_shared_is_correct_and_counted(zoo, local_results, cluster, tmp_path):
    """Workers that see an empty cache of their own (a node-local disk)
    while the driver's holds everything: the same results, each recomputed
    stage counted as a cache miss."""
    specs = zoo["specs"] + [zoo["bad"]]
    screen(specs, zoo["data"], zoo["reference"], cache=tmp_path / "driver", executor="ray", **SCREEN)
    node_cache = str(tmp_path / "node")

    def on_node_disk(function, task, **options):
        return function(dataclasses.replace(task, cache_root=node_cache), **options)

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


def model_tasks(names, settings, **fields):
    """Work units for executor tests whose function is not screen_model."""
    return [ModelTask(name=name, scorers=("sfda",), backend="auto", settings=settings, cache_root="unused", **fields)
            for name in names]


def big_image_set(root, count=20_000):
    return ImageSet(root, tuple(f"class{i % 10}/image{i:06d}.jpg" for i in range(count)), None, (), "0" * 64)


def test_image_sets_put_in_the_object_store_once(cluster, monkeypatch):
    """Every task holds the same two 20,000-path image sets: each is put in
    the object store once, each task sent is small, and the worker's task
    holds the sets themselves (and, on a cluster without GPUs, device
    None made "cpu")."""
    data, reference = big_image_set("/data"), big_image_set("/reference")
    tasks = model_tasks("abc", Settings.make(check_device=False), data=data, reference=reference)
    put, ray_put = [], ray.put
    monkeypatch.setattr(ray, "put", lambda value: put.append(value) or ray_put(value))

    shipped, count = ray_executor.share(tasks, ray.put, ray.cloudpickle.dumps)
    assert count == 2 and [id(value) for value in put] == [id(data), id(reference)]
    whole = len(ray.cloudpickle.dumps(tasks[0]))
    assert whole > 500_000  # what each task carried when the sets were pickled into it
    assert all(len(ray.cloudpickle.dumps(task)) < 2_000 for task in shipped)

    def probe(task, raise_transient=False):
        return {"data": (task.data.root, len(task.data)), "reference": (task.reference.root, len(task.reference)),
                "device": task.settings.device, "resolved": str(task.settings.torch_device()),
                "raise_transient": raise_transient}

    put.clear()
    executor = RayExecutor(progress=False)
    rows = list(executor.map(probe, tasks))
    assert sorted(map(id, put)) == sorted([id(data), id(reference)])
    assert rows == [{"data": ("/data", 20_000), "reference": ("/reference", 20_000), "device": "cpu",
                     "resolved": "cpu", "raise_transient": True}] * 3
    assert executor.summary()["shared_objects"] == 2 and executor.summary()["gpus_per_task"] == 0


def test_what_each_task_reserves(tmp_path):
    """On a cluster declaring one GPU (this machine has no CUDA): a "cpu"
    task reserves none; device None and "cuda" reserve one (or an explicit
    gpus_per_task), and None resolves in the worker, to the CPU here; a
    task reserving no GPU computes on the CPU; decoding workers and torch
    threads follow cpus_per_task unless the settings name the workers."""
    ray.shutdown()  # a cluster of its own; `cluster` restarts the shared one for later tests
    ray.init(num_cpus=2, num_gpus=1, **RAY_START)
    try:
        def probe(task, raise_transient=False):
            settings = task.settings
            return {"gpus": ray.get_runtime_context().get_assigned_resources().get("GPU", 0),
                    "visible": os.environ.get("CUDA_VISIBLE_DEVICES") if settings.device != "cpu" else "-",
                    "device": settings.device,
                    "resolved": None if settings.device == "cuda" else str(settings.torch_device()),
                    "workers": settings.workers, "threads": torch.get_num_threads()}

        tasks = [*model_tasks(["cpu"], Settings.make(device="cpu", check_device=False)),
                 *model_tasks(["auto"], Settings.make(check_device=False)),
                 *model_tasks(["cuda"], Settings.make(device="cuda", check_device=False)),
                 *model_tasks(["auto-3-workers"], Settings.make(workers=3, check_device=False))]
        executor = RayExecutor(cpus_per_task=2, progress=False)
        assert list(executor.map(probe, tasks)) == [
            {"gpus": 0, "visible": "-", "device": "cpu", "resolved": "cpu", "workers": 1, "threads": 2},
            {"gpus": 1, "visible": "0", "device": None, "resolved": "cpu", "workers": 1, "threads": 2},
            {"gpus": 1, "visible": "0", "device": "cuda", "resolved": None, "workers": 1, "threads": 2},
            {"gpus": 1, "visible": "0", "device": None, "resolved": "cpu", "workers": 3, "threads": 2}]
        assert executor.summary()["gpus_per_task"] == {"cpu": 0, "auto": 1, "cuda": 1, "auto-3-workers": 1}

        half = RayExecutor(gpus_per_task=0.5, progress=False)
        assert [row["gpus"] for row in half.map(probe, tasks[:3])] == [0, 0.5, 0.5]
        assert [row["workers"] for row in half.map(probe, tasks[:3])] == [0, 0, 0]  # 1 CPU: none left to decode
        none = RayExecutor(gpus_per_task=0, progress=False)
        # Ray leaves a task without GPUs every GPU of its node visible: it is told "cpu".
        [row] = none.map(probe, tasks[1:2])
        assert (row["gpus"], row["device"], row["resolved"]) == (0, "cpu", "cpu")
        with pytest.raises(ValueError, match="device 'cuda' computes on a GPU, but gpus_per_task is 0"):
            list(none.map(probe, tasks[2:3]))
    finally:
        ray.shutdown()


def test_transient_failures_are_retried_and_counted(zoo, local_results, cluster, tmp_path):
    """Writing model b's reference statistics to the cache meets a stale
    network file handle on its first attempt only (a file per model counts
    the attempts), model c's a lost connection on every attempt: b is
    retried once, reuses the features its first attempt cached and is
    scored as the local executor scores it; c is an error row after
    max_retries retries; a and the bad checkpoint (no transient failure)
    run once."""
    attempts = tmp_path / "attempts"
    attempts.mkdir()

    def flaky(function, task, **options):
        from ped_fast.zoo.refstats import ReferenceStage

        with open(attempts / task.name, "a") as f:
            f.write("attempt\n")
        attempt = len((attempts / task.name).read_text().split())
        original = ReferenceStage.sink

        def sink(stage, cache, key, loaded):
            if task.name == "b" and attempt == 1:
                raise OSError(errno.ESTALE, "Stale file handle")
            if task.name == "c":
                raise ConnectionError(f"connection to the cache server reset (attempt {attempt})")
            return original(stage, cache, key, loaded)

        ReferenceStage.sink = sink
        try:
            return function(task, **options)
        finally:
            ReferenceStage.sink = original

    results = screen(zoo["specs"] + [zoo["bad"]], zoo["data"], zoo["reference"], cache=tmp_path / "cache",
                     executor=Wrapping(flaky, max_retries=2), **SCREEN)
    results = json.loads(json.dumps(results))
    assert {path.name: len(path.read_text().split()) for path in attempts.iterdir()} == \
        {"a": 1, "b": 2, "c": 3, "bad": 1}
    assert failed(results) == ["c", "bad"]
    assert results["models"][2]["error"] == \
        "TaskFailed: ConnectionError: connection to the cache server reset (attempt 3) (after 2 retries)"
    assert results["models"][3]["error"] == local_results["models"][3]["error"]
    assert results["models"][1]["cached"] == ["features"]  # the first attempt's work, not redone
    # The rows' zoo-level warnings name the scored models, which c is not here.
    def scored(results):
        return [{k: v for k, v in row.items() if k not in ("cached", "warnings")}
                for row in comparable(results)["models"][:2]]

    assert scored(results) == scored(local_results)
    assert (results["executor"]["retries"], results["executor"]["retries_by_model"]) == (3, {"b": 1, "c": 2})


def test_cancelled_task_claims_no_retries(cluster):
    """A cancelled task is a failure in one line, never "after N retries",
    whatever retries came before."""
    def never_runs():
        return None

    # Asking for a resource no node has, it waits to be scheduled until cancelled.
    ref = ray.remote(never_runs).options(resources={"absent": 1}).remote()
    ray.cancel(ref)
    with pytest.raises(ray.exceptions.TaskCancelledError):
        ray.get(ref, timeout=60)
    outcome = RayExecutor(max_retries=3, progress=False)._outcome(ref, retries=2)
    assert isinstance(outcome, ray_executor.TaskFailed)
    assert str(outcome).startswith("TaskCancelledError: ") and "retr" not in str(outcome)


@pytest.mark.parametrize("options, error, message", [
    ({"max_retries": -1}, ValueError, "max_retries must be an integer >= 0, got -1"),
    ({"max_retries": 1.5}, TypeError, "max_retries must be an integer >= 0, got float 1.5"),
    ({"cpus_per_task": "2"}, TypeError, "cpus_per_task must be a real number, got str '2'"),
    ({"gpus_per_task": -1}, ValueError, "gpus_per_task must be a finite number >= 0, got -1.0"),
    ({"gpus_per_task": 1.5}, ValueError, "gpus_per_task must be a fraction up to 1 or a whole number"),
])
def test_options_checked(options, error, message):
    with pytest.raises(error, match=message):
        RayExecutor(**options)


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

        def die_midway_once(function, task, **options):
            if task.name != "b":
                return function(task, **options)
            extract_module = importlib.import_module("ped_fast.zoo.extract")  # the package exports a function extract
            with open(attempts, "a") as f:
                f.write(f"{os.getpid()}\n")
            first = len(attempts.read_text().split()) == 1
            original = extract_module._forward
            batches = []

            def forward(*args, **options):
                batches.append(1)
                if first and len(batches) == 2:  # the features file is half written
                    os.kill(os.getpid(), signal.SIGKILL)
                return original(*args, **options)

            extract_module._forward = forward
            try:
                return function(task, **options)
            finally:
                extract_module._forward = original

        executor = Wrapping(die_midway_once, max_retries=2)
        results = screen(zoo["specs"] + [zoo["bad"]], zoo["data"], zoo["reference"], out=tmp_path / "out",
                         cache=tmp_path / "cache", executor=executor, **SCREEN)
        pids = attempts.read_text().split()
        assert len(pids) == 2 and pids[0] != pids[1]  # killed once, run again by a new worker
        assert results["executor"]["nodes"] == 2
        assert results["executor"]["retries_by_model"] == {"b": 1}
        written = json.loads((tmp_path / "out" / "results.json").read_text())
        assert comparable(written) == comparable(local_results)
        check_cache_intact(tmp_path / "cache", killed=["features"])
    finally:
        ray.shutdown()
        nodes.shutdown()
