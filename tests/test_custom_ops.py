"""Fake and real agree, for every custom op of fastvae/ops, forward and backward.

Each op declares its outputs once (the ``_*_outputs`` function beside it) and both its
fake and its real implementation allocate through it (docs/architecture.md).  Here, for
each op × kernel backend present (cpu, triton under the interpreter, cuda on a GPU) ×
dtype × each variant that changes the outputs' shapes or dtypes (priors absent,
broadcast, or full-size and requiring grad; KL and reduction modes; gradients given or
not; x float, uint8 or bool; a mixture of 1 or 3 channels, channels_last params; mixed
input dtypes):

* ``torch.library.opcheck``: schema, fake tensors and autograd registration, and for the
  forwards in float32 AOT dispatch with dynamic shapes (which also runs each forward's
  registered backward);
* the real outputs' shapes, dtypes, strides and devices equal the fake's.

The ``torch`` backend has no custom op (it is fastvae.reference under plain autograd):
each public op's outputs and gradients under ``torch.compile(fullgraph=True)`` have
eager's shapes and dtypes.
"""
from __future__ import annotations

from typing import NamedTuple

import pytest
import torch
from torch._library.custom_ops import CustomOpDef
from torch._subclasses.fake_tensor import FakeTensorMode

import fastvae
from fastvae.ops import diffusion as diffusion_ops
from fastvae.ops import discrete as discrete_ops
from fastvae.ops import iwae as iwae_ops
from fastvae.ops import latent as latent_ops
from fastvae.ops import likelihood as likelihood_ops
from fastvae.ops import location_scale as location_scale_ops
from fastvae.ops import logistic as logistic_ops
from fastvae.ops import truncated_normal as truncated_normal_ops
from fastvae.ops._common import kernel_module
from fastvae.random import draw_seed
from tests.conftest import DEVICE, DTYPES

CHECKS = ("test_schema", "test_faketensor", "test_autograd_registration")
# test_aot_dispatch_dynamic runs an op under AOT autograd with symbolic shapes, and its
# gradients through the registered backward op: it is most of opcheck's time, and what it
# adds to test_faketensor (dispatch, symbolic shapes, the autograd wiring) does not depend
# on the dtype, so it runs on the forwards in float32.
AOT_CHECKS = CHECKS + ("test_aot_dispatch_dynamic",)
FAMILIES = ("latent", "iwae", "discrete", "likelihood", "logistic", "location_scale", "truncated_normal",
            "diffusion")


class Case(NamedTuple):
    name: str  # op and variant, for the failure message
    op: object
    args: tuple
    forward: bool  # a forward op, whose registered backward calls a backward op


def forward(name, op, args):
    return Case(f"{op._name} {name}", op, args, True)


def backward(name, op, args):
    return Case(f"{op._name} {name}", op, args, False)


def tensor(shape, dtype=torch.float32, seed=0, requires_grad=False, scale=1.0, memory_format=None):
    generator = torch.Generator().manual_seed(seed)
    values = (scale * torch.randn(shape, generator=generator)).to(DEVICE, dtype)
    if memory_format is not None:
        values = values.contiguous(memory_format=memory_format)
    return values.requires_grad_(requires_grad)


def like(t, seed=9):
    """An upstream gradient for output ``t`` (its shape and dtype)."""
    return tensor(tuple(t.shape), t.dtype, seed=seed)


def levels(shape, seed=5):
    """uint8 level indices of 256 bins."""
    return torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(seed)).to(DEVICE, torch.uint8)


def on_grid(level_indices, dtype):
    """The levels as float data on the grid of 256 bins, in ``dtype``."""
    return (level_indices.float() / 127.5 - 1.0).to(dtype)


def detached(value):
    return value.detach() if isinstance(value, torch.Tensor) else value


def call(op, args):
    """The op's outputs without autograd (inputs detached), as a tuple."""
    outputs = op(*map(detached, args))
    return outputs if isinstance(outputs, tuple) else (outputs,)


def gradient_choices(names, grads):
    """(label, gradients) of a backward: every upstream gradient, and each alone (the
    others None), skipping repeats and the all-None choice."""
    choices = [tuple(grads)] + [tuple(g if j == i else None for j, g in enumerate(grads)) for i in range(len(grads))]
    seen, result = set(), []
    for choice in choices:
        key = tuple(g is not None for g in choice)
        if any(key) and key not in seen:
            seen.add(key)
            result.append(("+".join(n for n, g in zip(names, choice) if g is not None), choice))
    return result


# --------------------------------------------------------------------------------------
# The cases, one function per family of fastvae/ops: each forward variant, and its
# backward with the upstream gradients that forward's autograd can pass.
# --------------------------------------------------------------------------------------


