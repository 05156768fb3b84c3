"""Fixtures of the benchmark suite: dataset-shaped inputs, cached per
session, on every device present, and the backends that can run there.

Run: python -m pytest bench --benchmark-only --benchmark-json=bench/results/cpu.json
then: python bench/report.py bench/results/cpu.json
"""
import functools
import os
import platform
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

import ped_fast  # noqa: E402
from ped_fast import _backends  # noqa: E402
from data import SHAPES, make_features  # noqa: E402

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

# Every backend, as the registry names them: a benchmark parametrized over
# these skips the ones that cannot run here (launcher_or_skip).
EACH_BACKEND = pytest.mark.parametrize("backend", _backends.NAMES)
# The shapes and dtypes at which the single-pass operations are timed.
_PASS_CASES = [("sun397", torch.float64), ("imagenet", torch.float32)]
EACH_PASS_CASE = pytest.mark.parametrize("shape,dtype", _PASS_CASES,
                                         ids=[f"{s}-{str(d)[6:]}" for s, d in _PASS_CASES])


def backends_for(device):
    """The backends that are available here and run on `device`."""
    out = []
    for name, status in ped_fast.available_backends().items():
        devices = _backends._module(name).DEVICES
        if status.available and (devices is None or device in devices):
            out.append(name)
    return out


def launcher_or_skip(backend, device):
    """The launcher module of `backend`, or skip the benchmark when it does
    not run on `device` here."""
    if backend not in backends_for(device):
        pytest.skip(f"{backend} does not run on {device} here")
    return _backends._module(backend)


@functools.cache
def dataset(shape, dtype, device="cpu"):
    """(X, labels, reference) for a named shape; cached: treat as read-only."""
    n, d, c = SHAPES[shape]
    x, labels, reference = make_features(n, d, c, dtype=dtype)
    return x.to(device), labels.to(device), reference.to(device)


def synchronized(device, fn):
    """fn, followed by a device synchronisation so GPU time is counted."""
    if device == "cpu":
        return fn

    def run(*args, **kwargs):
        out = fn(*args, **kwargs)
        torch.cuda.synchronize()
        return out

    return run


def device_name(device):
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def record(benchmark, **info):
    benchmark.extra_info.update(info)


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["ped_fast_devices"] = {d: device_name(d) for d in DEVICES}
    machine_info["torch"] = torch.__version__
    machine_info["backends"] = {k: v.reason for k, v in ped_fast.available_backends().items()}
