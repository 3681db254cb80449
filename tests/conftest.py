"""Shared fixtures.

Triton's interpreter is chosen per process and must be set before fastvae's kernels are
first imported: set it here when no CUDA device is present, so the same suite runs the
real kernels on a GPU and the interpreted ones in CI.
"""
import os
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import fastvae  # noqa: E402  (after the interpreter switch)
from fastvae import backends  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")

# (rtol, atol) of a kernel against the reference in the same dtype; both compute in
# float32, so the gap is float rounding plus the final cast to the input dtype.
#
# On a GPU the kernels' float32 arithmetic is not the interpreter's (numpy, correctly
# rounded or nearly).  Triton 3.6's PTX for sm_90 has tl.exp as ex2.approx.f32 of
# x·log2(e) (2 ulp, plus |x|·2^-24 relative from rounding that product), tl.sqrt as
# sqrt.approx.ftz.f32, `/` as div.full.f32 (2 ulp), multiply-adds fused into fma, and
# tl.log and tl.cos as libdevice's logf and cosf (1-2 ulp); the cuda backend has the CUDA
# math library's expf and logf (no fast math) and fma.  So an element differs from the
# torch reference on the GPU by a few ulps of the largest intermediate of its formula
# (below 1e-6 relative at the gpu tests' inputs, inside the 1e-5 above), ε by Box–Muller's
# few ulps (Philox's integer words are exact), and a row sum of n elements by about
# sqrt(n) of their errors, or n of them where the elements are equal (rows of one
# repeated value: tests/test_latent_gpu.py bounds those from n).  Bitwise checks stay
# bitwise: the same call twice runs the same instructions in the same order.
TOLERANCES = {
    torch.float32: (1e-5, 1e-5),
    torch.bfloat16: (2e-2, 2e-2),
    torch.float16: (2e-3, 2e-3),
}
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
KERNEL_BACKENDS = [name for name in backends.available(DEVICE) if name != "torch"]


def pytest_configure(config):
    fastvae.set_validate_args(True)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture
def device():
    return DEVICE


@pytest.fixture(params=KERNEL_BACKENDS)
def kernel_backend(request):
    """Each non-reference backend present here, made current for the test."""
    with fastvae.use_backend(request.param):
        yield request.param


@pytest.fixture(params=DTYPES, ids=lambda d: str(d).replace("torch.", ""))
def dtype(request):
    return request.param


@pytest.fixture(autouse=True)
def _restore_backend_and_validation():
    choice = backends.current()
    validate = fastvae.validate_args_enabled()
    yield
    fastvae.use_backend(choice)
    fastvae.set_validate_args(validate)


@pytest.fixture
def fallback_random():
    """Inductor draws random numbers with eager's generators (torch._inductor.config's
    fallback_random), so a compiled graph that draws fastvae's seed matches eager, bit for
    bit.  Set through the config's own patch(): monkeypatching a torch config module
    deletes the option on undo under newer pytest."""
    import torch._dynamo
    import torch._inductor.config

    torch._dynamo.reset()
    with torch._inductor.config.patch(fallback_random=True):
        yield
    torch._dynamo.reset()


def assert_close(actual, expected, dtype, scale=1.0, msg=""):
    """Compare in float64 with the tolerance of ``dtype``, atol scaled by ``scale``."""
    rtol, atol = TOLERANCES[dtype]
    torch.testing.assert_close(
        actual.double(), expected.double(), rtol=rtol, atol=atol * scale, equal_nan=True, msg=msg or None
    )


# Row lengths of the row-sum accuracy tests: 2^16, where a float32 running sum is already
# tens of ulps off, and 2^20 (slow: there the torch backend's Philox and Triton's
# interpreter take seconds to minutes).
ROW_SUM_FEATURES = [2**16, pytest.param(2**20, marks=pytest.mark.slow)]


def assert_as_accurate_as_torch(result, exact, torch_result, torch_exact=None, msg=""):
    """Elementwise, ``result`` (row sums, or their batch sum or mean) is no farther from
    ``exact``, the float64 sum of its float32 terms, than the torch backend's result (the
    same terms in torch's pairwise float32 sum) is from ``torch_exact`` (its own terms'
    float64 sum; ``exact`` when the terms are the same): or within 2·eps·|exact| (2 to 4
    float32 ulps of it), which leaves room for ties and the last rounding."""
    exact = exact.double()
    torch_exact = exact if torch_exact is None else torch_exact.double()
    error = (result.double() - exact).abs()
    torch_error = (torch_result.double() - torch_exact).abs()
    bound = torch.maximum(torch_error, 2 * torch.finfo(torch.float32).eps * exact.abs())
    assert bool((error <= bound).all()), (
        f"{msg}: error {error.tolist()} above {bound.tolist()} (the torch backend's: {torch_error.tolist()})"
    )


@pytest.fixture
def label_figures(monkeypatch):
    """The matplotlib figures that draw the pictures' labels, as they are drawn."""
    from fastvae.eval import pictures

    figures = []
    draw = pictures._label_figure

    def recorded(*args):
        figures.append(draw(*args))
        return figures[-1]

    monkeypatch.setattr(pictures, "_label_figure", recorded)
    return figures


@pytest.fixture
def saved_figures(monkeypatch):
    """{file name: matplotlib figure} of the charts written."""
    from fastvae.eval import pictures

    figures = {}
    save = pictures._save_figure

    def recorded(figure, path):
        figures[Path(path).name] = figure
        return save(figure, path)

    monkeypatch.setattr(pictures, "_save_figure", recorded)
    return figures