def gaussian_priors(kind, shape, dtype):
    """(prior_mu, prior_logvar) of a latent of ``shape``, requiring grad."""
    full = tuple(shape)
    broadcast = (1,) + tuple(shape[1:]) if len(shape) == 2 else (1, shape[1]) + (1,) * (len(shape) - 2)
    kinds = {
        "no": lambda: (None, None),
        # A learned prior per dimension ([1, D]) or per channel ([1, C, 1, 1]).
        "broadcast": lambda: (tensor(broadcast, dtype, 3, True), tensor(broadcast, dtype, 4, True, 0.3)),
        # The hierarchical VAE's conditional prior.
        "full": lambda: (tensor(full, dtype, 3, True), tensor(full, dtype, 4, True, 0.3)),
        # A float32 learned prior under autocast: a full-size mean and a broadcast logvar.
        "float32 mean": lambda: (tensor(full, torch.float32, 3, True), tensor(broadcast, dtype, 4, True, 0.3)),
        # Full-size priors of two dtypes: each gradient in its own prior's.
        "mixed full": lambda: (tensor(full, dtype, 3, True), tensor(full, torch.float32, 4, True, 0.3)),
    }
    return kinds[kind]()


def latent_cases(backend, dtype):
    cases = []
    seed_offset = draw_seed(DEVICE)
    reads_sample = kernel_module(backend, "latent").backward_reads_sample
    for shape, sample, kl_mode, priors, logvar_dtype in [
        ((3, 5), True, "none", "no", dtype),  # reparameterize
        ((3, 5), False, "row", "broadcast", dtype),  # gaussian_kl
        ((3, 5), True, "element", "full", dtype),  # sample_gaussian with reduction='none' or free bits
        ((3, 5), True, "row", "full", dtype),  # the hierarchical VAE's layers
        ((3, 5), True, "row", "float32 mean", dtype),
        ((3, 5), True, "element", "mixed full", dtype),
        ((2, 3, 2, 2), True, "element", "broadcast", dtype),
        ((3, 5), True, "row", "no", torch.float32),  # mu and logvar of two dtypes
    ]:
        name = f"{shape} sample={sample} kl_mode={kl_mode} {priors} prior, logvar {logvar_dtype}"
        mu, logvar = tensor(shape, dtype, 1, True), tensor(shape, logvar_dtype, 2, True, 0.5)
        prior_mu, prior_logvar = gaussian_priors(priors, shape, dtype)
        args = (mu, logvar, prior_mu, prior_logvar, seed_offset if sample else None, sample, kl_mode, backend)
        cases.append(forward(name, latent_ops._gaussian_latent_fwd, args))
        z, kl = call(latent_ops._gaussian_latent_fwd, args)
        upstream = (like(z) if sample else None, like(kl) if kl_mode != "none" else None)
        # Without grad_kl, the prior gradients asked for are absent: only the KL reads the priors.
        for which, (grad_z, grad_kl) in gradient_choices(("grad_z", "grad_kl"), upstream):
            saved_z = z if grad_z is not None and reads_sample(z.dtype) else None
            bwd_args = (grad_z, grad_kl, *map(detached, (mu, logvar, prior_mu, prior_logvar)), seed_offset, saved_z,
                        prior_mu is not None, prior_logvar is not None, backend)
            cases.append(backward(f"{name}, {which}", latent_ops._gaussian_latent_bwd, bwd_args))
    return cases


def iwae_cases(backend, dtype):
    cases = []
    seed_offset = draw_seed(DEVICE)
    shape = (3, 5)
    for priors in ("no", "broadcast", "full", "mixed full"):
        name = f"{priors} prior"
        mu, logvar = tensor(shape, dtype, 1, True), tensor(shape, dtype, 2, True, 0.5)
        prior_mu, prior_logvar = gaussian_priors(priors, shape, dtype)
        args = (mu, logvar, prior_mu, prior_logvar, seed_offset, 2, backend)
        cases.append(forward(name, iwae_ops._sample_gaussian_k_fwd, args))
        z, log_q, log_p = call(iwae_ops._sample_gaussian_k_fwd, args)
        # Every gradient (the priors' with log p's), and z's alone (no prior gradients).
        for which, grads in [("all", (like(z), like(log_q, 7), like(log_p, 8))), ("grad_z", (like(z), None, None))]:
            bwd_args = (*grads, *map(detached, (mu, logvar, prior_mu, prior_logvar)), seed_offset, 2,
                        prior_mu is not None, prior_logvar is not None, backend)
            cases.append(backward(f"{name}, {which}", iwae_ops._sample_gaussian_k_bwd, bwd_args))
    for x_shape, dim in [((4,), 0), ((4, 3, 5), 1), ((4, 3, 5), 2)]:
        name = f"{x_shape} dim={dim}"
        x = tensor(x_shape, dtype, 5, True, 3.0)
        cases.append(forward(name, iwae_ops._log_mean_exp_fwd, (x, dim, backend)))
        out, lse_parts = call(iwae_ops._log_mean_exp_fwd, (x, dim, backend))
        cases.append(backward(name, iwae_ops._log_mean_exp_bwd, (like(out), x.detach(), lse_parts, dim, backend)))
    for weights_shape, log_p_dtype, wanted in [((4, 3), dtype, (True, True, True)),
                                               ((4, 3, 2), dtype, (True, False, False)),
                                               ((4, 3), torch.float32, (False, True, True))]:
        name = f"{weights_shape} log_p {log_p_dtype}"
        log_weights = tuple(tensor(weights_shape, d, seed, True, 2.0)
                            for seed, d in enumerate((dtype, log_p_dtype, dtype)))
        cases.append(forward(name, iwae_ops._iwae_bound_fwd, (*log_weights, backend)))
        bound, lse_parts = call(iwae_ops._iwae_bound_fwd, (*log_weights, backend))
        bwd_args = (like(bound), *map(detached, log_weights), lse_parts, *wanted, backend)
        cases.append(backward(f"{name}, grads of {wanted}", iwae_ops._iwae_bound_bwd, bwd_args))
    return cases


