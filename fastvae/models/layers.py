"""Small building blocks and argument checks shared by the models."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

ACTIVATIONS = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "silu": nn.SiLU,
    "gelu": nn.GELU,
    "softplus": nn.Softplus,
    "leaky_relu": nn.LeakyReLU,
}


def activation(where: str, name: str) -> nn.Module:
    """A fresh activation module called ``name`` (one of :data:`ACTIVATIONS`)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"{where}: unknown activation {name!r}; known: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def mlp(where: str, sizes: Sequence[int], activation_name: str, final_activation: bool = True) -> nn.Sequential:
    """Linear layers sizes[0] → sizes[1] → … with an activation after each (after the last
    one only when ``final_activation``)."""
    layers = []
    for index, (size_in, size_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(size_in, size_out))
        if final_activation or index < len(sizes) - 2:
            layers.append(activation(where, activation_name))
    return nn.Sequential(*layers)


def positive_int(where: str, name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{where}: {name} must be an int >= 1, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{where}: {name} must be an int >= 1, got {value}")
    return value


def positive_ints(where: str, name: str, values, allow_empty: bool = False) -> tuple:
    """A list or tuple of ints >= 1, as a tuple."""
    if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)):
        raise TypeError(f"{where}: {name} must be a list of ints >= 1, got {type(values).__name__}")
    if not values and not allow_empty:
        raise ValueError(f"{where}: {name} must not be empty")
    return tuple(positive_int(where, f"{name}[{index}]", value) for index, value in enumerate(values))


def data_shape_of(where: str, data_shape) -> tuple:
    """The shape of one data point, as a tuple of ints >= 1."""
    return positive_ints(where, "data_shape", data_shape)


def check_batch(where: str, x, data_shape: tuple) -> None:
    """x must be a floating (or uint8) tensor of shape [B, *data_shape]."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{where}: x must be a torch.Tensor, got {type(x).__name__}")
    if tuple(x.shape[1:]) != tuple(data_shape) or x.dim() != len(data_shape) + 1:
        raise ValueError(
            f"{where}: x must have shape [B, {', '.join(map(str, data_shape))}] (the model's data_shape), "
            f"got {tuple(x.shape)}"
        )


def check_number(where: str, name: str, value, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{where}: {name} must be a Python number, got {type(value).__name__}")
    if not (value >= minimum and math.isfinite(value)):
        raise ValueError(f"{where}: {name} must be a finite number >= {minimum}, got {value}")
    return float(value)
