"""How the kernel launchers finish a row reduction: the kernels write one partial sum
per (row, block of columns), and this adds each row's partials.

Pure Python, shared by the Triton launchers and the C++ backends' launchers.
"""
from __future__ import annotations

import torch


def sum_partials_into(out: torch.Tensor, partials: torch.Tensor) -> None:
    """out[r] = Σ_j partials[r, j], for ``partials`` [R, J] float32 and ``out`` R float32
    elements (any shape, contiguous).

    The partials are added in float64 in a fixed order and rounded to float32 once, so
    the result is bitwise repeatable and its error does not grow with the number of
    blocks (tests/test_latent.py checks the KL at 2^20 columns against float64)."""
    rows = out.view(-1)
    if partials.shape[1] == 1:
        rows.copy_(partials[:, 0])
    else:
        rows.copy_(partials.sum(dim=1, dtype=torch.float64))
