"""A folder of image files (PNG, JPEG, …) as one data set, read with Pillow."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

from ._files import DataNotFoundError, PathLike
from .base import TensorImageDataset

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
# Pillow's single-channel modes: a folder of only these loads as grayscale by default.
_GRAYSCALE_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")


def _import_pil(caller: str):
    try:
        from PIL import Image
    except ImportError as error:
        raise ImportError(
            f"fastvae.data.{caller}: reading image files needs Pillow, which is not installed "
            "(pip install pillow)"
        ) from error
    return Image


def _image_files(caller: str, folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise DataNotFoundError(caller, f"the image folder {folder} does not exist", advice=None)
    files = sorted(
        path
        for path in folder.rglob("*")
        if path.is_file()
        and path.suffix.lower() in IMAGE_EXTENSIONS
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )
    if not files:
        raise DataNotFoundError(
            caller, f"no image files in {folder} or its subfolders (looked for {', '.join(IMAGE_EXTENSIONS)})",
            advice=None,
        )
    return files


def _size_pair(caller: str, image_size) -> Optional[tuple[int, int]]:
    if image_size is None:
        return None
    pair = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(pair) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in pair):
        raise ValueError(
            f"fastvae.data.{caller}: image_size must be a positive int or a (height, width) pair, got {image_size!r}"
        )
    return pair


def load_image_folder(
    folder: PathLike,
    image_size: Union[int, Sequence[int], None] = None,
    channels: Optional[int] = None,
) -> TensorImageDataset:
    """Every image file under ``folder`` (subfolders included), in sorted path order.

    Args:
        folder: the folder. When every image lies in a subfolder (``folder/cat/1.png``,
            ``folder/dog/2.png``), the subfolder names, sorted, are the classes and
            ``labels`` their indices; ``classes`` lists the names.
        image_size: resize every image to this (an int for square, or (height, width)),
            with Pillow's bicubic filter. None: keep the sizes, which must then all agree.
        channels: 1 (grayscale) or 3 (RGB). None: 1 if every image is grayscale, else 3.

    Returns:
        A :class:`TensorImageDataset` of uint8 images [N, channels, H, W] (read as
        float32 in [0, 1]).

    Raises:
        FileNotFoundError: the folder does not exist or holds no image files.
        ValueError: an image cannot be read, or sizes differ and no ``image_size`` is given.
        ImportError: Pillow is not installed.

    Example::

        >>> faces = load_image_folder("faces/", image_size=64, channels=3)
        >>> faces.data_shape
        (3, 64, 64)
    """
    caller = "load_image_folder"
    folder = Path(folder).expanduser()
    size = _size_pair(caller, image_size)
    if channels not in (None, 1, 3):
        raise ValueError(f"fastvae.data.{caller}: channels must be 1, 3 or None, got {channels!r}")
    files = _image_files(caller, folder)
    Image = _import_pil(caller)

    def open_image(path: Path):
        try:
            return Image.open(path)
        except (OSError, ValueError) as error:  # UnidentifiedImageError is an OSError
            raise ValueError(f"fastvae.data.{caller}: cannot read the image {path} ({error})") from error

    if channels is None:
        modes = []
        for path in files:
            with open_image(path) as image:
                modes.append(image.mode)
        channels = 1 if all(mode in _GRAYSCALE_MODES for mode in modes) else 3
    mode = "L" if channels == 1 else "RGB"
    resample = getattr(Image, "Resampling", Image).BICUBIC

    arrays = []
    first_path = None
    for path in files:
        with open_image(path) as image:
            try:
                image = image.convert(mode)
                if size is not None and image.size != (size[1], size[0]):
                    image = image.resize((size[1], size[0]), resample=resample)
                array = np.asarray(image, dtype=np.uint8)
            except (OSError, ValueError) as error:
                raise ValueError(f"fastvae.data.{caller}: cannot read the image {path} ({error})") from error
        if arrays and array.shape[:2] != arrays[0].shape[:2]:
            raise ValueError(
                f"fastvae.data.{caller}: images differ in size: {first_path} is "
                f"{arrays[0].shape[1]}x{arrays[0].shape[0]} but {path} is {array.shape[1]}x{array.shape[0]} "
                "(width x height); pass image_size to resize them all"
            )
        first_path = first_path or path
        arrays.append(array)
    images = torch.from_numpy(np.stack(arrays))
    images = images.unsqueeze(1) if channels == 1 else images.permute(0, 3, 1, 2)

    relative = [path.relative_to(folder).parts for path in files]
    labels, classes = None, None
    if all(len(parts) > 1 for parts in relative):
        classes = sorted({parts[0] for parts in relative})
        index = {name: i for i, name in enumerate(classes)}
        labels = torch.tensor([index[parts[0]] for parts in relative], dtype=torch.int64)
    dataset = TensorImageDataset(images.contiguous(), labels=labels, name=f"image_folder ({folder.name})")
    dataset.classes = classes
    return dataset
