"""MNIST and Fashion-MNIST (IDX files) and statically binarized MNIST (.amat files).

Files keep their official names, plain or gzipped:

* MNIST / Fashion-MNIST: ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
  ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, looked for in ``root/mnist``
  (``root/fashion-mnist``), torchvision's ``root/MNIST/raw`` (``root/FashionMNIST/raw``),
  then ``root``.
* Binarized MNIST (Larochelle and Murray 2011): ``binarized_mnist_{train,valid,test}.amat``,
  looked for in ``root/binarized_mnist``, ``root/mnist``, then ``root``.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ._files import PathLike, candidate_folders, find_file, read_bytes, resolve_root
from .base import TensorImageDataset

IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension
_IDX_PREFIX = {"train": "train", "test": "t10k"}
_SUBFOLDERS = {"mnist": ("mnist", "MNIST/raw"), "fashion": ("fashion-mnist", "fashion_mnist", "FashionMNIST/raw")}
_BINARIZED_SUBFOLDERS = ("binarized_mnist", "mnist")
_BINARIZED_SPLITS = ("train", "valid", "test")
_AMAT_PIXELS = 784


def read_idx(path: Path, magic: int, caller: str = "read_idx") -> np.ndarray:
    """The uint8 array an IDX file at ``path`` holds (plain or gzipped).

    ValueError naming the file when its magic number is not ``magic`` (2051 for images,
    2049 for labels) or its length disagrees with the sizes in its header."""
    data = read_bytes(caller, path)
    kind = {IDX_IMAGES_MAGIC: "image", IDX_LABELS_MAGIC: "label"}.get(magic, "IDX")
    if len(data) < 4:
        raise ValueError(f"fastvae.data.{caller}: {path} is truncated: {len(data)} bytes, not even an IDX header")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise ValueError(
            f"fastvae.data.{caller}: {path} is not an IDX {kind} file: magic number {found}, expected {magic}"
        )
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"fastvae.data.{caller}: {path} is truncated inside its header ({len(data)} bytes)")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    size = math.prod(dims)
    if len(data) - header != size:
        state = "truncated" if len(data) - header < size else "longer than its header says"
        raise ValueError(
            f"fastvae.data.{caller}: {path} is {state}: the header gives shape {dims} "
            f"({size} bytes of data) but the file holds {len(data) - header}"
        )
    return np.frombuffer(data, dtype=np.uint8, count=size, offset=header).reshape(dims)


def load_mnist(root: Optional[PathLike] = None, split: str = "train", kind: str = "mnist") -> TensorImageDataset:
    """MNIST or Fashion-MNIST from the official IDX files.

    Args:
        root: the data folder (see the module docstring for the layouts searched);
            default :func:`fastvae.data.data_root`.
        split: 'train' (60000 images) or 'test' (10000).
        kind: 'mnist' or 'fashion'.

    Returns:
        A :class:`TensorImageDataset` of uint8 images [N, 1, 28, 28] (read as float32 in
        [0, 1]) with int64 ``labels`` [N].

    Raises:
        FileNotFoundError: a file is missing (the message says where it was looked for).
        ValueError: a file is malformed (wrong magic number, truncated, or image and label
            counts that differ).

    Example::

        >>> train = load_mnist("shared/data", split="train")
        >>> len(train), train.data_shape
        (60000, (1, 28, 28))
    """
    caller = "load_mnist"
    if split not in _IDX_PREFIX:
        raise ValueError(f"fastvae.data.{caller}: split must be 'train' or 'test', got {split!r}")
    if kind not in _SUBFOLDERS:
        raise ValueError(f"fastvae.data.{caller}: kind must be 'mnist' or 'fashion', got {kind!r}")
    folders = candidate_folders(resolve_root(root), _SUBFOLDERS[kind])
    expected = [f"{p}-{f}" for p in _IDX_PREFIX.values() for f in ("images-idx3-ubyte", "labels-idx1-ubyte")]
    prefix = _IDX_PREFIX[split]
    image_path = find_file(caller, folders, f"{prefix}-images-idx3-ubyte", expected)
    label_path = find_file(caller, folders, f"{prefix}-labels-idx1-ubyte", expected)
    images = read_idx(image_path, IDX_IMAGES_MAGIC, caller)
    labels = read_idx(label_path, IDX_LABELS_MAGIC, caller)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"fastvae.data.{caller}: {image_path} holds {images.shape[0]} images but {label_path} "
            f"holds {labels.shape[0]} labels"
        )
    name = "mnist" if kind == "mnist" else "fashion_mnist"
    return TensorImageDataset(
        torch.from_numpy(images.copy()).unsqueeze(1),
        labels=torch.from_numpy(labels.astype(np.int64)),
        name=f"{name} ({split})",
    )


def read_amat(path: Path, caller: str = "read_amat") -> np.ndarray:
    """The uint8 [N, 784] array of a binarized MNIST .amat file (plain or gzipped): one
    image a line, 784 values 0 or 1 separated by spaces.  ValueError naming the file and
    line when a line is not that."""
    text = read_bytes(caller, path)
    if text and not text.endswith(b"\n"):
        text += b"\n"
    width = 2 * _AMAT_PIXELS
    rows = len(text) // width
    if len(text) == rows * width and rows > 0:
        # The official layout, "d d ... d\n": checked and parsed with no Python loop.
        grid = np.frombuffer(text, dtype=np.uint8).reshape(rows, width)
        digits, separators = grid[:, 0::2], grid[:, 1::2]
        if (
            (separators[:, :-1] == ord(" ")).all()
            and (separators[:, -1] == ord("\n")).all()
            and ((digits == ord("0")) | (digits == ord("1"))).all()
        ):
            return digits - np.uint8(ord("0"))
    return _read_amat_lines(path, text, caller)


def _read_amat_lines(path: Path, text: bytes, caller: str) -> np.ndarray:
    """The general (slower) reading of an .amat file: any whitespace between values."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"fastvae.data.{caller}: {path} holds no images (it is empty)")
    images = np.empty((len(lines), _AMAT_PIXELS), dtype=np.uint8)
    for number, line in enumerate(lines):
        values = line.split()
        if len(values) != _AMAT_PIXELS:
            raise ValueError(
                f"fastvae.data.{caller}: {path}, image {number + 1}: {len(values)} values, expected {_AMAT_PIXELS}"
            )
        bad = [v for v in values if v not in (b"0", b"1")]
        if bad:
            raise ValueError(
                f"fastvae.data.{caller}: {path}, image {number + 1}: value {bad[0].decode(errors='replace')!r} "
                "is not 0 or 1"
            )
        images[number] = [v == b"1" for v in values]
    return images