def discrete_cases(backend, dtype):
    cases = []
    seed_offset = draw_seed(DEVICE)
    shape = (3, 2, 5)
    other_dtype = torch.float16 if dtype != torch.float16 else torch.bfloat16
    for prior_name, prior, hard in [
        ("no", None, True),
        ("broadcast", tensor((5,), dtype, 3, True), False),
        ("full", tensor(shape, dtype, 3, True), True),
        ("float32 full", tensor(shape, torch.float32, 3, True), False),
        # Read in float32 by the C++ backends, its gradient written in float32 and cast.
        ("other dtype full", tensor(shape, other_dtype, 3, True), True),
    ]:
        name = f"{prior_name} prior hard={hard}"
        logits = tensor(shape, dtype, 1, True)
        args = (logits, prior, seed_offset, 0.5, hard, backend)
        cases.append(forward(name, discrete_ops._categorical_fwd, args))
        z, kl = call(discrete_ops._categorical_fwd, args)
        # Without grad_kl the prior's gradient asked for is absent.
        for which, grads in [("all", (like(z), like(kl))), ("grad_z", (like(z), None))]:
            bwd_args = (*grads, logits.detach(), detached(prior), seed_offset, 0.5, prior is not None, backend)
            cases.append(backward(f"{name}, {which}", discrete_ops._categorical_bwd, bwd_args))
    return cases


def likelihood_cases(backend, dtype):
    cases = []
    shape = (3, 2, 4)
    logits = tensor(shape, dtype, 1, True, 2.0)
    unit = torch.rand(shape, generator=torch.Generator().manual_seed(2))
    targets = {
        "float x": unit.to(DEVICE, dtype).requires_grad_(),
        "float32 x": unit.to(DEVICE).requires_grad_(),
        # A bool x reaches the op as its bytes (fastvae.ops.likelihood._kernel_target).
        "bool x": (unit > 0.5).to(DEVICE).view(torch.uint8),
        "uint8 x": (unit > 0.5).to(DEVICE, torch.uint8),
    }
    for x_name, continuous, per_element in [("float x", False, True), ("float32 x", True, False),
                                            ("bool x", False, False), ("uint8 x", True, True)]:
        x = targets[x_name]
        name = f"{x_name} continuous={continuous} per_element={per_element}"
        args = (logits, x, continuous, per_element, backend)
        cases.append(forward(name, likelihood_ops._bernoulli_nll_fwd, args))
        (nll,) = call(likelihood_ops._bernoulli_nll_fwd, args)
        for wanted in [(True, True), (False, True)] if x.is_floating_point() else [(True, False)]:
            bwd_args = (like(nll), logits.detach(), x.detach(), continuous, *wanted, backend)
            cases.append(backward(f"{name}, grads of {wanted}", likelihood_ops._bernoulli_nll_bwd, bwd_args))
    mean, target = tensor(shape, dtype, 1, True), tensor(shape, dtype, 2, True)
    target_float32 = target.detach().float().requires_grad_()
    for logvar_name, logvar, x, per_element in [
        ("number", None, target, False),
        ("broadcast", tensor((1, 2, 1), dtype, 3, True, 0.3), target, True),
        ("full", tensor(shape, dtype, 3, True, 0.3), target, False),
        ("full", tensor(shape, dtype, 3, True, 0.3), target_float32, True),
        ("float32 full", tensor(shape, torch.float32, 3, True, 0.3), target, True),
    ]:
        name = f"{logvar_name} logvar, x {x.dtype}, per_element={per_element}"
        args = (mean, x, logvar, 0.5, per_element, backend)
        cases.append(forward(name, likelihood_ops._gaussian_nll_fwd, args))
        (nll,) = call(likelihood_ops._gaussian_nll_fwd, args)
        for wanted in [(True, True, logvar is not None), (True, False, False)]:
            bwd_args = (like(nll), mean.detach(), x.detach(), detached(logvar), 0.5, *wanted, backend)
            cases.append(backward(f"{name}, grads of {wanted}", likelihood_ops._gaussian_nll_bwd, bwd_args))
    return cases


