"""How kernels read a tensor broadcast to a latent's [B, N] view (or, for the discrete
family, to the logits' [R, C] view), without expanding it; and the strides through which
the discretized logistic kernels read rows and pixels in place.

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


def categorical_prior_layout(prior, shape):
    """How the discrete kernels read ``prior`` broadcast to ``shape`` = [..., C] as an
    [R, C] matrix.

    The row dimensions (all but the last) of the broadcast are collapsed into at most two
    (row r is (r // size1, r % size1)); a prior whose pattern needs more (an interleaved
    one such as [B, 1, M, 1, C]) is expanded to a contiguous copy first.  Returns
    (tensor, stride0, stride1, category stride, size1); (None, 0, 0, 0, 1) for no prior.
    """
    if prior is None:
        return None, 0, 0, 0, 1
    expanded = prior.expand(shape)
    strides = expanded.stride()
    sizes: list[int] = []
    merged: list[int] = []
    for size, stride in zip(shape[:-1], strides[:-1]):
        if size == 1:
            continue
        if sizes and merged[-1] == stride * size:
            sizes[-1] *= size
            merged[-1] = stride
        else:
            sizes.append(size)
            merged.append(stride)
    if len(sizes) > 2:
        return categorical_prior_layout(expanded.contiguous(), shape)
    pad = 2 - len(sizes)
    sizes = [1] * pad + sizes
    merged = [0] * pad + merged
    return expanded, merged[0], merged[1], strides[-1], sizes[1]


def row_stride(tensor):
    """The batch stride of ``tensor`` seen as [B, N] rows, or None unless every dimension
    but the first forms one contiguous block (size-1 dimensions ignored).  The discretized
    logistic kernels read rows this far apart in place."""
    expected = 1
    for size, stride in zip(reversed(tensor.shape[1:]), reversed(tensor.stride()[1:])):
        if size != 1 and stride != expected:
            return None
        expected *= size
    return tensor.stride(0) if tensor.dim() else 1


def spatial_stride(tensor):
    """The stride of the flattened spatial dimensions (all but the first two) of
    ``tensor``, or None unless they form one evenly strided run (contiguous and
    channels_last tensors both do); 1 when there are none.  The mixture kernels read
    [B, P, *spatial] params and [B, C, *spatial] x through (batch, channel, this) strides."""
    stride = None
    expected = None
    for size, step in zip(reversed(tensor.shape[2:]), reversed(tensor.stride()[2:])):
        if size == 1:
            continue
        if stride is None:
            stride, expected = step, step * size
        elif step != expected:
            return None
        else:
            expected *= size
    return 1 if stride is None else stride


def mixture_layout(tensor):
    """``tensor`` itself if the mixture kernels read it through (batch, channel, spatial)
    strides, else a contiguous copy."""
    return tensor if spatial_stride(tensor) is not None else tensor.contiguous()
