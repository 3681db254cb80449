"""Pictures of a model as PNG files: sample grids, reconstructions, latent traversals,
the KL per dimension, and training curves from a metrics.jsonl.

Image grids are written by :mod:`fastvae.eval.png`; charts by matplotlib's Agg canvas
(imported when a chart is drawn, and without pyplot, so a caller's matplotlib backend is
left alone)."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Dict, Optional, Sequence, Union

import torch
from torch import Tensor

from ._common import check_model, check_positive_int, check_seed, evaluating, iterate_batches
from .png import to_uint8, write_png

PathLike = Union[str, os.PathLike]

# Charts are drawn at a fixed size and resolution so their pixel size is known.
CHART_SIZE = (6.4, 4.0)
CHART_DPI = 100


def as_images(x: Tensor, image_shape: Optional[Sequence[int]] = None) -> Tensor:
    r"""View a batch of data points as images [N, C, H, W], C = 1 or 3.

    Args:
        x: [N, *data_shape]: [N, C, H, W] and [N, H, W] are taken as they are; a flat
            [N, D] batch is reshaped to square grayscale images when D is a square
            (784 -> 28×28), otherwise ``image_shape`` is needed.
        image_shape: (C, H, W) or (H, W) to reshape each point to (optional).

    Returns:
        [N, C, H, W], x's dtype.

    Example::

        >>> fastvae.eval.as_images(torch.rand(16, 784)).shape
        torch.Size([16, 1, 28, 28])
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"fastvae.eval.as_images: x must be a torch.Tensor, got {type(x).__name__}")
    if image_shape is not None:
        shape = tuple(int(d) for d in image_shape)
        if len(shape) == 2:
            shape = (1,) + shape
        if len(shape) != 3 or math.prod(shape) != math.prod(x.shape[1:]):
            raise ValueError(
                f"fastvae.eval.as_images: image_shape {tuple(image_shape)} does not fit data points of shape "
                f"{tuple(x.shape[1:])}"
            )
        images = x.reshape((x.shape[0],) + shape)
    elif x.dim() == 4:
        images = x
    elif x.dim() == 3:
        images = x.unsqueeze(1)
    elif x.dim() == 2 and math.isqrt(x.shape[1]) ** 2 == x.shape[1]:
        side = math.isqrt(x.shape[1])
        images = x.reshape(x.shape[0], 1, side, side)
    else:
        raise ValueError(
            f"fastvae.eval.as_images: cannot see data points of shape {tuple(x.shape[1:])} as images; "
            f"pass image_shape=(C, H, W)"
        )
    if images.shape[1] not in (1, 3):
        raise ValueError(f"fastvae.eval.as_images: images need 1 or 3 channels, got {images.shape[1]}")
    return images