def logistic_cases(backend, dtype):
    cases = []
    shape = (2, 3, 4)
    mean, log_scale = tensor(shape, dtype, 1, True, 0.5), tensor(shape, dtype, 2, True, 0.5)
    for x, per_element in [(levels(shape), True), (on_grid(levels(shape), dtype), False)]:
        name = f"x {x.dtype} per_element={per_element}"
        args = (mean, log_scale, x, 256, per_element, backend)
        cases.append(forward(name, logistic_ops._discretized_logistic_fwd, args))
        (nll,) = call(logistic_ops._discretized_logistic_fwd, args)
        bwd_args = (like(nll), mean.detach(), log_scale.detach(), x, 256, backend)
        cases.append(backward(name, logistic_ops._discretized_logistic_bwd, bwd_args))
    # The forward writes ∂nll/∂params too only where the backend's can (the cpu backend's).
    with_grads = (False, True) if logistic_ops._mixture_forward_writes_grad(backend) else (False,)
    num_mixtures = 2
    for channels, layout, x_kind, per_pixel in [
        (1, torch.contiguous_format, "uint8", True), (3, torch.contiguous_format, "float", False),
        (3, torch.channels_last, "uint8", False), (1, torch.channels_last, "float", True),
    ]:
        name = f"C={channels} {layout} params, {x_kind} x, per_pixel={per_pixel}"
        params_shape = (2, (3 if channels == 1 else 10) * num_mixtures, 3, 4)
        params = tensor(params_shape, dtype, 1, True, 0.5, layout)
        x = levels((2, channels, 3, 4))
        x = x if x_kind == "uint8" else on_grid(x, dtype)
        for with_grad in with_grads:
            args = (params, x, num_mixtures, 256, per_pixel, with_grad, backend)
            cases.append(forward(f"{name}, with_grad={with_grad}", logistic_ops._mixture_fwd, args))
        nll, _ = call(logistic_ops._mixture_fwd, (params, x, num_mixtures, 256, per_pixel, False, backend))
        cases.append(backward(name, logistic_ops._mixture_bwd, (like(nll), params.detach(), x, num_mixtures, 256,
                                                                backend)))
        # The backward after a forward that wrote ∂nll/∂params, in _grad_params_buffer's layout.
        grad_params = logistic_ops._grad_params_buffer(params).copy_(tensor(params_shape, dtype, 3))
        cases.append(backward(name, logistic_ops._mixture_scale_grad, (grad_params, like(nll))))
    return cases


def location_scale_cases(backend, dtype):
    cases = []
    seed_offset = draw_seed(DEVICE)
    # (shape, log q mode, KL mode, priors): 'row' and 'row' is reduction 'batch', 'sum' or
    # 'mean'; 'element' and 'element' reduction 'none'; 'row' and 'element' free bits.
    variants = [((3, 5), "row", "row", "no"), ((3, 5), "element", "element", "full"),
                ((3, 5), "row", "element", "broadcast"), ((2, 3, 4), "row", "row", "float32 mean"),
                ((3, 5), "row", "row", "mixed full")]
    for family, code in location_scale_ops.FAMILY_CODES.items():
        # Every variant for the Laplace; the others differ only in the kernels' formulas.
        for shape, log_q_mode, kl_mode, priors in variants if family == "laplace" else variants[:2]:
            name = f"{family}, {priors} prior, log q {log_q_mode}, KL {kl_mode}"
            loc, log_scale = tensor(shape, dtype, 1, True), tensor(shape, dtype, 2, True, 0.5)
            prior_loc, prior_log_scale = gaussian_priors(priors, shape, dtype)
            args = (loc, log_scale, prior_loc, prior_log_scale, seed_offset, code, log_q_mode, kl_mode, backend)
            cases.append(forward(name, location_scale_ops._location_scale_fwd, args))
            z, log_q, kl = call(location_scale_ops._location_scale_fwd, args)
            for which, grads in gradient_choices(("grad_z", "grad_log_q", "grad_kl"),
                                                 (like(z), like(log_q, 7), like(kl, 8))):
                bwd_args = (*grads, *map(detached, (loc, log_scale, prior_loc, prior_log_scale)), seed_offset, code,
                            prior_loc is not None, prior_log_scale is not None, backend)
                cases.append(backward(f"{name}, {which}", location_scale_ops._location_scale_bwd, bwd_args))
    return cases


