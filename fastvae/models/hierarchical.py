r"""A hierarchical VAE with top-down inference (Ladder VAE, Sønderby et al. 2016; NVAE,
Vahdat & Kautz 2020), MLP-based.

Layers z_1 (bottom, next to x) … z_L (top).  Generative model:
p(z_L) = N(0, I); p(z_i | z_{>i}) = N(prior_mu_i(t_i), e^prior_logvar_i(t_i)), where the
top-down state t_i = TD_i([z_{i+1}, t_{i+1}]) summarizes the layers above; p(x | z) from
the decoder on [z_1, t_1].

Inference shares the top-down path: a deterministic bottom-up pass gives features
d_1 … d_L of x; q(z_L|x) = N from d_L, and for the lower layers
q(z_i | x, z_{>i}) = N(prior_mu_i + Δmu_i, e^(prior_logvar_i + Δlogvar_i)), with
(Δmu_i, Δlogvar_i) from [d_i, t_i]: NVAE's residual parameterization, so a layer's
posterior starts at its prior.  Each layer's KL is the analytic one against its
conditional prior, fused with the sampling: ``fastvae.sample_gaussian`` with the prior's
mu and logvar tensors (full-size, differentiable).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from .. import ops
from ..nn.elbo import ELBO
from ..nn.latent import GaussianLatent, GaussianLatentOutput, kl_per_dimension, sample_latent
from .base import VAE, VAEOutput, register_model
from .layers import activation as make_activation
from .layers import check_batch, data_shape_of, mlp, positive_int, positive_ints
from .objectives import check_forward_args, check_objective, layered_iwae_output, repeat_batch
from .priors import draw_normal
from .single import build_likelihood, flat_size


@register_model("hierarchical")
class HierarchicalVAE(VAE):
    r"""A VAE with ``len(latent_dims)`` stochastic layers and top-down inference (see the
    module's docstring).

    Every deterministic block (bottom-up, top-down, decoder) is an MLP of two hidden
    layers of ``hidden_dim``; images are flattened.

    Args:
        data_shape: the shape of one data point ((784,), (1, 28, 28), …).
        latent_dims: the latent dimensions of the layers, from the bottom (z_1, next to x)
            to the top (z_L); at least one layer, two or more for a hierarchy.
        hidden_dim: width of the deterministic blocks.
        activation: as :class:`fastvae.models.MLPVAE` ('silu' by default).
        likelihood, num_mixtures, likelihood_kwargs: the decoder's distribution, as
            :class:`fastvae.models.MLPVAE`.
        objective: 'elbo', or 'iwae' with ``num_samples`` K (every layer sampled K times).
        num_samples: K of the IWAE objective (unused by 'elbo').
        dreg: must be False: DReG needs q's parameters held fixed apart from z, and the
            parameters of a lower layer depend on the upper layers' samples.

    ``latent_dim`` is Σ latent_dims: ``posterior_mean``, ``kl_per_dim`` and ``decode``
    concatenate the layers from the bottom up.

    Example::

        >>> model = HierarchicalVAE(data_shape=(784,), latent_dims=(32, 16))
        >>> out = model(x, free_bits=0.1)
        >>> out.kl_per_dim.shape                      # z_1's 32 dimensions, then z_2's 16
        torch.Size([48])
    """

    def __init__(
        self,
        data_shape: Sequence[int] = (784,),
        latent_dims: Sequence[int] = (32, 16),
        hidden_dim: int = 256,
        activation: str = "silu",
        likelihood: str = "bernoulli",
        num_mixtures: int = 10,
        likelihood_kwargs: Optional[dict] = None,
        objective: str = "elbo",
        num_samples: int = 5,
        dreg: bool = False,
    ):
        super().__init__()
        where = self._where = "fastvae.models.HierarchicalVAE"
        self.data_shape = data_shape_of(where, list(data_shape))
        self.latent_dims = positive_ints(where, "latent_dims", list(latent_dims))
        hidden = positive_int(where, "hidden_dim", hidden_dim)
        make_activation(where, activation)
        self.objective, self.num_samples, self.dreg = check_objective(where, objective, num_samples, dreg,
                                                                      dreg_supported=False)
        self.likelihood, param_channels = build_likelihood(where, likelihood, self.data_shape, num_mixtures,
                                                           likelihood_kwargs)
        self.latent_dim = sum(self.latent_dims)
        self._params_shape = (param_channels,) + self.data_shape[1:]
        num_layers = len(self.latent_dims)

        data_size = flat_size(self.data_shape)
        self.bottom_up = nn.ModuleList(
            [nn.Sequential(nn.Flatten(), mlp(where, (data_size, hidden, hidden), activation))]
            + [mlp(where, (hidden, hidden, hidden), activation) for _ in range(num_layers - 1)]
        )
        self.top_posterior = GaussianLatent(hidden, self.latent_dims[-1])
        # Layer i < L − 1 (0-based, from the bottom): its top-down block reads z_{i+1}, and
        # t_{i+1} when layer i + 1 has one (every layer but the top).
        self.top_down = nn.ModuleList(
            mlp(where, (self.latent_dims[i + 1] + (hidden if i + 1 < num_layers - 1 else 0), hidden, hidden),
                activation)
            for i in range(num_layers - 1)
        )
        self.priors = nn.ModuleList(GaussianLatent(hidden, self.latent_dims[i]) for i in range(num_layers - 1))
        self.posteriors = nn.ModuleList(GaussianLatent(2 * hidden, self.latent_dims[i]) for i in range(num_layers - 1))
        decoder_in = self.latent_dims[0] + (hidden if num_layers > 1 else 0)
        self.decoder = mlp(where, (decoder_in, hidden, hidden, flat_size(self._params_shape)), activation,
                           final_activation=False)
        self.elbo_loss = ELBO()
        self.config = {
            "name": "hierarchical",
            "data_shape": list(self.data_shape),
            "latent_dims": list(self.latent_dims),
            "hidden_dim": hidden,
            "activation": activation,
            "likelihood": likelihood,
            "num_mixtures": num_mixtures,
            "likelihood_kwargs": dict(likelihood_kwargs or {}),
            "objective": self.objective,
            "num_samples": self.num_samples,
            "dreg": self.dreg,
        }

    # -- the networks -------------------------------------------------------------------

    def _features(self, x: Tensor) -> list[Tensor]:
        """The bottom-up features d_1 … d_L of x."""
        features, h = [], x
        for block in self.bottom_up:
            h = block(h)
            features.append(h)
        return features

    def _state(self, layer: int, z_above: Tensor, state_above: Optional[Tensor]) -> Tensor:
        """t_layer from the layer above's sample and state."""
        inputs = z_above if state_above is None else torch.cat([z_above, state_above], dim=1)
        return self.top_down[layer](inputs)

    def _conditional(self, layer: int, feature: Tensor, state: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(mu, logvar, prior_mu, prior_logvar) of layer ``layer`` < L − 1."""
        prior_mu, prior_logvar = self.priors[layer].params(state)
        delta_mu, delta_logvar = self.posteriors[layer].params(torch.cat([feature, state], dim=1))
        return prior_mu + delta_mu, prior_logvar + delta_logvar, prior_mu, prior_logvar

    def _decoder_params(self, z_bottom: Tensor, state: Optional[Tensor]) -> Tensor:
        inputs = z_bottom if state is None else torch.cat([z_bottom, state], dim=1)
        return self.decoder(inputs).view((z_bottom.shape[0],) + self._params_shape)

    # -- inference ----------------------------------------------------------------------

    def infer(self, x: Tensor, free_bits: float = 0.0) -> tuple[list[GaussianLatentOutput], Tensor]:
        """One top-down pass of inference on x: each layer's sample and KL, and the
        decoder's parameters.

        Returns:
            (layers, params): ``layers`` a list of :class:`fastvae.nn.GaussianLatentOutput`
            from the bottom layer to the top (each with the conditional prior's mu and
            logvar it was sampled against; None for the standard normal of the top),
            ``params`` the likelihood's parameters [B, P, *spatial].
        """
        check_batch(self._where, x, self.data_shape)
        features = self._features(x)
        top = sample_latent(*self.top_posterior.params(features[-1]), free_bits=free_bits)
        layers, z, state = [top], top.z, None
        for layer in reversed(range(len(self.latent_dims) - 1)):
            state = self._state(layer, z, state)
            mu, logvar, prior_mu, prior_logvar = self._conditional(layer, features[layer], state)
            out = sample_latent(mu, logvar, prior_mu, prior_logvar, free_bits)
            layers.insert(0, out)
            z = out.z
        return layers, self._decoder_params(z, state)

    def _weight_terms(self, x: Tensor, num_samples: int, with_kl: bool = False):
        """([K, B] log p(x|z), log p(z), log q(z|x)) with every layer sampled K times (a
        lower layer once per sample of the layers above), and with ``with_kl`` the [B, D_i]
        analytic KL of each layer given the sampled layers above, averaged over the K
        samples (bottom layer first; no gradient)."""
        batch = x.shape[0]
        features = self._features(x)
        mu, logvar = self.top_posterior.params(features[-1])
        z, log_q, log_p = ops.sample_gaussian_k(mu, logvar, num_samples)
        kls = []
        if with_kl:
            with torch.no_grad():
                kls.append(kl_per_dimension(ops.gaussian_kl(mu, logvar, reduction="none")))
        z, state = z.flatten(0, 1), None
        for layer in reversed(range(len(self.latent_dims) - 1)):
            state = self._state(layer, z, state)
            feature = repeat_batch(features[layer], num_samples)
            mu, logvar, prior_mu, prior_logvar = self._conditional(layer, feature, state)
            samples, layer_log_q, layer_log_p = ops.sample_gaussian_k(mu, logvar, 1, prior_mu, prior_logvar)
            z = samples[0]
            log_q = log_q + layer_log_q.view(num_samples, batch)
            log_p = log_p + layer_log_p.view(num_samples, batch)
            if with_kl:
                with torch.no_grad():
                    terms = ops.gaussian_kl(mu, logvar, prior_mu, prior_logvar, reduction="none")
                    kls.insert(0, terms.view(num_samples, batch, -1).mean(0))
        nll = self.likelihood.nll(self._decoder_params(z, state), repeat_batch(x, num_samples))
        return -nll.view(num_samples, batch), log_p, log_q, kls

    # -- training objective -------------------------------------------------------------

    def forward(self, x: Tensor, beta: float = 1.0, free_bits: float = 0.0) -> VAEOutput:
        check_batch(self._where, x, self.data_shape)
        beta, free_bits = check_forward_args(self._where, beta, free_bits, self.objective)
        if self.objective == "iwae":
            return self._iwae_forward(x, beta)
        layers, params = self.infer(x, free_bits)
        nll = self.likelihood.nll(params, x)
        kl = torch.stack([layer.kl for layer in layers]).sum(0)
        kl_objective = torch.stack([layer.kl_objective for layer in layers]).sum(0)
        kl_per_dim = torch.cat([layer.kl_per_dim for layer in layers])
        return self.elbo_loss(nll, kl, kl_objective, kl_per_dim, beta)

    def _iwae_forward(self, x: Tensor, beta: float) -> VAEOutput:
        return layered_iwae_output(*self._weight_terms(x, self.num_samples, with_kl=True), beta)

    # -- evaluation ---------------------------------------------------------------------

    def log_importance_weights(self, x: Tensor, num_samples: int) -> Tensor:
        check_batch(self._where, x, self.data_shape)
        num_samples = positive_int(self._where, "num_samples", num_samples)
        log_px_z, log_p, log_q, _ = self._weight_terms(x, num_samples)
        return (log_px_z + log_p - log_q).float()

    def posterior_mean(self, x: Tensor) -> Tensor:
        """[B, latent_dim]: the layers' posterior means from the bottom up, each taken with
        the layers above at their posterior means (the top-down pass without noise)."""
        check_batch(self._where, x, self.data_shape)
        features = self._features(x)
        z = self.top_posterior.params(features[-1])[0]
        means, state = [z], None
        for layer in reversed(range(len(self.latent_dims) - 1)):
            state = self._state(layer, z, state)
            z = self._conditional(layer, features[layer], state)[0]
            means.insert(0, z)
        return torch.cat(means, dim=1)

    def _generate(self, z: Tensor, noise=None) -> Tensor:
        """The decoder's mean from all layers' z or the top layer's (see :meth:`decode`);
        the lower layers not given are at their conditional prior means, or, with
        ``noise(shape)`` drawing standard normals, sampled from their priors."""
        given = list(torch.split(z, list(self.latent_dims), dim=1)) if z.shape[1] == self.latent_dim else None
        current, state = (given[-1] if given else z), None
        for layer in reversed(range(len(self.latent_dims) - 1)):
            state = self._state(layer, current, state)
            if given is not None:
                current = given[layer]
                continue
            prior_mu, prior_logvar = self.priors[layer].params(state)
            current = prior_mu if noise is None else prior_mu + torch.exp(0.5 * prior_logvar) * noise(prior_mu.shape)
        return self.likelihood.mean(self._decoder_params(current, state))

    def decode(self, z: Tensor) -> Tensor:
        """The decoder's mean for z of shape [N, latent_dim] (every layer, concatenated from
        the bottom up, as :meth:`posterior_mean` gives them) or [N, latent_dims[-1]] (the top
        layer; the lower layers at their conditional prior means)."""
        if not isinstance(z, Tensor) or z.dim() != 2 or z.shape[1] not in (self.latent_dim, self.latent_dims[-1]):
            shape = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
            raise ValueError(
                f"{self._where}.decode: z must have shape [N, {self.latent_dim}] (all layers) or "
                f"[N, {self.latent_dims[-1]}] (the top layer), got {shape}"
            )
        return self._generate(z)

    @torch.no_grad()
    def sample(self, num_samples: int, generator: Optional[torch.Generator] = None) -> Tensor:
        """Ancestral sampling: z_L ~ N(0, I), z_i ~ p(z_i | z_{>i}), then the decoder's mean."""
        num_samples = positive_int(self._where, "num_samples", num_samples)
        device = next(self.parameters()).device
        top = draw_normal((num_samples, self.latent_dims[-1]), generator, device)
        return self._generate(top, noise=lambda shape: draw_normal(tuple(shape), generator, device))

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        return self.decode(self.posterior_mean(x))
