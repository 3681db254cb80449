r"""An autoregressive Bernoulli decoder for flat binary data: a MADE (Germain et al. 2015)
over the pixels in raster order, conditioned on the latent z, so that

    p(x|z) = Π_i Bernoulli(x_i; σ(l_i)),   l_i = f(z)_i + MADE(x_<i, z)_i.

f(z) is the model's ordinary decoder (an MLP from z to one logit per pixel); the MADE's
masked hidden layers see the pixels before i only, z enters its first hidden layer
(a dense, unmasked term: z is not one of the ordered variables), and a strictly
lower-triangular direct connection adds a logistic-regression term in x_<i.  Such a
decoder can model the data well without z, which is why a plain VAE with it lets the
KL fall to zero (posterior collapse), the setting of the δ-VAE (Razavi et al. 2019;
see :mod:`fastvae.nn.committed_rate`).

The log-likelihood of x is one pass (teacher forcing: all logits from x at once), its
negative the fused ``fastvae.bernoulli_nll``.  Generation is ancestral, pixel by pixel:
:meth:`AutoregressiveBernoulliDecoder.ancestral` runs the MADE once per pixel.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops
from .layers import activation as make_activation
from .layers import positive_int, positive_ints


class MaskedLinear(nn.Linear):
    """A Linear layer whose weight is multiplied by a fixed 0/1 ``mask`` [out, in]."""

    def __init__(self, in_features: int, out_features: int, mask: Tensor, bias: bool = True):
        super().__init__(in_features, out_features, bias=bias)
        self.register_buffer("mask", mask.to(self.weight.dtype), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


def made_masks(data_size: int, hidden_sizes: Sequence[int]) -> list:
    r"""The MADE masks of the raster order over ``data_size`` variables, one [out, in]
    0/1 float tensor per layer (len(hidden_sizes) + 1 of them).

    Variable i (1-based) has degree i; hidden unit k of every layer has degree
    m(k) = 1 + (k mod max(1, D − 1)).  A hidden unit sees the units below it of degree
    <= its own (the inputs of degree <= m(k)); output i sees the hidden units of degree
    < i.  So output i depends on x_<i only (output 1 on no x at all).

    Example::

        >>> masks = made_masks(3, [4])
        >>> masks[0]                  # hidden × input: unit k sees x_j for j <= m(k)
        tensor([[1., 0., 0.], [1., 1., 0.], [1., 0., 0.], [1., 1., 0.]])
    """
    inputs = torch.arange(1, data_size + 1)
    degrees = [inputs]
    for size in hidden_sizes:
        degrees.append(1 + torch.arange(size) % max(1, data_size - 1))
    masks = [(degrees[k + 1][:, None] >= degrees[k][None, :]).float() for k in range(len(hidden_sizes))]
    masks.append((inputs[:, None] > degrees[-1][None, :]).float())
    return masks


class AutoregressiveBernoulliDecoder(nn.Module):
    r"""The MADE half of an autoregressive Bernoulli decoder (see the module's docstring):
    logits l = base + MADE(x, z), with ``base`` = f(z) [N, data_size] given by the caller.

    Args:
        data_size: D, the number of binary variables (pixels, flattened).
        latent_dim: the width of z.
        hidden_sizes: widths of the MADE's masked hidden layers (at least one).
        activation: a name of ``fastvae.models.layers.activation`` ('relu' by default).

    Example::

        >>> made = AutoregressiveBernoulliDecoder(784, 50, hidden_sizes=(500,))
        >>> logits = made.logits(x, z, base)               # x [N, 784] binary, z [N, 50]
        >>> nll = fastvae.bernoulli_nll(logits, x)         # [N]
        >>> sample, probs = made.ancestral(z, base)        # pixel by pixel
    """

    def __init__(self, data_size: int, latent_dim: int, hidden_sizes: Sequence[int] = (500,),
                 activation: str = "relu"):
        super().__init__()
        where = "fastvae.models.AutoregressiveBernoulliDecoder"
        self.data_size = positive_int(where, "data_size", data_size)
        self.latent_dim = positive_int(where, "latent_dim", latent_dim)
        hidden = positive_ints(where, "hidden_sizes", list(hidden_sizes))
        masks = made_masks(self.data_size, hidden)
        sizes = (self.data_size,) + hidden
        self.hidden = nn.ModuleList(MaskedLinear(sizes[k], sizes[k + 1], masks[k]) for k in range(len(hidden)))
        self.output = MaskedLinear(hidden[-1], self.data_size, masks[-1])
        self.direct = MaskedLinear(self.data_size, self.data_size,
                                   torch.tril(torch.ones(self.data_size, self.data_size), diagonal=-1), bias=False)
        self.context = nn.Linear(self.latent_dim, hidden[0])
        self.activation = make_activation(where, activation)
        self.hidden_sizes = hidden

    def logits(self, x: Tensor, z: Tensor, base: Tensor) -> Tensor:
        """[N, D] logits l_i = base_i + MADE(x_<i, z)_i for binary x [N, D] (floats, or
        bool/uint8), z [N, latent_dim] and base [N, D]."""
        x = x.to(base.dtype)
        h = self.activation(self.hidden[0](x) + self.context(z))
        for layer in self.hidden[1:]:
            h = self.activation(layer(h))
        return base + self.output(h) + self.direct(x)

    def nll(self, x: Tensor, z: Tensor, base: Tensor) -> Tensor:
        """[N] −log p(x|z) in nats, float32 (float64 for float64 inputs), by the fused
        ``fastvae.bernoulli_nll`` of :meth:`logits`."""
        return ops.bernoulli_nll(self.logits(x, z, base), x, reduction="batch")

    @torch.no_grad()
    def ancestral(self, z: Tensor, base: Tensor, generator: Optional[torch.Generator] = None) -> tuple[Tensor, Tensor]:
        r"""One ancestral sample x ~ p(x|z), pixel by pixel in raster order, and the
        probabilities it was drawn from.

        Args:
            z: [N, latent_dim].
            base: [N, D], f(z).
            generator: a ``torch.Generator`` for the Bernoulli draws (default: the
                device's); any device may hold it.

        Returns:
            (x, probabilities), each [N, D] in base's dtype: x in {0, 1}; probabilities[:, i]
            = p(x_i = 1 | x_<i, z) at the sampled x_<i.
        """
        count = base.shape[0]
        x = base.new_zeros(count, self.data_size)
        probabilities = base.new_zeros(count, self.data_size)
        draw_device = generator.device if generator is not None else base.device
        uniforms = torch.rand((count, self.data_size), generator=generator, device=draw_device).to(base)
        first = self.hidden[0]
        first_weight, direct_weight = first.weight * first.mask, self.direct.weight * self.direct.mask
        output_weight = self.output.weight * self.output.mask
        # The first layer's and the direct connection's pre-activations at x = 0, updated
        # by one column as each pixel is drawn: a step costs O(width) rather than a pass.
        first_state = first.bias + self.context(z)  # [N, H1]
        direct_state = torch.zeros_like(base)  # [N, D]
        for i in range(self.data_size):
            h = self.activation(first_state)
            for layer in self.hidden[1:]:
                h = self.activation(layer(h))
            logit = base[:, i] + h @ output_weight[i] + self.output.bias[i] + direct_state[:, i]
            probability = torch.sigmoid(logit)
            probabilities[:, i] = probability
            pixel = (uniforms[:, i] < probability).to(x.dtype)
            x[:, i] = pixel
            first_state = first_state + pixel[:, None] * first_weight[:, i]
            direct_state = direct_state + pixel[:, None] * direct_weight[:, i]
        return x, probabilities

    def extra_repr(self) -> str:
        return f"data_size={self.data_size}, latent_dim={self.latent_dim}, hidden_sizes={list(self.hidden_sizes)}"
