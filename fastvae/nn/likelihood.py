"""Likelihood heads p(x|z): one per likelihood op, with a common interface, so that a model
can swap its decoder's distribution by name.

Data convention: x is float in [0, 1], shape [B, C, *spatial] (or [B, D], where the D
features play the role of channels).  The decoder produces ``param_channels(C)`` channels
of parameters with x's spatial shape.  Heads whose op lives on the [-1, 1] grid (the
discretized logistics) map x to 2·x − 1 themselves, and their ``mean`` and ``sample``
return values in [0, 1].
"""
from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor, nn

from .. import ops


def _check_data_channels(where: str, data_channels) -> int:
    if isinstance(data_channels, bool) or not isinstance(data_channels, int) or data_channels < 1:
        raise ValueError(f"{where}.param_channels: data_channels must be an int >= 1, got {data_channels!r}")
    return data_channels


def _check_params(where: str, params, expected_channels: Optional[int] = None) -> None:
    if not isinstance(params, Tensor):
        raise TypeError(f"{where}: params must be a torch.Tensor, got {type(params).__name__}")
    if params.dim() < 2:
        raise ValueError(f"{where}: params must have shape [B, P, ...] (batch first), got {tuple(params.shape)}")
    if expected_channels is not None and params.shape[1] != expected_channels:
        raise ValueError(
            f"{where}: params must have {expected_channels} channels in dimension 1, got shape {tuple(params.shape)}"
        )


