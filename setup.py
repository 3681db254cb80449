"""Build script: the Python package, the Triton kernels, and the optional C++ backends.

* ``kernels/`` lives at the top of the repository (next to ``csrc/``) and is installed as
  the subpackage ``fastvae.kernels`` through ``package_dir``; an editable install
  (``pip install -e .``) maps it the same way.
* ``fastvae._C``: the CPU backend (csrc/cpu, OpenMP), built whenever a C++ compiler and
  pybind11 are there.
* ``fastvae._C_cuda``: the CUDA backend (csrc/cuda), built when nvcc is found and a CUDA
  device is visible (it is of no use elsewhere, and compiling it for two architectures is
  most of an install's time on a machine without one).  ``FASTVAE_CUDA=1`` builds it
  wherever nvcc is (CI does, so the CUDA code compiles there), ``FASTVAE_CUDA=0`` never;
  ``FASTVAE_CUDA_ARCH`` chooses the targets (default ``80;90``, each as SASS, plus PTX of
  the newest for later GPUs).

Both link no libtorch (they take raw pointers), so one build serves any torch version.
Both are optional: when a build fails, pip still installs the pure-Python package, and the
torch and triton backends work.  ``FASTVAE_REQUIRE_CPP=1`` (CI) makes the build strict: nvcc
warnings are errors and a failed build fails the install.

The two modules build side by side, and the .cu files of ``_C_cuda`` compile in parallel
(one nvcc per core): a serial build took about six minutes on two cores.
"""
import glob
import os
from concurrent.futures import ThreadPoolExecutor
import shutil
import subprocess
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = os.path.dirname(os.path.abspath(__file__))
INCLUDE = os.path.join("csrc", "include")
CXX_FLAGS = ["-std=c++17", "-O3", "-fvisibility=hidden"]


def pybind11_include():
    try:
        import pybind11
    except ImportError:
        return None
    return pybind11.get_include()


