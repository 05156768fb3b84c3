"""What a fresh install needs: the tests run with the install requirements
and the test extra alone, and CI proves it in a new virtual environment."""
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).parent.parent


def test_build_cuda_loads_without_pybind11():
    """pybind11 is a build requirement only: a test environment made by
    `pip install -e '.[test]'` need not have it, and tests load build_cuda.py
    to find nvcc."""
    code = (
        "import importlib.util, sys\n"
        "sys.modules['pybind11'] = None  # import pybind11 now raises ImportError\n"
        f"spec = importlib.util.spec_from_file_location('build_cuda', {str(ROOT / 'build_cuda.py')!r})\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
        "module.find_nvcc()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_ci_builds_a_new_virtual_environment():
    """A green CI on a machine where everything was once installed by hand
    hides a missing install step; .ci/run must make a new venv every run and
    run the README's commands inside it."""
    script = (ROOT / ".ci" / "run").read_text()
    assert "-m venv" in script
    venv_line = next(i for i, line in enumerate(script.splitlines()) if "-m venv" in line)
    activate_line = next(i for i, line in enumerate(script.splitlines()) if "/bin/activate" in line)
    first_pip = next(i for i, line in enumerate(script.splitlines()) if line.startswith("pip install"))
    assert venv_line < activate_line < first_pip
