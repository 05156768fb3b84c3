"""The README's two commands are what CI runs, and the demo they start works."""
import pathlib
import re

from ped_fast.__main__ import main

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


def test_demo_ranks_every_model(capsys):
    assert main(["demo", "--backend", "cpu"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("Ranking 6 feature extractors of scikit-learn's digits (1797 images, 10 classes)")
    rows = [line.split() for line in lines[2:8]]
    assert [row[0] for row in rows] == [
        "pixels-64", "pooled-16", "pooled-4", "random-relu-256", "random-relu-24", "noisy-pixels-64"]
    assert all(int(row[2]) > 0 for row in rows)  # PED moved every model's classes
    assert all(0 < float(v) <= 1 for row in rows for v in row[3:6])  # SFDA, PED+SFDA, probe accuracy
    assert [line.split()[0] for line in lines[-2:]] == ["SFDA", "PED+SFDA"]


def test_ranking_example_prints_what_the_readme_shows(capsys):
    text = (ROOT / "README.md").read_text()
    code, output = re.search(r"```python\n(from ped_fast.evaluate import.*?)\n```\n```\n(.*?)\n```", text, re.S).groups()
    exec(compile(code, "README.md", "exec"), {})
    assert capsys.readouterr().out.strip() == output.strip()
