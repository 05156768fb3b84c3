"""Apply each curated mutation (mutation/mutations.py) to a temporary copy of
the repository, run the tests it names there, and fail listing every
mutation that survived, could not be applied, or could not be tested.

    python mutation/run.py [--jobs N] [--only ID[,ID...]] [--timeout SECONDS] [--list]

The copy is the working tree's files that git tracks or would track (git
ls-files: committed, staged and untracked-but-not-ignored), plus the
compiled extensions ped_fast/_C*.so and ped_fast/_cuda*.so, which git
ignores. The tests run there with `python -m pytest -x -q -p no:cacheprovider`,
with the copy first on PYTHONPATH so that its ped_fast, not the editable
install's, is imported (checked before any mutation), and without bytecode
files (PYTHONDONTWRITEBYTECODE), so that a mutation that keeps a file's size
can never be read back from a stale .pyc after it is undone.

First every named test runs once on the unmutated copy: it must pass, or a
"killed" would mean nothing. Then each mutation: exit status 1 (a test
failed) or 2 (collection failed, e.g. the mutant does not import) is killed;
0 is survived; a run past --timeout is killed (reported as such); anything
else (4: a named test does not exist, 5: nothing collected) is an error. A
mutation whose original text is not found exactly once in its file is "not
applicable": the code changed under it and the entry must be re-anchored.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from mutations import MUTATIONS  # noqa: E402 (the list lives next to this script)

EXTENSIONS = ("ped_fast/_C*.so", "ped_fast/_cuda*.so")
# setup.py's package_dir: packages whose source lies outside ped_fast/. The
# editable install maps them to the original tree, so the copy gets a link
# in their place, found first on PYTHONPATH.
PACKAGE_DIRS = {"ped_fast/kernels": "kernels"}
PYTEST = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider"]
FIELDS = ("id", "file", "original", "replacement", "tests", "bug")
# pytest's exit statuses: tests failed, run interrupted (collection errors).
KILLED = (1, 2)


def check_list(mutations):
    """Each entry has exactly FIELDS, ids are unique, tests is non-empty."""
    ids = [m.get("id") for m in mutations]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise SystemExit(f"mutation/mutations.py: duplicate ids {duplicates}")
    for m in mutations:
        if set(m) != set(FIELDS):
            raise SystemExit(f"mutation/mutations.py: entry {m.get('id')!r} must have the fields {FIELDS}, "
                             f"got {tuple(m)}")
        if not m["tests"] or not all(isinstance(t, str) and t for t in m["tests"]):
            raise SystemExit(f"mutation/mutations.py: entry {m['id']!r} names no tests")
        if m["original"] == m["replacement"]:
            raise SystemExit(f"mutation/mutations.py: entry {m['id']!r} replaces its text by itself")


def repository_files(root):
    """Paths (relative) of the working tree's files git tracks or would track."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                            check=True, capture_output=True).stdout.decode().split("\0")
    return sorted({p for p in listed if p and (root / p).is_file()})


def make_copy(root, files, destination):
    for relative in files:
        target = destination / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / relative, target)
    extensions = [p for pattern in EXTENSIONS for p in root.glob(pattern)]
    for path in extensions:
        shutil.copy2(path, destination / path.relative_to(root))
    for package, source in PACKAGE_DIRS.items():
        (destination / package).symlink_to(destination / source, target_is_directory=True)
    return extensions


def environment(copy):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(copy)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["PED_FAST_CACHE"] = str(copy / ".mutation-cache")  # no test touches the user's cache
    return env


def check_imports_copy(copy):
    """The copy's ped_fast, its packages from PACKAGE_DIRS and its C++
    extension (when built) are the ones imported there."""
    modules = ["ped_fast._C"] + [package.replace("/", ".") for package in PACKAGE_DIRS]
    probe = ("import importlib.util, sys, ped_fast; print(ped_fast.__file__)\n"
             "for name in sys.argv[1:]:\n"
             "    spec = importlib.util.find_spec(name); print(spec.origin if spec else '')")
    out = subprocess.run([sys.executable, "-c", probe, *modules], cwd=copy, env=environment(copy),
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"the copy's ped_fast does not import:\n{out.stderr}")
    for path in filter(None, out.stdout.splitlines()):
        if not Path(path).resolve().is_relative_to(copy.resolve()):
            raise SystemExit(f"the copy imports {path}, outside the copy {copy}: the mutations would not be tested")


