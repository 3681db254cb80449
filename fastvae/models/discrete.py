r"""A discrete VAE: N categorical latent variables of K classes, relaxed by Gumbel-softmax
for training (Jang et al.; Maddison et al. 2017), with a uniform prior."""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .. import ops
from ..nn.elbo import ELBO
from ..nn.latent import CategoricalLatent
from .base import VAE, VAEOutput, register_model
from .layers import activation as make_activation
from .layers import check_batch, check_number, data_shape_of, mlp, positive_int, positive_ints
from .objectives import check_forward_args, repeat_batch
from .score_function import LearningSignalBaseline, check_baseline, learning_signal, score_function_loss
from .single import build_likelihood, flat_size


def anneal_temperature(step: int, initial: float = 1.0, minimum: float = 0.5, rate: float = 1e-4) -> float:
    r"""Jang et al.'s Gumbel-softmax temperature schedule: τ = max(minimum, initial·e^(−rate·step)).

    Example::

        >>> model.temperature = anneal_temperature(step)     # before each training step
    """
    return max(float(minimum), float(initial) * math.exp(-float(rate) * step))


@register_model("discrete")
class DiscreteVAE(VAE):
    r"""A VAE with ``num_variables`` categorical latents of ``num_categories`` classes each.

    Encoder: an MLP (data flattened) and a :class:`fastvae.nn.CategoricalLatent` head
    (logits [B, N, K]); decoder: an MLP from the N·K-dimensional one-hot (or relaxed)
    latent to the likelihood's parameters, Bernoulli by default.  The prior is uniform and
    the KL analytic (fused with the Gumbel-softmax sampling).

    Training draws relaxed samples at temperature ``self.temperature``, an attribute a
    trainer or user may change between steps (see :func:`anneal_temperature`); ``hard``
    uses straight-through one-hot samples.  The importance weights of
    :meth:`log_importance_weights` (the IWAE estimate of log p(x)) use the discrete
    distributions themselves: exact categorical samples (Gumbel-max) and their
    categorical log-probabilities, not the relaxation, so the estimate is of the model's
    true log p(x).

    ``latent_dim`` is N·K: ``posterior_mean`` is E_q[one-hot z] (the probabilities),
    flattened; ``kl_per_dim`` has N entries, one per categorical variable.

    Args:
        data_shape: the shape of one data point.
        hidden_sizes: the encoder's hidden widths (the decoder's, reversed).
        num_variables: N.
        num_categories: K (>= 2).
        activation: as :class:`fastvae.models.MLPVAE` ('relu' by default).
        temperature: the initial Gumbel-softmax temperature.
        hard: straight-through one-hot samples in training.
        likelihood, num_mixtures, likelihood_kwargs: as :class:`fastvae.models.MLPVAE`.
        objective: 'elbo' (the relaxed ELBO, Gumbel-softmax) or 'score_function' (exact
            categorical samples, the encoder trained by the REINFORCE gradient of the
            true ELBO: :mod:`fastvae.models.score_function`; temperature and hard unused).
        baseline: the score-function estimator's control variate: 'none', 'running_mean'
            or 'learned'.

    Example::

        >>> model = DiscreteVAE(data_shape=(784,), num_variables=20, num_categories=10)
        >>> model.temperature = 0.5
        >>> out = model(x)
    """

    def __init__(
        self,
        data_shape: Sequence[int] = (784,),
        hidden_sizes: Sequence[int] = (256,),
        num_variables: int = 20,
        num_categories: int = 10,
        activation: str = "relu",
        temperature: float = 1.0,
        hard: bool = False,
        likelihood: str = "bernoulli",
        num_mixtures: int = 10,
        likelihood_kwargs: Optional[dict] = None,
        objective: str = "elbo",
        baseline: str = "none",
    ):
        super().__init__()
        where = self._where = "fastvae.models.DiscreteVAE"
        if objective not in ("elbo", "score_function"):
            raise ValueError(f"{where}: objective must be one of ['elbo', 'score_function'], got {objective!r}")
        self.objective = objective
        self.baseline = check_baseline(where, baseline, objective)
        self.data_shape = data_shape_of(where, list(data_shape))
        hidden = positive_ints(where, "hidden_sizes", list(hidden_sizes), allow_empty=True)
        self.num_variables = positive_int(where, "num_variables", num_variables)
        self.num_categories = positive_int(where, "num_categories", num_categories)
        make_activation(where, activation)
        self.likelihood, param_channels = build_likelihood(where, likelihood, self.data_shape, num_mixtures,
                                                           likelihood_kwargs)
        self.latent_dim = self.num_variables * self.num_categories
        self._params_shape = (param_channels,) + self.data_shape[1:]
        data_size = flat_size(self.data_shape)
        self.encoder = nn.Sequential(nn.Flatten(), mlp(where, (data_size,) + hidden, activation))
        self.latent = CategoricalLatent(hidden[-1] if hidden else data_size, self.num_variables, self.num_categories,
                                        temperature, hard)
        self.decoder = mlp(where, (self.latent_dim,) + tuple(reversed(hidden)) + (flat_size(self._params_shape),),
                           activation, final_activation=False)
        if objective == "score_function":
            self.control_variate = LearningSignalBaseline(baseline, self.data_shape)
        self.elbo_loss = ELBO()
        self.config = {
            "name": "discrete",
            "data_shape": list(self.data_shape),
            "hidden_sizes": list(hidden),
            "num_variables": self.num_variables,
            "num_categories": self.num_categories,
            "activation": activation,
            "temperature": float(temperature),
            "hard": hard,
            "likelihood": likelihood,
            "num_mixtures": num_mixtures,
            "likelihood_kwargs": dict(likelihood_kwargs or {}),
            "objective": objective,
            "baseline": baseline,
        }

    @property
    def temperature(self) -> float:
        """The Gumbel-softmax temperature of training, a number > 0 (settable)."""
        return self.latent.temperature

    @temperature.setter
    def temperature(self, value: float) -> None:
        self.latent.temperature = check_number(self._where, "temperature", value, minimum=0.0)
        if self.latent.temperature == 0:
            raise ValueError(f"{self._where}: temperature must be positive, got {value}")

    def logits(self, x: Tensor) -> Tensor:
        """[B, N, K] logits of q(z|x)."""
        return self.latent.logits(self.encoder(x))

    def decoder_params(self, z: Tensor) -> Tensor:
        """The likelihood's parameters for latents z [N', N·K] (one-hot or relaxed)."""
        return self.decoder(z).view((z.shape[0],) + self._params_shape)

    def forward(self, x: Tensor, beta: float = 1.0, free_bits: float = 0.0) -> VAEOutput:
        check_batch(self._where, x, self.data_shape)
        beta, free_bits = check_forward_args(self._where, beta, free_bits, self.objective)
        if self.objective == "score_function":
            log_px_z, log_p, log_q, report = self.score_function_terms(x)
            baseline, penalty = self.control_variate(x, learning_signal(log_px_z, log_p, log_q, beta))
            # The learned baseline's squared error adds its gradient only (see single.py).
            loss = score_function_loss(log_px_z, log_p, log_q, baseline, beta) + (penalty - penalty.detach())
            nll, kl = report["nll"], report["kl"]
            return VAEOutput(loss=loss, elbo=-(nll + kl), nll=nll, kl=kl, kl_per_dim=report["kl_per_dim"])
        latent = self.latent(self.encoder(x), free_bits=free_bits)
        nll = self.likelihood.nll(self.decoder_params(latent.z.flatten(1)), x)
        extras = {"temperature": torch.tensor(self.temperature, device=nll.device)}
        return self.elbo_loss(nll, latent.kl, latent.kl_objective, latent.kl_per_dim, beta, extras)

    def gumbel_softmax_output(self, x: Tensor, temperature: float, hard: bool = False, beta: float = 1.0
                              ) -> VAEOutput:
        """The relaxed ELBO objective on ``x`` at ``temperature`` (> 0; straight-through
        when ``hard``), whatever ``self.objective``, ``self.temperature`` and
        ``self.latent.hard`` are."""
        check_batch(self._where, x, self.data_shape)
        beta, _ = check_forward_args(self._where, beta, 0.0, "elbo")
        temperature = check_number(self._where, "temperature", temperature, minimum=0.0)
        if temperature == 0:
            raise ValueError(f"{self._where}: temperature must be positive, got {temperature}")
        logits = self.logits(x)
        z, kl_by_variable = ops.sample_categorical(logits, temperature, hard, None, None, reduction="none")
        kl = kl_by_variable.sum(1)
        nll = self.likelihood.nll(self.decoder_params(z.flatten(1)), x)
        extras = {"temperature": torch.tensor(temperature, device=nll.device)}
        return self.elbo_loss(nll, kl, kl, kl_by_variable.detach().float().mean(0), beta, extras)

    def score_function_terms(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, dict]:
        """One exact categorical draw z ~ q(z|x) per data point (Gumbel-max), held fixed,
        and the score-function estimator's terms at it: ([B] float32 log p(x|z), log p(z)
        (the uniform prior's constant), log q(z|x) (differentiable in the encoder), and a
        dict of the detached [B] ``nll``, the analytic [B] ``kl`` and its [N] ``kl_per_dim``)."""
        check_batch(self._where, x, self.data_shape)
        logits = self.logits(x)
        with torch.no_grad():
            relaxed, _ = ops.sample_categorical(logits.detach(), 1.0, hard=True)
            index = relaxed.argmax(-1)  # [B, N]: Gumbel-max, an exact categorical sample
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        log_q = log_probs.gather(-1, index.unsqueeze(-1)).squeeze(-1).sum(-1)
        log_p = torch.full_like(log_q, -self.num_variables * math.log(self.num_categories)).detach()
        one_hot = F.one_hot(index, self.num_categories).to(logits.dtype).flatten(1)
        nll = self.likelihood.nll(self.decoder_params(one_hot), x)
        with torch.no_grad():
            kl_by_variable = (log_probs.exp() * (log_probs + math.log(self.num_categories))).sum(-1)  # [B, N]
        report = {"nll": nll.detach().float(), "kl": kl_by_variable.sum(1), "kl_per_dim": kl_by_variable.mean(0)}
        return -nll.float(), log_p, log_q, report

    def log_importance_weights(self, x: Tensor, num_samples: int) -> Tensor:
        check_batch(self._where, x, self.data_shape)
        num_samples = positive_int(self._where, "num_samples", num_samples)
        logits = self.logits(x)
        batch = logits.shape[0]
        # Gumbel-max: the argmax of the Gumbel-perturbed logits is an exact categorical
        # sample (at any temperature); the one-hot is rebuilt from the index so that it is
        # exactly 0/1 (a straight-through sample is only within rounding of it).
        expanded = logits.unsqueeze(0).expand((num_samples,) + tuple(logits.shape))
        relaxed, _ = ops.sample_categorical(expanded, 1.0, hard=True)
        index = relaxed.argmax(-1)  # [K, B, N]
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        log_q = log_probs.unsqueeze(0).expand(expanded.shape).gather(-1, index.unsqueeze(-1)).squeeze(-1).sum(-1)
        log_p = torch.full_like(log_q, -self.num_variables * math.log(self.num_categories))
        one_hot = F.one_hot(index, self.num_categories).to(logits.dtype).flatten(2)  # [K, B, N·K]
        params = self.decoder_params(one_hot.flatten(0, 1))
        log_px_z = -self.likelihood.nll(params, repeat_batch(x, num_samples)).view(num_samples, batch)
        return (log_px_z + log_p - log_q).float()

    def posterior_mean(self, x: Tensor) -> Tensor:
        check_batch(self._where, x, self.data_shape)
        return torch.softmax(self.logits(x), dim=-1).flatten(1)

    def decode(self, z: Tensor) -> Tensor:
        if not isinstance(z, Tensor) or z.dim() != 2 or z.shape[1] != self.latent_dim:
            shape = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
            raise ValueError(
                f"{self._where}.decode: z must have shape [N, {self.latent_dim}] (num_variables · num_categories, "
                f"one-hot or probabilities), got {shape}"
            )
        return self.likelihood.mean(self.decoder_params(z))

    @torch.no_grad()
    def sample(self, num_samples: int, generator: Optional[torch.Generator] = None) -> Tensor:
        """z from the uniform prior (one category per variable), then the decoder's mean."""
        num_samples = positive_int(self._where, "num_samples", num_samples)
        device = next(self.parameters()).device
        draw_device = generator.device if generator is not None else device
        index = torch.randint(self.num_categories, (num_samples, self.num_variables), generator=generator,
                              device=draw_device).to(device)
        return self.decode(F.one_hot(index, self.num_categories).float().flatten(1))

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        return self.decode(self.posterior_mean(x))