class Likelihood(nn.Module):
    """Base class of the likelihood heads.

    A head turns the decoder's output ``params`` ([B, param_channels(C), *spatial]) into
    the negative log-likelihood of data x ([B, C, *spatial], in [0, 1]), the distribution's
    mean (what reconstructions and samples display) and a sample.
    """

    name: str = ""

    def param_channels(self, data_channels: int) -> int:
        """How many channels of parameters the decoder must output for data with
        ``data_channels`` channels (features, for [B, D] data)."""
        raise NotImplementedError

    def nll(self, params: Tensor, x: Tensor, reduction: str = "batch") -> Tensor:
        """−log p(x|params) in nats, float32: [B] with reduction='batch' (the default),
        per element with 'none' (per pixel for the mixture)."""
        raise NotImplementedError

    def mean(self, params: Tensor) -> Tensor:
        """The distribution's mean, [B, C, *spatial], values in [0, 1] (for the Gaussian,
        clamped to [0, 1]); no gradient needed."""
        raise NotImplementedError

    def sample(self, params: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        """A sample x ~ p(x|params), [B, C, *spatial], values in [0, 1]; no gradient."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return self.name


class BernoulliLikelihood(Likelihood):
    r"""p(x|z) = Bernoulli(σ(l)) per element: binary (or soft, in [0, 1]) data.

    ``params`` are the logits l, x's shape.  ``nll`` is :func:`fastvae.bernoulli_nll`.

    Example::

        >>> head = BernoulliLikelihood()
        >>> logits = decoder(z).view(-1, head.param_channels(1), 28, 28)
        >>> nll = head.nll(logits, x)                   # [B]
    """

    name = "bernoulli"

    def param_channels(self, data_channels: int) -> int:
        return _check_data_channels("fastvae.nn.BernoulliLikelihood", data_channels)

    def nll(self, params: Tensor, x: Tensor, reduction: str = "batch") -> Tensor:
        return ops.bernoulli_nll(params, x, reduction)

    def mean(self, params: Tensor) -> Tensor:
        return ops.bernoulli_mean(params)

    def sample(self, params: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        return ops.bernoulli_sample(params, generator)


class ContinuousBernoulliLikelihood(Likelihood):
    r"""p(x|z) = ContinuousBernoulli(σ(l)) per element (Loaiza-Ganem & Cunningham 2019):
    the normalized density for data in [0, 1].  ``params`` are the logits, x's shape.

    Example::

        >>> nll = ContinuousBernoulliLikelihood().nll(logits, x)   # may be negative
    """

    name = "continuous_bernoulli"

    def param_channels(self, data_channels: int) -> int:
        return _check_data_channels("fastvae.nn.ContinuousBernoulliLikelihood", data_channels)

    def nll(self, params: Tensor, x: Tensor, reduction: str = "batch") -> Tensor:
        return ops.continuous_bernoulli_nll(params, x, reduction)

    def mean(self, params: Tensor) -> Tensor:
        return ops.continuous_bernoulli_mean(params)

    def sample(self, params: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        return ops.continuous_bernoulli_sample(params, generator)


class GaussianLikelihood(Likelihood):
    r"""p(x|z) = N(mean, e^logvar) per element, on x in [0, 1] as it is.

    ``params`` is the mean, x's shape.  The log-variance is fixed (``logvar``, a number) or,
    with ``learn_logvar=True``, a learned parameter per channel (``num_channels`` of them,
    initialized at ``logvar``; ``num_channels=1`` shares one over all channels), broadcast
    over the batch and spatial positions.

    Args:
        logvar: the fixed log-variance, or the learned one's initial value.
        learn_logvar: learn a log-variance per channel.
        num_channels: channels (features, for [B, D] data) of the learned log-variance.

    ``mean`` and ``sample`` are clamped to [0, 1], the data's range, for display.

    Example::

        >>> head = GaussianLikelihood(learn_logvar=True, num_channels=3)
        >>> nll = head.nll(decoder(z), images)          # images [B, 3, H, W]
    """

    name = "gaussian"

    def __init__(self, logvar: float = 0.0, learn_logvar: bool = False, num_channels: int = 1):
        super().__init__()
        where = "fastvae.nn.GaussianLikelihood"
        if isinstance(logvar, bool) or not isinstance(logvar, (int, float)) or logvar != logvar:
            raise TypeError(f"{where}: logvar must be a finite Python number, got {logvar!r}")
        if not isinstance(learn_logvar, bool):
            raise TypeError(f"{where}: learn_logvar must be a bool, got {type(learn_logvar).__name__}")
        if isinstance(num_channels, bool) or not isinstance(num_channels, int) or num_channels < 1:
            raise ValueError(f"{where}: num_channels must be an int >= 1, got {num_channels!r}")
        self.fixed_logvar = float(logvar)
        self.learn_logvar = learn_logvar
        self.num_channels = num_channels
        if learn_logvar:
            self.logvar = nn.Parameter(torch.full((num_channels,), float(logvar)))
        else:
            self.register_parameter("logvar", None)

    def param_channels(self, data_channels: int) -> int:
        data_channels = _check_data_channels("fastvae.nn.GaussianLikelihood", data_channels)
        if self.learn_logvar and self.num_channels not in (1, data_channels):
            raise ValueError(
                f"fastvae.nn.GaussianLikelihood: the learned logvar has {self.num_channels} channels but the data "
                f"has {data_channels}"
            )
        return data_channels

    def log_variance(self, like: Tensor) -> Union[float, Tensor]:
        """The log-variance as ``fastvae.gaussian_nll`` takes it for data shaped like
        ``like``: the fixed number, or the learned [1, C, 1, …] tensor."""
        if self.logvar is None:
            return self.fixed_logvar
        return self.logvar.view((1, -1) + (1,) * (like.dim() - 2))

    def nll(self, params: Tensor, x: Tensor, reduction: str = "batch") -> Tensor:
        return ops.gaussian_nll(params, x, self.log_variance(params), reduction)

    def mean(self, params: Tensor) -> Tensor:
        return ops.gaussian_mean(params, self.log_variance(params)).clamp(0.0, 1.0)

    def sample(self, params: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        logvar = self.log_variance(params)
        if isinstance(logvar, Tensor):
            logvar = logvar.detach()
        return ops.gaussian_sample(params, logvar, generator=generator).clamp(0.0, 1.0)

    def extra_repr(self) -> str:
        return f"logvar={self.fixed_logvar}, learn_logvar={self.learn_logvar}, num_channels={self.num_channels}"


def _to_grid(x: Tensor) -> Tensor:
    """Data in [0, 1] → the ops' [−1, 1] grid; uint8 level indices pass unchanged."""
    return x if x.dtype == torch.uint8 else x * 2.0 - 1.0


def _from_grid(y: Tensor) -> Tensor:
    return (y + 1.0) * 0.5


def _check_num_bins(where: str, num_bins) -> int:
    if isinstance(num_bins, bool) or not isinstance(num_bins, int) or num_bins < 2:
        raise ValueError(f"{where}: num_bins must be an int >= 2, got {num_bins!r}")
    return num_bins


class DiscretizedLogisticLikelihood(Likelihood):
    r"""p(x|z) = the logistic(mean, e^log_scale) discretized to ``num_bins`` levels per
    sub-pixel (:func:`fastvae.discretized_logistic_nll`), for 8-bit data (num_bins=256).

    ``params`` are [B, 2C, *spatial]: C means then C log-scales, on the [−1, 1] scale of
    the op.  x in [0, 1] is mapped to 2·x − 1 (it must lie on the grid k/(num_bins − 1));
    a uint8 x is taken as level indices.

    Example::

        >>> head = DiscretizedLogisticLikelihood()
        >>> params = decoder(z)                         # [B, 2 * 3, 32, 32]
        >>> nll = head.nll(params, images)              # images in [0, 1], [B, 3, 32, 32]
    """

    name = "discretized_logistic"

    def __init__(self, num_bins: int = 256):
        super().__init__()
        self.num_bins = _check_num_bins("fastvae.nn.DiscretizedLogisticLikelihood", num_bins)

    def param_channels(self, data_channels: int) -> int:
        return 2 * _check_data_channels("fastvae.nn.DiscretizedLogisticLikelihood", data_channels)

    def _split(self, params: Tensor) -> tuple[Tensor, Tensor]:
        where = "fastvae.nn.DiscretizedLogisticLikelihood"
        _check_params(where, params)
        if params.shape[1] % 2:
            raise ValueError(f"{where}: params must have 2·C channels (means, log-scales), got {tuple(params.shape)}")
        mean, log_scale = params.chunk(2, dim=1)
        return mean, log_scale

    def nll(self, params: Tensor, x: Tensor, reduction: str = "batch") -> Tensor:
        mean, log_scale = self._split(params)
        return ops.discretized_logistic_nll(mean, log_scale, _to_grid(x), self.num_bins, reduction)

    def mean(self, params: Tensor) -> Tensor:
        mean, log_scale = self._split(params)
        return _from_grid(ops.discretized_logistic_mean(mean, log_scale, self.num_bins))

    def sample(self, params: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        mean, log_scale = self._split(params)
        return _from_grid(ops.discretized_logistic_sample(mean, log_scale, self.num_bins, generator=generator))

    def extra_repr(self) -> str:
        return f"num_bins={self.num_bins}"


class DiscretizedLogisticMixtureLikelihood(Likelihood):
    r"""p(x|z) = PixelCNN++'s mixture of ``num_mixtures`` discretized logistics per pixel,
    with NVAE's channel coupling for RGB (:func:`fastvae.discretized_logistic_mixture_nll`).

    Data: images [B, C, H, W] (any spatial shape) with C = 1 or 3, in [0, 1] on the grid
    k/(num_bins − 1) (mapped to 2·x − 1), or uint8 level indices.  ``params`` are
    [B, 3K, *spatial] for C = 1 and [B, 10K, *spatial] for C = 3, in the op's layout.

    Args:
        num_mixtures: K, components per pixel.
        num_bins: levels per channel (256 for 8-bit data).

    Example::

        >>> head = DiscretizedLogisticMixtureLikelihood(num_mixtures=10)
        >>> head.param_channels(3)
        100
        >>> nll = head.nll(decoder(z), images)          # [B]
    """

    name = "discretized_logistic_mixture"

    def __init__(self, num_mixtures: int = 10, num_bins: int = 256):
        super().__init__()
        where = "fastvae.nn.DiscretizedLogisticMixtureLikelihood"
        if isinstance(num_mixtures, bool) or not isinstance(num_mixtures, int) or num_mixtures < 1:
            raise ValueError(f"{where}: num_mixtures must be an int >= 1, got {num_mixtures!r}")
        self.num_mixtures = num_mixtures
        self.num_bins = _check_num_bins(where, num_bins)

    def param_channels(self, data_channels: int) -> int:
        if data_channels not in (1, 3):
            raise ValueError(
                f"fastvae.nn.DiscretizedLogisticMixtureLikelihood.param_channels: the mixture models images with "
                f"1 or 3 channels, got data_channels={data_channels!r}"
            )
        return (3 if data_channels == 1 else 10) * self.num_mixtures

    def nll(self, params: Tensor, x: Tensor, reduction: str = "batch") -> Tensor:
        return ops.discretized_logistic_mixture_nll(params, _to_grid(x), self.num_mixtures, self.num_bins, reduction)

    def mean(self, params: Tensor) -> Tensor:
        return _from_grid(ops.discretized_logistic_mixture_mean(params, self.num_mixtures, self.num_bins))

    def sample(self, params: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        return _from_grid(
            ops.discretized_logistic_mixture_sample(params, self.num_mixtures, self.num_bins, generator=generator)
        )

    def extra_repr(self) -> str:
        return f"num_mixtures={self.num_mixtures}, num_bins={self.num_bins}"


LIKELIHOODS = {
    cls.name: cls
    for cls in (
        BernoulliLikelihood,
        ContinuousBernoulliLikelihood,
        GaussianLikelihood,
        DiscretizedLogisticLikelihood,
        DiscretizedLogisticMixtureLikelihood,
    )
}


def make_likelihood(name: str, **kwargs) -> Likelihood:
    r"""The likelihood head called ``name``, built with ``kwargs``.

    Names: 'bernoulli', 'continuous_bernoulli', 'gaussian' (logvar, learn_logvar,
    num_channels), 'discretized_logistic' (num_bins), 'discretized_logistic_mixture'
    (num_mixtures, num_bins).

    Example::

        >>> head = make_likelihood("discretized_logistic_mixture", num_mixtures=5)
        >>> head.param_channels(3)
        50
    """
    if name not in LIKELIHOODS:
        raise ValueError(f"fastvae.nn.make_likelihood: unknown likelihood {name!r}; known: {sorted(LIKELIHOODS)}")
    try:
        return LIKELIHOODS[name](**kwargs)
    except TypeError as error:
        if "unexpected keyword" in str(error) or "positional argument" in str(error):
            raise TypeError(f"fastvae.nn.make_likelihood: {name!r} does not take {sorted(kwargs)}: {error}") from None
        raise