def truncated_normal_cases(backend, dtype):
    cases = []
    seed_offset = draw_seed(DEVICE)
    for shape, per_element, priors, (low, high) in [
        ((3, 5), False, "no", (-1.0, 2.0)),
        ((3, 5), True, "broadcast", (-float("inf"), 0.5)),
        ((3, 5), False, "full", (0.25, float("inf"))),
        ((3, 5), True, "mixed full", (-1.0, 2.0)),
        ((2, 3, 2, 2), False, "broadcast", (-1.0, 2.0)),
    ]:
        name = f"{shape} per_element={per_element} {priors} prior [{low}, {high}]"
        loc, log_scale = tensor(shape, dtype, 1, True), tensor(shape, dtype, 2, True, 0.5)
        prior_loc, prior_log_scale = gaussian_priors(priors, shape, dtype)
        args = (loc, log_scale, prior_loc, prior_log_scale, seed_offset, low, high, per_element, backend)
        cases.append(forward(name, truncated_normal_ops._truncated_normal_fwd, args))
        z, log_q, kl = call(truncated_normal_ops._truncated_normal_fwd, args)
        # Without grad_kl, the prior gradients asked for are absent: only the KL reads the priors.
        for which, (grad_z, grad_log_q, grad_kl) in gradient_choices(("grad_z", "grad_log_q", "grad_kl"),
                                                                      (like(z), like(log_q), like(kl))):
            bwd_args = (grad_z, grad_log_q, grad_kl, *map(detached, (loc, log_scale, prior_loc, prior_log_scale)),
                        seed_offset, low, high, prior_loc is not None and grad_kl is not None,
                        prior_log_scale is not None and grad_kl is not None, backend)
            cases.append(backward(f"{name}, {which}", truncated_normal_ops._truncated_normal_bwd, bwd_args))
    return cases


def diffusion_cases(backend, dtype):
    cases = []
    seed_offset = draw_seed(DEVICE)
    # x and γ of one dtype or two (z in the promoted one); an empty batch.
    for shape, gamma_dtype in [((3, 5), dtype), ((3, 5), torch.float32), ((0, 4), dtype)]:
        name = f"{shape} gamma {gamma_dtype}"
        x, gamma = tensor(shape, dtype, 1, True), tensor(shape[:1], gamma_dtype, 2, True, 3.0)
        args = (x, gamma, seed_offset, backend)
        cases.append(forward(name, diffusion_ops._diffuse_fwd, args))
        (z,) = call(diffusion_ops._diffuse_fwd, args)
        for x_grad, gamma_grad in [(True, True), (True, False), (False, True)]:
            bwd_args = (like(z), x.detach(), gamma.detach(), seed_offset, x_grad, gamma_grad, backend)
            cases.append(backward(f"{name}, grads of {(x_grad, gamma_grad)}", diffusion_ops._diffuse_bwd, bwd_args))
        # The public op hands the launchers a float32 weight.
        eps_hat, weight = tensor(shape, dtype, 3, True), tensor(shape[:1], torch.float32, 4, True)
        args = (eps_hat, seed_offset, weight, backend)
        cases.append(forward(name, diffusion_ops._diffusion_loss_fwd, args))
        loss, _ = call(diffusion_ops._diffusion_loss_fwd, args)
        bwd_args = (like(loss), eps_hat.detach(), seed_offset, weight.detach(), backend)
        cases.append(backward(name, diffusion_ops._diffusion_loss_bwd, bwd_args))
    return cases


CASES = {
    "latent": latent_cases,
    "iwae": iwae_cases,
    "discrete": discrete_cases,
    "likelihood": likelihood_cases,
    "logistic": logistic_cases,
    "location_scale": location_scale_cases,
    "truncated_normal": truncated_normal_cases,
    "diffusion": diffusion_cases,
}


def test_every_custom_op_has_cases(kernel_backend):
    """The matrix covers each custom op (forward, backward and helper) of fastvae/ops."""
    modules = (latent_ops, iwae_ops, discrete_ops, likelihood_ops, logistic_ops, location_scale_ops,
               truncated_normal_ops, diffusion_ops)
    defined = {value._qualname for module in modules for value in vars(module).values()
               if isinstance(value, CustomOpDef)}
    covered = {case.op._qualname for family in FAMILIES for case in CASES[family](kernel_backend, torch.float32)}
    assert defined and covered == defined, sorted(defined - covered)


# --------------------------------------------------------------------------------------
# The checks
# --------------------------------------------------------------------------------------


def metadata(outputs, strides=True):
    """Shape, dtype, device and (an empty tensor's say nothing) strides of each output."""
    outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
    return [(tuple(t.shape), t.dtype, t.device.type, tuple(t.stride()) if strides and t.numel() else None)
            for t in outputs]


def fake_outputs(op, args):
    """The outputs of ``op`` under FakeTensorMode: its fake implementation's."""
    with FakeTensorMode() as mode:
        fake_args = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
        return op(*fake_args)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("family", FAMILIES)
