"""Screening on a Ray cluster: one Ray task per (model, data set) work unit.

The only module of ped_fast that imports Ray, and only when a RayExecutor is
made (Ray is the optional extra ``pip install -e '.[ray]'``). Ray is the
engine; what a unit does, the cache discipline and the report are
``screen``'s: a task runs ``screen_model`` on one picklable ``ModelTask``
(extraction or cache hit, reference statistics, PED and every scorer) where
the cluster puts it and returns the row; the driver hands the rows back in
task order and ``screen`` writes the report as with the local executor.
This module knows nothing of rows or of the cache. See docs/screening.md,
"Screening on Ray".
"""
from __future__ import annotations

import dataclasses
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

from .._validate import check_integer, check_number
from .errors import is_transient

if TYPE_CHECKING:
    from .screen import ModelTask

__all__ = ["RayExecutor", "TaskFailed"]

INSTALL = "pip install -e '.[ray]'"

# A value shared by several tasks is put in the object store once when it
# pickles to more than this; below it, sending it with each task costs less
# than the worker's fetch of an ObjectRef from the driver.
SHARE_BYTES = 1024


def import_ray() -> ModuleType:
    """The ray module, or an ImportError that says how to install it."""
    try:
        import ray
    except ImportError as error:
        raise ImportError(f"executor 'ray' needs Ray, which is not installed: {INSTALL} "
                          f"(or pip install 'ray>=2.9')") from error
    return ray


class TaskFailed(Exception):
    """A work unit that did not run to its end on the cluster: `error` is
    what stopped its last attempt (the unit's own exception, a dead worker,
    a cancellation), `retries` how often it had been submitted again
    before. The message is one line: Ray's run to many."""

    def __init__(self, error: BaseException, retries: int = 0) -> None:
        self.error, self.retries = error, retries
        first_line = (str(error).strip().splitlines() or [repr(error)])[0]
        after = f" (after {retries} {'retry' if retries == 1 else 'retries'})" if retries else ""
        super().__init__(f"{type(error).__name__}: {first_line}{after}")


