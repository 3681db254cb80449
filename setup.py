"""Build script: the Python package, the Triton kernels, and the optional C++ backends.

* ``kernels/`` lives at the top of the repository (next to ``csrc/``) and is installed as
  the subpackage ``fastvae.kernels`` through ``package_dir``; an editable install
  (``pip install -e .``) maps it the same way.
* ``fastvae._C``: the CPU backend (csrc/cpu, OpenMP), built whenever a C++ compiler and
  pybind11's headers are there (the pybind11 package's, or the copy torch ships).
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

The two modules build side by side, and each one's sources compile in parallel (one
compiler per core: the .cpp files through ``parallel_compile``, the .cu files through one
nvcc each): a serial build of the .cu files took about six minutes on two cores.
``FASTVAE_BUILD_JOBS`` caps the compilers running at once (default: the cores).
"""
import glob
import importlib.util
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
    """pybind11's headers: the pybind11 package's, else the copy torch ships in its include
    folder (a machine with torch and no pybind11, such as a bare GPU machine building in
    place, still builds both modules; the modules use no torch)."""
    try:
        import pybind11
    except ImportError:
        pass
    else:
        return pybind11.get_include()
    spec = importlib.util.find_spec("torch")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        include = os.path.join(folder, "include")
        if os.path.exists(os.path.join(include, "pybind11", "pybind11.h")):
            return include
    return None


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


def build_jobs():
    """How many compilers run at once: FASTVAE_BUILD_JOBS, else one per core."""
    setting = os.environ.get("FASTVAE_BUILD_JOBS", "").strip()
    if not setting:
        return os.cpu_count() or 1
    if not setting.isdigit() or int(setting) < 1:
        raise ValueError(f"FASTVAE_BUILD_JOBS={setting!r}: use a positive number of compilers")
    return int(setting)


def parallel_compile(compiler, jobs):
    """``compiler.compile`` with its objects compiled ``jobs`` at a time.  setuptools
    compiles an extension's sources one after another (its ``--parallel`` runs whole
    extensions side by side); the CPU module's files take up to two minutes each on a
    2-core machine, so in series they were most of an install's time.  The same steps as distutils' own ``compile``,
    the loop over objects in a thread pool (the compiler is a subprocess)."""
    def compile(sources, output_dir=None, macros=None, include_dirs=None, debug=False, extra_preargs=None,
                extra_postargs=None, depends=None):
        macros, objects, extra_postargs, pp_opts, build = compiler._setup_compile(
            output_dir, macros, include_dirs, sources, depends, extra_postargs)
        cc_args = compiler._get_cc_args(pp_opts, debug, extra_preargs)

        def compile_one(obj):
            source, extension = build[obj]
            compiler._compile(obj, source, extension, cc_args, extra_postargs, pp_opts)

        with ThreadPoolExecutor(max_workers=jobs) as pool:
            list(pool.map(compile_one, [obj for obj in objects if obj in build]))
        return objects

    return compile


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
            self.parallel = build_jobs()

    def build_extensions(self):
        self.compiler.compile = parallel_compile(self.compiler, build_jobs())
        super().build_extensions()

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
        with ThreadPoolExecutor(max_workers=build_jobs()) as pool:
            objects = list(pool.map(compile_one, sources))
        ext.sources = [s for s in ext.sources if not s.endswith(".cu")]
        ext.extra_objects = list(ext.extra_objects or []) + objects


def extensions():
    # Every header and source: a change to any rebuilds both modules (setuptools would
    # otherwise call a module up to date when only a shared header changed).
    depends = sorted(glob.glob("csrc/**/*", recursive=True))
    include = pybind11_include()
    if include is None:
        print("fastvae: pybind11 not found (nor torch's copy); building no C++ backend", file=sys.stderr)
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
        # The presets of `fastvae train --preset` (fastvae/presets/*.toml), in wheels too.
        package_data={"fastvae": ["presets/*.toml"]},
        ext_modules=extensions(),
        cmdclass={"build_ext": BuildExtensions},
    )