def test_real_outputs_are_the_fakes(kernel_backend, family, dtype):
    """The real outputs' shapes, dtypes, devices and strides are the fake implementation's
    (what torch.compile traces with): the contract each op declares once."""
    for case in CASES[family](kernel_backend, dtype):
        args = tuple(map(detached, case.args))
        real = metadata(case.op(*args))
        assert real == metadata(fake_outputs(case.op, args)), f"{case.name} on {kernel_backend} in {dtype}"


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("family", FAMILIES)
def test_opcheck(kernel_backend, family, dtype):
    """torch.library.opcheck on every variant of the family's ops."""
    for case in CASES[family](kernel_backend, dtype):
        checks = AOT_CHECKS if case.forward and dtype == torch.float32 else CHECKS
        try:
            torch.library.opcheck(case.op, case.args, test_utils=checks)
        except Exception as error:
            raise AssertionError(f"{case.name} on {kernel_backend} in {dtype}: {error}") from error


def test_full_size_bfloat16_prior_gradient_is_in_its_dtype(kernel_backend):
    """A full-size bfloat16 prior's gradient comes back in bfloat16 from both Gaussian
    backwards, as their fakes say (the cpu backend wrote float32)."""
    seed_offset = draw_seed(DEVICE)
    mu, logvar, prior_mu, prior_logvar = (tensor((4, 6), torch.bfloat16, seed) for seed in range(4))
    grads = latent_ops._gaussian_latent_bwd(None, tensor((4,), seed=5), mu, logvar, prior_mu, prior_logvar,
                                            seed_offset, None, True, True, kernel_backend)
    assert [g.dtype for g in grads] == [torch.bfloat16] * 4
    grads = iwae_ops._sample_gaussian_k_bwd(None, None, tensor((2, 4), seed=5), mu, logvar, prior_mu, prior_logvar,
                                            seed_offset, 2, True, True, kernel_backend)
    assert [g.dtype for g in grads] == [torch.bfloat16] * 4


# --------------------------------------------------------------------------------------
# The torch backend: the public ops compiled
# --------------------------------------------------------------------------------------


def public_op_calls(dtype):
    """(name, function of leaf tensors, those leaves) for each public op with a gradient,
    on inputs of ``dtype``."""
    mu, logvar = tensor((3, 5), dtype, 1, True), tensor((3, 5), dtype, 2, True, 0.5)
    prior_mu, prior_logvar = tensor((3, 5), dtype, 3, True), tensor((1, 5), dtype, 4, True, 0.3)
    latent = [mu, logvar, prior_mu, prior_logvar]
    logits, prior_logits = tensor((3, 2, 5), dtype, 1, True), tensor((5,), dtype, 2, True)
    noise_logvar = tensor((1, 2, 1), dtype, 5, True, 0.3)
    bits = (torch.rand(3, 2, 5, generator=torch.Generator().manual_seed(2)) > 0.5).to(DEVICE)
    log_weights = [tensor((4, 3), dtype, seed, True, 2.0) for seed in range(3)]
    data = levels((2, 3, 4, 4))
    params = tensor((2, 20, 4, 4), dtype, 6, True, 0.5, torch.channels_last)
    mean, log_scale = tensor((2, 3, 4, 4), dtype, 7, True, 0.5), tensor((2, 3, 4, 4), dtype, 8, True, 0.5)
    return [
        ("reparameterize", fastvae.reparameterize, [mu, logvar]),
        ("gaussian_kl", lambda *t: fastvae.gaussian_kl(*t, free_bits=0.1), latent),
        ("sample_gaussian", lambda *t: fastvae.sample_gaussian(*t, reduction="none"), latent),
        ("sample_gaussian_k", lambda m, v, pm, pv: fastvae.sample_gaussian_k(m, v, 2, pm, pv), latent),
        ("sample_truncated_normal", lambda m, v, pm, pv: fastvae.sample_truncated_normal(m, v, -1.0, 2.0, pm, pv),
         latent),
        ("log_mean_exp", lambda x: fastvae.log_mean_exp(x, dim=1), log_weights[:1]),
        ("iwae_bound", fastvae.iwae_bound, log_weights),
        ("sample_categorical", lambda lg, p: fastvae.sample_categorical(lg, 0.5, hard=True, prior_logits=p),
         [logits, prior_logits]),
        ("bernoulli_nll", lambda lg: fastvae.bernoulli_nll(lg, bits), [logits]),
        ("continuous_bernoulli_nll", lambda lg: fastvae.continuous_bernoulli_nll(lg, bits.to(dtype), "none"),
         [logits]),
        ("gaussian_nll", lambda m, v: fastvae.gaussian_nll(m, bits.to(dtype), v), [logits, noise_logvar]),
        ("discretized_logistic_nll", lambda m, s: fastvae.discretized_logistic_nll(m, s, data), [mean, log_scale]),
        ("discretized_logistic_mixture_nll",
         lambda p: fastvae.discretized_logistic_mixture_nll(p, data, 2, reduction="none"), [params]),
        ("sample_laplace", lambda *t: fastvae.sample_laplace(*t, free_bits=0.1), latent),
        ("sample_logistic", lambda *t: fastvae.sample_logistic(*t, reduction="none"), latent),
        ("sample_cauchy", lambda *t: fastvae.sample_cauchy(*t, reduction="mean"), latent),
        ("diffuse", lambda m, v: fastvae.diffuse(m, v[:, 0]), [mu, logvar]),
        ("diffusion_loss", lambda m, v: fastvae.diffusion_loss(m, draw_seed(DEVICE), v[:, 0], "mean"), [mu, logvar]),
    ]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
