"""A small PNG writer (8-bit grayscale and RGB) in pure Python and zlib, so image grids
need neither torchvision nor PIL."""
from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path
from typing import Union

import torch
from torch import Tensor

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_COLOR_TYPES = {1: 0, 3: 2}  # channels -> PNG colour type (0 grayscale, 2 RGB)


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def encode_png(pixels) -> bytes:
    r"""Encode an 8-bit image as PNG bytes.

    Args:
        pixels: uint8 tensor or array of shape [H, W] (grayscale), [H, W, 1]
            (grayscale) or [H, W, 3] (RGB), H, W >= 1.

    Returns:
        The PNG file's bytes (each row with filter type 0, zlib level 9).

    Example::

        >>> data = fastvae.eval.encode_png(torch.zeros(28, 28, dtype=torch.uint8))
    """
    pixels = torch.as_tensor(pixels)
    if pixels.dtype != torch.uint8:
        raise TypeError(f"fastvae.eval.encode_png: pixels must be uint8, got {pixels.dtype}")
    if pixels.dim() == 2:
        pixels = pixels.unsqueeze(-1)
    if pixels.dim() != 3 or pixels.shape[2] not in _COLOR_TYPES or pixels.shape[0] < 1 or pixels.shape[1] < 1:
        raise ValueError(
            f"fastvae.eval.encode_png: pixels must have shape [H, W], [H, W, 1] or [H, W, 3] with H, W >= 1, "
            f"got {tuple(pixels.shape)}"
        )
    height, width, channels = pixels.shape
    rows = pixels.reshape(height, width * channels).cpu().contiguous()
    # Each scanline starts with its filter byte (0: none).
    raw = torch.cat([torch.zeros(height, 1, dtype=torch.uint8), rows], dim=1).numpy().tobytes()
    header = struct.pack(">IIBBBBB", width, height, 8, _COLOR_TYPES[channels], 0, 0, 0)
    return _SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw, 9)) + _chunk(b"IEND", b"")


def write_png(path: Union[str, os.PathLike], pixels) -> Path:
    r"""Write an 8-bit grayscale or RGB image to ``path`` as PNG (see :func:`encode_png`
    for ``pixels``).  The file is written to a temporary name and renamed, so a reader
    never sees half a file.

    Returns:
        The path written, as a ``pathlib.Path``.

    Example::

        >>> fastvae.eval.write_png("grid.png", to_uint8(images[0].permute(1, 2, 0)))
    """
    path = Path(path)
    data = encode_png(pixels)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    os.replace(partial, path)
    return path


def to_uint8(images: Tensor) -> Tensor:
    r"""Float images in [0, 1] (values outside are clamped) to uint8 levels 0..255,
    rounded to nearest.

    Example::

        >>> fastvae.eval.to_uint8(torch.tensor([0.0, 0.5, 1.0]))
        tensor([  0, 128, 255], dtype=torch.uint8)
    """
    if not isinstance(images, Tensor) or not images.is_floating_point():
        raise TypeError("fastvae.eval.to_uint8: images must be a floating-point tensor")
    return (images.detach().float().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
