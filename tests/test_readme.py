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