def test_torch_backend_compiles_to_eager_shapes_and_dtypes(dtype):
    """Each public op on the torch backend, compiled with fullgraph=True, returns outputs
    and gradients of eager's shapes and dtypes.  One graph holds every op (one compile per
    dtype); it runs Dynamo, AOT autograd and inductor's decompositions and partitioner,
    without inductor's code generation (tests/test_compile.py compiles with inductor)."""
    import torch._dynamo

    calls = public_op_calls(dtype)
    leaves = list({id(t): t for _, _, op_leaves in calls for t in op_leaves}.values())

    def every_op():
        return [function(*op_leaves) for _, function, op_leaves in calls]

    def shapes_and_dtypes(run):
        outputs = [result if isinstance(result, tuple) else (result,) for result in run()]
        total = sum(o.float().sum() for result in outputs for o in result if o.requires_grad)
        grads = torch.autograd.grad(total, leaves)
        # Strides are no contract here: eager autograd hands some gradients back expanded.
        return [metadata(result, strides=False) for result in outputs], metadata(grads, strides=False)

    torch._dynamo.reset()
    with fastvae.use_backend("torch"):
        eager = shapes_and_dtypes(every_op)
        compiled = shapes_and_dtypes(torch.compile(every_op, fullgraph=True, backend="aot_eager_decomp_partition"))
    for (name, _, _), eager_outputs, compiled_outputs in zip(calls, eager[0], compiled[0]):
        assert compiled_outputs == eager_outputs, f"{name} in {dtype}"
    assert compiled[1] == eager[1], f"the gradients in {dtype}"


# --------------------------------------------------------------------------------------
# The direct call (ops/_common.py, fused_call): eager calls skip torch.library's dispatch
# --------------------------------------------------------------------------------------


def every_public_op_call(dtype=torch.float32):
    """One call of every public op with a custom op, with inputs that require grad and
    the options that change the kernels, as (outputs, differentiable inputs)."""
    torch.manual_seed(3)
    mu, logvar = tensor((6, 3, 5), dtype, 1, True), tensor((6, 3, 5), dtype, 2, True, 0.5)
    prior_mu, prior_logvar = tensor((1, 3, 1), dtype, 4, True), tensor((6, 3, 5), dtype, 5, True)
    outputs = list(fastvae.sample_gaussian(mu, logvar, prior_mu, prior_logvar))
    outputs.append(fastvae.gaussian_kl(mu, logvar, free_bits=0.2, reduction="none"))
    outputs.append(fastvae.reparameterize(mu, logvar))
    outputs.extend(fastvae.sample_gaussian_k(mu, logvar, 3, prior_mu, prior_logvar))
    outputs.extend(fastvae.sample_truncated_normal(mu, logvar, -0.5, float("inf"), prior_mu, prior_logvar))
    outputs.extend(fastvae.sample_truncated_normal(mu, logvar, -1.0, 1.0, reduction="none"))
    log_w = tensor((5, 7), dtype, 6, True)
    outputs.append(fastvae.log_mean_exp(log_w, dim=0))
    outputs.append(fastvae.iwae_bound(log_w, log_w * 0.5, log_w * 0.25))
    logits = tensor((4, 2, 6), dtype, 7, True)
    outputs.extend(fastvae.sample_categorical(logits, tau=0.7, prior_logits=tensor((1, 2, 6), dtype, 8, True)))
    x01 = torch.rand(4, 12, dtype=dtype)
    bern_logits = tensor((4, 12), dtype, 9, True)
    outputs.append(fastvae.bernoulli_nll(bern_logits, (x01 > 0.5).to(dtype)))
    outputs.append(fastvae.continuous_bernoulli_nll(bern_logits, x01))
    mean = tensor((4, 12), dtype, 10, True)
    outputs.append(fastvae.gaussian_nll(mean, x01, tensor((1, 12), dtype, 11, True)))
    outputs.append(fastvae.gaussian_nll(mean, x01, -1.0, reduction="none"))
    x_img = on_grid(levels((2, 3, 4, 4)), dtype)
    outputs.append(fastvae.discretized_logistic_nll(tensor((2, 3, 4, 4), dtype, 12, True),
                                                    tensor((2, 3, 4, 4), dtype, 13, True, 0.3) - 2, x_img))
    params = tensor((2, 30, 4, 4), dtype, 14, True)
    outputs.append(fastvae.discretized_logistic_mixture_nll(params, x_img, num_mixtures=3))
    outputs.append(fastvae.discretized_logistic_mixture_nll(params, x_img, num_mixtures=3, reduction="none"))
    outputs.extend(fastvae.sample_laplace(mu, logvar, prior_mu, prior_logvar, free_bits=0.2))
    outputs.extend(fastvae.sample_logistic(mu, logvar, prior_mu, prior_logvar, reduction="none"))
    outputs.extend(fastvae.sample_cauchy(mu, logvar, prior_mu))
    z_t, noise_seed = fastvae.diffuse(mu, logvar[:, 0, 0])
    outputs.append(z_t)
    outputs.append(fastvae.diffusion_loss(z_t, noise_seed, logvar[:, 1, 0]))
    inputs = [mu, logvar, prior_mu, prior_logvar, log_w, logits, bern_logits, mean, params]
    return outputs, inputs


