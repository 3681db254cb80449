"""Sprites: fastvae's embedded data set, generated on the fly, so nothing is downloaded.

Binary 64×64 images of one white shape on black, like dSprites (Matthey et al. 2017),
with five ground-truth factors of variation drawn independently and uniformly:

=============  =====  ===========================================================
factor         sizes  values
=============  =====  ===========================================================
shape          3      square, ellipse, heart
scale          6      0.5 … 1.0 (evenly spaced) of the largest size
orientation    40     2πk/40, k = 0 … 39 (counterclockwise)
pos_x, pos_y   32     evenly spaced centres, the shape always inside the frame
=============  =====  ===========================================================

Rendering is vectorized in torch: every pixel centre is mapped into the shape's own
rotated and scaled frame (u, v), where an implicit inside-test decides it:
square max(|u|, |v|) ≤ 1, ellipse (u/0.5)² + v² ≤ 1, heart (x² + y² − 1)³ ≤ x²y³.
The arithmetic is float64 from fixed tables, so a seed gives the same bytes on any
machine in practice.

The 737,280 factor combinations are split once and for all into disjoint parts by a
fixed hash of the combination: 10% 'test', 10% 'valid', 80% 'train', so an image of the
test split never occurs in the training split.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from .base import TensorImageDataset

IMAGE_SIZE = 64
FACTOR_NAMES = ("shape", "scale", "orientation", "pos_x", "pos_y")
FACTOR_SIZES = (3, 6, 40, 32, 32)
SHAPE_NAMES = ("square", "ellipse", "heart")
SCALES = tuple(0.5 + 0.1 * k for k in range(6))
ORIENTATIONS = tuple(2.0 * math.pi * k / 40 for k in range(40))
SPLITS = ("train", "valid", "test", "all")
DEFAULT_NUM_IMAGES = {"train": 20000, "valid": 2000, "test": 2000, "all": 20000}

# Half-width of a shape at scale 1, as a fraction of the image side (about 10 pixels).
_MAX_HALF_SIZE = 0.16
# The farthest any shape reaches from its centre is a square's corner, at √2 half-widths:
# centres keep that far (and a pixel more) from the border, so no shape is ever cut.
_MARGIN = _MAX_HALF_SIZE * math.sqrt(2.0) + 1.0 / IMAGE_SIZE
# The side of the window a shape is drawn in: its reach (√2 half-widths) on both sides,
# plus a pixel for rounding the window's corner.
_WINDOW = math.ceil(2 * _MAX_HALF_SIZE * math.sqrt(2.0) * IMAGE_SIZE) + 2
_ELLIPSE_ASPECT = 0.5
# The heart curve spans x in [-1.14, 1.14] and y in [-1, 1.24]; scaled by 1.2 and
# shifted to centre it, it is about as wide as the square and inside the margin.
_HEART_SCALE = 1.2
_HEART_SHIFT = 0.118
_NUM_COMBINATIONS = math.prod(FACTOR_SIZES)
# Fibonacci hashing of the combination's index: a fixed, well-spread value in [0, 2^32).
_HASH_MULTIPLIER = 0x9E3779B1
_SPLIT_BOUNDS = {"test": (0.0, 0.1), "valid": (0.1, 0.2), "train": (0.2, 1.0), "all": (0.0, 1.0)}
_CHUNK = 1024


def _check_factors(caller: str, factors: Tensor) -> None:
    if not isinstance(factors, Tensor) or factors.is_floating_point() or factors.dtype == torch.bool:
        raise TypeError(f"fastvae.data.{caller}: factors must be an integer tensor")
    if factors.dim() != 2 or factors.shape[1] != len(FACTOR_SIZES):
        raise ValueError(
            f"fastvae.data.{caller}: factors must have shape [N, {len(FACTOR_SIZES)}] "
            f"({', '.join(FACTOR_NAMES)}), got {tuple(factors.shape)}"
        )
    if factors.numel():
        sizes = torch.tensor(FACTOR_SIZES, device=factors.device)
        bad = ((factors < 0) | (factors >= sizes)).any(dim=0)
        if bool(bad.any()):
            name = FACTOR_NAMES[int(bad.nonzero()[0])]
            raise ValueError(
                f"fastvae.data.{caller}: factor {name!r} out of range [0, {FACTOR_SIZES[FACTOR_NAMES.index(name)]})"
            )


def _inside(shape: int, u: Tensor, v: Tensor) -> Tensor:
    if shape == 0:
        return torch.maximum(u.abs(), v.abs()) <= 1.0
    if shape == 1:
        return (u / _ELLIPSE_ASPECT) ** 2 + v**2 <= 1.0
    x = _HEART_SCALE * u
    y = _HEART_SCALE * v + _HEART_SHIFT
    return (x * x + y * y - 1.0) ** 3 <= x * x * y**3


def render_sprites(factors: Tensor) -> Tensor:
    """Render the sprites that ``factors`` describe.

    Args:
        factors: [N, 5] integer tensor, columns as :data:`FACTOR_NAMES`, each in
            [0, :data:`FACTOR_SIZES`).

    Returns:
        uint8 tensor [N, 1, 64, 64] with values in {0, 1} (1 = the shape).

    Example::

        >>> # a large heart in the centre, upright
        >>> image = render_sprites(torch.tensor([[2, 5, 0, 16, 16]]))
    """
    _check_factors("render_sprites", factors)
    factors = factors.cpu().to(torch.int64)
    f64 = torch.float64
    scales = torch.tensor(SCALES, dtype=f64)
    cos_table = torch.tensor([math.cos(a) for a in ORIENTATIONS], dtype=f64)
    sin_table = torch.tensor([math.sin(a) for a in ORIENTATIONS], dtype=f64)
    positions = _MARGIN + torch.arange(32, dtype=f64) * ((1.0 - 2.0 * _MARGIN) / 31)
    # Each shape is drawn in a window of _WINDOW pixels around its centre (which holds it
    # whole), not over the whole image: a quarter of the arithmetic.
    corners = (positions * IMAGE_SIZE - _WINDOW / 2).floor().clamp(0, IMAGE_SIZE - _WINDOW).to(torch.int64)
    offsets = torch.arange(_WINDOW)

    images = torch.zeros((factors.shape[0], 1, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8)
    for start in range(0, factors.shape[0], _CHUNK):
        chunk = factors[start : start + _CHUNK]
        for shape in range(len(SHAPE_NAMES)):
            rows = (chunk[:, 0] == shape).nonzero().squeeze(1)
            if rows.numel() == 0:
                continue
            f = chunk[rows]
            # Rotating the pixel by -angle into the shape's frame turns the shape by +angle.
            inverse_size = 1.0 / (_MAX_HALF_SIZE * scales[f[:, 1]])[:, None, None]
            cos = cos_table[f[:, 2]][:, None, None] * inverse_size
            sin = sin_table[f[:, 2]][:, None, None] * inverse_size
            columns = corners[f[:, 3]][:, None] + offsets  # [n, W]
            lines = corners[f[:, 4]][:, None] + offsets
            # dx to the right, dy upwards (image rows grow downwards), from the centre.
            dx = ((columns + 0.5) / IMAGE_SIZE - positions[f[:, 3]][:, None])[:, None, :]
            dy = (positions[f[:, 4]][:, None] - (lines + 0.5) / IMAGE_SIZE)[:, :, None]
            u = cos * dx + sin * dy
            v = cos * dy - sin * dx
            inside = _inside(shape, u, v).to(torch.uint8)
            images[(start + rows)[:, None, None], 0, lines[:, :, None], columns[:, None, :]] = inside
    return images


def _combination_index(factors: Tensor) -> Tensor:
    index = torch.zeros(factors.shape[0], dtype=torch.int64)
    for column, size in enumerate(FACTOR_SIZES):
        index = index * size + factors[:, column]
    return index


def _factors_of(index: Tensor) -> Tensor:
    columns = []
    for size in reversed(FACTOR_SIZES):
        columns.append(index % size)
        index = index // size
    return torch.stack(columns[::-1], dim=1)


def split_of(factors: Tensor) -> list:
    """The split ('train', 'valid' or 'test') each row of ``factors`` [N, 5] belongs to."""
    _check_factors("split_of", factors)
    fraction = _split_fraction(_combination_index(factors.cpu().to(torch.int64)))
    return ["test" if f < 0.1 else "valid" if f < 0.2 else "train" for f in fraction.tolist()]


def _split_fraction(index: Tensor) -> Tensor:
    return ((index * _HASH_MULTIPLIER) & 0xFFFFFFFF).to(torch.float64) / 2.0**32


def make_sprites(num_images: int, seed: int = 0, split: str = "all") -> tuple[Tensor, Tensor]:
    """Draw ``num_images`` sprites with uniformly random factors and render them.

    Args:
        num_images: how many images (drawn with replacement from the factor combinations).
        seed: seeds the ``torch.Generator`` the factors are drawn from: the same seed
            gives the same images and factors, bit for bit.
        split: 'all' draws from every combination; 'train', 'valid' or 'test' only from
            that split's disjoint share of them (80%, 10%, 10%).

    Returns:
        (images, factors): uint8 [N, 1, 64, 64] in {0, 1}, and int64 [N, 5] with columns
        :data:`FACTOR_NAMES`.

    Example::

        >>> images, factors = make_sprites(1000, seed=0)
        >>> images.shape, factors[0]
        (torch.Size([1000, 1, 64, 64]), tensor([...]))
    """
    if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 0:
        raise ValueError(f"fastvae.data.make_sprites: num_images must be a non-negative int, got {num_images!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"fastvae.data.make_sprites: seed must be an int, got {type(seed).__name__}")
    if split not in SPLITS:
        raise ValueError(f"fastvae.data.make_sprites: split must be one of {SPLITS}, got {split!r}")
    generator = torch.Generator().manual_seed(seed)
    if split == "all":
        index = torch.randint(0, _NUM_COMBINATIONS, (num_images,), generator=generator)
    else:
        low, high = _SPLIT_BOUNDS[split]
        fraction = _split_fraction(torch.arange(_NUM_COMBINATIONS))
        allowed = ((fraction >= low) & (fraction < high)).nonzero().squeeze(1)
        index = allowed[torch.randint(0, allowed.numel(), (num_images,), generator=generator)]
    factors = _factors_of(index)
    return render_sprites(factors), factors


class SpritesDataset(TensorImageDataset):
    """The embedded sprites data set: ``num_images`` images of ``split`` from ``seed``.

    Args:
        num_images: how many images; default 20000 for 'train' and 'all', 2000 for
            'valid' and 'test'.
        seed: the seed of the draw (see :func:`make_sprites`).
        split: 'train', 'valid', 'test' (disjoint sets of factor combinations) or 'all'.

    Items are float32 [1, 64, 64] in {0, 1}. ``factors`` is int64 [N, 5];
    ``FACTOR_NAMES``, ``FACTOR_SIZES`` and ``SHAPE_NAMES`` name its columns and values.

    Example::

        >>> train = SpritesDataset(split="train")
        >>> test = SpritesDataset(split="test")
        >>> train.factors[0], train[0].shape
        (tensor([...]), torch.Size([1, 64, 64]))
    """

    FACTOR_NAMES = FACTOR_NAMES
    FACTOR_SIZES = FACTOR_SIZES
    SHAPE_NAMES = SHAPE_NAMES

    def __init__(self, num_images: Optional[int] = None, seed: int = 0, split: str = "train") -> None:
        if split not in SPLITS:
            raise ValueError(f"fastvae.data.SpritesDataset: split must be one of {SPLITS}, got {split!r}")
        if num_images is None:
            num_images = DEFAULT_NUM_IMAGES[split]
        images, factors = make_sprites(num_images, seed=seed, split=split)
        super().__init__(images, factors=factors, max_value=1, name=f"sprites ({split}, seed {seed})")
        self.seed = seed
        self.split = split
