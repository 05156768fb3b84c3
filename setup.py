"""Build ped_fast and its CPU extension ped_fast._C (pybind11 + OpenMP).

Environment:
  PED_FAST_CPU_FLAGS  extra compiler flags for the CPU extension. By default
                      AVX2/FMA code is generated when the building machine has
                      both (the extension is built where it runs, like
                      `pip install -e .`); set PED_FAST_CPU_FLAGS=-mno-avx2 for
                      a binary that must run on older x86 CPUs.
"""
import os
import platform
import shlex
import sys

import pybind11
from setuptools import Extension, setup

# PEP 517 backends do not put the project directory on sys.path.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from build_cuda import BuildExt, cuda_extensions  # noqa: E402


def cpu_flags():
    # -fno-trapping-math and -fno-math-errno (as torch builds with) change no
    # value: the kernels never read floating-point exception flags or errno,
    # and without them GCC will not vectorise a loop holding a comparison
    # (own_class_probability's exp) or inline sqrt.
    flags = ["-O3", "-std=c++17", "-fopenmp", "-fvisibility=hidden", "-fno-trapping-math", "-fno-math-errno"]
    if platform.machine() in ("x86_64", "AMD64"):
        try:
            cpuinfo = open("/proc/cpuinfo").read().split()
        except OSError:
            cpuinfo = []
        if "avx2" in cpuinfo and "fma" in cpuinfo:
            flags += ["-mavx2", "-mfma"]
    return flags + shlex.split(os.environ.get("PED_FAST_CPU_FLAGS", ""))


cpu_extension = Extension(
    "ped_fast._C",
    sources=[
        "csrc/cpu/bindings.cpp",
        "csrc/cpu/class_stats.cpp",
        "csrc/cpu/pairwise_forces.cpp",
        "csrc/cpu/integrate.cpp",
        "csrc/cpu/own_class_probability.cpp",
    ],
    include_dirs=[pybind11.get_include(), "csrc"],
    depends=["csrc/ped_math.h", "csrc/cpu/ops.h"],
    extra_compile_args=cpu_flags(),
    extra_link_args=["-fopenmp"],
    language="c++",
)

setup(
    name="ped_fast",
    version="0.1.0",
    description="Model transferability ranking with PED (ICCV 2023): fused CPU/GPU kernels",
    packages=["ped_fast", "ped_fast.kernels", "ped_fast.scorers", "ped_fast.zoo", "ped_fast.integrations"],
    package_dir={"ped_fast.kernels": "kernels"},
    package_data={"ped_fast": ["data/*.json", "py.typed"]},
    python_requires=">=3.10",
    # torch and torchvision: the CUDA build by default from PyPI (several GB);
    # README says how to choose the CPU-only one. timm, pillow and
    # safetensors serve the model-zoo screening (ped_fast.zoo); tqdm its
    # progress bars, matplotlib its plot.
    install_requires=[
        "numpy",
        "scipy",
        "scikit-learn",
        "torch",
        "torchvision",
        "timm>=1.0",
        "pillow",
        "safetensors",
        "tqdm",
        "matplotlib",
        # filelock: the screening cache's per-entry locks (ped_fast.zoo.cache),
        # so that processes sharing a cache compute each entry once and a
        # sweep tells a live writer's temporaries from a dead one's. 3.12
        # or later: holds per thread (thread_local) and acquire(blocking=...).
        "filelock>=3.12",
    ],
    # datasets: Hugging Face datasets as image sets (ped_fast.zoo.datasets,
    # the only module that imports it; 5.2 is the version it is tested
    # with); in test too, so that CI runs its tests.
    # ray: screening on a Ray cluster (ped_fast.zoo.ray_executor, the only
    # module that imports it); in test too, so that CI runs the Ray tests.
    # transformer-ranker: PED before its estimators
    # (ped_fast.integrations.transformer_ranker, the only module that
    # imports it; 0.2 is the version it is tested with); in test too, so
    # that CI runs its tests. tomli: Python 3.10's TOML reader (3.11 has
    # tomllib), with which tests/test_scorer_plugins.py reads its plugin
    # packages' pyproject.toml. mypy: .ci/run's type check ([tool.mypy] in
    # pyproject.toml); py.typed tells type checkers the package is annotated.
    # hf: transformers vision backbones as models (hf: specs, in-memory
    # transformers models; ped_fast.zoo.sources imports it only for them;
    # tested with 5.x); in test too, so that CI runs their tests.
    extras_require={"test": ["pytest", "pytest-benchmark", "mypy>=1.10", "ray>=2.9", "transformer-ranker>=0.2",
                             "datasets>=5.2", "transformers>=5", "tomli; python_version < '3.11'"],
                    "ray": ["ray>=2.9"], "transformer-ranker": ["transformer-ranker>=0.2"],
                    "datasets": ["datasets>=5.2"], "hf": ["transformers>=5"]},
    entry_points={"console_scripts": ["ped-fast = ped_fast.__main__:main"]},
    ext_modules=[cpu_extension, *cuda_extensions()],
    cmdclass={"build_ext": BuildExt},
    zip_safe=False,
)
