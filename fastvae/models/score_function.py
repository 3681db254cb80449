r"""The score-function (REINFORCE) gradient of the ELBO for the encoder, and its control
variates (Williams 1992; Mnih & Gregor 2014, "Neural variational inference and learning
in belief networks", NVIL).

With z ~ q_φ(z|x) drawn and then held fixed, the learning signal is

    ℓ(x, z) = log p(x|z) + β·(log p(z) − log q_φ(z|x))

(β = 1: log p(x, z) − log q(z|x), whose expectation is the ELBO), and the encoder's
gradient estimate is (ℓ − b)·∇_φ log q_φ(z|x), b a control variate that does not depend
on z, so that E_q[b·∇_φ log q] = 0 keeps the estimate unbiased.  (The ELBO's exact
derivative also has the term −E_q[∇_φ log q] through the explicit log q, which is zero in
expectation; it is left out, as NVIL leaves it.)  The decoder and a learned prior keep
the ordinary gradient of the ELBO at the fixed z.

:func:`score_function_loss` builds the surrogate loss whose gradient is exactly that:

    loss = −mean_b[ log p(x|z) + β·(log p(z) − sg(log q)) + sg(ℓ − b)·(log q − sg(log q)) ]

(sg: stop-gradient) whose value is the negated tempered ELBO estimate, so that the loss a
run logs stays comparable with the reparameterized one's.

Control variates (:class:`LearningSignalBaseline`):

* ``none``: b = 0.
* ``running_mean``: b is an exponential moving average of the batch-mean learning signal
  (a buffer, so it is checkpointed with the weights and resumed bit for bit); the value
  before this batch's update is used, so b does not depend on this batch's z.
* ``learned``: NVIL's input-dependent baseline, b(x) = m + f_ψ(x), the running mean m plus
  a small network's correction, trained by the squared error (ℓ − b(x))² (its gradient
  reaches only ψ); the running mean centres the signal, which on images is hundreds of
  nats from zero, so the network starts at a sensible value.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn


BASELINES = ("none", "running_mean", "learned")
# The running mean's decay per update, and the learned baseline's hidden width (NVIL's
# input-dependent baseline is one hidden layer of 100 tanh units).
RUNNING_MEAN_DECAY = 0.99
BASELINE_HIDDEN = 100


def check_baseline(where: str, baseline, objective: str) -> str:
    """Validate the ``baseline`` setting of a model whose ``objective`` is given."""
    if baseline not in BASELINES:
        raise ValueError(f"{where}: baseline must be one of {list(BASELINES)}, got {baseline!r}")
    if baseline != "none" and objective != "score_function":
        raise ValueError(f"{where}: baseline={baseline!r} is a control variate of the score-function estimator; "
                         f"set objective='score_function' (or baseline='none')")
    return baseline


class LearningSignalBaseline(nn.Module):
    r"""The control variate b of the score-function estimator (see the module's docstring).

    Args:
        kind: 'none', 'running_mean' or 'learned'.
        data_shape: the shape of one data point (the learned baseline's input).
        decay: the running mean's decay per training step.
        hidden: the learned baseline's hidden width.

    Buffers: ``running_mean`` (float64 scalar) and ``updates`` (int64 scalar, 0 until the
    first training step: the running mean then starts at that batch's mean signal, and b
    is 0 for that first batch).

    Forward: ``(x [B, *data_shape], signal [B] float32 detached)`` → ``(b [B] float32
    detached, penalty)``, the penalty a scalar whose gradient trains the learned baseline
    (0 otherwise).  In training mode (and with gradients on) the running mean is updated
    with the batch's mean signal, after b is read.

    Example::

        >>> baseline = LearningSignalBaseline("running_mean", (784,))
        >>> b, penalty = baseline(x, signal)
    """

    def __init__(self, kind: str, data_shape, decay: float = RUNNING_MEAN_DECAY, hidden: int = BASELINE_HIDDEN):
        super().__init__()
        if kind not in BASELINES:
            raise ValueError(f"fastvae.models.LearningSignalBaseline: kind must be one of {list(BASELINES)}, "
                             f"got {kind!r}")
        self.kind, self.decay = kind, float(decay)
        if kind != "none":
            self.register_buffer("running_mean", torch.zeros((), dtype=torch.float64))
            self.register_buffer("updates", torch.zeros((), dtype=torch.int64))
        self.network: Optional[nn.Module] = None
        if kind == "learned":
            size = int(math.prod(data_shape))
            self.network = nn.Sequential(nn.Flatten(), nn.Linear(size, hidden), nn.Tanh(), nn.Linear(hidden, 1))
            # Start as the running mean alone: the correction's last layer at zero.
            nn.init.zeros_(self.network[-1].weight)
            nn.init.zeros_(self.network[-1].bias)

    def center(self) -> Tensor:
        """The running mean's current value as b (0 before the first update), float32 scalar."""
        return torch.where(self.updates > 0, self.running_mean, torch.zeros_like(self.running_mean)).float()

    @torch.no_grad()
    def update(self, signal: Tensor) -> None:
        """Fold a batch's mean learning signal into the running mean."""
        mean = signal.detach().double().mean()
        self.running_mean.copy_(torch.where(self.updates > 0, self.decay * self.running_mean
                                            + (1.0 - self.decay) * mean, mean))
        self.updates.add_(1)

    def forward(self, x: Tensor, signal: Tensor) -> tuple[Tensor, Tensor]:
        signal = signal.detach().float()
        penalty = torch.zeros((), device=signal.device)
        if self.kind == "none":
            return torch.zeros_like(signal), penalty
        baseline = self.center().expand_as(signal)
        if self.network is not None:
            predicted = baseline + self.network(x.float()).squeeze(1)
            penalty = ((predicted - signal) ** 2).mean()
            baseline = predicted.detach()
        if self.training and torch.is_grad_enabled():
            self.update(signal)
        return baseline, penalty

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}" + (f", decay={self.decay}" if self.kind != "none" else "")


def learning_signal(log_px_z: Tensor, log_p: Tensor, log_q: Tensor, beta: float = 1.0) -> Tensor:
    """[B] float32 detached ℓ = log p(x|z) + β·(log p(z) − log q(z|x)) from the [B] terms."""
    return (log_px_z.float() + beta * (log_p.float() - log_q.float())).detach()


def score_function_loss(log_px_z: Tensor, log_p: Tensor, log_q: Tensor, baseline: Tensor, beta: float = 1.0
                        ) -> Tensor:
    r"""The surrogate loss of the score-function estimator (see the module's docstring).

    Args:
        log_px_z: [B] log p(x|z) at the drawn, detached z (differentiable in the decoder).
        log_p: [B] log p(z) (differentiable in a learned prior's parameters, or constant).
        log_q: [B] log q(z|x) at the detached z, differentiable in the encoder's parameters.
        baseline: [B] or scalar control variate b (detached; not a function of z).
        beta: the KL weight of the learning signal and of the decoder's objective.

    Returns:
        The scalar loss, whose value is −mean(log p(x|z) + β(log p(z) − log q(z|x))) and
        whose gradient to the encoder is −mean((ℓ − b)·∇ log q(z|x)).

    Example::

        >>> signal = learning_signal(log_px_z, log_p, log_q)
        >>> b, penalty = control_variate(x, signal)
        >>> (score_function_loss(log_px_z, log_p, log_q, b) + penalty).backward()
    """
    log_px_z, log_p, log_q = log_px_z.float(), log_p.float(), log_q.float()
    fixed_log_q = log_q.detach()
    advantage = learning_signal(log_px_z, log_p, log_q, beta) - baseline.detach().float()
    objective = log_px_z + beta * (log_p - fixed_log_q) + advantage * (log_q - fixed_log_q)
    return -objective.mean()
