"""The optional CUDA extension ped_fast._cuda, for setup.py.

Built when nvcc is found (CUDA_HOME, CUDA_PATH, then PATH), whether or not
this machine has a GPU; skipped with one printed line otherwise. Once nvcc is
found, a compile or link error fails the build: a CUDA backend that silently
went missing would only be noticed on a GPU.

The .cu files are compiled by nvcc, the pybind11 bindings by the ordinary C++
compiler, and the module links the CUDA runtime statically (libcudart_static),
so it needs no libcudart at run time, only a driver new enough for the toolkit.

Environment:
  PED_FAST_NO_CUDA=1      skip the CUDA extension even when nvcc is found.
  PED_FAST_CUDA_ARCH      GPU architectures, e.g. "90" or "8.0;9.0+PTX"
                          (separated by spaces, commas or semicolons; "+PTX"
                          also embeds PTX for newer GPUs). Default "80;90+PTX":
                          A100 and H100 code, and PTX that later GPUs compile.
  PED_FAST_NVCC_FLAGS     extra nvcc flags.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor

from setuptools import Extension
from setuptools.command.build_ext import build_ext

DEFAULT_ARCH = "80;90+PTX"
SOURCES = [
    "csrc/cuda/bindings.cpp",
    "csrc/cuda/class_stats.cu",
    "csrc/cuda/pairwise_forces.cu",
    "csrc/cuda/integrate.cu",
]
HEADERS = ["csrc/ped_math.h", "csrc/cuda/ops.h", "csrc/cpu/ops.h"]


def find_nvcc():
    """Path of nvcc, or None."""
    for variable in ("CUDA_HOME", "CUDA_PATH"):
        root = os.environ.get(variable)
        if root:
            candidate = os.path.join(root, "bin", "nvcc")
            if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
                return candidate
    return shutil.which("nvcc")


def cuda_dirs(nvcc):
    """(include dirs, library dir holding libcudart_static.a), as nvcc itself
    reports them: nvcc may be a wrapper script outside the toolkit."""
    probe = subprocess.run([nvcc, "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull],
                           capture_output=True, text=True)
    report = probe.stdout + probe.stderr
    includes, libraries = [], []
    for line in report.splitlines():
        match = re.match(r"#\$ (INCLUDES|SYSTEM_INCLUDES|LIBRARIES)=(.*)", line)
        if match:
            words = [w for w in shlex.split(match.group(2)) if w != "-isystem"]
            dirs = [w[2:] if w.startswith(("-I", "-L")) else w for w in words]
            (libraries if match.group(1) == "LIBRARIES" else includes).extend(os.path.normpath(d) for d in dirs)
    root = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
    includes.append(os.path.join(root, "include"))
    libraries += [os.path.join(root, "lib64"), os.path.join(root, "lib"),
                  os.path.join(root, "targets", "x86_64-linux", "lib")]
    include_dirs = [d for d in dict.fromkeys(includes) if os.path.isfile(os.path.join(d, "cuda_runtime.h"))]
    library_dirs = [d for d in dict.fromkeys(libraries) if os.path.isfile(os.path.join(d, "libcudart_static.a"))]
    if not include_dirs or not library_dirs:
        raise RuntimeError(
            f"ped_fast: found nvcc at {nvcc} but not its cuda_runtime.h and libcudart_static.a "
            f"(looked in {sorted(set(includes))} and {sorted(set(libraries))}); fix the CUDA install, "
            "or set PED_FAST_NO_CUDA=1 to build without the CUDA extension"
        )
    return include_dirs[:1], library_dirs[0]


def gencode_flags(spec):
    """nvcc -gencode flags for an architecture list such as "80;90+PTX"."""
    flags = []
    for entry in re.split(r"[\s,;]+", spec.strip()):
        if not entry:
            continue
        ptx = entry.upper().endswith("+PTX")
        arch = entry[:-4] if ptx else entry
        arch = arch.replace(".", "").replace("sm_", "").replace("compute_", "")
        if not re.fullmatch(r"\d{2,3}[af]?", arch):
            raise ValueError(f"PED_FAST_CUDA_ARCH: cannot read {entry!r}; expected e.g. '90', '8.0' or '90+PTX'")
        flags.append(f"-gencode=arch=compute_{arch},code=sm_{arch}")
        if ptx:
            flags.append(f"-gencode=arch=compute_{arch},code=compute_{arch}")
    if not flags:
        raise ValueError("PED_FAST_CUDA_ARCH is empty")
    return flags


def cuda_extensions():
    """[the ped_fast._cuda Extension], or [] when nvcc is missing or the
    build is turned off (one printed line says which)."""
    if os.environ.get("PED_FAST_NO_CUDA", "") not in ("", "0"):
        print("ped_fast: PED_FAST_NO_CUDA is set; skipping the CUDA extension")
        return []
    nvcc = find_nvcc()
    if nvcc is None:
        print("ped_fast: nvcc not found; skipping the CUDA extension")
        return []
    include_dirs, library_dir = cuda_dirs(nvcc)
    # Imported here, not at the top: pybind11 is a build requirement only, and
    # the tests load this module (find_nvcc) in environments without it.
    import pybind11

    extension = Extension(
        "ped_fast._cuda",
        sources=list(SOURCES),
        include_dirs=[pybind11.get_include(), "csrc", *include_dirs],
        depends=list(HEADERS),
        extra_compile_args=["-O3", "-std=c++17", "-fvisibility=hidden"],
        library_dirs=[library_dir],
        # Static runtime: it needs libdl, librt and pthreads from the system,
        # and its symbols stay private, so they can never bind to (or stand
        # in for) torch's own libcudart in the same process.
        libraries=["cudart_static", "dl", "rt", "pthread"],
        extra_link_args=["-Wl,--exclude-libs,libcudart_static.a"],
        language="c++",
    )
    extension.nvcc = nvcc
    print(f"ped_fast: building the CUDA extension with {nvcc} for {os.environ.get('PED_FAST_CUDA_ARCH') or DEFAULT_ARCH}")
    return [extension]


class BuildExt(build_ext):
    """build_ext that compiles an extension's .cu sources with nvcc (in
    parallel) and links their objects with the rest."""

    def build_extension(self, ext):
        cu_sources = [s for s in ext.sources if s.endswith(".cu")]
        if cu_sources:
            objects = self._nvcc_compile(ext, cu_sources)
            ext.sources = [s for s in ext.sources if not s.endswith(".cu")]
            ext.extra_objects = list(ext.extra_objects or []) + objects
        super().build_extension(ext)

    def _nvcc_compile(self, ext, sources):
        flags = [
            "-O3",
            "-std=c++17",
            "-Xcompiler", "-fPIC",
            "-Xcompiler", "-fvisibility=hidden",
            *gencode_flags(os.environ.get("PED_FAST_CUDA_ARCH") or DEFAULT_ARCH),
            *(f"-I{d}" for d in ext.include_dirs),
            *shlex.split(os.environ.get("PED_FAST_NVCC_FLAGS", "")),
        ]
        jobs = []
        for source in sources:
            target = os.path.join(self.build_temp, os.path.splitext(source)[0] + ".o")
            os.makedirs(os.path.dirname(target), exist_ok=True)
            jobs.append((source, target, [ext.nvcc, *flags, "-c", source, "-o", target]))

        def run(job):
            source, _, command = job
            print(" ".join(shlex.quote(c) for c in command))
            done = subprocess.run(command, capture_output=True, text=True)
            return source, done

        failed = []
        with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
            for source, done in pool.map(run, jobs):
                if done.stdout or done.stderr:
                    print(done.stdout + done.stderr)
                if done.returncode != 0:
                    failed.append(source)
        if failed:
            # An error, not a skip: nvcc is here, so the CUDA backend must build.
            raise RuntimeError(f"ped_fast: nvcc failed on {', '.join(failed)} (see the messages above)")
        return [target for _, target, _ in jobs]
