"""The C++ backends: the extension builds (required in CI), every CUDA kernel compiles
with nvcc for sm_90, and the C++ noise stream equals the reference's and Triton's."""
import importlib.util
import os
import shutil
import sys
import time
from pathlib import Path

import pytest
import torch

import fastvae
from fastvae import random as fv_random
from tests.test_random import GOLDEN

ROOT = Path(__file__).resolve().parent.parent
CUDA_SOURCES = sorted((ROOT / "csrc" / "cuda").glob("*.cu"))
# What each CUDA source contributes to fastvae._C_cuda.
CUDA_ENTRY_POINTS = {
    "diffusion": ["diffuse_fwd", "diffuse_bwd", "diffusion_loss_fwd", "diffusion_loss_bwd"],
    "discrete": ["categorical_fwd", "categorical_bwd"],
    "iwae": ["sample_gaussian_k_fwd", "sample_gaussian_k_bwd", "log_mean_exp_fwd", "log_mean_exp_bwd"],
    "latent": ["gaussian_latent_fwd", "gaussian_latent_bwd"],
    "likelihood": ["bernoulli_nll_fwd", "bernoulli_nll_bwd", "gaussian_nll_fwd", "gaussian_nll_bwd"],
    "logistic": ["discretized_logistic_fwd", "discretized_logistic_bwd", "logistic_mixture_fwd",
                 "logistic_mixture_bwd"],
    "location_scale": ["location_scale_fwd", "location_scale_bwd"],
    "truncated_normal": ["truncated_normal_fwd", "truncated_normal_bwd"],
}


def find_nvcc():
    cuda_nvcc = os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc")
    return cuda_nvcc if os.path.exists(cuda_nvcc) else shutil.which("nvcc")


def cpu_extension():
    return pytest.importorskip("fastvae._C", reason="the CPU C++ backend is not built here")


@pytest.mark.skipif(os.environ.get("FASTVAE_REQUIRE_CPP") != "1", reason="set FASTVAE_REQUIRE_CPP=1 (CI does)")
def test_cpu_extension_was_built():
    """CI sets FASTVAE_REQUIRE_CPP=1: a C++ build that failed (and was skipped by the
    optional build) must fail the run instead of silently testing less."""
    assert "cpu" in fastvae.backends.available("cpu")


