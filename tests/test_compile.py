"""torch.compile: a small VAE whose latent uses sample_gaussian compiles with
fullgraph=True (no graph break), and with inductor's fallback_random its loss and
gradients equal eager's, for the torch backend and every kernel backend present."""
import pytest
import torch

import fastvae
from tests.conftest import DEVICE


class TinyVAE(torch.nn.Module):
    def __init__(self, data_dim=12, latent_dim=4, hidden=16):
        super().__init__()
        self.encoder = torch.nn.Sequential(torch.nn.Linear(data_dim, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 2 * latent_dim))
        self.decoder = torch.nn.Sequential(torch.nn.Linear(latent_dim, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, data_dim))
        self.prior_mu = torch.nn.Parameter(torch.zeros(latent_dim))

    def forward(self, x):
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        z, kl = fastvae.sample_gaussian(mu, logvar, prior_mu=self.prior_mu, free_bits=0.01)
        logits = self.decoder(z)
        nll = torch.nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(1)
        return (nll + kl).mean()


def loss_and_grads(model, fn, x, seed):
    model.zero_grad()
    torch.manual_seed(seed)
    loss = fn(x)
    loss.backward()
    return loss.detach(), [p.grad.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("backend", ["torch"] + [b for b in fastvae.backends.available(DEVICE) if b != "torch"])
def test_compiled_vae_equals_eager(backend, fallback_random):
    torch.manual_seed(0)
    model = TinyVAE().to(DEVICE)
    x = torch.rand(32, 12, device=DEVICE).round()
    with fastvae.use_backend(backend):
        eager_loss, eager_grads = loss_and_grads(model, model, x, seed=5)
        compiled = torch.compile(model, fullgraph=True)
        compiled_loss, compiled_grads = loss_and_grads(model, compiled, x, seed=5)
        # The seed is drawn from the generator inside the graph: a second call advances
        # it like eager does.
        compiled_again, _ = loss_and_grads(model, compiled, x, seed=6)
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-5, atol=1e-5)
    for compiled_grad, eager_grad in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(compiled_grad, eager_grad, rtol=1e-4, atol=1e-5)
    assert not torch.equal(compiled_again, compiled_loss)


def test_reference_iwae_and_logistic_trace_without_graph_breaks():
    """The torch backend's log_mean_exp (a detached, non-finite-guarded shift), log q from ε
    and the logistic's bin (NaN and past-the-grid values) trace with fullgraph=True and
    equal eager, values and gradients."""
    import torch._dynamo

    torch._dynamo.reset()
    generator = torch.Generator().manual_seed(0)
    mu = torch.randn(4, 3, generator=generator).to(DEVICE).requires_grad_()
    logvar = torch.randn(4, 3, generator=generator).to(DEVICE).requires_grad_()
    params = torch.randn(4, 3, 5, generator=generator).to(DEVICE).requires_grad_()
    x = torch.randint(0, 256, (4, 1, 5), generator=generator).to(DEVICE, torch.uint8)

    def objective(mu, logvar, params):
        z, log_q, log_p = fastvae.sample_gaussian_k(mu, logvar, 3)
        log_px_z = -fastvae.discretized_logistic_mixture_nll(params, x, 1) - z.square().sum(-1)
        return -(fastvae.iwae_bound(log_px_z, log_p, log_q).sum() + fastvae.log_mean_exp(log_q, dim=0).sum())

    with fastvae.use_backend("torch"):
        torch.manual_seed(3)
        eager = objective(mu, logvar, params)
        eager_grads = torch.autograd.grad(eager, [mu, logvar, params])
        compiled = torch.compile(objective, fullgraph=True, backend="aot_eager")
        torch.manual_seed(3)
        result = compiled(mu, logvar, params)
        grads = torch.autograd.grad(result, [mu, logvar, params])
    torch.testing.assert_close(result, eager)
    for grad, eager_grad in zip(grads, eager_grads):
        torch.testing.assert_close(grad, eager_grad)


def test_backend_lookups_carry_dynamo_constant_result_mark():
    """fastvae marks its backend lookups as torch.compiler.assume_constant_result does,
    without importing torch._dynamo at import time (fastvae.ops._common): the mark must
    be exactly what torch's decorator sets, or torch.compile would trace into them."""
    from fastvae.ops._common import _resolve
    from fastvae.ops.logistic import _mixture_forward_writes_grad

    def probe():
        return 0

    unmarked = dict(vars(probe))
    torch.compiler.assume_constant_result(probe)
    mark = {name: value for name, value in vars(probe).items() if name not in unmarked}
    assert mark, "torch.compiler.assume_constant_result no longer marks the function: update fastvae.ops._common"
    for function in (_resolve, _mixture_forward_writes_grad):
        assert {name: vars(function).get(name) for name in mark} == mark, function.__name__


