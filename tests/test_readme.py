"""The README's two commands are what CI runs, and the demo they start works."""
import json
import pathlib
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


def test_demo_screens_the_zoo_and_writes_the_report(tmp_path, capsys):
    """The README's main job. In CI it runs after `ped-fast demo` with the same
    PED_FAST_CACHE, so the zoo is trained once; here it reuses that cache (a
    first run trains it, about two minutes on two cores)."""
    out = tmp_path / "report"
    assert main(["demo", "--out", str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
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
    accuracies = [results["ground_truth"][name] for name in names]
    assert len(set(accuracies)) == 8  # the zoo genuinely differs in how well it transfers
    sfda = [m["scores"]["sfda"]["baseline"] for m in results["models"]]
    assert results["evaluation"]["sfda"]["baseline"]["weighted_tau"] == pytest.approx(
        weighted_tau(sfda, accuracies), abs=1e-12)
    assert (out / "ranking.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "results.csv").read_text().count("\n") >= 9


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
