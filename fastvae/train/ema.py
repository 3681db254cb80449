"""Exponential moving average of a model's weights (Polyak averaging)."""
from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["ExponentialMovingAverage"]


class ExponentialMovingAverage:
    """A copy of ``model`` whose parameters follow ``ema = decay·ema + (1 − decay)·param``
    after each :meth:`update`; buffers (e.g. batch-norm statistics) are copied as they are.

    Args:
        model: the trained module; the average starts at its current weights.
        decay: in [0, 1); 0.999 averages over about the last 1000 updates.

    Attributes:
        module: the averaged copy, in eval mode, without gradients: evaluate or sample
            with it like the model.

    Example::

        >>> ema = ExponentialMovingAverage(model, decay=0.999)
        >>> for x in batches:
        ...     model(x).loss.backward(); optimizer.step(); optimizer.zero_grad()
        ...     ema.update(model)
        >>> elbo = ema.module(x_test).elbo
    """

    def __init__(self, model: nn.Module, decay: float):
        if not isinstance(model, nn.Module):
            raise TypeError(f"fastvae.train.ExponentialMovingAverage: model must be an nn.Module, got {type(model).__name__}")
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 <= decay < 1:
            raise ValueError(f"fastvae.train.ExponentialMovingAverage: decay must be in [0, 1), got {decay!r}")
        self.decay = float(decay)
        self.module = copy.deepcopy(model).eval()
        for parameter in self.module.parameters():
            parameter.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average one step towards ``model``'s current weights."""
        averaged = dict(self.module.named_parameters())
        for name, parameter in model.named_parameters():
            average = averaged[name]
            average.mul_(self.decay).add_(parameter.detach().to(average.dtype), alpha=1.0 - self.decay)
        averaged_buffers = dict(self.module.named_buffers())
        for name, buffer in model.named_buffers():
            averaged_buffers[name].copy_(buffer)

    def state_dict(self) -> dict:
        return self.module.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state)
