"""Per-group diagnostics of models whose latent is a stack of groups (a deep hierarchical
VAE such as :class:`fastvae.models.DeepVAE`): how much KL each group carries and which
groups the posterior uses at all (posterior collapse, group by group)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import Tensor

from ._common import check_model, check_nonnegative_float, evaluating, iterate_batches, num_data_points
from .latent import _StreamingVariance

# The attributes that make a model's latent a stack of groups for the evaluation.
GROUP_ATTRIBUTES = ("num_groups", "latent_channels", "group_resolutions", "kl_per_group", "posterior_mean_groups")


def has_latent_groups(model) -> bool:
    """Whether the evaluation sees ``model``'s latent as groups: it has ``num_groups``,
    ``latent_channels``, ``group_resolutions``, ``kl_per_group`` and
    ``posterior_mean_groups`` (as :class:`fastvae.models.DeepVAE`).

    Example::

        >>> fastvae.eval.has_latent_groups(DeepVAE())
        True
    """
    return all(hasattr(model, name) for name in GROUP_ATTRIBUTES)


def units_per_group(model) -> list:
    """[G] ints: the units of each group, C·r², the elements of its [C, r, r] latent map
    (C = ``model.latent_channels``, r its resolution), the top group first."""
    channels = int(model.latent_channels)
    return [channels * int(side) ** 2 for side in model.group_resolutions]


# Holds tensors: no field-wise ==, which would be ambiguous.
@dataclass(frozen=True, eq=False)
class GroupActiveUnits:
    """The active units of each latent group (Burda et al., 2016, element by element).

    Attributes:
        variances: G float64 tensors [C, r, r], the top group first: Cov_x E_q[z|x] of
            each element of the group's latent map (the unbiased variance over the data
            points of its posterior mean).
        threshold: an element is active when its variance exceeds this.

    Properties: ``active_units_per_group`` ([G] ints, the active elements of each
    group), ``units_per_group`` ([G] ints, C·r²) and ``active_groups`` (the groups with
    at least one active unit).
    """

    variances: tuple
    threshold: float

    @property
    def active_units_per_group(self) -> list:
        return [int((variance > self.threshold).sum()) for variance in self.variances]

    @property
    def units_per_group(self) -> list:
        return [variance.numel() for variance in self.variances]

    @property
    def active_groups(self) -> int:
        return sum(1 for count in self.active_units_per_group if count > 0)


def group_active_units(
    model,
    data,
    threshold: float = 0.01,
    batch_size: int = 256,
    num_points: Optional[int] = None,
) -> GroupActiveUnits:
    r"""Count the active units of each latent group, a unit being one element of the
    group's [C, r, r] latent map: A = Cov_x(E_q[z|x]) > threshold element by element
    (Burda et al., 2016, whose definition applies to each latent dimension; each element
    of a map is one).  A group above 1×1 can carry its information in its spatial
    pattern while each channel's mean over the map stays put, which
    :func:`fastvae.eval.active_units` (on ``model.posterior_mean``, channel means) cannot
    see; this counts it.

    Streams over the data: each batch's ``model.posterior_mean_groups(x)`` (G tensors
    [B, C, r, r], the top group first) is folded, flattened, into a running mean and
    sum of squared deviations per element in float64; nothing per data point is kept.

    Args:
        model: a model with latent groups (:func:`fastvae.eval.has_latent_groups`).
        data: a tensor [N, *data_shape] in [0, 1] or a Dataset (see
            :func:`fastvae.eval.iwae_estimate`); N >= 2.
        threshold: the variance above which an element is active (default 0.01).
        batch_size: data points per call.
        num_points: the first ``num_points`` data points only (default all).

    Returns:
        A :class:`GroupActiveUnits`: the per-element variances of each group and the
        counts ``active_units_per_group``, ``units_per_group`` and ``active_groups``.

    Example::

        >>> units = fastvae.eval.group_active_units(model, test_images)
        >>> units.active_units_per_group, units.units_per_group
        ([16, 0, 201], [16, 256, 1024])
    """
    function = "group_active_units"
    model = check_model(function, model)
    if not has_latent_groups(model):
        raise TypeError(f"fastvae.eval.{function}: model has no latent groups (it needs {', '.join(GROUP_ATTRIBUTES)})")
    threshold = check_nonnegative_float(function, "threshold", threshold)
    if num_data_points(function, data, num_points) < 2:
        raise ValueError(f"fastvae.eval.{function}: a variance over the data needs at least 2 data points")
    channels = int(model.latent_channels)
    shapes = [(channels, int(side), int(side)) for side in model.group_resolutions]
    stats = [_StreamingVariance() for _ in shapes]
    # The posterior means are deterministic; the seed only keeps any model-side noise fixed.
    with evaluating(model, seed=0) as device:
        for x in iterate_batches(function, data, batch_size, device, num_points, getattr(model, "data_shape", None)):
            means = list(model.posterior_mean_groups(x))
            got = [tuple(mean.shape) for mean in means]
            if got != [(x.shape[0],) + shape for shape in shapes]:
                raise ValueError(f"fastvae.eval.{function}: model.posterior_mean_groups returned shapes {got}; the "
                                 f"model's groups are {[(x.shape[0],) + shape for shape in shapes]} "
                                 f"([batch, latent_channels, r, r], the top group first)")
            for group, mean in zip(stats, means):
                group.add(mean.flatten(1).cpu())
    variances = tuple(group.variance().view(shape) for group, shape in zip(stats, shapes))
    return GroupActiveUnits(variances, threshold)


def group_diagnostics(
    model,
    kl_per_dim: Tensor,
    active_units_per_group: Optional[Sequence[int]] = None,
) -> dict:
    r"""The KL of each latent group from the per-channel KL the evaluation already has (no
    model pass), with the groups' active units when they were counted
    (:func:`group_active_units`).

    Args:
        model: a model with latent groups (:func:`has_latent_groups`): its
            ``kl_per_group`` sums the channels of each group; ``kl_per_dim`` is
            group-major, the top group first.
        kl_per_dim: [num_groups · latent_channels] the mean KL of each channel, nats (as
            ``VAEOutput.kl_per_dim`` or :func:`fastvae.eval.kl_per_dimension`).
        active_units_per_group: [G] the active elements of each group
            (:class:`GroupActiveUnits`' ``active_units_per_group``), or None when they
            were not measured.

    Returns:
        A JSON-ready dict (see :data:`fastvae.eval.report.FIELDS`): ``num_groups``,
        ``group_resolutions`` ([G] ints, the top group first), ``kl_per_group`` ([G]
        floats, nats), ``kl_per_group_fraction`` ([G] floats summing to 1; None entries
        when the total KL is not positive), ``units_per_group`` ([G] ints, C·r²),
        ``active_units_per_group`` ([G] ints) and ``active_groups`` (groups with at
        least one active unit), the last two None without the counts.

    Example::

        >>> units = fastvae.eval.group_active_units(model, test_images)
        >>> diagnostics = fastvae.eval.group_diagnostics(model, kl_per_dim, units.active_units_per_group)
        >>> diagnostics["active_groups"], diagnostics["kl_per_group"]
    """
    function = "fastvae.eval.group_diagnostics"
    if not has_latent_groups(model):
        raise TypeError(f"{function}: model has no latent groups (it needs {', '.join(GROUP_ATTRIBUTES)})")
    num_groups, channels = int(model.num_groups), int(model.latent_channels)
    kl_per_dim = torch.as_tensor(kl_per_dim, dtype=torch.float64).flatten()
    if kl_per_dim.numel() != num_groups * channels:
        raise ValueError(f"{function}: kl_per_dim has {kl_per_dim.numel()} entries, the model's groups "
                         f"{num_groups} × {channels} channels")
    kl = torch.as_tensor(model.kl_per_group(kl_per_dim), dtype=torch.float64)
    total = kl.sum().item()
    fractions = (kl / total).tolist() if total > 0 else [None] * num_groups
    units = units_per_group(model)
    per_group: Optional[list] = None
    if active_units_per_group is not None:
        per_group = [int(count) for count in active_units_per_group]
        if len(per_group) != num_groups or any(not 0 <= count <= limit for count, limit in zip(per_group, units)):
            raise ValueError(f"{function}: active_units_per_group {per_group} must be {num_groups} counts, each "
                             f"between 0 and its group's units {units}")
    return {
        "num_groups": num_groups,
        "group_resolutions": [int(r) for r in model.group_resolutions],
        "kl_per_group": kl.tolist(),
        "kl_per_group_fraction": fractions,
        "units_per_group": units,
        "active_units_per_group": per_group,
        "active_groups": None if per_group is None else sum(1 for count in per_group if count > 0),
    }


def spread_group_counts(num_groups: int, max_rows: int = 7) -> list:
    """Group counts k for the pictures that keep the top k groups: every one of
    0..num_groups when they fit in ``max_rows``, else 0, 1, num_groups // 2 and
    num_groups and, up to ``max_rows``, the counts farthest from those already chosen
    (ascending).

    Example::

        >>> spread_group_counts(20)
        [0, 1, 3, 5, 10, 15, 20]
    """
    if num_groups + 1 <= max_rows:
        return list(range(num_groups + 1))
    chosen = {0, 1, num_groups // 2, num_groups}
    while len(chosen) < max_rows:
        gaps = [(min(abs(k - c) for c in chosen), -k) for k in range(num_groups + 1) if k not in chosen]
        chosen.add(-max(gaps)[1])
    return sorted(chosen)


def resolution_label(side: int) -> str:
    """'8×8': a group's resolution as the report and the pictures name it."""
    return f"{side}×{side}"


def levels_sentence(resolutions: Sequence[int], active: Sequence[Optional[bool]]) -> str:
    """The sentences of report.md naming the levels (resolutions, with their groups) that
    carry information (a group with an active unit, an element of its latent map whose
    posterior mean moves with x) and those without an active unit."""
    def named(chosen) -> str:
        by_side: dict = {}
        for index, side in enumerate(resolutions):
            if index in chosen:
                by_side.setdefault(side, []).append(index)
        return ", ".join(f"{resolution_label(side)} (group{'s' if len(groups) > 1 else ''} "
                         f"{', '.join(str(g) for g in groups)})" for side, groups in by_side.items())

    if any(flag is None for flag in active):
        return "Which groups carry information is not known: the active units were not measured (fewer than 2 points)."
    carrying = {index for index, flag in enumerate(active) if flag}
    silent = {index for index, flag in enumerate(active) if not flag}
    if carrying:
        sentence = f"The levels that carry information (a group with an active unit): {named(carrying)}."
    else:
        sentence = "No level has an active unit."
    if silent:
        sentence += f" Carrying no information (no active unit): {named(silent)}."
    return sentence
