"""The score-function objective (fastvae.models.score_function): the surrogate's encoder
gradient is (ℓ − b)·∇ log q at the drawn z and the decoder's the ordinary ELBO gradient;
the reported ELBO is the true ELBO (the reparameterized objective's, draw for draw); the
running mean and the learned baseline; training with it raises the ELBO (Gaussian and
categorical latents); a checkpointed model keeps its baseline; clear errors."""
import pytest
import torch

from fastvae.models import ConvVAE, DiscreteVAE, HierarchicalVAE, LearningSignalBaseline, MLPVAE, build_model
from fastvae.models.score_function import learning_signal

DATA_SIZE = 12


def binary_batch(count: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(count, DATA_SIZE, generator=generator) < 0.4).float()


def patterned_batch(count: int) -> torch.Tensor:
    """``count`` points, each one of four fixed binary patterns: data a latent can explain."""
    patterns = binary_batch(4, seed=5)
    return patterns[torch.arange(count) % 4]


def tiny_mlp(baseline: str = "none", **kwargs) -> MLPVAE:
    torch.manual_seed(0)
    return MLPVAE(data_shape=(DATA_SIZE,), hidden_sizes=(6,), latent_dim=2, objective="score_function",
                  baseline=baseline, **kwargs)


def tiny_discrete(baseline: str = "none") -> DiscreteVAE:
    torch.manual_seed(0)
    return DiscreteVAE(data_shape=(DATA_SIZE,), hidden_sizes=(6,), num_variables=2, num_categories=3,
                       objective="score_function", baseline=baseline)


@pytest.mark.parametrize("make", [tiny_mlp, tiny_discrete], ids=["gaussian", "categorical"])
def test_the_surrogate_gradient_is_the_score_function(make):
    """With the same seed the forward draws the z of score_function_terms; the encoder's
    gradient is −mean(ℓ·∇ log q(z|x)) and the decoder's −mean(∇ log p(x|z)), at that z."""
    model, x = make(), binary_batch(5)
    encoder = [p for m in (model.encoder, model.latent) for p in m.parameters()]
    decoder = list(model.decoder.parameters())
    torch.manual_seed(4)
    loss = model(x).loss
    actual = torch.autograd.grad(loss, encoder + decoder)
    torch.manual_seed(4)
    log_px_z, log_p, log_q, _ = model.score_function_terms(x)
    signal = learning_signal(log_px_z, log_p, log_q)
    expected = torch.autograd.grad(-(signal * log_q).mean(), encoder) + torch.autograd.grad(-log_px_z.mean(), decoder)
    for got, want in zip(actual, expected):
        torch.testing.assert_close(got, want)
    # The loss's value is the negated ELBO estimate of the draw.
    torch.testing.assert_close(loss, -signal.mean())


def test_the_reported_elbo_is_the_true_elbo():
    """The same draw as the reparameterized objective gives the same ELBO, nll and
    analytic KL, value for value."""
    model, x = tiny_mlp(), binary_batch(6)
    torch.manual_seed(2)
    score = model(x)
    torch.manual_seed(2)
    reparameterized = model.elbo_output(x)
    for name in ("elbo", "nll", "kl", "kl_per_dim"):
        torch.testing.assert_close(getattr(score, name), getattr(reparameterized, name).detach())
    discrete = tiny_discrete()
    out = discrete(x)
    probs = torch.softmax(discrete.logits(x), -1)
    kl = (probs * (probs.log() + torch.log(torch.tensor(3.0)))).sum((1, 2))
    torch.testing.assert_close(out.kl, kl.detach())
    torch.testing.assert_close(out.elbo, -(out.nll + out.kl))


def test_the_running_mean_baseline():
    baseline = LearningSignalBaseline("running_mean", (DATA_SIZE,), decay=0.9)
    x = binary_batch(3)
    first, second = torch.tensor([-10.0, -12.0, -14.0]), torch.tensor([-20.0, -20.0, -20.0])
    b, penalty = baseline(x, first)
    assert torch.equal(b, torch.zeros(3)) and float(penalty) == 0  # nothing seen yet
    assert float(baseline.running_mean) == -12.0 and int(baseline.updates) == 1
    b, _ = baseline(x, second)
    assert torch.equal(b, torch.full((3,), -12.0))  # the value before this batch's update
    assert float(baseline.running_mean) == pytest.approx(0.9 * -12.0 + 0.1 * -20.0)
    baseline.eval()
    baseline(x, second)
    assert int(baseline.updates) == 2  # evaluation leaves it alone
    assert set(baseline.state_dict()) == {"running_mean", "updates"}