def cuda_device_visible():
    """Whether this machine shows a CUDA device, asked without torch (the build may run
    in an isolated environment): CUDA_VISIBLE_DEVICES, the NVIDIA driver's device files,
    else ``nvidia-smi -L``."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1", "none", "NoDevFiles"):
        return False
    if glob.glob("/proc/driver/nvidia/gpus/*") or glob.glob("/dev/nvidia[0-9]*"):
        return True
    nvidia_smi = shutil.which("nvidia-smi")
    if nvidia_smi is None:
        return False
    try:
        listed = subprocess.run([nvidia_smi, "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return listed.returncode == 0 and any(line.startswith("GPU ") for line in listed.stdout.splitlines())


def build_cuda_wanted():
    """FASTVAE_CUDA: '1' builds ``_C_cuda`` wherever nvcc is, '0' never, unset (or
    'auto') where a CUDA device is visible."""
    setting = os.environ.get("FASTVAE_CUDA", "auto").strip().lower()
    if setting in ("0", "1", "auto"):
        return setting == "1" or (setting == "auto" and cuda_device_visible())
    raise ValueError(f"FASTVAE_CUDA={setting!r}: use 1 (always build the CUDA backend), 0 (never) or leave it unset")


def find_nvcc():
    candidates = [os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc"), shutil.which("nvcc")]
    return next((c for c in candidates if c and os.path.exists(c)), None)


def strict_build():
    return os.environ.get("FASTVAE_REQUIRE_CPP", "0") == "1"


def cuda_arch_flags():
    archs = [a.strip() for a in os.environ.get("FASTVAE_CUDA_ARCH", "80;90").replace(",", ";").split(";") if a.strip()]
    flags = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    flags.append(f"-gencode=arch=compute_{archs[-1]},code=compute_{archs[-1]}")
    return flags


class BuildExtensions(build_ext):
    """build_ext that compiles .cu sources with nvcc, builds the modules in parallel, and
    (unless the build is strict) never fails the install."""

    def finalize_options(self):
        super().finalize_options()
        if not self.parallel:
            self.parallel = os.cpu_count() or 1

    def build_extension(self, ext):
        try:
            if any(source.endswith(".cu") for source in ext.sources):
                self._compile_cuda_sources(ext)
            super().build_extension(ext)
        except Exception as error:  # an optional backend: report and go on
            if strict_build():
                raise
            print(f"fastvae: not building {ext.name} ({error}); the torch and triton backends still work",
                  file=sys.stderr)

    def _compile_cuda_sources(self, ext):
        nvcc = find_nvcc()
        build_dir = os.path.join(self.build_temp, "cuda")
        os.makedirs(build_dir, exist_ok=True)
        strict = ["-Werror", "all-warnings"] if strict_build() else []

        def compile_one(source):
            target = os.path.join(build_dir, os.path.basename(source) + ".o")
            command = [nvcc, "-c", source, "-o", target, "-std=c++17", "-O3",
                       "-Xcompiler", "-fPIC", "-Xcompiler", "-fvisibility=hidden", "-I" + INCLUDE,
                       *strict, *cuda_arch_flags()]
            print(" ".join(command), file=sys.stderr)
            completed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
            if completed.returncode != 0:
                raise RuntimeError(f"nvcc failed on {source}:\n{completed.stderr}")
            return target

        sources = [s for s in ext.sources if s.endswith(".cu")]
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            objects = list(pool.map(compile_one, sources))
        ext.sources = [s for s in ext.sources if not s.endswith(".cu")]
        ext.extra_objects = list(ext.extra_objects or []) + objects


def extensions():
    # Every header and source: a change to any rebuilds both modules (setuptools would
    # otherwise call a module up to date when only a shared header changed).
    depends = sorted(glob.glob("csrc/**/*", recursive=True))
    include = pybind11_include()
    if include is None:
        print("fastvae: pybind11 not found; building no C++ backend", file=sys.stderr)
        return []
    cpu = Extension(
        "fastvae._C",
        sources=sorted(glob.glob("csrc/cpu/*.cpp")),
        include_dirs=[INCLUDE, include],
        # No errno from sqrt (the result is the same): with it, a sqrt keeps a loop scalar.
        extra_compile_args=CXX_FLAGS + ["-fopenmp", "-fno-math-errno"],
        extra_link_args=["-fopenmp"],
        depends=depends,
        language="c++",
        optional=True,
    )
    built = [cpu]
    nvcc = find_nvcc() if build_cuda_wanted() else None
    if build_cuda_wanted() and nvcc is None:
        print("fastvae: nvcc not found; not building the CUDA backend fastvae._C_cuda", file=sys.stderr)
    if nvcc:
        cuda_home = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
        built.append(Extension(
            "fastvae._C_cuda",
            sources=sorted(glob.glob("csrc/cuda/*.cu")) + ["csrc/cuda/bindings.cpp"],
            include_dirs=[INCLUDE, include, os.path.join(cuda_home, "include")],
            library_dirs=[os.path.join(cuda_home, "lib64")],
            # The static runtime: the module needs no libcudart at import, only the driver.
            libraries=["cudart_static", "dl", "rt", "pthread"],
            extra_compile_args=CXX_FLAGS,
            depends=depends,
            language="c++",
            optional=True,
        ))
    return built


# setuptools runs this file as __main__; tests import it under another name to check the
# build decisions (tests/test_native.py).
if __name__ == "__main__":
    setup(
        packages=["fastvae", "fastvae.ops", "fastvae.native", "fastvae.kernels", "fastvae.nn", "fastvae.models",
                  "fastvae.train", "fastvae.eval", "fastvae.data", "fastvae.cli"],
        package_dir={"fastvae": "fastvae", "fastvae.kernels": "kernels"},
        ext_modules=extensions(),
        cmdclass={"build_ext": BuildExtensions},
    )
