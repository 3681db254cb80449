"""The C++ backends: the extension builds (required in CI), every CUDA kernel compiles
with nvcc for sm_90, and the C++ noise stream equals the reference's and Triton's."""
import importlib.util
import os
import shutil
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
    "discrete": ["categorical_fwd", "categorical_bwd"],
    "iwae": ["sample_gaussian_k_fwd", "sample_gaussian_k_bwd", "log_mean_exp_fwd", "log_mean_exp_bwd"],
    "latent": ["gaussian_latent_fwd", "gaussian_latent_bwd"],
    "likelihood": ["bernoulli_nll_fwd", "bernoulli_nll_bwd", "gaussian_nll_fwd", "gaussian_nll_bwd"],
    "logistic": ["discretized_logistic_fwd", "discretized_logistic_bwd", "logistic_mixture_fwd",
                 "logistic_mixture_bwd"],
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