def test_the_learned_baseline_fits_the_signal():
    """b(x) = running mean + network(x), whose squared error to the signal falls as it
    trains (the signal here depends on x, which a constant cannot follow)."""
    torch.manual_seed(0)
    baseline = LearningSignalBaseline("learned", (DATA_SIZE,))
    x = binary_batch(16)
    signal = -50.0 - 10.0 * x[:, :4].sum(1)
    optimizer = torch.optim.Adam(baseline.parameters(), lr=1e-2)
    errors = []
    for _ in range(150):
        _, penalty = baseline(x, signal)
        errors.append(float(penalty.detach()))
        optimizer.zero_grad()
        penalty.backward()
        optimizer.step()
    constant_error = float(signal.var(unbiased=False))
    assert errors[-1] < 0.1 * constant_error
    b, _ = baseline(x, signal)
    assert not b.requires_grad


@pytest.mark.parametrize("make, baseline", [(tiny_mlp, "learned"), (tiny_mlp, "running_mean"),
                                            (tiny_discrete, "learned")])
def test_training_by_the_score_function_raises_the_elbo(make, baseline):
    model, x = make(baseline), patterned_batch(32)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)

    def elbo() -> float:
        model.eval()
        torch.manual_seed(9)
        with torch.no_grad():
            value = torch.stack([model(x).elbo.mean() for _ in range(20)]).mean()
        model.train()
        return float(value)

    before = elbo()
    torch.manual_seed(1)
    for _ in range(150):
        loss = model(x).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert elbo() > before + 2.0


def test_the_baseline_is_part_of_the_model_state():
    model, x = tiny_mlp("learned"), binary_batch(4)
    model(x).loss.backward()
    rebuilt = build_model(model.config)
    rebuilt.load_state_dict(model.state_dict())
    assert rebuilt.config["baseline"] == "learned" and int(rebuilt.control_variate.updates) == 1
    assert float(rebuilt.control_variate.running_mean) == float(model.control_variate.running_mean)
    names = [name for name, _ in model.named_parameters()]
    assert "control_variate.network.1.weight" in names  # the optimizer trains it


def test_conv_model_takes_the_objective():
    torch.manual_seed(0)
    model = ConvVAE(data_shape=(1, 8, 8), channels=(2,), hidden_dim=4, latent_dim=2, objective="score_function",
                    baseline="running_mean")
    out = model((torch.rand(3, 1, 8, 8) < 0.5).float())
    out.loss.backward()
    assert out.elbo.shape == (3,) and model.latent.head.weight.grad is not None


def test_errors_name_the_setting():
    with pytest.raises(ValueError, match="MLPVAE: baseline='learned' is a control variate of the score-function"):
        MLPVAE(data_shape=(DATA_SIZE,), baseline="learned")
    with pytest.raises(ValueError, match="MLPVAE: baseline must be one of"):
        MLPVAE(data_shape=(DATA_SIZE,), objective="score_function", baseline="mean")
    with pytest.raises(ValueError, match=r"DiscreteVAE: objective must be one of \['elbo', 'score_function'\]"):
        DiscreteVAE(data_shape=(DATA_SIZE,), objective="iwae")
    with pytest.raises(ValueError, match=r"HierarchicalVAE: objective must be one of \['elbo', 'iwae'\]"):
        HierarchicalVAE(data_shape=(DATA_SIZE,), objective="score_function")
    with pytest.raises(ValueError, match="free bits"):
        tiny_mlp()(binary_batch(2), free_bits=0.5)
    with pytest.raises(ValueError, match="LearningSignalBaseline: kind must be one of"):
        LearningSignalBaseline("ema", (DATA_SIZE,))
