"""How kernels read a tensor broadcast to a latent's [B, N] view, without expanding it.

Pure Python (no Triton), shared by the Triton launchers and the C++ backends' launchers.
"""
from __future__ import annotations


def _collapse_inner(inner_shape, inner_strides):
    """Merge neighbouring inner dimensions wherever every stride list allows it (size-1
    dimensions dropped).  Returns (sizes, strides per list)."""
    sizes: list[int] = []
    merged: list[list[int]] = [[] for _ in inner_strides]
    for dim, size in enumerate(inner_shape):
        if size == 1:
            continue
        if sizes and all(m[-1] == s[dim] * size for m, s in zip(merged, inner_strides)):
            sizes[-1] *= size
            for m, s in zip(merged, inner_strides):
                m[-1] = s[dim]
        else:
            sizes.append(size)
            for m, s in zip(merged, inner_strides):
                m.append(s[dim])
    return sizes, merged


def prior_layout(priors, shape):
    """How the kernels read priors broadcast to ``shape`` = [B, *inner].

    The inner dimensions are collapsed into three (sizes shared by both priors); each
    prior becomes (tensor, batch stride, three inner strides).  A prior whose broadcast
    pattern needs more than three inner dimensions (an interleaved one such as
    [1, C, 1, W]) is made contiguous first.  Returns (args, strides, size1, size2):
    tensors to pass (``None`` kept), the flat stride arguments, and the two trailing
    inner sizes.
    """
    for _ in range(2):
        strides = [list(p.expand(shape).stride()) if p is not None else [0] * len(shape) for p in priors]
        sizes, inner = _collapse_inner(list(shape[1:]), [s[1:] for s in strides])
        if len(sizes) <= 3:
            break
        priors = [None if p is None else p.expand(shape).contiguous() for p in priors]
    pad = 3 - len(sizes)
    sizes = [1] * pad + sizes
    flat_strides = []
    for s, m in zip(strides, inner):
        flat_strides += [s[0] if shape[0] != 1 else 0] + [0] * pad + m
    return priors, flat_strides, sizes[1], sizes[2]