def run_tests(copy, tests, timeout):
    """(pytest exit status or "timeout", seconds, last lines of output)."""
    start = time.perf_counter()
    try:
        out = subprocess.run(PYTEST + list(tests), cwd=copy, env=environment(copy), capture_output=True, text=True,
                             timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", time.perf_counter() - start, ""
    tail = "\n".join((out.stdout + out.stderr).strip().splitlines()[-15:])
    return out.returncode, time.perf_counter() - start, tail


def unique_tests(mutations):
    """Every named test once, in order; node ids inside a file also named
    whole are dropped (pytest would run them twice)."""
    named = list(dict.fromkeys(t for m in mutations for t in m["tests"]))
    files = {t for t in named if "::" not in t}
    return [t for t in named if "::" not in t or t.split("::")[0] not in files]


def applicability(copy, mutation):
    """None when the original text occurs exactly once, else why not."""
    path = copy / mutation["file"]
    if not path.is_file():
        return f"{mutation['file']} does not exist"
    count = path.read_text().count(mutation["original"])
    return None if count == 1 else f"its original text occurs {count} times in {mutation['file']} (must be once)"


def mutate_and_test(copy, mutation, timeout):
    path = copy / mutation["file"]
    text = path.read_text()
    path.write_text(text.replace(mutation["original"], mutation["replacement"]))
    try:
        status, seconds, tail = run_tests(copy, mutation["tests"], timeout)
    finally:
        path.write_text(text)
    if status == "timeout" or status in KILLED:
        verdict = "killed" if status != "timeout" else "killed (timeout)"
    elif status == 0:
        verdict = "SURVIVED"
    else:
        verdict = f"ERROR (pytest exit status {status})"
    return verdict, seconds, tail


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                        help="mutations tested at once, each in its own copy (default: 2 or the core count)")
    parser.add_argument("--only", help="comma-separated mutation ids to run (default: all)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per pytest run (default 600)")
    parser.add_argument("--list", action="store_true", help="print the mutations and exit")
    args = parser.parse_args(argv)
    check_list(MUTATIONS)
    mutations = MUTATIONS
    if args.only:
        wanted = [i.strip() for i in args.only.split(",") if i.strip()]
        unknown = [i for i in wanted if i not in {m["id"] for m in MUTATIONS}]
        if unknown:
            raise SystemExit(f"--only: unknown mutation ids {unknown}")
        mutations = [m for m in MUTATIONS if m["id"] in wanted]
    if args.list:
        for m in mutations:
            print(f"{m['id']:40} {m['file']:32} {m['bug']}")
        return 0
    if args.jobs < 1:
        raise SystemExit(f"--jobs must be >= 1, got {args.jobs}")

    started = time.perf_counter()
    files = repository_files(ROOT)
    with tempfile.TemporaryDirectory(prefix="ped-fast-mutation-") as temporary:
        jobs = min(args.jobs, max(1, len(mutations)))
        copies = [Path(temporary) / f"copy{i}" for i in range(jobs)]
        for copy in copies:
            extensions = make_copy(ROOT, files, copy)
            check_imports_copy(copy)
        print(f"mutation: {len(mutations)} mutations, {len(files)} files copied (+ {len(extensions)} compiled "
              f"extensions) into {jobs} copies under {temporary}", flush=True)

        problems = {}
        for m in mutations:
            reason = applicability(copies[0], m)
            if reason is not None:
                problems[m["id"]] = f"NOT APPLICABLE: {reason}"
                print(f"  NOT APPLICABLE  {m['id']}: {reason}", flush=True)
        runnable = [m for m in mutations if m["id"] not in problems]

        tests = unique_tests(runnable)
        status, seconds, tail = run_tests(copies[0], tests, args.timeout * 3)
        print(f"mutation: the {len(tests)} named tests on the unmutated copy: "
              f"{'pass' if status == 0 else f'FAIL (status {status})'} ({seconds:.0f} s)", flush=True)
        if status != 0:
            print(tail)
            why = {4: "a named test does not exist", 5: "no test was collected",
                   "timeout": "they ran past 3 x --timeout"}
            print(f"mutation: FAILED: the named tests must pass without a mutation"
                  f"{': ' + why[status] if status in why else ''} (see above)")
            return 1

        free = list(copies)
        with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
            def task(mutation):
                copy = free.pop()
                try:
                    return mutate_and_test(copy, mutation, args.timeout)
                finally:
                    free.append(copy)

            futures = {pool.submit(task, m): m for m in runnable}
            for future in concurrent.futures.as_completed(futures):
                m = futures[future]
                verdict, seconds, tail = future.result()
                print(f"  {verdict:16} {m['id']} ({m['file']}; {seconds:.0f} s)", flush=True)
                if not verdict.startswith("killed"):
                    problems[m["id"]] = f"{verdict}: {m['bug']}; tests {' '.join(m['tests'])}"
                    if tail:
                        print("\n".join("      " + line for line in tail.splitlines()), flush=True)

    # The load average says how much of the time other work on the machine took.
    took = (f"{(time.perf_counter() - started) / 60:.1f} min, 5-minute load average {os.getloadavg()[1]:.1f} on "
            f"{os.cpu_count()} cores")
    if problems:
        print(f"mutation: FAILED ({took}): {len(problems)} of {len(mutations)} mutations not killed:")
        for mutation_id, why in problems.items():
            print(f"  - {mutation_id}: {why}")
        return 1
    print(f"mutation: all {len(mutations)} mutations killed ({took})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