def load_setup_script():
    """setup.py as a module (it calls setup() only when run as __main__)."""
    spec = importlib.util.spec_from_file_location("fastvae_setup_script", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(os.environ.get("FASTVAE_REQUIRE_CPP") != "1", reason="set FASTVAE_REQUIRE_CPP=1 (CI does)")
def test_cuda_extension_was_built_where_asked():
    """Under FASTVAE_REQUIRE_CPP=1 the install compiles every .cu file with nvcc (sm_90 in
    CI, which sets FASTVAE_CUDA=1) and -Werror all-warnings, and a compile error fails the
    install: so where the build was wanted and nvcc is found, the module must be there,
    holding every kernel of csrc/cuda."""
    if find_nvcc() is None:
        pytest.skip("nvcc not found")
    if not load_setup_script().build_cuda_wanted():
        pytest.skip("no CUDA device visible and FASTVAE_CUDA is not 1: _C_cuda is not built")
    assert list((ROOT / "fastvae").glob("_C_cuda*.so")), "fastvae._C_cuda was not built"
    import fastvae._C_cuda as extension

    for source in CUDA_SOURCES:
        entry_points = CUDA_ENTRY_POINTS[source.stem]
        assert all(hasattr(extension, name) for name in entry_points), (source.name, entry_points)


@pytest.mark.parametrize("setting, device_visible, wanted", [
    (None, False, False), (None, True, True), ("auto", True, True), ("1", False, True), ("0", True, False),
])
def test_cuda_backend_is_built_by_default_only_where_a_device_is(monkeypatch, setting, device_visible, wanted):
    """Compiling _C_cuda for two architectures was most of an install's time on a machine
    with nvcc and no GPU: by default it is built only where a CUDA device is visible;
    FASTVAE_CUDA=1 forces it (CI), FASTVAE_CUDA=0 skips it."""
    script = load_setup_script()
    if setting is None:
        monkeypatch.delenv("FASTVAE_CUDA", raising=False)
    else:
        monkeypatch.setenv("FASTVAE_CUDA", setting)
    monkeypatch.setattr(script, "cuda_device_visible", lambda: device_visible)
    assert script.build_cuda_wanted() is wanted


def test_cuda_build_setting_is_checked(monkeypatch):
    monkeypatch.setenv("FASTVAE_CUDA", "yes")
    with pytest.raises(ValueError, match="FASTVAE_CUDA"):
        load_setup_script().build_cuda_wanted()


def test_hidden_devices_count_as_none(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert load_setup_script().cuda_device_visible() is False


def test_pybind11_headers_fall_back_to_torchs_copy(monkeypatch):
    """A machine with torch and no pybind11 package (a bare GPU machine building in place)
    still builds both modules, from the pybind11 headers torch ships."""
    script = load_setup_script()
    monkeypatch.setitem(sys.modules, "pybind11", None)  # import pybind11 raises ImportError
    include = Path(script.pybind11_include())
    assert (include / "pybind11" / "pybind11.h").is_file()
    assert include == Path(torch.__file__).parent / "include"


def test_an_extensions_sources_compile_in_parallel(tmp_path):
    """setuptools compiles one extension's sources one after another; setup.py's compile
    runs them side by side: four sources whose "compiler" each sleeps 1 s take about 1 s
    with four jobs, and every object is returned in the sources' order."""
    script = load_setup_script()
    from setuptools._distutils.unixccompiler import UnixCCompiler

    compiler = UnixCCompiler()
    ran = []

    def fake_compile(obj, src, ext, cc_args, extra_postargs, pp_opts):
        time.sleep(1.0)
        ran.append(src)

    compiler._compile = fake_compile
    sources = [str(tmp_path / f"file{i}.cpp") for i in range(4)]
    start = time.monotonic()
    objects = script.parallel_compile(compiler, jobs=4)(sources, output_dir=str(tmp_path / "build"))
    assert time.monotonic() - start < 3.0
    assert sorted(ran) == sorted(sources)
    assert [Path(o).stem for o in objects] == [Path(s).stem for s in sources]


@pytest.mark.parametrize("setting, jobs", [(None, os.cpu_count() or 1), ("3", 3), ("", os.cpu_count() or 1)])
def test_build_jobs_setting(monkeypatch, setting, jobs):
    if setting is None:
        monkeypatch.delenv("FASTVAE_BUILD_JOBS", raising=False)
    else:
        monkeypatch.setenv("FASTVAE_BUILD_JOBS", setting)
    assert load_setup_script().build_jobs() == jobs
    monkeypatch.setenv("FASTVAE_BUILD_JOBS", "0")
    with pytest.raises(ValueError, match="FASTVAE_BUILD_JOBS"):
        load_setup_script().build_jobs()


def test_every_cuda_source_is_listed():
    assert CUDA_SOURCES, "csrc/cuda holds no kernels"
    assert sorted(source.stem for source in CUDA_SOURCES) == sorted(CUDA_ENTRY_POINTS)


@pytest.mark.parametrize("seed, base", list(GOLDEN), ids=str)
def test_cpu_normals_match_golden_and_reference(seed, base):
    extension = cpu_extension()
    _, _, normals = GOLDEN[(seed, base)]
    out = torch.empty(4096)
    extension.philox_normal(seed, base, out.numel(), out.data_ptr())
    torch.testing.assert_close(out[:4], torch.tensor(normals), rtol=0, atol=2e-6)
    torch.testing.assert_close(out, fv_random.philox_normal(torch.tensor([seed, base]), (4096,)), rtol=0, atol=5e-6)
    uniforms = torch.empty(4096)
    extension.philox_uniform(seed, base, uniforms.numel(), uniforms.data_ptr())
    assert torch.equal(uniforms, fv_random.philox_uniform(torch.tensor([seed, base]), (4096,)))


def test_cpu_normals_equal_triton_interpreter():
    """The same (seed, base) gives the same normals from the C++ stream and Triton's tl.randn."""
    extension = cpu_extension()
    if "triton" not in fastvae.backends.available("cpu"):
        pytest.skip("triton's interpreter is not active in this process")
    with fastvae.use_backend("triton"):
        torch.manual_seed(21)
        from_triton = fastvae.reparameterize(torch.zeros(17, 301), torch.zeros(17, 301))
    torch.manual_seed(21)
    seed, base = fv_random.draw_seed(torch.device("cpu")).tolist()
    from_cpp = torch.empty(17 * 301)
    extension.philox_normal(seed, base, from_cpp.numel(), from_cpp.data_ptr())
    torch.testing.assert_close(from_triton.flatten(), from_cpp, rtol=0, atol=5e-6)


@pytest.mark.parametrize("count", [1, 1000, 70001])
def test_cpu_philox_floor_draws_the_kernels_normals(count):
    """The benchmark's floor (fastvae_philox_normal_floor, bench/bench_latent.py) runs the
    sampling loops' own Philox + Box–Muller code: its normals are, bit for bit, the z of
    the cpu backend's reparameterize at mu = logvar = 0 (z = 0 + e^0·ε = ε), from one
    thread or from several (70001 is past the size that runs on one thread)."""
    import ctypes

    extension = cpu_extension()
    try:
        floor = ctypes.CDLL(extension.__file__).fastvae_philox_normal_floor
    except AttributeError:
        pytest.fail("fastvae._C has no fastvae_philox_normal_floor")
    floor.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_uint64, ctypes.c_uint64]
    torch.manual_seed(7)
    with fastvae.use_backend("cpu"):
        z = fastvae.reparameterize(torch.zeros(1, count), torch.zeros(1, count))
    torch.manual_seed(7)
    seed, base = fv_random.draw_seed(torch.device("cpu")).tolist()
    normals = torch.full((count,), float("nan"))
    floor(normals.data_ptr(), count, seed, base)
    assert torch.equal(normals, z.flatten())


def test_cuda_extension_imports_without_a_gpu():
    """fastvae._C_cuda links the CUDA runtime statically: importing it needs no GPU."""
    if not list((ROOT / "fastvae").glob("_C_cuda*.so")):
        pytest.skip("the CUDA extension is not built here")
    import fastvae._C_cuda as extension

    assert extension.LATENT_ROW_PARTIAL_WIDTH > 0


@pytest.mark.parametrize("family", sorted(CUDA_ENTRY_POINTS))
def test_native_launchers_take_the_triton_launchers_arguments(family):
    """An op hands every backend's launcher the same arguments, its allocated outputs
    among them (docs/architecture.md): fastvae/native/<family>.py's launchers have the
    names and parameters of kernels/<family>.py's (after the bound extension)."""
    import importlib
    import inspect

    pytest.importorskip("triton", reason="the Triton launchers need triton")
    native = importlib.import_module(f"fastvae.native.{family}")
    triton_launchers = importlib.import_module(f"fastvae.kernels.{family}")
    for name in native.LAUNCHERS:
        native_parameters = list(inspect.signature(getattr(native, name)).parameters)[1:]
        assert native_parameters == list(inspect.signature(getattr(triton_launchers, name)).parameters), name


def cpu_row_sums():
    """Every row-reduced output of the cpu backend, on shapes whose rows span several
    tasks or tiles (likelihood chunks of 8192 columns, logistic blocks of 4096, mixture
    blocks of 64 pixels, 256-column tiles) and whose rows outnumber the threads."""
    generator = torch.Generator().manual_seed(0)

    def randn(*shape, scale=1.0):
        return scale * torch.randn(shape, generator=generator)

    mu, logvar = randn(5, 3001, scale=0.5), -2.0 * torch.rand(5, 3001, generator=generator)
    logits, x = randn(3, 2 * 8192 + 5, scale=3.0), torch.rand(3, 2 * 8192 + 5, generator=generator)
    levels = torch.randint(0, 256, (3, 2 * 4096 + 7), generator=generator)
    # Enough pixel-components (3·517·2) for the mixture's loops to run in parallel.
    pixel_levels = torch.randint(0, 256, (3, 1, 8 * 64 + 5), generator=generator)
    outputs = {}
    with fastvae.use_backend("cpu"):
        torch.manual_seed(1)
        outputs["gaussian_kl"] = fastvae.gaussian_kl(mu, logvar)
        outputs["sample_gaussian"] = fastvae.sample_gaussian(mu, logvar, mu.flip(0), logvar.flip(0))
        outputs["sample_gaussian_k"] = fastvae.sample_gaussian_k(mu, logvar, 3)
        outputs["bernoulli_nll"] = fastvae.bernoulli_nll(logits, x)
        outputs["continuous_bernoulli_nll"] = fastvae.continuous_bernoulli_nll(logits, x)
        outputs["gaussian_nll"] = fastvae.gaussian_nll(x, logits.sigmoid(), -2.0 * x)
        outputs["gaussian_nll_number_logvar"] = fastvae.gaussian_nll(x, logits.sigmoid(), -2.0)
        outputs["discretized_logistic_nll"] = fastvae.discretized_logistic_nll(
            2.0 * x[:, : levels.shape[1]] - 1.0, -3.0 * x[:, : levels.shape[1]], levels.to(torch.uint8))
        outputs["discretized_logistic_mixture_nll"] = fastvae.discretized_logistic_mixture_nll(
            randn(3, 6, pixel_levels.shape[-1]), pixel_levels.to(torch.uint8), 2)
        outputs["sample_categorical"] = fastvae.sample_categorical(randn(7, 1000, scale=3.0), 0.7,
                                                                   prior_logits=randn(1000))
        for family in ("laplace", "logistic", "cauchy"):
            outputs[f"sample_{family}"] = getattr(fastvae, f"sample_{family}")(mu, logvar, mu.flip(0))
        z_t, noise_seed = fastvae.diffuse(x, 4.0 * x[:, 0] - 2.0)
        outputs["diffuse"] = z_t
        outputs["diffusion_loss"] = fastvae.diffusion_loss(x, noise_seed, x[:, 0] + 0.5)
    return outputs


def test_cpu_row_sums_do_not_depend_on_the_thread_count():
    """Each row's sum runs in an order fixed by the shape (csrc/cpu/row_sum.h's lanes, the
    partials added in a fixed order), so one thread and two give the same bits."""
    cpu_extension()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one_thread = cpu_row_sums()
        torch.set_num_threads(2)
        two_threads = cpu_row_sums()
    finally:
        torch.set_num_threads(threads)
    for name, outputs in one_thread.items():
        outputs, others = (outputs, two_threads[name]) if isinstance(outputs, tuple) else ((outputs,), (two_threads[name],))
        for single, double in zip(outputs, others):
            assert torch.equal(single, double), name


def test_cpu_gaussian_nll_number_logvar_equals_its_tensor():
    """A number logvar takes its own loops (e^(−logvar) once per task); they compute
    gaussian_nll's formulas in the same order as the loops of a tensor logvar, so the nll
    and both gradients are the same bits as with that number as a full-size tensor."""
    cpu_extension()
    generator = torch.Generator().manual_seed(3)
    mean = torch.randn(5, 2 * 8192 + 300, generator=generator).requires_grad_()
    x = (mean.detach() + 0.7 * torch.randn(mean.shape, generator=generator)).requires_grad_()
    grad_nll = torch.randn(5, generator=generator)
    with fastvae.use_backend("cpu"):
        for reduction in ("batch", "none"):
            number = fastvae.gaussian_nll(mean, x, -1.3, reduction=reduction)
            tensor = fastvae.gaussian_nll(mean, x, torch.full(mean.shape, -1.3), reduction=reduction)
            assert torch.equal(number, tensor), reduction
            upstream = grad_nll if reduction == "batch" else grad_nll[:, None] * x.detach()
            for a, b in zip(torch.autograd.grad(number, [mean, x], upstream),
                            torch.autograd.grad(tensor, [mean, x], upstream)):
                assert torch.equal(a, b), reduction


def test_cpu_softplus_within_two_ulp():
    """bernoulli_nll at x = 0 is softplus(l): on the cpu backend within 2 ulp of the float64
    value over [−30, 30] (csrc/cpu/vector_math.h's log1p on [0, 1]; the general log1p
    it replaced left 2.6 ulp near l = −9.7), and exact at the extremes."""
    cpu_extension()
    logits = torch.cat([torch.linspace(-30.0, 30.0, 200_001), torch.tensor([-100.0, 0.0, 1e-30, 100.0])])
    with fastvae.use_backend("cpu"):
        nll = fastvae.bernoulli_nll(logits[None], torch.zeros(1, logits.numel()), reduction="none")[0]
    exact = torch.nn.functional.softplus(logits.double())
    ulp = (exact.float().nextafter(torch.tensor(float("inf"))) - exact.float()).double()
    assert ((nll.double() - exact).abs() / ulp).max() <= 2.0
