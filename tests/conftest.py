"""Shared fixtures.

Triton's interpreter is chosen per process and must be set before fastvae's kernels are
first imported: set it here when no CUDA device is present, so the same suite runs the
real kernels on a GPU and the interpreted ones in CI.
"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import fastvae  # noqa: E402  (after the interpreter switch)
from fastvae import backends  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")

# (rtol, atol) of a kernel against the reference in the same dtype; both compute in
# float32, so the gap is float rounding plus the final cast to the input dtype.
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
