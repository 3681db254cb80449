"""Build script: the Python package, the Triton kernels, and the optional C++ backends.

* ``kernels/`` lives at the top of the repository (next to ``csrc/``) and is installed as
  the subpackage ``fastvae.kernels`` through ``package_dir``; an editable install
  (``pip install -e .``) maps it the same way.
* The C++ backends are built only with ``FASTVAE_BUILD_CPP=1`` while they are brought up.
* ``fastvae._C``: the CPU backend (csrc/cpu, OpenMP), built whenever a C++ compiler and
  pybind11 are there.
* ``fastvae._C_cuda``: the CUDA backend (csrc/cuda), built when nvcc is found.
  ``FASTVAE_CUDA=0`` skips it; ``FASTVAE_CUDA_ARCH`` chooses the targets (default
  ``80;90``, each as SASS, plus PTX of the newest for later GPUs).

Both link no libtorch (they take raw pointers), so one build serves any torch version.
Both are optional: when a build fails, pip still installs the pure-Python package, and the
torch and triton backends work.
"""
import glob
import os
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


def find_nvcc():
    if os.environ.get("FASTVAE_CUDA", "1") == "0":
        return None
    candidates = [os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc"), shutil.which("nvcc")]
    return next((c for c in candidates if c and os.path.exists(c)), None)


def cuda_arch_flags():
    archs = [a.strip() for a in os.environ.get("FASTVAE_CUDA_ARCH", "80;90").replace(",", ";").split(";") if a.strip()]
    flags = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    flags.append(f"-gencode=arch=compute_{archs[-1]},code=compute_{archs[-1]}")
    return flags


class BuildExtensions(build_ext):
    """build_ext that compiles .cu sources with nvcc and never fails the install."""

    def build_extension(self, ext):
        try:
            if any(source.endswith(".cu") for source in ext.sources):
                self._compile_cuda_sources(ext)
            super().build_extension(ext)
        except Exception as error:  # an optional backend: report and go on
            print(f"fastvae: not building {ext.name} ({error}); the torch and triton backends still work",
                  file=sys.stderr)

    def _compile_cuda_sources(self, ext):
        nvcc = find_nvcc()
        objects = []
        build_dir = os.path.join(self.build_temp, "cuda")
        os.makedirs(build_dir, exist_ok=True)
        for source in [s for s in ext.sources if s.endswith(".cu")]:
            target = os.path.join(build_dir, os.path.basename(source) + ".o")
            command = [nvcc, "-c", source, "-o", target, "-std=c++17", "-O3",
                       "-Xcompiler", "-fPIC", "-Xcompiler", "-fvisibility=hidden", "-I" + INCLUDE,
                       *cuda_arch_flags()]
            print(" ".join(command), file=sys.stderr)
            subprocess.check_call(command, cwd=ROOT)
            objects.append(target)
        ext.sources = [s for s in ext.sources if not s.endswith(".cu")]
        ext.extra_objects = list(ext.extra_objects or []) + objects


def extensions():
    if os.environ.get("FASTVAE_BUILD_CPP", "0") != "1":
        # The C++ backends are being brought up (issue 4): off until every family passes
        # its suite on the cpu backend in CI.  FASTVAE_BUILD_CPP=1 builds them.
        return []
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
        extra_compile_args=CXX_FLAGS + ["-fopenmp"],
        extra_link_args=["-fopenmp"],
        depends=depends,
        language="c++",
        optional=True,
    )
    built = [cpu]
    nvcc = find_nvcc()
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


setup(
    packages=["fastvae", "fastvae.ops", "fastvae.native", "fastvae.kernels", "fastvae.nn", "fastvae.models",
              "fastvae.train", "fastvae.eval", "fastvae.data", "fastvae.cli"],
    package_dir={"fastvae": "fastvae", "fastvae.kernels": "kernels"},
    ext_modules=extensions(),
    cmdclass={"build_ext": BuildExtensions},
)
