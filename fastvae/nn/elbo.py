"""The ELBO as a loss: reconstruction and KL terms combined into a :class:`VAEOutput`."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Dict, Optional, Union

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from ..models.base import VAEOutput


def _check_beta(beta) -> None:
    if isinstance(beta, Tensor):
        if beta.numel() != 1:
            raise ValueError(f"fastvae.nn.ELBO: beta must be a number or a one-element tensor, got {tuple(beta.shape)}")
        return
    if isinstance(beta, bool) or not isinstance(beta, (int, float)):
        raise TypeError(f"fastvae.nn.ELBO: beta must be a Python number, got {type(beta).__name__}")
    if not (beta >= 0 and math.isfinite(beta)):
        raise ValueError(f"fastvae.nn.ELBO: beta must be a finite number >= 0, got {beta}")


def _check_per_sample(name: str, tensor, batch: int) -> None:
    if not isinstance(tensor, Tensor):
        raise TypeError(f"fastvae.nn.ELBO: {name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.shape != (batch,):
        raise ValueError(f"fastvae.nn.ELBO: {name} must have shape [B] = [{batch}], got {tuple(tensor.shape)}")


class ELBO(nn.Module):
    r"""The negative ELBO as a training loss, with β and free bits, and what to report.

    ELBO(x) = −nll − KL.  The loss is mean_b(nll_b + β·KL_objective_b), where
    KL_objective is the free-bits objective (the true KL when free bits are off); the
    reported ``elbo`` uses the true KL and β = 1.

    Forward args:
        nll: [B] −log p(x|z) per data point (differentiable).
        kl: [B] the true KL(q(z|x) ‖ p(z)) per data point.
        kl_objective: [B] the free-bits objective (default: ``kl``).
        kl_per_dim: [D] the batch mean KL of each latent dimension (default: empty).
        beta: the KL weight, a number >= 0 (or a one-element tensor); 0 leaves the KL out
            of the loss and its gradient entirely.
        extras: further detached tensors to report.

    Returns:
        A :class:`fastvae.models.VAEOutput`: loss (scalar), elbo, nll, kl (detached, [B]),
        kl_per_dim (detached) and extras with ``kl_objective`` (detached, [B]) added.

    Example::

        >>> latent = GaussianLatent(256, 32)
        >>> out = latent(encoder(x), free_bits=0.1)
        >>> nll = BernoulliLikelihood().nll(decoder(out.z), x)
        >>> result = ELBO()(nll, out.kl, out.kl_objective, out.kl_per_dim, beta=0.5)
        >>> result.loss.backward()
    """

    def forward(
        self,
        nll: Tensor,
        kl: Tensor,
        kl_objective: Optional[Tensor] = None,
        kl_per_dim: Optional[Tensor] = None,
        beta: Union[float, Tensor] = 1.0,
        extras: Optional[Dict[str, Tensor]] = None,
    ) -> VAEOutput:
        if not isinstance(nll, Tensor) or nll.dim() != 1:
            shape = tuple(nll.shape) if isinstance(nll, Tensor) else type(nll).__name__
            raise ValueError(f"fastvae.nn.ELBO: nll must have shape [B], got {shape}")
        batch = nll.shape[0]
        _check_per_sample("kl", kl, batch)
        if kl_objective is None:
            kl_objective = kl
        _check_per_sample("kl_objective", kl_objective, batch)
        _check_beta(beta)
        if kl_per_dim is None:
            kl_per_dim = torch.zeros(0, device=nll.device)
        if isinstance(beta, (int, float)) and beta == 0:
            per_sample = nll.float()
        else:
            per_sample = nll.float() + beta * kl_objective.float()
        kl_true = kl.detach().float()
        nll_value = nll.detach().float()
        # Imported here: fastvae.models imports fastvae.nn, so a module-level import would
        # be circular; VAEOutput is the models' contract, which this loss fills.
        from ..models.base import VAEOutput

        reported = {"kl_objective": kl_objective.detach().float()}
        reported.update(extras or {})
        return VAEOutput(
            loss=per_sample.mean(),
            elbo=-(nll_value + kl_true),
            nll=nll_value,
            kl=kl_true,
            kl_per_dim=kl_per_dim.detach().float(),
            extras=reported,
        )
