"""Shared test data and the backend matrix.

Tolerances (relative to the reference path, float64 statistics):
- float64 inputs: 1e-10. The backends differ only in summation order
  (shifted one-pass sums vs two-pass centred sums, pairwise differences vs
  rowsum(W)*mu - W@mu), worth a few ulps per element, amplified by at most
  6 steps of the dynamics.
- float32 inputs: 1e-5. The statistics are still accumulated in float64;
  what differs is float32 rounding of the moved features and of the shift
  (2^-24 ~ 6e-8 relative per rounding) and of the inputs to the float64 sums.
"""
import importlib
import importlib.util
import json
import os
import pathlib
import sys

import numpy as np
import pytest
import torch

# Without a GPU the Triton kernels can only run through Triton's interpreter,
# which must be chosen before triton is first imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import ped_fast

_ROOT = pathlib.Path(__file__).resolve().parent.parent


def import_installed_kernels():
    """The repository's top-level kernels/ folder (the source of
    ped_fast.kernels) shadows the `kernels` package that transformers 5
    imports when the repository root is on sys.path, as `python -m pytest`
    run there puts it. Import the installed one with the root left off
    sys.path, before any test module imports transformers (the
    transformer-ranker adapter, hf: model specs); transformers then finds it
    in sys.modules."""
    spec = importlib.util.find_spec("kernels")
    if spec is None or spec.origin is None or pathlib.Path(spec.origin).resolve().parent != _ROOT / "kernels":
        return
    saved = list(sys.path)
    sys.path[:] = [entry for entry in sys.path if pathlib.Path(entry or ".").resolve() != _ROOT]
    try:
        if importlib.util.find_spec("kernels") is not None:
            importlib.import_module("kernels")
    finally:
        sys.path[:] = saved


import_installed_kernels()

DATA = pathlib.Path(__file__).parent / "data"
GOLDEN = json.loads((DATA / "expected.json").read_text())

TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}
DTYPES = [torch.float64, torch.float32]
_CPU = ped_fast.available_backends()["cpu"]
# Backends that run on CPU tensors besides the reference path. The GPU
# backends have their own test modules (test_triton.py, test_cuda.py).
FAST_BACKENDS = [pytest.param("cpu", marks=pytest.mark.skipif(not _CPU.available, reason=f"cpu: {_CPU.reason}"))]
BACKENDS = [pytest.param("reference")] + FAST_BACKENDS


def gpu_test_outcome(available, gpu_expected, opted_out=False):
    """What a test of a GPU backend (cuda, triton) does: "run", "skip" or "fail".

    available: the backend's status() says it can run here (for triton that
        includes its interpreter on a machine without a GPU);
    gpu_expected: torch sees a CUDA device, or PED_FAST_EXPECT_GPU=1 says
        this machine has one (bench/gpu_check.sh sets it, so that a CPU-only
        torch on a GPU machine fails instead of skipping everything);
    opted_out: the backend was left out on purpose (PED_FAST_NO_CUDA=1).

    On a GPU machine a backend that cannot run is a failure whose message is
    the backend's reason (an extension whose CUDA runtime cannot use the
    driver, an extension not built for want of nvcc, triton missing), not a
    skip that would read as a pass.
    """
    if available:
        return "run"
    if gpu_expected and not opted_out:
        return "fail"
    return "skip"


def gpu_expected():
    return torch.cuda.is_available() or os.environ.get("PED_FAST_EXPECT_GPU", "") not in ("", "0")


def require_backend(name):
    """Skip or fail the calling test as gpu_test_outcome says for backend `name`."""
    status = ped_fast.available_backends()[name]
    opted_out = name == "cuda" and os.environ.get("PED_FAST_NO_CUDA", "") not in ("", "0")
    outcome = gpu_test_outcome(status.available, gpu_expected(), opted_out)
    if outcome == "skip":
        pytest.skip(f"{name} backend unavailable: {status.reason}")
    if outcome == "fail":
        pytest.fail(f"a GPU is expected here (torch.cuda.is_available() is {torch.cuda.is_available()}, "
                    f"PED_FAST_EXPECT_GPU={os.environ.get('PED_FAST_EXPECT_GPU')!r}) but the {name} backend cannot "
                    f"run: {status.reason}", pytrace=False)


def golden_case(name):
    data = np.load(DATA / f"{name}.npz")
    return {key: data[key] for key in data.files}, GOLDEN[name]


def make_classes(n, d, c, *, dtype=torch.float64, seed=0, spread=1.0, separation=0.5):
    """Features of c overlapping Gaussian classes (every class present)."""
    g = torch.Generator().manual_seed(seed)
    centers = separation * torch.randn(c, d, generator=g, dtype=torch.float64)
    labels = torch.cat([torch.arange(c), torch.randint(0, c, (n - c,), generator=g)]) if n >= c else torch.arange(n)
    labels = labels[torch.randperm(labels.shape[0], generator=g)]
    x = centers[labels] + spread * torch.randn(labels.shape[0], d, generator=g, dtype=torch.float64)
    return x.to(dtype), labels


def assert_close(actual, expected, rtol, what=""):
    actual = torch.as_tensor(actual, dtype=torch.float64)
    expected = torch.as_tensor(expected, dtype=torch.float64)
    scale = max(float(expected.abs().max()) if expected.numel() else 0.0, 1e-300)
    err = float((actual - expected).abs().max()) if expected.numel() else 0.0
    assert err <= rtol * scale, f"{what}: max abs error {err:.3e} > {rtol:.1e} x {scale:.3e}"


def means_and_radii(c, d, seed, separation=1.0):
    """C x D float64 class means and C radii for pairwise_forces tests."""
    g = torch.Generator().manual_seed(seed)
    mu = separation * torch.randn(c, d, generator=g, dtype=torch.float64)
    # Radii around the typical distance sqrt(2d): some pairs overlap, some not.
    radius = separation * d**0.5 * (0.3 + 2.2 * torch.rand(c, generator=g, dtype=torch.float64))
    return mu, radius


def run_steps(launcher, mu, radius, steps, **params):
    """Apply `steps` steps unconditionally, as the driver does when accepted."""
    mu = mu.clone()
    bounds = launcher.make_bounds(mu.shape[0], mu.device)
    out = []
    for _ in range(steps):
        forces = launcher.pairwise_forces(mu, radius, bounds=bounds, **params)
        out.append(forces)
        mu += forces.delta
        if bounds is not None:
            bounds.advance(forces.delta)
    return out


def bench_module(name):
    """bench/NAME.py loaded by path (bench/ is no package), e.g. the
    transcriptions of the published scorers that the tests compare with."""
    import importlib.util

    path = pathlib.Path(__file__).parent.parent / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def sfda_scores(monkeypatch):
    """The `consume` flag of every SFDAResiduals.score call the test makes:
    one entry per SFDA score computed (ped_sweep and the screen's grid share
    SFDA's work between points, and count on fewer calls)."""
    sfda_module = importlib.import_module("ped_fast.scorers.sfda")
    calls = []
    score = sfda_module.SFDAResiduals.score

    def counted(self, means, *, consume):
        calls.append(consume)
        return score(self, means, consume=consume)

    monkeypatch.setattr(sfda_module.SFDAResiduals, "score", counted)
    return calls
