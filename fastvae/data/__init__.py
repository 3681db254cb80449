"""Data sets for fastvae: an embedded one that needs no download, and loaders for the
standard files on disk.

Every data set is a ``torch.utils.data.Dataset`` whose items are float32 tensors of shape
``data_shape`` with values in [0, 1] (images as [C, H, W]), with a ``batch(indices)``
method that reads many items at once (the trainer's path), ``__len__``, and optional
``labels`` [N] and ``factors`` [N, F] tensors.

* ``'sprites'`` (the default): procedurally generated dSprites-like 64×64 binary images
  with their ground-truth factors, made from a seed in a second or so.
* ``'mnist'``, ``'fashion_mnist'`` (IDX files), ``'binarized_mnist'`` (Larochelle and
  Murray's .amat files), ``'cifar10'`` (python batches), ``'image_folder'``.
* Python data: :func:`from_tensor`, :func:`wrap_dataset`.

Files are looked for under ``root``, by default :func:`data_root` (the ``FASTVAE_DATA``
environment variable, else ``~/.cache/fastvae``). Nothing is downloaded.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from ._files import DataNotFoundError, PathLike, data_root, resolve_root
from .adapters import from_tensor, wrap_dataset
from .base import TensorImageDataset
from .binarize import DynamicBinarization, static_binarize
from .cifar import load_cifar10
from .folder import load_image_folder
from .mnist import load_binarized_mnist, load_mnist
from .sprites import FACTOR_NAMES, FACTOR_SIZES, SHAPE_NAMES, SpritesDataset, make_sprites, render_sprites

DEFAULT_DATASET = "sprites"
DATASETS = ("sprites", "mnist", "fashion_mnist", "binarized_mnist", "cifar10", "image_folder")
BINARIZATIONS = (None, "static", "dynamic")

__all__ = [
    "DATASETS",
    "DEFAULT_DATASET",
    "DataNotFoundError",
    "DynamicBinarization",
    "FACTOR_NAMES",
    "FACTOR_SIZES",
    "SHAPE_NAMES",
    "SpritesDataset",
    "TensorImageDataset",
    "data_root",
    "from_tensor",
    "load_binarized_mnist",
    "load_cifar10",
    "load_dataset",
    "load_image_folder",
    "load_mnist",
    "make_sprites",
    "render_sprites",
    "static_binarize",
    "wrap_dataset",
]


def _image_folder_split(root: Optional[PathLike], split: str) -> Path:
    """``root/split`` when that folder exists; ``root`` itself for 'train'."""
    if root is None:
        raise ValueError("fastvae.data.load_dataset: 'image_folder' needs root=, the folder of images")
    root = resolve_root(root)
    if (root / split).is_dir():
        return root / split
    if split == "train":
        return root
    raise DataNotFoundError(
        "load_dataset", f"no folder {root / split} for split {split!r} of 'image_folder' "
        f"(the 'train' split is {root} itself unless {root / 'train'} exists)", advice=None,
    )


def load_dataset(
    name: str = DEFAULT_DATASET,
    root: Optional[PathLike] = None,
    split: str = "train",
    binarize: Optional[str] = None,
    binarize_seed: int = 0,
    **kwargs,
):
    """A data set by name: what ``fastvae train --data NAME`` loads.

    Args:
        name: one of :data:`DATASETS`: 'sprites', 'mnist', 'fashion_mnist',
            'binarized_mnist', 'cifar10', 'image_folder' ('-' and '_' alike).
        root: the data folder (the image folder for 'image_folder'); default
            :func:`data_root`. Unused by 'sprites'.
        split: 'train' or 'test' for every data set; 'valid' too for 'sprites' and
            'binarized_mnist'. For 'image_folder', the subfolder ``root/split`` if it
            exists ('train' falls back to ``root``).
        binarize: None (the data as they are), 'static' (one Bernoulli draw per pixel,
            fixed by ``binarize_seed``: see :func:`static_binarize`) or 'dynamic' (a fresh
            draw at each read: see :class:`DynamicBinarization`).
        binarize_seed: the seed of the static binarization.
        **kwargs: passed to the loader: ``num_images`` and ``seed`` for 'sprites';
            ``image_size`` and ``channels`` for 'image_folder'.

    Returns:
        The data set (a :class:`TensorImageDataset`, or a :class:`DynamicBinarization`
        of one).

    Raises:
        ValueError: an unknown name (the message lists the known ones) or argument.
        DataNotFoundError: (a FileNotFoundError) the files are missing (the message says
            where they were looked for and which files are expected).

    Example::

        >>> train = load_dataset()  # the embedded sprites
        >>> test = load_dataset("binarized_mnist", root="shared/data", split="test")
        >>> mnist = load_dataset("mnist", binarize="dynamic")
    """
    caller = "load_dataset"
    key = name.lower().replace("-", "_") if isinstance(name, str) else name
    if key not in DATASETS:
        raise ValueError(f"fastvae.data.{caller}: unknown data set {name!r}; known: {', '.join(DATASETS)}")
    if binarize not in BINARIZATIONS:
        raise ValueError(
            f"fastvae.data.{caller}: binarize must be None, 'static' or 'dynamic', got {binarize!r}"
        )
    allowed = {"sprites": {"num_images", "seed"}, "image_folder": {"image_size", "channels"}}.get(key, set())
    unexpected = sorted(set(kwargs) - allowed)
    if unexpected:
        raise TypeError(
            f"fastvae.data.{caller}: {key!r} takes no argument {', '.join(unexpected)}"
            + (f" (it takes {', '.join(sorted(allowed))})" if allowed else "")
        )
    if key == "sprites":
        dataset = SpritesDataset(split=split, **kwargs)
    elif key == "mnist":
        dataset = load_mnist(root, split=split, kind="mnist")
    elif key == "fashion_mnist":
        dataset = load_mnist(root, split=split, kind="fashion")
    elif key == "binarized_mnist":
        dataset = load_binarized_mnist(root, split=split)
    elif key == "cifar10":
        dataset = load_cifar10(root, split=split)
    else:
        dataset = load_image_folder(_image_folder_split(root, split), **kwargs)
    if binarize == "static":
        return static_binarize(dataset, seed=binarize_seed)
    if binarize == "dynamic":
        return DynamicBinarization(dataset)
    return dataset
