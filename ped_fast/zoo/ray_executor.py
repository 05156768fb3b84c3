"""Screening on a Ray cluster: one Ray task per (model, data set) work unit.

The only module of ped_fast that imports Ray, and only when a RayExecutor is
made (Ray is the optional extra ``pip install -e '.[ray]'``). Ray is the
engine; what a unit does, the cache discipline and the report are
``screen``'s, unchanged: a task runs ``screen_model`` on one picklable
``ModelTask`` (extraction or cache hit, reference statistics, PED and every
scorer) where the cluster puts it and returns the row; the driver merges
the rows and writes the report as with the local executor. See
docs/screening.md, "Screening on Ray".
"""
from __future__ import annotations

import dataclasses
import os
import time

from .scoring import empty_row

INSTALL = "pip install -e '.[ray]'"


def import_ray():
    """The ray module, or an ImportError that says how to install it."""
    try:
        import ray
    except ImportError as error:
        raise ImportError(f"executor 'ray' needs Ray, which is not installed: {INSTALL} "
                          f"(or pip install 'ray>=2.9')") from error
    return ray


class RayExecutor:
    """Runs work units as Ray tasks, models in parallel (never the images of
    one model).

    address: the cluster to connect to (default: $RAY_ADDRESS when set, else
        a new local cluster on this machine; unused when Ray is already
        initialised in this process, which then is not shut down here).
    gpus_per_task: GPUs each task asks for (default: 1 when the cluster has
        GPUs, else 0: CPU tasks). cpus_per_task: CPUs each task asks for.
    max_retries: how often Ray reruns a task whose worker died or that
        raised (retry_exceptions); a task that still fails becomes its
        model's error row.
    progress: one progress bar over the work units on the driver.
    """

    # Each unit extracts its own model on the worker that runs it: the
    # driver need not hold a GPU, and a shared pass would serialise the zoo
    # on one machine.
    extracts_per_unit = True

    def __init__(self, address=None, gpus_per_task=None, cpus_per_task=1, max_retries=3, progress=True):
        self._ray = import_ray()
        for name, value in (("gpus_per_task", gpus_per_task), ("cpus_per_task", cpus_per_task)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries must be an integer >= 0, got {max_retries!r}")
        self.address = address
        self.gpus_per_task = gpus_per_task
        self.cpus_per_task = cpus_per_task
        self.max_retries = max_retries
        self.progress = progress
        self._summary = None

    def map(self, function, tasks):
        """Submit one task per unit at once; yield the rows in task order as
        they come in. Before submitting, the driver notes what its view of
        the cache holds for each unit (screen.cached_stages); a row that
        reports fewer cache hits was recomputed on a machine that does not
        see that cache (counted in summary()["cache_misses"])."""
        from tqdm.auto import tqdm

        from .screen import cached_stages

        ray = self._ray
        tasks = [dataclasses.replace(task, settings=dataclasses.replace(task.settings, progress=False))
                 for task in tasks]  # the driver's bar is the progress; workers' bars would interleave
        start = time.perf_counter()
        started_here = not ray.is_initialized()
        if started_here:
            ray.init(address=self.address or os.environ.get("RAY_ADDRESS") or "local")
        startup = time.perf_counter() - start
        try:
            gpus = self.gpus_per_task
            if gpus is None:
                gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
            expected = [cached_stages(task) for task in tasks]
            remote = ray.remote(function).options(num_cpus=self.cpus_per_task, num_gpus=gpus,
                                                  max_retries=self.max_retries, retry_exceptions=True)
            submitted = time.perf_counter()
            refs = [remote.remote(task) for task in tasks]
            position = {ref: i for i, ref in enumerate(refs)}
            rows, pending, ready = [None] * len(tasks), list(refs), 0
            with tqdm(total=len(tasks), desc="work units", unit="model", disable=not self.progress) as bar:
                try:
                    while pending:
                        done, pending = ray.wait(pending, num_returns=1)
                        for ref in done:
                            i = position[ref]
                            rows[i] = self._row(ref, tasks[i])
                            bar.update(1)
                            bar.set_postfix_str(tasks[i].name, refresh=False)
                        while ready < len(rows) and rows[ready] is not None:
                            yield rows[ready]
                            ready += 1
                finally:
                    for ref in pending:  # the screen stopped early: free the cluster
                        ray.cancel(ref)
            misses = {}
            for task, row, had in zip(tasks, rows, expected):
                missed = [stage for stage in had if stage not in row["cached"]] if not row["error"] else []
                if missed:
                    misses[task.name] = missed
            self._summary = {
                "name": "ray", "nodes": sum(node["Alive"] for node in ray.nodes()), "gpus_per_task": gpus,
                "cpus_per_task": self.cpus_per_task, "max_retries": self.max_retries, "tasks": len(tasks),
                "startup_seconds": startup, "tasks_seconds": time.perf_counter() - submitted,
                "cache_misses": sum(len(stages) for stages in misses.values()), "cache_misses_by_model": misses,
            }
        finally:
            if started_here:
                ray.shutdown()

    def _row(self, ref, task):
        try:
            return self._ray.get(ref)
        except self._ray.exceptions.RayError as error:
            # Retries exhausted (a worker that keeps dying, a node lost): the
            # model's error row; the screen goes on.
            row = empty_row(task.name)
            first_line = (str(error).strip().splitlines() or [""])[0]  # Ray's messages run to many lines
            row["error"] = f"{type(error).__name__}: {first_line} (after {self.max_retries} retries)"
            return row

    def summary(self) -> dict | None:
        """The last map(): nodes, resources per task, Ray start-up and task
        seconds, and the cache misses (stages the driver's cache held that a
        worker recomputed because its node does not see that cache)."""
        return self._summary

