"""Backend discovery and choice: available(), use_backend, FASTVAE_BACKEND, 'auto'."""
import os
import subprocess
import sys

import pytest
import torch

import fastvae
from fastvae import backends
from tests.conftest import DEVICE


def test_torch_is_always_available():
    assert "torch" in backends.available()
    assert "torch" in backends.available("cpu")


def test_auto_order_on_this_device():
    expected = next(name for name in (("triton", "cuda", "torch") if DEVICE.type == "cuda" else ("cpu", "torch"))
                    if name in backends.available(DEVICE))
    with fastvae.use_backend("auto"):
        assert backends.resolve("op", DEVICE, torch.float32) == expected
        assert backends.resolve("op", DEVICE, torch.float64) == "torch"


def test_use_backend_plain_call_and_context_manager():
    fastvae.use_backend("torch")
    assert backends.current() == "torch"
    with fastvae.use_backend("auto"):
        assert backends.current() == "auto"
    assert backends.current() == "torch"


def test_unknown_backend_name_is_an_error():
    with pytest.raises(ValueError, match="use_backend: name must be one of"):
        fastvae.use_backend("metal")


def test_absent_backend_asked_by_name_is_a_clear_error():
    absent = next((n for n in ("cuda", "cpu") if n not in backends.available(DEVICE)), None)
    if absent is None:
        pytest.skip("every backend is present here")
    mu = torch.zeros(2, 3, device=DEVICE)
    with fastvae.use_backend(absent):
        with pytest.raises(RuntimeError, match=rf"sample_gaussian: backend '{absent}' is not available"):
            fastvae.sample_gaussian(mu, mu)


def test_backend_switch_changes_the_code_path():
    if "triton" not in backends.available(DEVICE):
        pytest.skip("triton backend not present")
    mu = torch.zeros(2, 3, device=DEVICE, requires_grad=True)
    with fastvae.use_backend("triton"):
        z, _ = fastvae.sample_gaussian(mu, mu)
    assert "gaussian_latent_fwd" in type(z.grad_fn).__name__.lower() or "backward" in type(z.grad_fn).__name__.lower()
    with fastvae.use_backend("torch"):
        z_ref, _ = fastvae.sample_gaussian(mu, mu)
    assert type(z.grad_fn) is not type(z_ref.grad_fn)


def run_python(code, **env):
    full_env = {k: v for k, v in os.environ.items() if k not in ("FASTVAE_BACKEND", "TRITON_INTERPRET")}
    full_env.update(env)
    return subprocess.run([sys.executable, "-c", code], env=full_env, capture_output=True, text=True, timeout=120)


def test_environment_variable_sets_the_starting_choice():
    result = run_python("import fastvae; print(fastvae.backends.current())", FASTVAE_BACKEND="torch")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "torch"
    bad = run_python("import fastvae", FASTVAE_BACKEND="nope")
    assert bad.returncode != 0 and "FASTVAE_BACKEND must be one of" in bad.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-without-interpreter case")
def test_triton_on_cpu_needs_the_interpreter():
    code = (
        "import torch, fastvae\n"
        "print(fastvae.backends.available('cpu'))\n"
        "fastvae.use_backend('triton')\n"
        "try:\n"
        "    fastvae.sample_gaussian(torch.zeros(2, 2), torch.zeros(2, 2))\n"
        "except RuntimeError as e:\n"
        "    print('ERROR', e)\n"
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert "'triton'" not in result.stdout.splitlines()[0]
    assert "TRITON_INTERPRET=1" in result.stdout
