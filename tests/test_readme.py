"""The README's two commands are what CI runs, the demo they start works,
and the README's demo tables hold the numbers that demo computes."""
import contextlib
import io
import json
import math
import pathlib
import platform
import re

import pytest

from ped_fast.__main__ import main
from ped_fast.evaluate import weighted_tau

ROOT = pathlib.Path(__file__).parent.parent


def readme_commands():
    text = (ROOT / "README.md").read_text()
    section = text.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)\n```", section, re.S)


def test_ci_runs_the_readme_commands():
    commands = readme_commands()
    assert len(commands) == 2
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    for command in commands:
        assert command in ci_lines, f"README command {command!r} is not a line of .ci/run"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """One `ped-fast demo` for every test that reads it: (its report
    folder, its printed lines, its exit status). In CI it runs after
    `ped-fast demo` with the same PED_FAST_CACHE, so the zoo is trained
    once; here it reuses that cache (a first run trains it, about two
    minutes on two cores)."""
    out = tmp_path_factory.mktemp("demo") / "report"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = main(["demo", "--out", str(out)])
    return out, printed.getvalue().strip().splitlines(), status


def test_demo_screens_the_zoo_and_writes_the_report(demo):
    """The README's main job."""
    out, lines, status = demo
    assert status == 0
    assert lines[0].startswith("Screening 8 checkpoints trained on this machine")
    header = lines[2].split()
    assert header[:4] == ["model", "D", "N", "steps"] and header[-2:] == ["accuracy", "seconds"]
    rows = [line.split() for line in lines[3:11]]
    assert len({row[0] for row in rows}) == 8
    assert all(int(row[3]) > 0 for row in rows)  # PED moved every model's classes
    measures = next(i for i, line in enumerate(lines) if line.startswith("ranking by"))
    ranking = [line.split()[0] for line in lines[measures + 1:measures + 9]]
    assert ranking == ["SFDA", "PED+SFDA", "LOGME", "PED+LOGME", "NLEEP", "PED+NLEEP", "GBC", "PED+GBC"]
    assert lines[-1].startswith(f"wrote results.json, results.csv, ranking.png to {out} in ")

    results = json.loads((out / "results.json").read_text())
    assert results["scorers"] == ["sfda", "logme", "nleep", "gbc"]
    assert [m["name"] for m in results["models"]] == [row[0] for row in rows]
    for model, row in zip(results["models"], rows):
        assert model["error"] is None
        assert model["steps"] == int(row[3]) and model["dim"] == int(row[1])
        # The printed table shows the numbers of results.json (4 decimals).
        assert float(row[4]) == pytest.approx(model["scores"]["sfda"]["baseline"], abs=5e-5)
        assert float(row[5]) == pytest.approx(model["scores"]["sfda"]["ped"], abs=5e-5)
    names = [m["name"] for m in results["models"]]
    # Each model's accuracy on every fine-tuning seed, so that the intervals
    # resample the seeds too.
    assert all(len(results["ground_truth"][name]) == 3 for name in names)
    accuracies = [sum(results["ground_truth"][name]) / 3 for name in names]
    assert len(set(accuracies)) == 8  # the zoo genuinely differs in how well it transfers
    assert results["evaluation"]["sfda"]["baseline"]["bootstrap"]["seeds_resampled"]
    sfda = [m["scores"]["sfda"]["baseline"] for m in results["models"]]
    assert results["evaluation"]["sfda"]["baseline"]["weighted_tau"] == pytest.approx(
        weighted_tau(sfda, accuracies), abs=1e-12)
    assert (out / "ranking.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "results.csv").read_text().count("\n") >= 9
    # The verdict says, per scorer, whether PED's difference is resolved.
    for scorer in results["scorers"]:
        line = next(line for line in lines if line.startswith(f"PED+{scorer.upper()} ranked the zoo "))
        assert "; resolved (difference " in line or "; not resolved (difference " in line


# Measured: extraction with other kernels (another CPU's vector width, MKL
# or oneDNN path) moved the demo's scores and measures by up to 1.4e-5.
# The README's numbers are checked to their printed precision plus this.
CPU_NOISE = 1e-4
_NUMBER = re.compile(r"[-+]?\d+\.\d+%?|[-+]?\d+%")


def _demo_section():
    text = (ROOT / "README.md").read_text()
    return text.split("\n## The demo\n", 1)[1].split("\n## ", 1)[0]


def _tables(section):
    """(each markdown table of `section`: a list of rows of stripped cells,
    the header first, the |---| line left out; the text after the last)."""
    tables, end = [], 0
    for block in re.finditer(r"(?:^\|.*\|[ \t]*\n?)+", section, re.M):
        rows = [[cell.strip().replace("**", "") for cell in line.strip().strip("|").split("|")]
                for line in block.group().strip().splitlines()]
        tables.append([row for row in rows if not set("".join(row)) <= set("-: ")])
        end = block.end()
    return tables, section[end:]


def _close(text, value):
    """Whether the printed number `text` is `value` to its printed
    precision: 0.123 within 0.0005 (+ CPU_NOISE), 12% within 0.5% of a
    share."""
    if text.endswith("%"):
        return value is not None and abs(float(text[:-1]) / 100 - value) <= 0.005 + CPU_NOISE
    decimals = len(text.split(".")[1]) if "." in text else 0
    return value is not None and math.isfinite(value) and \
        abs(float(text) - value) <= 0.5 * 10 ** -decimals + CPU_NOISE


def _check(cell, values, where):
    """Every number in `cell`, in order, is the matching one of `values`."""
    numbers = _NUMBER.findall(cell)
    assert len(numbers) == len(values), f"{where}: {cell!r} should show {len(values)} numbers"
    for text, value in zip(numbers, values):
        assert _close(text, value), f"README {where}: {text} but the demo computes {value}"


def _versions(section):
    found = re.search(r"computed\s+with\s+torch\s+(\S+),\s+timm\s+(\S+),\s+numpy\s+(\S+)\s+and\s+scikit-learn\s+(\S+)"
                      r"\s+on\s+([\w-]+)", section)
    assert found, "the README's demo section names the versions its numbers were computed with"
    return found.groups()


def test_readme_demo_tables_are_what_the_demo_computes(demo):
    """Every number of the README's demo tables (scores, accuracies,
    ranking measures and their intervals, PED against plain) is the
    demo's, to the precision printed; the reading after them quotes only
    numbers of the tables. The training is reproducible for the versions
    the README names (demo_zoo: pinned kernels), not across versions."""
    import numpy
    import sklearn
    import timm
    import torch

    section = _demo_section()
    running = (torch.__version__.split("+")[0], timm.__version__, numpy.__version__, sklearn.__version__,
               platform.machine().replace("_", "-"))
    if _versions(section) != running:
        pytest.skip(f"the README's demo numbers were computed with torch, timm, numpy, scikit-learn, machine "
                    f"{_versions(section)}; this is {running}, whose training gives other numbers")
    out, _, _ = demo
    results = json.loads((out / "results.json").read_text())
    rows = {m["name"]: m for m in results["models"]}
    evaluation, truth = results["evaluation"], results["ground_truth"]
    (models, rankings, comparisons), reading = _tables(section)

    header = [name.upper() for name in models[0]]
    assert header[:3] == ["MODEL", "D", "PED STEPS"] and header[-1].startswith("FINE-TUNED ACCURACY")
    assert [row[0] for row in models[1:]] == list(rows)
    for line in models[1:]:
        row = rows[line[0]]
        assert (int(line[1]), int(line[2])) == (row["dim"], row["steps"]), line[0]
        for name, cell in zip(header[3:-1], line[3:-1]):
            scorer, kind = (name[4:], "ped") if name.startswith("PED+") else (name, "baseline")
            _check(cell, [row["scores"][scorer.lower()][kind]], f"{line[0]} {name}")
        seeds = truth[line[0]]
        _check(line[-1], [sum(seeds) / len(seeds), min(seeds), max(seeds)], f"{line[0]} accuracy")

    measures = ["weighted_tau", "kendall_tau", "pearson", "rel@1", "rel@3"]
    assert [row[0] for row in rankings[1:]] == ["SFDA", "PED+SFDA", "LogME", "PED+LogME", "NLEEP", "PED+NLEEP",
                                                "GBC", "PED+GBC"]
    for line in rankings[1:]:
        name = line[0].upper()
        scorer, kind = (name[4:].lower(), "ped") if name.startswith("PED+") else (name.lower(), "baseline")
        judged = evaluation[scorer][kind]
        for measure, cell in zip(measures, line[1:], strict=True):
            _check(cell, [judged[measure], *judged["interval"][measure]], f"{line[0]} {measure}")

    assert [row[0] for row in comparisons[1:]] == ["SFDA", "LogME", "NLEEP", "GBC"]
    for line in comparisons[1:]:
        versus = evaluation[line[0].lower()]["ped_vs_baseline"]
        _check(line[1], [versus["delta"], *versus["delta_weighted_tau"]], f"{line[0]} PED - plain")
        _check(line[2], [versus["p_better"]], f"{line[0]} share of resamples")
        low, high = versus["delta_weighted_tau"]
        assert line[3] == ("yes" if low > 0 or high < 0 else "no"), f"{line[0]}: resolved?"

    cells = " ".join(cell for table in (models, rankings, comparisons) for row in table for cell in row)
    quoted = {text.lstrip("+") for text in _NUMBER.findall(cells)}
    for text in re.findall(r"(?<![\w.])[-+]?\d+\.\d+(?![\w.])", reading):
        assert text.lstrip("+") in quoted, f"the README's reading quotes {text}, which no demo table shows"


def test_ranking_example_prints_what_the_readme_shows(capsys):
    text = (ROOT / "README.md").read_text()
    code, output = re.search(r"```python\n(from ped_fast.evaluate import.*?)\n```\n```\n(.*?)\n```", text, re.S).groups()
    exec(compile(code, "README.md", "exec"), {})
    assert capsys.readouterr().out.strip() == output.strip()


def test_demo_bad_backend_is_one_line_cli_error():
    """An unknown backend, or one that cannot run the demo's CPU tensors (cuda: no GPU
    here, or CPU tensors on a GPU machine), is the caller's mistake: argparse's
    usage line and one error line naming the option, exit status 2, no
    traceback."""
    import subprocess
    import sys

    for backend, expected in (("foo", "backend must be 'auto' or one of"), ("cuda", "backend 'cuda' ")):
        done = subprocess.run([sys.executable, "-m", "ped_fast", "demo", "--backend", backend],
                              capture_output=True, text=True)
        assert done.returncode == 2
        assert "Traceback" not in done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 2 and lines[0].startswith("usage:")
        assert lines[1].startswith(f"python -m ped_fast demo: error: --backend {backend}: ") and expected in lines[1]


def test_scorer_table_lists_every_registered_scorer():
    """The README's scorer table is the registry's listing, row for row."""
    import ped_fast.scorers

    text = (ROOT / "README.md").read_text()
    table = text.split("<!-- scorer table:", 1)[1].split("\n\n", 1)[0].splitlines()[3:]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in table]
    expected = [[f"`{s.name}`", s.source, s.reads, "yes" if s.ped_applies else "no"]
                for s in ped_fast.scorers.available()]
    assert rows == expected