def test_compiled_hierarchical_latent_against_bfloat16_prior(fallback_random):
    """The hierarchical VAE's latent under --autocast --compile: NVAE's residual posterior
    (mu = prior_mu + Δmu, fastvae.models.HierarchicalVAE) through fastvae.nn.sample_latent
    against its full-size bfloat16 conditional prior, on the cpu backend, compiled with
    inductor.  The compiled backward adds the prior's gradient from the fused op to the
    one through mu, reading it as the fake's bfloat16: the op must return that dtype (it
    returned float32, whose bytes the compiled add then misread)."""
    from fastvae.nn.latent import sample_latent

    cpu = torch.device("cpu")
    if "cpu" not in fastvae.backends.available(cpu):
        pytest.skip("the cpu backend is not built here")
    generator = torch.Generator().manual_seed(0)
    prior_mu, prior_logvar, delta_mu, delta_logvar = (
        (scale * torch.randn(6, 8, generator=generator)).to(torch.bfloat16).requires_grad_()
        for scale in (1.0, 0.3, 0.5, 0.3)
    )

    def latent_loss(prior_mu, prior_logvar, delta_mu, delta_logvar):
        out = sample_latent(prior_mu + delta_mu, prior_logvar + delta_logvar, prior_mu, prior_logvar, free_bits=0.05)
        return (out.z.float().square().sum(1) + out.kl_objective).mean()

    leaves = [prior_mu, prior_logvar, delta_mu, delta_logvar]
    with fastvae.use_backend("cpu"):
        torch.manual_seed(3)
        eager_loss = latent_loss(*leaves)
        eager_grads = torch.autograd.grad(eager_loss, leaves)
        compiled = torch.compile(latent_loss, fullgraph=True)
        torch.manual_seed(3)
        compiled_loss = compiled(*leaves)
        compiled_grads = torch.autograd.grad(compiled_loss, leaves)
    torch.testing.assert_close(compiled_loss, eager_loss)
    for compiled_grad, eager_grad in zip(compiled_grads, eager_grads):
        assert compiled_grad.dtype == eager_grad.dtype == torch.bfloat16
        torch.testing.assert_close(compiled_grad, eager_grad, rtol=2e-2, atol=2e-2)


DEEP_TINY = {"name": "deep", "data_shape": [1, 8, 8], "resolutions": [8, 4, 1], "width": 8, "encoder_blocks": [1, 1, 1],
             "decoder_groups": [1, 2, 1], "latent_channels": 2}


@pytest.mark.slow
@pytest.mark.parametrize("options", [{}, {"kl_balancing": True, "spectral_coeff": 0.01}, {"objective": "iwae",
                                                                                          "num_samples": 3}],
                         ids=["elbo", "balanced-spectral", "iwae"])
def test_compiled_deep_vae_equals_eager(options):
    """The deep hierarchical VAE (fastvae.models.DeepVAE) on the torch backend traces
    with fullgraph=True (no graph break: the group loop, the fused latent per group,
    KL balancing and the spectral power iteration), and its loss and gradients equal
    eager's.  aot_eager traces forward and backward as inductor does, without inductor's
    C++ code generation (minutes for this model on a small CPU)."""
    import torch._dynamo

    from fastvae.models import build_model

    torch._dynamo.reset()
    torch.manual_seed(0)
    eager_model = build_model({**DEEP_TINY, **options})
    compiled_model = build_model({**DEEP_TINY, **options})
    compiled_model.load_state_dict(eager_model.state_dict())
    x = (torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(1)) < 0.5).float()
    results = []
    with fastvae.use_backend("torch"):
        for model, run in ((eager_model, eager_model), (compiled_model, torch.compile(compiled_model, fullgraph=True,
                                                                                      backend="aot_eager"))):
            torch.manual_seed(5)
            out = run(x, beta=0.5, free_bits=0.0)
            out.loss.backward()
            results.append((out.loss.detach(), out.kl_per_dim, [p.grad for p in model.parameters()]))
    torch._dynamo.reset()
    (eager_loss, eager_kl, eager_grads), (loss, kl, grads) = results
    torch.testing.assert_close(loss, eager_loss)
    torch.testing.assert_close(kl, eager_kl)
    assert len(grads) == len(eager_grads) and all(g is not None for g in grads)
    for grad, eager_grad in zip(grads, eager_grads):
        torch.testing.assert_close(grad, eager_grad, rtol=1e-4, atol=1e-5)
    if options.get("spectral_coeff"):
        # The power iteration's vectors advanced in the compiled run as in eager.
        for (name, eager_u), (_, u) in zip(eager_model.named_buffers(), compiled_model.named_buffers()):
            torch.testing.assert_close(u, eager_u, msg=name)
