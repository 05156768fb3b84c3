"""The benchmarks check what they time (bench/conftest.py): at the tiny
shapes (PED_FAST_BENCH_SHAPES=tiny), `pytest bench --benchmark-only` passes
on the CPU cases as the code stands, and fails each case whose timed code
returns wrong numbers (the cpu backend's three kernels, the published
formulations), naming what differs, when a plugin loaded only here breaks
them."""
import os
import pathlib
import subprocess
import sys
import xml.etree.ElementTree as ElementTree

import pytest

import ped_fast

pytest.importorskip("pytest_benchmark")
if not ped_fast.available_backends()["cpu"].available:
    pytest.skip("the cpu backend is not built", allow_module_level=True)

ROOT = pathlib.Path(__file__).resolve().parent.parent
BENCHMARKS = ["bench_class_stats.py", "bench_integrate.py", "bench_pairwise_forces.py", "bench_ped.py",
              "bench_scorers.py"]
# The CPU cases except the reference backend's, which nothing is checked
# against (and the GPU backends', which run elsewhere).
SELECT = "not cuda and not triton and not reference"

# Loaded with -p: wraps the cpu launcher's kernels and the published
# formulations so that they return numbers off by 1e-4 relative, above even
# the float32 tolerance (1e-5). pairwise_forces is wrong in position_change
# on full evaluations and in delta on pruned ones, so that the first and the
# later step's checks each have to catch it.
PLUGIN = '''
import ped_fast.cpu

WRONG = 1 + 1e-4


def wrap(module, name, wrong):
    kernel = getattr(module, name)
    setattr(module, name, lambda *args, **kwargs: wrong(kernel(*args, **kwargs), *args, **kwargs))


def class_stats(result, *args):
    counts, mean, var = result
    return counts, mean * WRONG, var


def integrate(result, x, index, shift, out):
    return out.mul_(WRONG)


def pairwise_forces(forces, *args, bounds, **kwargs):
    if bounds.full:
        forces.position_change *= WRONG
    else:
        forces.delta.mul_(WRONG)
    return forces


def pytest_configure(config):
    import baselines_scorers  # on sys.path: bench/conftest.py put it there
    import paper

    wrap(ped_fast.cpu, "class_stats", class_stats)
    wrap(ped_fast.cpu, "integrate", integrate)
    wrap(ped_fast.cpu, "pairwise_forces", pairwise_forces)
    wrap(paper, "ped_paper", lambda result, *args: (result[0] * WRONG,) + result[1:])
    wrap(baselines_scorers, "sfda_published", lambda score, *args: score * WRONG)
    wrap(baselines_scorers, "logme_published", lambda score, *args: score * WRONG)
'''