def image_grid(images: Tensor, ncol: int = 8, padding: int = 2, pad_value: float = 1.0) -> Tensor:
    r"""Tile images [N, C, H, W] (floats in [0, 1]) into one image, ``ncol`` per row, with
    ``padding`` pixels of ``pad_value`` around and between them.

    Returns:
        [C, rows·(H + padding) + padding, ncol'·(W + padding) + padding] float32, where
        ncol' = min(ncol, N) and rows = ceil(N / ncol'); empty cells are ``pad_value``.

    Example::

        >>> fastvae.eval.image_grid(torch.rand(16, 1, 28, 28), ncol=4).shape
        torch.Size([1, 122, 122])
    """
    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[0] < 1:
        raise ValueError("fastvae.eval.image_grid: images must be a tensor [N, C, H, W] with N >= 1")
    ncol = check_positive_int("image_grid", "ncol", ncol)
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise ValueError(f"fastvae.eval.image_grid: padding must be an int >= 0, got {padding!r}")
    count, channels, height, width = images.shape
    ncol = min(ncol, count)
    rows = -(-count // ncol)
    grid = torch.full(
        (channels, rows * (height + padding) + padding, ncol * (width + padding) + padding),
        float(pad_value),
        dtype=torch.float32,
    )
    for index, image in enumerate(images.detach().float().cpu()):
        top = padding + (index // ncol) * (height + padding)
        left = padding + (index % ncol) * (width + padding)
        grid[:, top:top + height, left:left + width] = image
    return grid


def save_image_grid(
    images: Tensor,
    path: PathLike,
    ncol: int = 8,
    padding: int = 2,
    pad_value: float = 1.0,
    image_shape: Optional[Sequence[int]] = None,
) -> Path:
    r"""Write data points in [0, 1] as a PNG grid (see :func:`image_grid` for the layout,
    :func:`as_images` for the accepted shapes).

    Returns:
        The path written.

    Example::

        >>> fastvae.eval.save_image_grid(x[:64], "data.png")
    """
    grid = image_grid(as_images(images, image_shape), ncol, padding, pad_value)
    return write_png(path, to_uint8(grid.permute(1, 2, 0)))


def save_samples(
    model,
    path: PathLike,
    num_samples: int = 64,
    ncol: int = 8,
    seed: Optional[int] = 0,
    image_shape: Optional[Sequence[int]] = None,
) -> Path:
    r"""Write a grid of ``num_samples`` samples of the model (z ~ p(z), the decoder's
    mean) as PNG.  The same seed gives the same picture.

    Example::

        >>> fastvae.eval.save_samples(model, "run/samples.png", num_samples=64)
    """
    function = "save_samples"
    model = check_model(function, model)
    num_samples = check_positive_int(function, "num_samples", num_samples)
    seed = check_seed(function, seed)
    with evaluating(model, seed) as device:
        generator = None if seed is None else torch.Generator(device).manual_seed(seed)
        samples = model.sample(num_samples, generator=generator)
    return save_image_grid(samples, path, ncol=ncol, image_shape=image_shape)


def _check_points(function: str, x) -> None:
    if not isinstance(x, Tensor) or x.dim() < 2 or x.shape[0] < 1:
        raise ValueError(f"fastvae.eval.{function}: x must be a tensor [n, *data_shape] with n >= 1")


def save_reconstructions(
    model,
    x: Tensor,
    path: PathLike,
    ncol: int = 8,
    image_shape: Optional[Sequence[int]] = None,
) -> Path:
    r"""Write originals and their reconstructions (the decoder's mean at E_q[z|x]) as one
    PNG: the originals in the top rows, the reconstructions in as many rows below, each
    under its original.

    Args:
        model: a :class:`fastvae.models.VAE`.
        x: data points [n, *data_shape] in [0, 1].
        path: the PNG to write.
        ncol: images per row.

    Example::

        >>> fastvae.eval.save_reconstructions(model, test_images[:16], "run/reconstructions.png")
    """
    function = "save_reconstructions"
    model = check_model(function, model)
    _check_points(function, x)
    ncol = min(check_positive_int(function, "ncol", ncol), x.shape[0])
    with evaluating(model, seed=0) as device:
        x = next(iterate_batches(function, x, x.shape[0], device, data_shape=getattr(model, "data_shape", None)))
        reconstructions = model.reconstruct(x)
    originals, reconstructions = as_images(x, image_shape), as_images(reconstructions, image_shape)
    # Blank cells complete the originals' last row, so each reconstruction sits under its original.
    rows = -(-x.shape[0] // ncol)
    blank = torch.ones((rows * ncol - x.shape[0],) + tuple(originals.shape[1:]))
    tiles = torch.cat([originals.float().cpu(), blank, reconstructions.float().cpu(), blank])
    grid = image_grid(tiles, ncol=ncol)
    return write_png(path, to_uint8(grid.permute(1, 2, 0)))


def save_latent_traversals(
    model,
    x: Tensor,
    path: PathLike,
    dims: Optional[Sequence[int]] = None,
    scores: Optional[Tensor] = None,
    num_dims: int = 8,
    num_steps: int = 9,
    span: float = 3.0,
    image_shape: Optional[Sequence[int]] = None,
) -> Path:
    r"""Write latent traversals as PNG: one row per latent dimension d, in which z starts
    at the posterior mean E_q[z|x] of the first data point of ``x`` and z_d takes
    ``num_steps`` evenly spaced values in [−span, span] (the prior's scale), decoded with
    ``model.decode``.

    Args:
        model: a :class:`fastvae.models.VAE`.
        x: data points [n, *data_shape] in [0, 1]; the first is traversed around.
        path: the PNG to write.
        dims: the dimensions to traverse (default: the ``num_dims`` highest ``scores``).
        scores: [latent_dim] how much each dimension is used, e.g. the KL per dimension
            or :class:`ActiveUnits`' variance; by default the variance of the posterior
            mean over ``x`` (with n >= 2), else dimensions 0, 1, ...
        num_dims: how many dimensions when ``dims`` is not given.
        num_steps: values per dimension.
        span: the values run over [−span, span].

    Example::

        >>> fastvae.eval.save_latent_traversals(model, test_images[:256], "run/traversals.png",
        ...                                      scores=kl_per_dim)
    """
    function = "save_latent_traversals"
    model = check_model(function, model)
    _check_points(function, x)
    num_dims = check_positive_int(function, "num_dims", num_dims)
    num_steps = check_positive_int(function, "num_steps", num_steps)
    if not math.isfinite(span) or span <= 0:
        raise ValueError(f"fastvae.eval.{function}: span must be positive and finite, got {span}")
    with evaluating(model, seed=0) as device:
        x = next(iterate_batches(function, x, x.shape[0], device, data_shape=getattr(model, "data_shape", None)))
        means = model.posterior_mean(x)
        latent_dim = means.shape[1]
        if dims is None:
            if scores is None and x.shape[0] >= 2:
                scores = means.double().var(dim=0)
            if scores is None:
                dims = list(range(min(num_dims, latent_dim)))
            else:
                scores = torch.as_tensor(scores, dtype=torch.float64).flatten().cpu()
                if scores.numel() != latent_dim:
                    raise ValueError(
                        f"fastvae.eval.{function}: scores has {scores.numel()} entries but the latent has "
                        f"{latent_dim} dimensions"
                    )
                dims = torch.argsort(scores, descending=True, stable=True)[:num_dims].tolist()
        dims = [int(d) for d in dims]
        if not dims or any(not 0 <= d < latent_dim for d in dims):
            raise ValueError(f"fastvae.eval.{function}: dims {dims} must be non-empty and in [0, {latent_dim})")
        values = torch.linspace(-span, span, num_steps, device=device, dtype=means.dtype)
        latents = means[:1].repeat(len(dims) * num_steps, 1)
        for row, d in enumerate(dims):
            latents[row * num_steps:(row + 1) * num_steps, d] = values
        decoded = model.decode(latents)
    grid = image_grid(as_images(decoded, image_shape).float().cpu(), ncol=num_steps)
    return write_png(path, to_uint8(grid.permute(1, 2, 0)))


def _new_figure():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=CHART_SIZE, dpi=CHART_DPI)
    FigureCanvasAgg(figure)
    return figure


def _save_figure(figure, path: PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    figure.savefig(partial, format="png", dpi=CHART_DPI)
    os.replace(partial, path)
    return path


def plot_kl_per_dim(kl_per_dim, path: PathLike, threshold: Optional[float] = None) -> Path:
    r"""Write a bar chart of the KL of each latent dimension (nats) as PNG, 640×400 pixels.

    Args:
        kl_per_dim: [D] KL per dimension (a tensor or a sequence of floats).
        path: the PNG to write.
        threshold: draw a horizontal line at this value (e.g. a free-bits level).

    Example::

        >>> fastvae.eval.plot_kl_per_dim(fastvae.eval.kl_per_dimension(model, x), "run/kl_per_dim.png")
    """
    kl = torch.as_tensor(kl_per_dim, dtype=torch.float64).flatten()
    if kl.numel() == 0:
        raise ValueError("fastvae.eval.plot_kl_per_dim: kl_per_dim is empty")
    figure = _new_figure()
    axes = figure.add_subplot()
    axes.bar(range(kl.numel()), kl.tolist(), color="tab:blue")
    if threshold is not None:
        axes.axhline(threshold, color="tab:red", linestyle="--", linewidth=1)
    axes.set_xlabel("latent dimension")
    axes.set_ylabel("KL (nats)")
    axes.set_title(f"KL per dimension (total {kl.sum().item():.2f} nats)")
    figure.tight_layout()
    return _save_figure(figure, path)


_CURVE_METRICS = ("loss", "elbo", "nll", "kl", "iwae_nll")
_SPLITS = ("train", "eval", "val", "valid", "test")


def _split_key(key: str, record_split: str) -> tuple[str, str]:
    """(split, metric) of a metrics key: 'train/elbo', 'eval_ema/elbo' (any prefix before a
    slash), 'eval_elbo' (a known split before _ or .) or plain 'elbo' (with the record's
    own split)."""
    head, found, tail = key.rpartition("/")
    if found and head:
        return head, tail
    for separator in ("_", "."):
        head, found, tail = key.partition(separator)
        if found and head in _SPLITS:
            return head, tail
    return record_split, key


def read_training_curves(metrics_path: PathLike) -> Dict[str, Dict[str, list]]:
    r"""Read the curves of loss, elbo, nll, kl and iwae_nll (the importance-weighted test
    NLL ``fastvae train --iwae-every`` logs) from a metrics.jsonl.

    Each line is a JSON object with a ``step`` (the line's position when absent) and
    metric values, named plainly (``"elbo"``, with the record's split in a ``"split"``,
    ``"phase"`` or ``"mode"`` field, default ``"train"``) or with the split as a prefix
    (``"train/elbo"``, ``"eval/elbo"``, ``"eval_ema/elbo"``, ``"eval_elbo"``), as
    :mod:`fastvae.train` writes them.  Blank lines, non-numeric and
    non-finite values are skipped.

    Returns:
        {metric: {split: [(step, value), ...]}} for the metrics present.

    Example::

        >>> curves = fastvae.eval.read_training_curves("run/metrics.jsonl")
        >>> curves["elbo"]["eval"][-1]
    """
    curves: Dict[str, Dict[str, list]] = {}
    with open(metrics_path) as lines:
        for number, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(
                    f"fastvae.eval.read_training_curves: line {number + 1} of {metrics_path} is not JSON: {error}"
                ) from None
            if not isinstance(record, dict):
                continue
            step = record.get("step", number)
            record_split = str(record.get("split", record.get("phase", record.get("mode", "train"))))
            for key, value in record.items():
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                    continue
                split, metric = _split_key(key, record_split)
                if metric in _CURVE_METRICS:
                    curves.setdefault(metric, {}).setdefault(split, []).append((step, float(value)))
    return curves


def plot_training_curves(metrics_path: PathLike, path: PathLike) -> Path:
    r"""Write the training curves of a metrics.jsonl as PNG (640×400 pixels): one panel
    per metric among loss, elbo, nll, kl and iwae_nll that was logged more than once,
    one line per split (train, eval, test, ...) over the steps.  See :func:`read_training_curves` for the accepted records.

    Example::

        >>> fastvae.eval.plot_training_curves("run/metrics.jsonl", "run/training_curves.png")
    """
    curves = read_training_curves(metrics_path)
    if not curves:
        raise ValueError(
            f"fastvae.eval.plot_training_curves: {metrics_path} has no values of {', '.join(_CURVE_METRICS)}"
        )
    metrics = [m for m in _CURVE_METRICS if m in curves]
    # A panel needs a line: a metric logged once (an end-of-run estimate) is left out
    # unless nothing else was logged.
    lines = [m for m in metrics if sum(len(points) for points in curves[m].values()) > 1]
    metrics = lines or metrics
    figure = _new_figure()
    columns = min(2, len(metrics))
    rows = -(-len(metrics) // columns)
    for index, metric in enumerate(metrics):
        axes = figure.add_subplot(rows, columns, index + 1)
        for split, points in sorted(curves[metric].items()):
            steps, values = zip(*points)
            axes.plot(steps, values, label=split, marker="o" if len(points) < 20 else None, markersize=3)
        axes.set_title(metric + (" (nats)" if metric != "loss" else ""), fontsize=9)
        axes.set_xlabel("step", fontsize=8)
        axes.tick_params(labelsize=7)
        axes.legend(fontsize=7)
    figure.tight_layout()
    return _save_figure(figure, path)


def save_pictures(
    model,
    data,
    out_dir: PathLike,
    kl_per_dim: Optional[Tensor] = None,
    metrics_path: Optional[PathLike] = None,
    num_samples: int = 64,
    num_reconstructions: int = 16,
    seed: Optional[int] = 0,
    image_shape: Optional[Sequence[int]] = None,
) -> Dict[str, Path]:
    r"""Write a run's pictures into ``out_dir``: ``samples.png``, ``reconstructions.png``
    (the first ``num_reconstructions`` data points), ``traversals.png`` (the dimensions
    with the most KL, or the most posterior-mean variance over the first 256 points
    without ``kl_per_dim``), ``kl_per_dim.png`` (when ``kl_per_dim`` is given and not
    empty) and ``training_curves.png`` (when ``metrics_path`` exists).

    Returns:
        {name: path} of the files written, in that order (name without ``.png``).

    Example::

        >>> fastvae.eval.save_pictures(model, test_images, "run", kl_per_dim=results["kl_per_dim"],
        ...                            metrics_path="run/metrics.jsonl")
    """
    function = "save_pictures"
    model = check_model(function, model)
    out_dir = Path(out_dir)
    device = torch.device("cpu")
    points = next(iterate_batches(function, data, 256, device, 256, getattr(model, "data_shape", None)))
    written = {"samples": save_samples(model, out_dir / "samples.png", num_samples, seed=seed, image_shape=image_shape)}
    written["reconstructions"] = save_reconstructions(
        model, points[:num_reconstructions], out_dir / "reconstructions.png", image_shape=image_shape
    )
    has_kl = kl_per_dim is not None and torch.as_tensor(kl_per_dim).numel() > 0
    # The KL ranks the traversed dimensions only when it has one entry per dimension of
    # the posterior mean (a discrete model's KL is per variable, its mean per category).
    ranks_dims = has_kl and torch.as_tensor(kl_per_dim).numel() == getattr(model, "latent_dim", None)
    written["traversals"] = save_latent_traversals(
        model, points, out_dir / "traversals.png", scores=kl_per_dim if ranks_dims else None, image_shape=image_shape
    )
    if has_kl:
        written["kl_per_dim"] = plot_kl_per_dim(kl_per_dim, out_dir / "kl_per_dim.png")
    if metrics_path is not None and Path(metrics_path).exists():
        written["training_curves"] = plot_training_curves(metrics_path, out_dir / "training_curves.png")
    return written
