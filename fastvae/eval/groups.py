"""Per-group diagnostics of models whose latent is a stack of groups (a deep hierarchical
VAE such as :class:`fastvae.models.DeepVAE`): how much KL each group carries and which
groups the posterior uses at all (posterior collapse, group by group)."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

# The attributes that make a model's latent a stack of groups for the evaluation.
GROUP_ATTRIBUTES = ("num_groups", "latent_channels", "group_resolutions", "kl_per_group")


def has_latent_groups(model) -> bool:
    """Whether the evaluation sees ``model``'s latent as groups: it has ``num_groups``,
    ``latent_channels``, ``group_resolutions`` and ``kl_per_group`` (as
    :class:`fastvae.models.DeepVAE`).

    Example::

        >>> fastvae.eval.has_latent_groups(DeepVAE())
        True
    """
    return all(hasattr(model, name) for name in GROUP_ATTRIBUTES)


def group_diagnostics(
    model,
    kl_per_dim: Tensor,
    posterior_mean_variance: Optional[Tensor] = None,
    threshold: float = 0.01,
) -> dict:
    r"""The KL and the active units of each latent group, from the per-channel numbers the
    evaluation already has (no model pass).

    Args:
        model: a model with latent groups (:func:`has_latent_groups`): its
            ``kl_per_group`` sums the channels of each group; ``kl_per_dim`` and the
            posterior mean are group-major, the top group first.
        kl_per_dim: [num_groups · latent_channels] the mean KL of each channel, nats (as
            ``VAEOutput.kl_per_dim`` or :func:`fastvae.eval.kl_per_dimension`).
        posterior_mean_variance: [num_groups · latent_channels] Cov_x E_q[z_d|x] of each
            channel (:class:`fastvae.eval.ActiveUnits`' ``variance``), or None when it
            was not measured.
        threshold: a channel is active when its variance exceeds this.

    Returns:
        A JSON-ready dict (see :data:`fastvae.eval.report.FIELDS`): ``num_groups``,
        ``group_resolutions`` ([G] ints, the top group first), ``kl_per_group`` ([G]
        floats, nats), ``kl_per_group_fraction`` ([G] floats summing to 1; None entries
        when the total KL is not positive), ``active_units_per_group`` ([G] ints) and
        ``active_groups`` (groups with at least one active unit), the last two None
        without a variance.

    Example::

        >>> diagnostics = fastvae.eval.group_diagnostics(model, results_kl_per_dim, units.variance)
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
    per_group: Optional[list] = None
    if posterior_mean_variance is not None:
        variance = torch.as_tensor(posterior_mean_variance, dtype=torch.float64).flatten()
        if variance.numel() != num_groups * channels:
            raise ValueError(f"{function}: posterior_mean_variance has {variance.numel()} entries, the model's "
                             f"groups {num_groups} × {channels} channels")
        per_group = (variance.view(num_groups, channels) > threshold).sum(dim=1).tolist()
    return {
        "num_groups": num_groups,
        "group_resolutions": [int(r) for r in model.group_resolutions],
        "kl_per_group": kl.tolist(),
        "kl_per_group_fraction": fractions,
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
    carry information and those without an active unit.

    A unit is a channel's posterior mean averaged over its group's map (the model's
    ``posterior_mean``), so a group above 1×1 can carry information in its spatial
    pattern while that mean stays put: the sentence says so where such a group has no
    active unit, rather than calling it collapsed (its KL tells)."""
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
    spatial = {index for index in silent if resolutions[index] != 1}
    if carrying:
        sentence = f"The levels that carry information (a group with an active unit): {named(carrying)}."
    else:
        sentence = "No level has an active unit."
    if silent - spatial:
        sentence += f" Carrying no information (no active unit, a 1×1 map): {named(silent - spatial)}."
    if spatial:
        sentence += (f" Without an active unit at a larger map: {named(spatial)}; a unit is a channel's mean over "
                     f"its map, so these may still carry information in their spatial pattern (read their KL).")
    return sentence