def outputs_and_grads():
    torch.manual_seed(5)
    outputs, inputs = every_public_op_call()
    loss = sum((o.float() * torch.linspace(-1, 1, o.numel()).reshape(o.shape)).sum() for o in outputs)
    return outputs + list(torch.autograd.grad(loss, inputs, allow_unused=True))


def test_eager_calls_skip_the_dispatcher_with_the_same_results(kernel_backend, monkeypatch):
    """An eager call on plain tensors runs each custom op's implementation and registered
    autograd directly: no custom op goes through torch.library, forward or backward, and
    every output and gradient has the bits of the dispatched call."""
    from fastvae.ops import _common

    dispatched_ops = []
    real_call = CustomOpDef.__call__

    def counting_call(self, *args, **kwargs):
        dispatched_ops.append(self._name)
        return real_call(self, *args, **kwargs)

    monkeypatch.setattr(CustomOpDef, "__call__", counting_call)
    direct = outputs_and_grads()
    assert dispatched_ops == [], f"an eager call went through torch.library: {dispatched_ops}"
    monkeypatch.setattr(_common, "direct_call_ok", lambda *tensors: False)
    dispatched = outputs_and_grads()
    assert len(set(dispatched_ops)) >= 15
    assert len(direct) == len(dispatched)
    for a, b in zip(direct, dispatched):
        assert (a is None and b is None) or torch.equal(a, b)


def test_under_a_dispatch_mode_the_custom_ops_run(kernel_backend):
    """A dispatch mode (what torch.compile and the benchmarks' op recorder use) sees the
    custom ops, forward and backward."""
    from torch.utils._python_dispatch import TorchDispatchMode

    seen = []

    class Recorder(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(str(func))
            return func(*args, **(kwargs or {}))

    with Recorder():
        outputs_and_grads()
    for name in ("gaussian_latent_fwd", "gaussian_latent_bwd", "bernoulli_nll_fwd", "bernoulli_nll_bwd",
                 "discretized_logistic_mixture_fwd", "sample_gaussian_k_bwd", "iwae_bound_bwd", "categorical_bwd",
                 "location_scale_fwd", "location_scale_bwd", "truncated_normal_fwd", "truncated_normal_bwd",
                 "diffuse_fwd", "diffuse_bwd", "diffusion_loss_fwd", "diffusion_loss_bwd"):
        assert any(f"fastvae.{name}" in op for op in seen), name


def test_direct_call_still_refuses_double_backward(kernel_backend):
    mu, logvar = tensor((4, 5), requires_grad=True), tensor((4, 5), seed=2, requires_grad=True)
    kl = fastvae.gaussian_kl(mu, logvar)
    (grad_mu,) = torch.autograd.grad(kl.sum(), mu, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        grad_mu.sum().backward()


def test_mixture_gradient_scaled_in_place_only_where_the_graph_is_freed():
    """The cpu backend's mixture forward writes ∂nll/∂params; its eager backward scales
    that buffer in place (no second params-sized buffer) unless the graph is retained,
    so a second backward through a retained graph gets the same gradient."""
    if "cpu" not in fastvae.backends.available("cpu"):
        pytest.skip("the CPU C++ backend is not built here")
    params = tensor((2, 30, 4, 4), seed=14, requires_grad=True)
    x = on_grid(levels((2, 3, 4, 4)), torch.float32)
    grad_nll = torch.tensor([0.75, -1.5])
    with fastvae.use_backend("cpu"):
        nll = fastvae.discretized_logistic_mixture_nll(params, x, num_mixtures=3)
        (first,) = torch.autograd.grad(nll, params, grad_nll, retain_graph=True)
        (second,) = torch.autograd.grad(nll, params, grad_nll)
        (dispatched,) = torch.autograd.grad(logistic_ops._mixture_fwd(params, x, 3, 256, False, True, "cpu")[0],
                                            params, grad_nll)
    assert torch.equal(first, second) and torch.equal(first, dispatched)
    assert first.data_ptr() != second.data_ptr()