# Each case whose timed code the plugin breaks, and what its failure must say.
# The ped_fast scorers differ from the published ones on both counts: they
# also run on the cpu backend's class_stats.
REFERENCE, PUBLISHED = "differs from the reference path", "score differs from the published formulation"
BROKEN = {
    "test_class_stats[cpu-sun397-float64-cpu]": ["cpu class_stats at sun397 float64 on cpu: mean " + REFERENCE],
    "test_class_stats[cpu-imagenet-float32-cpu]": ["cpu class_stats at imagenet float32 on cpu: mean " + REFERENCE],
    "test_integrate_inplace[cpu-sun397-float64-cpu]": ["cpu integrate at sun397 float64 on cpu " + REFERENCE],
    "test_integrate_inplace[cpu-imagenet-float32-cpu]": ["cpu integrate at imagenet float32 on cpu " + REFERENCE],
    "test_pairwise_forces[cpu-first-cpu]": ["cpu pairwise_forces, first step, ", "position_change " + REFERENCE],
    "test_pairwise_forces[cpu-later-cpu]": ["cpu pairwise_forces, later step, ", "delta " + REFERENCE],
    "test_ped[sun397-float64-cpu-cpu]": ["cpu ped at sun397 float64 on cpu: ", REFERENCE],
    "test_ped[imagenet-float32-cpu-cpu-inplace]": ["cpu ped at imagenet float32 on cpu: ", REFERENCE],
    "test_ped[sun397-float64-cpu-paper]": ["paper ped at sun397 float64 on cpu: features " + REFERENCE],
    "test_ped[imagenet-float32-cpu-paper-inplace]": ["paper ped at imagenet float32 on cpu: features " + REFERENCE],
    "test_sfda[ped_fast-sun397-float64-cpu]": ["ped_fast sfda at sun397 float64 on cpu: " + PUBLISHED],
    "test_ped_sfda[ped_fast-sun397-float64-cpu]": ["ped_fast ped+sfda at sun397 float64 on cpu: " + PUBLISHED],
    "test_logme[ped_fast-cpu]": ["ped_fast logme at sun397 float64 on cpu: " + PUBLISHED],
    # The scorers whose statistics come from the (broken) cpu launcher.
    "test_new_scorer[ped_fast-hscore-cpu]": ["ped_fast hscore at sun397 float64 on cpu: " + PUBLISHED],
    "test_new_scorer[ped_fast-reg_hscore-cpu]": ["ped_fast reg_hscore at sun397 float64 on cpu: " + PUBLISHED],
    "test_new_scorer[ped_fast-transrate-cpu]": ["ped_fast transrate at sun397 float64 on cpu: " + PUBLISHED],
}


def start(tmp_path, name, plugin=None):
    """`pytest bench --benchmark-only` on the selected benchmarks at the tiny
    shapes, with `plugin` (source) loaded; returns (process, junit xml path)."""
    run_dir = tmp_path / name
    run_dir.mkdir()
    env = dict(os.environ, PED_FAST_BENCH_SHAPES="tiny")
    command = [sys.executable, "-m", "pytest", *(f"bench/{f}" for f in BENCHMARKS), "--benchmark-only", "-q",
               "-p", "no:cacheprovider", "-k", SELECT, f"--junitxml={run_dir / 'results.xml'}"]
    if plugin is not None:
        (run_dir / "broken_kernels.py").write_text(plugin)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(run_dir), env.get("PYTHONPATH")]))
        command += ["-p", "broken_kernels"]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return process, run_dir / "results.xml"


def outcomes(process, results):
    """(exit status, output, {test name: None when passed, else the
    failure or skip message})."""
    output, _ = process.communicate(timeout=600)
    assert results.exists(), f"pytest wrote no results (exit {process.returncode}):\n{output[-3000:]}"
    cases = {}
    for case in ElementTree.parse(results).iter("testcase"):
        problems = [child.get("message", "") for child in case if child.tag in ("failure", "error", "skipped")]
        cases[case.get("name")] = problems[0] if problems else None
    return process.returncode, output, cases


def test_benchmarks_fail_when_what_they_time_is_wrong(tmp_path):
    # Both runs at once: each is mostly waiting on imports and one core.
    as_is = start(tmp_path, "as_is")
    broken = start(tmp_path, "broken", PLUGIN)

    code, output, cases = outcomes(*as_is)
    assert code == 0, f"the benchmarks fail on the code as it stands:\n{output[-3000:]}"
    not_passed = {name: message for name, message in cases.items() if message is not None}
    assert not not_passed, f"did not pass: {not_passed}"
    assert set(BROKEN) <= set(cases), f"not run: {sorted(set(BROKEN) - set(cases))}"

    code, output, broken_cases = outcomes(*broken)
    assert code == 1, f"exit status {code} with wrong kernels:\n{output[-3000:]}"
    assert broken_cases.keys() == cases.keys()
    failed = {name: message for name, message in broken_cases.items() if message is not None}
    assert failed.keys() == BROKEN.keys(), (f"failed but should not: {sorted(failed.keys() - BROKEN.keys())}; "
                                            f"passed but should not: {sorted(BROKEN.keys() - failed.keys())}")
    for name, expected in BROKEN.items():
        for words in expected:
            assert words in failed[name], f"{name}: {failed[name]!r} does not say {words!r}"