def load_binarized_mnist(root: Optional[PathLike] = None, split: str = "train") -> TensorImageDataset:
    """Statically binarized MNIST (Larochelle and Murray 2011), the standard benchmark of
    VAE log-likelihoods, from its .amat files.

    Args:
        root: the data folder (``binarized_mnist_{split}.amat[.gz]`` is looked for in
            ``root/binarized_mnist``, ``root/mnist``, then ``root``); default
            :func:`fastvae.data.data_root`.
        split: 'train' (50000 images), 'valid' (10000) or 'test' (10000).

    Returns:
        A :class:`TensorImageDataset` of images [N, 1, 28, 28] with values in {0, 1}
        (stored as uint8 0/1); no labels (the files have none).

    Example::

        >>> test = load_binarized_mnist("shared/data", split="test")
        >>> len(test)
        10000
    """
    caller = "load_binarized_mnist"
    if split not in _BINARIZED_SPLITS:
        raise ValueError(f"fastvae.data.{caller}: split must be one of {_BINARIZED_SPLITS}, got {split!r}")
    folders = candidate_folders(resolve_root(root), _BINARIZED_SUBFOLDERS)
    expected = [f"binarized_mnist_{s}.amat" for s in _BINARIZED_SPLITS]
    path = find_file(caller, folders, f"binarized_mnist_{split}.amat", expected)
    images = read_amat(path, caller)
    return TensorImageDataset(
        torch.from_numpy(images).reshape(-1, 1, 28, 28),
        max_value=1,
        name=f"binarized_mnist ({split})",
    )
