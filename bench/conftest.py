"""Fixtures of the benchmark suite: dataset-shaped inputs, cached per
session, on every device present, the backends that can run there, and the
checks of what is timed.

Run: python -m pytest bench --benchmark-only --benchmark-json=bench/results/cpu.json
then: python bench/report.py bench/results/cpu.json

The benchmarks check what they time, before timing it: each backend's
output against the reference path's (ped_fast.reference, or
ped(..., backend="reference")), computed once per case and cached, within
the tests' tolerances (TOLERANCE below). A difference fails the benchmark
with a message naming the backend, the operation, the case and the error,
and nothing is timed. The paper formulation in bench_ped.py, which runs
once, is checked against the same after its timed run (a wrong one is left
out of the saved results); bench_scorers.py checks ped_fast's scores against
the published formulations' where the run computed both.

PED_FAST_BENCH_SHAPES=tiny runs every benchmark at shapes of the same names
but small enough for the whole suite to take seconds (bench/data.py): the
timings mean nothing there, the checks still run. tests/test_bench_checks.py
uses it to show that a wrong kernel fails the suite. Default: full.
"""
import functools
import os
import platform
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

import ped_fast  # noqa: E402
from ped_fast import _backends  # noqa: E402
from data import SHAPE_SET, SHAPES, make_features  # noqa: E402

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


# The tests' tolerances (tests/conftest.py TOLERANCE), by the dtype of the
# values compared, relative to the largest |value| of the reference result:
# float64 (every backend's statistics and forces, and float64 features) 1e-10,
# summation order only; float32 (moved float32 features) 1e-5, float32
# rounding of the moved features.
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}


def _as_tensor(value):
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return torch.as_tensor(value)
    return torch.as_tensor(value, dtype=torch.float64)  # P_t and scores: float64, not torch.as_tensor's float32


def check_close(got, want, what, rtol=None, against="the reference path"):
    """Fail the benchmark unless |got - want| <= rtol x max|want| everywhere
    (rtol: TOLERANCE of want's dtype unless given). `what` names the
    backend, operation, case and output; `against` what `want` comes from."""
    got, want = _as_tensor(got), _as_tensor(want)
    if got.shape != want.shape:
        pytest.fail(f"{what}: shape {tuple(got.shape)}, {against} gives {tuple(want.shape)}", pytrace=False)
    rtol = TOLERANCE[want.dtype] if rtol is None else rtol
    want = want.to(torch.float64)
    got = got.to(device=want.device, dtype=torch.float64)
    scale = float(want.abs().max()) if want.numel() else 0.0
    err = float((got - want).abs().max()) if want.numel() else 0.0
    if not err <= rtol * scale:  # a NaN error fails too
        pytest.fail(f"{what} differs from {against}: max abs error {err:.3e} > {rtol:.0e} x {scale:.3e} "
                    f"(its largest |value|)", pytrace=False)


def check_equal(got, want, what, against="the reference path"):
    """Fail the benchmark unless got equals want (counts, step numbers)."""
    if isinstance(want, torch.Tensor):
        if not torch.equal(got, want):
            pytest.fail(f"{what} differs from {against}", pytrace=False)
    elif got != want:
        pytest.fail(f"{what} differs from {against}: {got!r} instead of {want!r}", pytrace=False)


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
    machine_info["ped_fast_bench_shapes"] = SHAPE_SET
    machine_info["torch"] = torch.__version__
    machine_info["backends"] = {k: v.reason for k, v in ped_fast.available_backends().items()}
