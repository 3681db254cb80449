"""Pictures of a model as PNG files: sample grids, reconstructions, latent traversals,
the KL per dimension, and training curves from a metrics.jsonl; for a model with latent
groups (a deep hierarchical VAE), samples by temperature, reconstructions from the top
groups alone, and the KL per group.

Image grids are written by :mod:`fastvae.eval.png`, their pixels exactly the decoder's
(no resampling).  The labels of the reconstructions and traversals (which row is data,
which dimension a row moves and through which values) are drawn by matplotlib's Agg
canvas beside the grid, as are the charts; matplotlib is imported only when a picture
with text is drawn, and without pyplot, so a caller's matplotlib backend is left alone."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Dict, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from ._common import check_model, check_nonnegative_float, check_positive_int, check_seed, evaluating, iterate_batches
from .groups import (
    GROUP_ATTRIBUTES,
    group_active_units,
    group_diagnostics,
    has_latent_groups,
    resolution_label,
    spread_group_counts,
)
from .likelihood import elbo_estimate
from .png import to_uint8, write_png

PathLike = Union[str, os.PathLike]

# Charts are drawn at a fixed size and resolution so their pixel size is known.
CHART_SIZE = (6.4, 4.0)
CHART_DPI = 100
# Labels beside image grids: font sizes in points, the margin around them in pixels; a
# title wraps to the grid's width, but not narrower than a short sentence.
LABEL_FONT_SIZE = 8
TITLE_FONT_SIZE = 9
LABEL_MARGIN = 6
_TITLE_LINESPACING = 1.2
_MIN_TITLE_WIDTH = 240
_GRID_PADDING = 2  # image_grid's default padding, which the label positions assume
# The temperatures of samples_by_temperature.png (VDVAE's and NVAE's pictures use such a
# range: lower temperatures trade diversity for cleaner samples), and the data points of
# group_reconstructions.png.
SAMPLE_TEMPERATURES = (1.0, 0.9, 0.8, 0.6, 0.0)
GROUP_RECONSTRUCTION_POINTS = 6


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
    r"""Write data points and their reconstructions (the decoder's mean at E_q[z|x]) as one
    labelled PNG: rows of ``ncol`` data points, labelled "data", each followed by the row
    of their reconstructions, labelled "reconstruction", so each reconstruction sits
    right under its data point.  The grid's pixels are the images' exactly.

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
    originals = as_images(x, image_shape).float().cpu()
    reconstructions = as_images(reconstructions, image_shape).float().cpu()
    # Row pairs: ncol data points, then their reconstructions; blank cells complete a
    # short last pair, so each reconstruction sits under its data point.
    rows = -(-x.shape[0] // ncol)
    blank = torch.ones((rows * ncol - x.shape[0],) + tuple(originals.shape[1:]))
    originals = torch.cat([originals, blank]).view((rows, ncol) + tuple(originals.shape[1:]))
    reconstructions = torch.cat([reconstructions, blank]).view((rows, ncol) + tuple(reconstructions.shape[1:]))
    tiles = torch.stack([originals, reconstructions], dim=1).flatten(0, 2)
    grid = image_grid(tiles, ncol=ncol)
    height = tiles.shape[2]
    labels = [(_GRID_PADDING + row * (height + _GRID_PADDING), height, "data" if row % 2 == 0 else "reconstruction")
              for row in range(2 * rows)]
    title = "data / reconstruction (the decoder's mean at E_q[z|x])"
    return write_png(path, _labelled_grid(grid, title=title, row_labels=labels))


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
    ``model.decode``.  Each row is labelled with its dimension (``z[d]``), the columns
    with the values of z_d, and a title states the range; the grid's pixels are the
    decoded images' exactly.

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
    images = as_images(decoded, image_shape).float().cpu()
    grid = image_grid(images, ncol=num_steps)
    height, width = images.shape[2:]
    rows = [(_GRID_PADDING + row * (height + _GRID_PADDING), height, f"z[{d}]") for row, d in enumerate(dims)]
    columns = [(_GRID_PADDING + column * (width + _GRID_PADDING), width, _signed(value))
               for column, value in enumerate(values.tolist())]
    title = (f"latent traversals: z[d] from {_signed(-span)} to {_signed(span)} in {num_steps} steps; the other "
             f"dimensions at E_q[z|x] of data point 0")
    return write_png(path, _labelled_grid(grid, title=title, row_labels=rows, column_labels=columns))


def _check_groups(function: str, model) -> None:
    if not has_latent_groups(model):
        raise TypeError(f"fastvae.eval.{function}: the model has no latent groups ({', '.join(GROUP_ATTRIBUTES)}), "
                        f"as fastvae.models.DeepVAE has")


def _temperature_label(value: float) -> str:
    """'t = 0.8', 't = 1.0': a temperature as a row label."""
    text = f"{value:g}"
    return f"t = {text}" + ("" if "." in text or "e" in text else ".0")


def _labelled_rows(rows: Sequence[Tensor], labels: Sequence[str], title: str,
                   image_shape: Optional[Sequence[int]]) -> Tensor:
    """Rows of images (each [n, *data_shape], the same n), one labelled grid row each."""
    images = [as_images(row, image_shape).float().cpu() for row in rows]
    grid = image_grid(torch.cat(images), ncol=images[0].shape[0])
    height = images[0].shape[2]
    row_labels = [(_GRID_PADDING + index * (height + _GRID_PADDING), height, text) for index, text in enumerate(labels)]
    return _labelled_grid(grid, title=title, row_labels=row_labels)


def save_samples_by_temperature(
    model,
    path: PathLike,
    temperatures: Sequence[float] = SAMPLE_TEMPERATURES,
    num_columns: int = 8,
    seed: Optional[int] = 0,
    image_shape: Optional[Sequence[int]] = None,
) -> Path:
    r"""Write samples of a model with latent groups at several temperatures as one
    labelled PNG: row i holds ``model.sample(num_columns, generator, temperature=t_i)``,
    labelled "t = t_i", where every group z_i ~ N(μ_p, (t·σ_p)²) given the groups above
    (t = 0: each prior's mean, one image repeated).  Every row's generator starts from
    ``seed``, so the rows share their noise (a column shows one draw cooled down) and
    the same seed gives the same picture.  The grid's pixels are the samples' exactly.

    Args:
        model: a model with latent groups whose ``sample`` takes ``temperature`` (as
            :class:`fastvae.models.DeepVAE`).
        path: the PNG to write.
        temperatures: t of each row, >= 0 (default 1.0, 0.9, 0.8, 0.6, 0.0).
        num_columns: samples per row.
        seed: the noise's seed (None: the current random state, rows not shared).

    Example::

        >>> fastvae.eval.save_samples_by_temperature(model, "run/samples_by_temperature.png")
    """
    function = "save_samples_by_temperature"
    model = check_model(function, model)
    _check_groups(function, model)
    num_columns = check_positive_int(function, "num_columns", num_columns)
    seed = check_seed(function, seed)
    temperatures = [check_nonnegative_float(function, f"temperatures[{index}]", t)
                    for index, t in enumerate(temperatures)]
    if not temperatures:
        raise ValueError(f"fastvae.eval.{function}: temperatures is empty")
    rows = []
    with evaluating(model, seed) as device:
        for temperature in temperatures:
            generator = None if seed is None else torch.Generator(device).manual_seed(seed)
            rows.append(model.sample(num_columns, generator=generator, temperature=temperature))
    title = "samples by temperature: every group drawn from its prior with its deviation scaled by t, the same noise " \
            "in every row"
    return write_png(path, _labelled_rows(rows, [_temperature_label(t) for t in temperatures], title, image_shape))


def save_group_reconstructions(
    model,
    x: Tensor,
    path: PathLike,
    group_counts: Optional[Sequence[int]] = None,
    temperature: float = 1.0,
    seed: Optional[int] = 0,
    image_shape: Optional[Sequence[int]] = None,
) -> Path:
    r"""Write what each level of a model with latent groups encodes, as one labelled PNG:
    a row of the data points ``x`` ("data"), then for each k of ``group_counts`` the row
    ``model.reconstruct(x, groups=k, temperature=temperature, generator)`` ("top k of G
    groups"): the top k groups at the posterior means of x, the groups below sampled
    from their conditional priors.  k = 0 is an unconditional sample, k = G the
    reconstruction at E_q[z|x] (``model.reconstruct(x)``).  Every row's generator starts
    from ``seed``, so the rows share their noise and the same seed gives the same
    picture.  The grid's pixels are the decoder's means exactly.

    Args:
        model: a model with latent groups whose ``reconstruct`` takes ``groups``,
            ``temperature`` and ``generator`` (as :class:`fastvae.models.DeepVAE`).
        x: data points [n, *data_shape] in [0, 1], one column each.
        path: the PNG to write.
        group_counts: the k of each row, in [0, G] (default: 0, 1, ..., G, or at most 7
            spread over them with 0, 1, G // 2 and G, :func:`spread_group_counts`).
        temperature: the temperature of the sampled groups (>= 0; 0: each prior's mean).
        seed: the noise's seed (None: the current random state).

    Example::

        >>> fastvae.eval.save_group_reconstructions(model, test_images[:6], "run/group_reconstructions.png")
    """
    function = "save_group_reconstructions"
    model = check_model(function, model)
    _check_groups(function, model)
    _check_points(function, x)
    seed = check_seed(function, seed)
    temperature = check_nonnegative_float(function, "temperature", temperature)
    num_groups = int(model.num_groups)
    counts = spread_group_counts(num_groups) if group_counts is None else list(group_counts)
    if not counts or any(isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= num_groups for k in counts):
        raise ValueError(f"fastvae.eval.{function}: group_counts {counts} must be non-empty ints in [0, {num_groups}]")
    with evaluating(model, seed) as device:
        x = next(iterate_batches(function, x, x.shape[0], device, data_shape=getattr(model, "data_shape", None)))
        rows = [x]
        for count in counts:
            generator = None if seed is None else torch.Generator(device).manual_seed(seed)
            rows.append(model.reconstruct(x, groups=count, temperature=temperature, generator=generator))
    labels = ["data"] + [f"top {count} of {num_groups} groups" for count in counts]
    title = (f"what the top k groups encode: they sit at the posterior means of the data, the groups below are "
             f"sampled at t = {temperature:g}, the same noise in every row")
    return write_png(path, _labelled_rows(rows, labels, title, image_shape))


def _signed(value: float) -> str:
    """A traversal value as a column label: '−1.5', '0', '+1.5'."""
    return "0" if value == 0 else f"{value:+.3g}".replace("-", "\u2212")


def _label_figure(width: int, height: int):
    """An empty white figure of ``width`` × ``height`` pixels on an Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width / CHART_DPI, height / CHART_DPI), dpi=CHART_DPI, facecolor="white")
    FigureCanvasAgg(figure)
    return figure


def _text_size(figure, text: str, size: float) -> tuple[int, int]:
    """(width, height) in pixels of ``text`` at ``size`` points on ``figure``'s canvas."""
    from matplotlib.font_manager import FontProperties

    width, height, _ = figure.canvas.get_renderer().get_text_width_height_descent(
        text, FontProperties(size=size), ismath=False)
    return math.ceil(width), math.ceil(height)


def _wrap(figure, text: str, width: int) -> list:
    """``text`` broken at spaces into lines at most ``width`` pixels wide (a single word
    wider than that keeps its own line)."""
    lines: list = []
    for word in text.split(" "):
        if lines and _text_size(figure, f"{lines[-1]} {word}", TITLE_FONT_SIZE)[0] <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines


def _labelled_grid(
    grid: Tensor,
    title: Optional[str] = None,
    row_labels: Sequence[tuple] = (),
    column_labels: Sequence[tuple] = (),
) -> Tensor:
    r"""The image grid [C, H, W] (floats in [0, 1]) with text around it, as uint8
    [H', W', C] pixels: ``title`` above, each ``(top, height, text)`` of ``row_labels``
    right-aligned left of the grid's pixel rows top..top + height, each
    ``(left, width, text)`` of ``column_labels`` centred above the grid's columns
    left..left + width (every k-th of them, first and last included, when they would
    touch at k = 1).  The grid is pasted in unchanged, so its pixels are exact."""
    channels, grid_height, grid_width = grid.shape
    margin = LABEL_MARGIN
    figure = _label_figure(1, 1)
    label_width = max((_text_size(figure, text, LABEL_FONT_SIZE)[0] for _, _, text in row_labels), default=0)
    label_height = _text_size(figure, "0123456789dz", LABEL_FONT_SIZE)[1]
    left = margin + (label_width + margin if row_labels else 0)
    width = left + grid_width + margin
    title_lines = _wrap(figure, title, max(width - 2 * margin, _MIN_TITLE_WIDTH)) if title else []
    width = max([width] + [_text_size(figure, line, TITLE_FONT_SIZE)[0] + 2 * margin for line in title_lines])
    # Each line after the first adds matplotlib's line pitch: linespacing × the font size.
    pitch = _TITLE_LINESPACING * TITLE_FONT_SIZE * CHART_DPI / 72
    line_height = _text_size(figure, "Ag", TITLE_FONT_SIZE)[1]
    title_height = math.ceil(line_height + pitch * (len(title_lines) - 1)) if title_lines else 0
    top = margin + (title_height + margin if title else 0) + (label_height + margin // 2 if column_labels else 0)
    height = top + grid_height + margin
    title = "\n".join(title_lines)

    figure = _label_figure(width, height)
    # Text is placed in pixels from the top-left corner: matplotlib's figure pixels count
    # from the bottom.
    if title:
        figure.text(margin / width, 1 - margin / height, title, fontsize=TITLE_FONT_SIZE, ha="left", va="top",
                    linespacing=_TITLE_LINESPACING)
    for row_top, row_height, text in row_labels:
        figure.text((left - margin) / width, 1 - (top + row_top + row_height / 2) / height, text,
                    fontsize=LABEL_FONT_SIZE, ha="right", va="center")
    # (centre, half width, text) of each column label: every one where they fit, else
    # every k-th for the smallest k at which they do, the first and the last always
    # (they give the range).
    spans = [(left + column_left + column_width / 2, _text_size(figure, text, LABEL_FONT_SIZE)[0] / 2, text)
             for column_left, column_width, text in column_labels]
    shown = spans[:1]
    for stride in range(1, max(len(spans), 1)):
        chosen = sorted(set(range(0, len(spans), stride)) | {len(spans) - 1})
        shown = [spans[i] for i in chosen]
        if all(b[0] - b[1] >= a[0] + a[1] + 4 for a, b in zip(shown, shown[1:])):
            break
    for centre, _, text in shown:
        figure.text(centre / width, 1 - (top - margin // 2) / height, text, fontsize=LABEL_FONT_SIZE, ha="center",
                    va="bottom")
    figure.canvas.draw()
    rendered = torch.from_numpy(np.asarray(figure.canvas.buffer_rgba())[..., :3].copy())
    # The canvas's size is the figure's rounded; paste into exactly height × width.
    pixels = torch.full((height, width, 3), 255, dtype=torch.uint8)
    rows, cols = min(height, rendered.shape[0]), min(width, rendered.shape[1])
    pixels[:rows, :cols] = rendered[:rows, :cols]
    if channels == 1:
        pixels = pixels[..., :1]  # black text on white: the three channels are equal
    pixels[top:top + grid_height, left:left + grid_width] = to_uint8(grid.permute(1, 2, 0))
    return pixels


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


def plot_kl_per_group(
    kl_per_group,
    path: PathLike,
    resolutions: Optional[Sequence[int]] = None,
    active: Optional[Sequence[bool]] = None,
) -> Path:
    r"""Write a bar chart of the KL of each latent group (nats) as PNG, 640×400 pixels:
    the groups from the top down, each x label its index and (with ``resolutions``) its
    resolution, each bar's share of the total KL written above it; groups that are not
    ``active`` are drawn hatched and grey, and the legend says so.

    Args:
        kl_per_group: [G] KL per group (a tensor or a sequence of floats), the top first.
        path: the PNG to write.
        resolutions: [G] the side of each group's latent map.
        active: [G] whether each group has an active unit, an element of its latent map
            (:func:`fastvae.eval.group_active_units`; None: not marked).

    Example::

        >>> units = fastvae.eval.group_active_units(model, test_images)
        >>> d = fastvae.eval.group_diagnostics(model, results["kl_per_dim"], units.active_units_per_group)
        >>> fastvae.eval.plot_kl_per_group(d["kl_per_group"], "run/kl_per_group.png", d["group_resolutions"],
        ...                                [n > 0 for n in d["active_units_per_group"]])
    """
    function = "fastvae.eval.plot_kl_per_group"
    kl = torch.as_tensor(kl_per_group, dtype=torch.float64).flatten()
    count = kl.numel()
    if count == 0:
        raise ValueError(f"{function}: kl_per_group is empty")
    for name, values in (("resolutions", resolutions), ("active", active)):
        if values is not None and len(values) != count:
            raise ValueError(f"{function}: {name} has {len(values)} entries, kl_per_group {count}")
    flags = [True] * count if active is None else [bool(flag) for flag in active]
    figure = _new_figure()
    axes = figure.add_subplot()
    positions = list(range(count))
    bars = axes.bar(positions, kl.tolist(), color=["tab:blue" if flag else "lightgrey" for flag in flags],
                    edgecolor=["tab:blue" if flag else "dimgray" for flag in flags])
    for bar, flag in zip(bars, flags):
        if not flag:
            bar.set_hatch("//")
    total = kl.sum().item()
    crowded = count > 16
    small = 6 if crowded else 7
    if total > 0:
        for position, value in zip(positions, kl.tolist()):
            share = 100 * value / total
            axes.annotate(f"{share:.1f}%" if share < 10 else f"{share:.0f}%", (position, value),
                          textcoords="offset points",
                          xytext=(0, 2), ha="center", va="bottom", fontsize=small, rotation=90 if crowded else 0)
    labels = [str(index) if resolutions is None else f"{index}\n{resolution_label(side)}"
              for index, side in zip(positions, resolutions or [None] * count)]
    axes.set_xticks(positions)
    axes.set_xticklabels(labels, fontsize=small, rotation=90 if crowded else 0)
    axes.set_xlabel("group (the top first)" + ("" if resolutions is None else " and its resolution"))
    axes.set_ylabel("KL (nats)")
    axes.set_ylim(0, max(kl.max().item(), 1e-6) * 1.15)
    if not all(flags):
        from matplotlib.patches import Patch

        axes.legend(handles=[Patch(facecolor="tab:blue", label="active (an active unit)"),
                             Patch(facecolor="lightgrey", edgecolor="dimgray", hatch="//",
                                   label="inactive (no active unit)")], fontsize=7)
    inactive = sum(1 for flag in flags if not flag)
    axes.set_title(f"KL per group (total {total:.2f} nats" + (f"; {inactive} of {count} groups inactive)"
                                                              if active is not None else ")"))
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


# Panel titles of the curves' metrics.
_CURVE_TITLES = {
    "loss": "loss (the objective trained)",
    "elbo": "ELBO (nats)",
    "nll": "reconstruction −log p(x|z) (nats)",
    "kl": "KL(q(z|x) ‖ p(z)) (nats)",
    "iwae_nll": "IWAE NLL −log p̂(x) (nats)",
}
# A panel's y-axis fits the values after this fraction of its steps: the first steps of a
# run (an ELBO of −3000 falling to −150) would otherwise flatten the rest into a line.
CURVE_SKIP_FRACTION = 0.1


def _curve_limits(lines: Sequence[Sequence[tuple]]) -> Optional[tuple]:
    """(low, high) y-limits for a panel's lines of (step, value) points: the range of
    the values after the first :data:`CURVE_SKIP_FRACTION` of the steps (and of every
    line's last value), with a margin; None where the first steps would not squeeze the
    rest into under half of the axis."""
    steps = [step for points in lines for step, _ in points]
    first, last = min(steps), max(steps)
    cutoff = first + CURVE_SKIP_FRACTION * (last - first)
    kept = [value for points in lines for step, value in points if step > cutoff]
    kept += [points[-1][1] for points in lines]
    everything = [value for points in lines for _, value in points]
    low, high = min(kept), max(kept)
    # Clip only where the first steps would squeeze the rest into under half the axis.
    if max(everything) - min(everything) <= 2.0 * (high - low):
        return None
    pad = 0.08 * (high - low) if high > low else max(abs(high) * 0.01, 1e-3)
    return low - pad, high + pad


def _training_curves_figure(curves: Dict[str, Dict[str, list]]):
    metrics = [m for m in _CURVE_METRICS if m in curves]
    # A panel needs a line: a metric logged once (an end-of-run estimate) is left out
    # unless nothing else was logged.
    lines = [m for m in metrics if sum(len(points) for points in curves[m].values()) > 1]
    metrics = lines or metrics
    figure = _new_figure()
    columns = min(2, len(metrics))
    rows = -(-len(metrics) // columns)
    clipped = False
    for index, metric in enumerate(metrics):
        axes = figure.add_subplot(rows, columns, index + 1)
        for split, points in sorted(curves[metric].items()):
            steps, values = zip(*points)
            axes.plot(steps, values, label=split, marker="o" if len(points) < 20 else None, markersize=3)
        axes.set_xlabel("step", fontsize=8)
        limits = _curve_limits(list(curves[metric].values()))
        if limits is not None:
            axes.set_ylim(limits[0], limits[1])
            clipped = True
        axes.set_title(_CURVE_TITLES[metric] + (" *" if limits is not None else ""), fontsize=9)
        axes.tick_params(labelsize=7)
        axes.legend(fontsize=7)
    if clipped:
        figure.text(0.5, 0.01, f"* the y-axis fits the values after the first {CURVE_SKIP_FRACTION:.0%} of steps: "
                    f"earlier ones run off the chart", ha="center", va="bottom", fontsize=7, color="dimgray")
        figure.tight_layout(rect=(0, 0.04, 1, 1))
    else:
        figure.tight_layout()
    return figure


def plot_training_curves(metrics_path: PathLike, path: PathLike) -> Path:
    r"""Write the training curves of a metrics.jsonl as PNG (640×400 pixels): one panel
    per metric among loss, elbo, nll, kl and iwae_nll that was logged more than once,
    one line per split (train, eval, test, ...) over the steps.  See
    :func:`read_training_curves` for the accepted records.

    Where a run's first steps, far worse than the rest, would squeeze the curves into
    under half of a panel's height, that panel's y-axis fits the values after the first
    10% of its steps (:data:`CURVE_SKIP_FRACTION`) and every line's last value; its
    title is marked * and a note under the panels says what that means.

    Example::

        >>> fastvae.eval.plot_training_curves("run/metrics.jsonl", "run/training_curves.png")
    """
    curves = read_training_curves(metrics_path)
    if not curves:
        raise ValueError(
            f"fastvae.eval.plot_training_curves: {metrics_path} has no values of {', '.join(_CURVE_METRICS)}"
        )
    return _save_figure(_training_curves_figure(curves), path)


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
    active_units_per_group: Optional[Sequence[int]] = None,
    active_threshold: float = 0.01,
) -> Dict[str, Path]:
    r"""Write a run's pictures into ``out_dir``: ``samples.png``, ``reconstructions.png``
    (the first ``num_reconstructions`` data points), ``traversals.png`` (the dimensions
    with the most KL, or the most posterior-mean variance over the first 256 points
    without ``kl_per_dim``), ``kl_per_dim.png`` (when ``kl_per_dim`` is given and not
    empty) and ``training_curves.png`` (when ``metrics_path`` exists).

    A model with latent groups (:func:`fastvae.eval.has_latent_groups`, e.g.
    :class:`fastvae.models.DeepVAE`) gets, besides those,
    ``samples_by_temperature.png`` (:func:`save_samples_by_temperature`),
    ``group_reconstructions.png`` (:func:`save_group_reconstructions` of the first
    6 data points) and ``kl_per_group.png`` (:func:`plot_kl_per_group`: the groups'
    sums of ``kl_per_dim``, or of the KL of the first 256 points without it; a group is
    marked inactive when ``active_units_per_group`` (:func:`fastvae.eval.evaluate`'s,
    the active elements of each group's latent map) gives it none, or without it when
    no element of its map has a posterior mean whose variance over the first 256 points
    exceeds ``active_threshold``, :func:`fastvae.eval.group_active_units`), and
    no ``traversals.png``: its ``decode`` holds each channel constant over its group's
    map with the other channels at their spatial means, which neither reconstructs a
    data point nor shows what a level encodes; ``group_reconstructions.png`` shows that.

    Returns:
        {name: path} of the files written (name without ``.png``), in the order
        samples, samples_by_temperature, reconstructions, group_reconstructions,
        traversals, kl_per_dim, kl_per_group, training_curves.

    Example::

        >>> fastvae.eval.save_pictures(model, test_images, "run", kl_per_dim=results["kl_per_dim"],
        ...                            metrics_path="run/metrics.jsonl")
    """
    function = "save_pictures"
    model = check_model(function, model)
    out_dir = Path(out_dir)
    device = torch.device("cpu")
    grouped = has_latent_groups(model)
    points = next(iterate_batches(function, data, 256, device, 256, getattr(model, "data_shape", None)))
    written = {"samples": save_samples(model, out_dir / "samples.png", num_samples, seed=seed, image_shape=image_shape)}
    if grouped:
        written["samples_by_temperature"] = save_samples_by_temperature(
            model, out_dir / "samples_by_temperature.png", seed=seed, image_shape=image_shape)
    written["reconstructions"] = save_reconstructions(
        model, points[:num_reconstructions], out_dir / "reconstructions.png", image_shape=image_shape
    )
    if grouped:
        written["group_reconstructions"] = save_group_reconstructions(
            model, points[:GROUP_RECONSTRUCTION_POINTS], out_dir / "group_reconstructions.png", seed=seed,
            image_shape=image_shape)
    has_kl = kl_per_dim is not None and torch.as_tensor(kl_per_dim).numel() > 0
    # The KL ranks the traversed dimensions only when it has one entry per dimension of
    # the posterior mean (a discrete model's KL is per variable, its mean per category).
    ranks_dims = has_kl and torch.as_tensor(kl_per_dim).numel() == getattr(model, "latent_dim", None)
    if not grouped:
        written["traversals"] = save_latent_traversals(
            model, points, out_dir / "traversals.png", scores=kl_per_dim if ranks_dims else None,
            image_shape=image_shape
        )
    if has_kl:
        written["kl_per_dim"] = plot_kl_per_dim(kl_per_dim, out_dir / "kl_per_dim.png")
    if grouped:
        group_kl = kl_per_dim if ranks_dims else elbo_estimate(model, points, seed=seed).kl_per_dim
        counts = active_units_per_group
        if counts is None and points.shape[0] >= 2:
            counts = group_active_units(model, points, active_threshold).active_units_per_group
        groups = group_diagnostics(model, group_kl, counts)
        units = groups["active_units_per_group"]
        written["kl_per_group"] = plot_kl_per_group(
            groups["kl_per_group"], out_dir / "kl_per_group.png", groups["group_resolutions"],
            None if units is None else [count > 0 for count in units])
    if metrics_path is not None and Path(metrics_path).exists():
        written["training_curves"] = plot_training_curves(metrics_path, out_dir / "training_curves.png")
    return written
