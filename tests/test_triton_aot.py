"""Every Triton kernel specialization the ops launch compiles for the real GPUs (sm_90a,
sm_80), ahead of time and without one: bench/triton_specializations.py captures them from
the launchers over the op matrix and the benchmarks' sizes, and compiles them with
``triton.compiler.compile``.  Triton's interpreter, which runs the kernels everywhere else
in CI, accepts code the GPU compiler rejects.

Also: the capture sees every kernel a launcher launches, reproduces Triton's JIT
specialization rules, and sees device-dependent launcher choices as on a GPU.
"""
import os
import sys
from pathlib import Path

import pytest
import torch
import triton
import triton.language as tl

BENCH_DIR = Path(__file__).resolve().parent.parent / "bench"
if str(BENCH_DIR) not in sys.path:
    # Imported by name, not by path: the compile workers (spawned processes) import it so.
    sys.path.insert(0, str(BENCH_DIR))

import triton_specializations as specializations  # noqa: E402


@pytest.fixture(scope="module")
def captured():
    """The op matrix and the op benchmarks' sizes (bench_train.py's training steps are
    left out: minutes of model math on a CPU; bench/kernel_resources.py adds them)."""
    return specializations.capture_cases(specializations.op_matrix() + specializations.benchmark_cases(train=False))


def test_every_op_call_of_the_matrix_runs(captured):
    assert captured.errors == {}


def test_capture_finds_every_launched_kernel(captured):
    launched = specializations.launched_kernels()
    found = {spec.kernel for spec in captured.specializations.values()}
    assert launched, "no launch found in kernels/*.py"
    assert launched - found == set(), "kernels no op call of the matrix launches: add their options to op_matrix"
    assert found <= launched


def test_no_device_choice_is_hidden_from_the_capture():
    # The capture calls launcher helpers that take a device as on a GPU; a choice read
    # from a tensor's device elsewhere would be captured as the interpreter's.
    assert specializations.device_reads_outside_device_functions() == []


@triton.jit
def _probe_kernel(x_ptr, y_ptr, n, m, big, scale, FLAG: tl.constexpr):
    pass


def test_specialization_follows_the_jit_rules():
    x = torch.zeros(64, dtype=torch.bfloat16)
    spec = specializations.specialize(_probe_kernel.fn,
                                      (x, None, 1, 48, 2**31 + 16, 0.5), {"FLAG": True})
    signature = dict(spec.signature)
    assert signature["x_ptr"] == "*bf16"
    assert signature["y_ptr"] == "constexpr" and dict(spec.constexprs)["y_ptr"] is None  # a None pointer
    assert signature["n"] == "constexpr" and dict(spec.constexprs)["n"] == 1  # an integer equal to 1
    assert signature["m"] == "i32" and signature["big"] == "i64" and signature["scale"] == "fp32"
    assert set(spec.divisible_by_16) == {"x_ptr", "m", "big"}
    assert (spec.num_warps, spec.num_stages) == (4, 3)
    odd = specializations.specialize(_probe_kernel.fn,
                                     (x[1:], None, 2, 17, 5, 0.5), {"FLAG": False, "num_warps": 8})
    assert odd.divisible_by_16 == () and dict(odd.signature)["n"] == "i32" and odd.num_warps == 8


def test_ptxas_log_is_parsed():
    log = ("ptxas info    : Function properties for k\n"
           "    40 bytes stack frame, 36 bytes spill stores, 44 bytes spill loads\n"
           "ptxas info    : Used 255 registers, used 1 barriers, 40 bytes cumulative stack size\n")
    assert specializations.parse_ptxas_log(log) == {
        "registers": 255, "stack_bytes": 40, "spill_store_bytes": 36, "spill_load_bytes": 44}


@pytest.mark.slow
def test_every_specialization_compiles_for_sm90a_and_sm80(captured):
    specs = sorted(captured.specializations.values(), key=lambda s: s.key)
    # TRITON_CACHE_DIR, when set, is reused (a warm rerun takes seconds); else a fresh
    # folder, so that everything is compiled.
    results = specializations.compile_all(specs, cache_dir=os.environ.get("TRITON_CACHE_DIR"), resources=False)
    failures = []
    for spec in specs:
        for arch, _ in specializations.ARCHS:
            result = results[(spec.key, arch)]
            if "error" in result:
                launched_by = sorted(captured.labels[spec.key])[:3]
                failures.append(f"{arch}: {spec.describe()}\n  launched by {launched_by}\n  {result['error'][:2000]}")
    assert not failures, f"{len(failures)} compile failures:\n" + "\n".join(failures)
