"""CIFAR-10 from its official python batches (``cifar-10-python.tar.gz`` unpacked).

The folder ``cifar-10-batches-py`` holds ``data_batch_1`` … ``data_batch_5`` (training)
and ``test_batch``: pickled dicts with ``b'data'``, uint8 [10000, 3072] (the red, green
and blue 32×32 planes of each image in turn), and ``b'labels'``, 10000 ints.

The pickles are read with an unpickler that builds only numpy arrays and plain Python
values, so a file from an untrusted source cannot run code when it is loaded.
"""
from __future__ import annotations

import importlib
import io
import pickle
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ._files import PathLike, candidate_folders, find_file, read_bytes, resolve_root
from .base import TensorImageDataset

FOLDER_NAME = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCHES = ("test_batch",)
_IMAGE_SHAPE = (3, 32, 32)
_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and builtins only; anything else is refused."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load the global {module}.{name}")
        if module.startswith("numpy.core."):
            # numpy 2 moved numpy.core to numpy._core; old pickles name the former.
            try:
                return getattr(importlib.import_module(module.replace("numpy.core.", "numpy._core.")), name)
            except ImportError:
                pass
        return getattr(importlib.import_module(module), name)


def read_cifar_batch(path: Path, caller: str = "read_cifar_batch") -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 3, 32, 32], labels int64 [N]) of one CIFAR-10 python batch file.

    ValueError naming the file when it is not such a pickle (unreadable, no ``data`` or
    ``labels`` entry, wrong sizes)."""
    raw = read_bytes(caller, path)
    try:
        batch = _ArrayUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as error:  # a corrupt pickle can raise almost anything
        raise ValueError(f"fastvae.data.{caller}: {path} is not a readable CIFAR-10 batch ({error})") from error
    if not isinstance(batch, dict):
        raise ValueError(f"fastvae.data.{caller}: {path} holds a {type(batch).__name__}, expected a dict")
    # Written by Python 2, the keys unpickle as bytes; a batch re-saved by Python 3 may use str.
    entries = {(key.decode() if isinstance(key, bytes) else key): value for key, value in batch.items()}
    if "data" not in entries or "labels" not in entries:
        raise ValueError(
            f"fastvae.data.{caller}: {path} lacks the 'data' or 'labels' entry (has {sorted(map(str, entries))})"
        )
    data = np.asarray(entries["data"])
    labels = np.asarray(entries["labels"])
    pixels = int(np.prod(_IMAGE_SHAPE))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != pixels:
        raise ValueError(
            f"fastvae.data.{caller}: {path}: 'data' must be uint8 [N, {pixels}], got {data.dtype} {list(data.shape)}"
        )
    if labels.ndim != 1 or labels.shape[0] != data.shape[0]:
        raise ValueError(
            f"fastvae.data.{caller}: {path} holds {data.shape[0]} images but {labels.size} labels"
        )
    return data.reshape(-1, *_IMAGE_SHAPE), labels.astype(np.int64)


def load_cifar10(root: Optional[PathLike] = None, split: str = "train") -> TensorImageDataset:
    """CIFAR-10 from the python batches.

    Args:
        root: the ``cifar-10-batches-py`` folder or its parent; default
            :func:`fastvae.data.data_root` (then ``root/cifar-10-batches-py`` is used).
        split: 'train' (50000 images, ``data_batch_1`` … ``_5``) or 'test' (10000,
            ``test_batch``).

    Returns:
        A :class:`TensorImageDataset` of uint8 images [N, 3, 32, 32] (read as float32 in
        [0, 1]) with int64 ``labels`` [N].

    Example::

        >>> train = load_cifar10("~/data")  # ~/data/cifar-10-batches-py/data_batch_1 ...
        >>> train.data_shape
        (3, 32, 32)
    """
    caller = "load_cifar10"
    if split not in ("train", "test"):
        raise ValueError(f"fastvae.data.{caller}: split must be 'train' or 'test', got {split!r}")
    folders = candidate_folders(resolve_root(root), (FOLDER_NAME,))
    names = TRAIN_BATCHES if split == "train" else TEST_BATCHES
    expected = [f"{FOLDER_NAME}/{name}" for name in TRAIN_BATCHES + TEST_BATCHES]
    # Every batch of a split comes from the same folder, not a mix of two copies.
    first = find_file(caller, folders, names[0], expected)
    paths = [first] + [find_file(caller, [first.parent], name, expected) for name in names[1:]]
    batches = [read_cifar_batch(path, caller) for path in paths]
    images = np.concatenate([images for images, _ in batches])
    labels = np.concatenate([labels for _, labels in batches])
    return TensorImageDataset(torch.from_numpy(images), labels=torch.from_numpy(labels), name=f"cifar10 ({split})")