class RayExecutor:
    """Runs work units as Ray tasks, models in parallel (never the images of
    one model).

    address: the cluster to connect to (default: $RAY_ADDRESS when set, else
        a new local cluster on this machine; unused when Ray is already
        initialised in this process, which then is not shut down here).
    cpus_per_task: CPUs each task reserves (fractions below 1 allowed); the
        task decodes images with cpus_per_task - 1 DataLoader workers unless
        the settings name a number, and runs torch with as many threads as
        it has whole CPUs (at least 1).
    gpus_per_task: GPUs each task that computes on a GPU reserves (default
        1). A task reserves none when its device is "cpu", or when its
        device is None (chosen where it runs) and the cluster has no GPUs;
        such a task computes on the CPU.
    max_retries: how often a task is submitted again after a failure a
        retry may cure: its worker or node died, or the unit raised a
        transient error (errors.is_transient: out of memory, a lost
        connection, a stale network file). A task that still fails is
        yielded as a TaskFailed, which screen makes its model's error row.
    progress: one progress bar over the work units on the driver.
    """

    # Each unit extracts its own model on the worker that runs it: the
    # driver need not hold a GPU, and a shared pass would serialise the zoo
    # on one machine.
    extracts_per_unit = True

    def __init__(self, address: str | None = None, *, cpus_per_task: float = 1, gpus_per_task: float | None = None,
                 max_retries: int = 3, progress: bool = True) -> None:
        self._ray = import_ray()
        self.address = address
        self.cpus_per_task = _resource(cpus_per_task, "cpus_per_task")
        self.gpus_per_task = None if gpus_per_task is None else _resource(gpus_per_task, "gpus_per_task")
        self.max_retries = check_integer(max_retries, "max_retries", minimum=0)
        self.progress = progress
        self._summary: dict[str, Any] | None = None

    def map(self, function: Callable[..., Any], tasks: Iterable[ModelTask]) -> Iterator[Any]:
        """Submit one task per unit at once, each running
        ``function(task, raise_transient=True)`` on a worker; yield, in task
        order, what each returned, or the exception (a TaskFailed, or the
        unit's own exception when it was not retried) of a task that could
        not be run."""
        from tqdm.auto import tqdm

        ray = self._ray
        task_list = list(tasks)
        start = time.perf_counter()
        started_here = not ray.is_initialized()
        if started_here:
            ray.init(address=self.address or os.environ.get("RAY_ADDRESS") or "local")
        startup = time.perf_counter() - start
        pending: dict[Any, int] = {}
        outcomes: list[Any] = [_PENDING] * len(task_list)
        retries, ready = [0] * len(task_list), 0
        try:
            cluster_gpus = ray.cluster_resources().get("GPU", 0)
            planned = [self._plan(task, cluster_gpus) for task in task_list]
            gpus = [gpus for _, gpus in planned]
            shipped, shared = share([task for task, _ in planned], ray.put, ray.cloudpickle.dumps)
            # Ray's own retries are off: the driver resubmits, so that it
            # can count the retries of each model and say them.
            remote = ray.remote(_run_unit)
            threads = max(1, int(self.cpus_per_task))

            def submit(index: int) -> None:
                options = remote.options(num_cpus=self.cpus_per_task, num_gpus=gpus[index], max_retries=0)
                pending[options.remote(function, shipped[index], threads)] = index

            submitted = time.perf_counter()
            for index in range(len(task_list)):
                submit(index)
            with tqdm(total=len(task_list), desc="work units", unit="model", disable=not self.progress) as bar:
                while pending:
                    [ref], _ = ray.wait(list(pending), num_returns=1)
                    index = pending.pop(ref)
                    outcome = self._outcome(ref, retries[index])
                    if outcome is _RETRY:
                        retries[index] += 1
                        submit(index)
                        continue
                    outcomes[index] = outcome
                    bar.update(1)
                    bar.set_postfix_str(task_list[index].name, refresh=False)
                    while pending and ready < len(task_list) and outcomes[ready] is not _PENDING:
                        yield outcomes[ready]
                        ready += 1
            self._summary = {
                "name": "ray", "nodes": sum(node["Alive"] for node in ray.nodes()),
                "cpus_per_task": self.cpus_per_task,
                "gpus_per_task": gpus[0] if len(set(gpus)) == 1 else dict(zip((t.name for t in task_list), gpus)),
                "max_retries": self.max_retries, "tasks": len(task_list), "shared_objects": shared,
                "retries": sum(retries),
                "retries_by_model": {task.name: n for task, n in zip(task_list, retries) if n},
                "startup_seconds": startup, "tasks_seconds": time.perf_counter() - submitted,
            }
        finally:
            for ref in pending:  # the screen stopped early: free the cluster
                ray.cancel(ref)
            if started_here:
                ray.shutdown()
        # The last outcomes only after the summary and the shutdown: a caller
        # that zips the tasks with map() never resumes it after its last item.
        yield from outcomes[ready:]

    def _plan(self, task: ModelTask, cluster_gpus: float) -> tuple[ModelTask, float]:
        """(the task as the worker gets it, the GPUs it reserves). The device
        stays to be resolved in the worker, except that a task reserving no
        GPU is told "cpu": Ray leaves a task without GPUs every GPU of its
        node visible (CUDA_VISIBLE_DEVICES unset), so "cuda when available"
        would take a GPU that another task reserved."""
        settings = task.settings
        device = settings.device
        gpus: float
        if device == "cpu":
            gpus = 0
        elif device is None:
            gpus = self.gpus_per_task if self.gpus_per_task is not None else (1 if cluster_gpus > 0 else 0)
        elif self.gpus_per_task == 0:
            raise ValueError(f"device {device!r} computes on a GPU, but gpus_per_task is 0: give gpus_per_task > 0, "
                             f"or device 'cpu'")
        else:
            gpus = 1 if self.gpus_per_task is None else self.gpus_per_task
        settings = dataclasses.replace(
            settings,
            device="cpu" if gpus == 0 else device,
            # The task has cpus_per_task CPUs: one runs the model, the rest decode.
            workers=max(int(self.cpus_per_task) - 1, 0) if settings.workers is None else settings.workers,
            progress=False)  # the driver's bar is the progress; workers' bars would interleave
        return dataclasses.replace(task, settings=settings), gpus

    def _outcome(self, ref: Any, retries: int) -> Any:
        """What the task of `ref` returned, _RETRY when it failed in a way a
        retry may cure and retries are left, else the exception to yield."""
        ray = self._ray
        try:
            return ray.get(ref)
        except ray.exceptions.TaskCancelledError as error:
            return TaskFailed(error)  # cancelled on purpose: retries, if any, are not why it failed
        except ray.exceptions.RayTaskError as error:  # the unit raised
            cause = getattr(error, "cause", None) or error
            if is_transient(cause) and retries < self.max_retries:
                return _RETRY
            return TaskFailed(cause, retries) if retries else cause
        except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError, ray.exceptions.LocalRayletDiedError,
                ray.exceptions.OutOfMemoryError) as error:  # the worker or its node died, or Ray killed it for memory
            return _RETRY if retries < self.max_retries else TaskFailed(error, retries)
        except ray.exceptions.RayError as error:
            return TaskFailed(error, retries)

    def summary(self) -> dict[str, Any] | None:
        """The last map(): nodes, the resources each task reserved, the
        objects put in the object store once for all tasks, the retries (per
        model, those that had any), Ray's start-up and the tasks' seconds."""
        return self._summary


_RETRY, _PENDING = object(), object()


def _resource(value: float, name: str) -> float:
    """A Ray resource amount: a number >= 0, whole when above 1 (Ray's
    rule), kept an int when whole."""
    amount = check_number(value, name, minimum=0)
    if amount > 1 and not amount.is_integer():
        raise ValueError(f"{name} must be a fraction up to 1 or a whole number (Ray's rule), got {value!r}")
    return int(amount) if amount.is_integer() else amount


def share(tasks: Sequence[Any], put: Callable[[Any], Any],
          dumps: Callable[[Any], bytes]) -> tuple[list[Any], int]:
    """(tasks, how many objects were put): each dataclass task with every
    field value that is the same object in several tasks, and pickles (by
    `dumps`) to more than SHARE_BYTES, replaced by `put(value)`: one put
    per object, so that a 100,000-path image set crosses the network once,
    not with every task. _run_unit resolves them in the worker."""
    def values(task: Any) -> list[tuple[str, Any]]:
        return [(field.name, getattr(task, field.name)) for field in dataclasses.fields(task) if field.init] \
            if dataclasses.is_dataclass(task) and not isinstance(task, type) else []

    seen = Counter(id(value) for task in tasks for _, value in values(task))
    refs: dict[int, Any] = {}
    for task in tasks:
        for _, value in values(task):
            if seen[id(value)] > 1 and id(value) not in refs:
                refs[id(value)] = put(value) if len(dumps(value)) > SHARE_BYTES else None
    shipped: list[Any] = []
    for task in tasks:
        changes = {name: refs[id(value)] for name, value in values(task) if refs.get(id(value)) is not None}
        shipped.append(dataclasses.replace(task, **changes) if changes else task)
    return shipped, sum(ref is not None for ref in refs.values())


def _run_unit(function: Callable[..., Any], task: Any, threads: int) -> Any:
    """The Ray task: fetch what share() put in the object store, size
    torch's threads to the task's CPUs (a reused worker keeps the count of
    the first task it ran), and run the unit, raising its transient
    failures for the driver to retry."""
    import ray
    import torch

    torch.set_num_threads(threads)
    if dataclasses.is_dataclass(task) and not isinstance(task, type):
        refs = {field.name: getattr(task, field.name) for field in dataclasses.fields(task)
                if field.init and isinstance(getattr(task, field.name), ray.ObjectRef)}
        if refs:
            task = dataclasses.replace(task, **dict(zip(refs, ray.get(list(refs.values())))))
    return function(task, raise_transient=True)
