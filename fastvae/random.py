"""Randomness: Philox4x32-10 with Triton 3.6's conventions, in plain PyTorch.

Every backend draws the same numbers for the same (seed, base offset):

* key = the 64-bit seed as two 32-bit words (low, high);
* counter = (low 32 bits of the offset, high 32 bits, 0, 0), element i of a call using
  offset base + i;
* a 32-bit word w becomes a uniform in [0, 1) by reading it as int32, mapping a negative
  x to -x-1, and multiplying by 4.6566127342e-10;
* a normal is Box-Muller on words 0 and 1 (u1 clamped below at 1e-7), keeping the cosine.

Each op call draws its (seed, base) pair from the torch generator as a small int64
tensor (:func:`draw_seed`), outside the custom op, so ``torch.manual_seed`` makes fastvae
reproducible like any torch op, and CUDA graphs and torch.compile keep working.

The arithmetic here is on int64 tensors holding 32-bit words; products of two words are
split into 16-bit halves so nothing overflows int64.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

PHILOX_KEY_A = 0x9E3779B9
PHILOX_KEY_B = 0xBB67AE85
PHILOX_ROUND_A = 0xD2511F53
PHILOX_ROUND_B = 0xCD9E8D57
PHILOX_ROUNDS = 10
UINT32_TO_UNIFORM = 4.6566127342e-10
BOX_MULLER_MIN_UNIFORM = 1.0e-7
# Only a uniform of exactly 0 is below this; it keeps -log(-log u) finite for Gumbel noise.
GUMBEL_MIN_UNIFORM = 1.0e-20

_MASK32 = 0xFFFFFFFF
# Seeds and base offsets are drawn below 2**62 so base + i never overflows int64.
_SEED_HIGH = 2**62


def draw_seed(device: torch.device, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Draw a call's (seed, base offset) as an int64 tensor of shape [2] on ``device``.

    It is drawn from ``generator``, or from the default generator of ``device``, so the
    global ``torch.manual_seed`` (or a generator's own seed) fixes fastvae's noise, and
    successive calls advance the generator and get fresh noise.
    """
    return torch.randint(0, _SEED_HIGH, (2,), device=device, dtype=torch.int64, generator=generator)


def _mul_lo_hi(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Low and high 32-bit words of the 64-bit product of constant ``a`` and words ``b``."""
    b_lo = b & 0xFFFF
    b_hi = b >> 16
    prod_lo = a * b_lo  # < 2**48
    prod_hi = a * b_hi  # < 2**48
    high = (prod_hi + (prod_lo >> 16)) >> 16
    low = (prod_lo + ((prod_hi & 0xFFFF) << 16)) & _MASK32
    return low, high


def philox4x32(seed: torch.Tensor, offsets: torch.Tensor, rounds: int = PHILOX_ROUNDS):
    """The four 32-bit output words (as int64 tensors in [0, 2**32)) of Philox4x32 for the
    64-bit ``seed`` (a 0-dim int64 tensor) at the int64 ``offsets``."""
    seed = seed.to(torch.int64)
    offsets = offsets.to(torch.int64)
    k0 = seed & _MASK32
    k1 = (seed >> 32) & _MASK32
    c0 = offsets & _MASK32
    c1 = (offsets >> 32) & _MASK32
    c2 = torch.zeros_like(c0)
    c3 = torch.zeros_like(c0)
    for _ in range(rounds):
        lo_b, hi_b = _mul_lo_hi(PHILOX_ROUND_B, c2)
        lo_a, hi_a = _mul_lo_hi(PHILOX_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0 = (k0 + PHILOX_KEY_A) & _MASK32
        k1 = (k1 + PHILOX_KEY_B) & _MASK32
    return c0, c1, c2, c3


def uint32_to_uniform(word: torch.Tensor) -> torch.Tensor:
    """A 32-bit word (int64 tensor in [0, 2**32)) as a float32 uniform in [0, 1)."""
    signed = torch.where(word >= 2**31, word - 2**32, word)
    folded = torch.where(signed < 0, -signed - 1, signed)
    return folded.to(torch.float32) * UINT32_TO_UNIFORM


def _offsets(seed_offset: torch.Tensor, numel: int) -> tuple[torch.Tensor, torch.Tensor]:
    seed, base = seed_offset[0], seed_offset[1]
    return seed, base + torch.arange(numel, device=seed_offset.device, dtype=torch.int64)


def philox_uniform(seed_offset: torch.Tensor, shape) -> torch.Tensor:
    """Uniforms in [0, 1) (float32, ``shape``) for a call's (seed, base): element i
    (row-major) is word 0 of Philox at offset base + i, as ``tl.rand``."""
    numel = math.prod(shape)
    seed, offsets = _offsets(seed_offset, numel)
    word0, _, _, _ = philox4x32(seed, offsets)
    return uint32_to_uniform(word0).reshape(shape)


def philox_normal(seed_offset: torch.Tensor, shape) -> torch.Tensor:
    """Standard normals (float32, ``shape``) for a call's (seed, base): element i
    (row-major) is Box-Muller on words 0 and 1 of Philox at offset base + i, as ``tl.randn``."""
    numel = math.prod(shape)
    seed, offsets = _offsets(seed_offset, numel)
    word0, word1, _, _ = philox4x32(seed, offsets)
    u1 = torch.clamp_min(uint32_to_uniform(word0), BOX_MULLER_MIN_UNIFORM)
    u2 = uint32_to_uniform(word1)
    radius = torch.sqrt(-2.0 * torch.log(u1))
    return (radius * torch.cos(6.283185307179586 * u2)).reshape(shape)


def philox_gumbel(seed_offset: torch.Tensor, shape) -> torch.Tensor:
    """Standard Gumbel noise -log(-log u) (float32, ``shape``) from :func:`philox_uniform`,
    u clamped below at 1e-20 so that u = 0 stays finite."""
    u = torch.clamp_min(philox_uniform(seed_offset, shape), GUMBEL_MIN_UNIFORM)
    return -torch.log(-torch.log(u))


def philox_uniform_pair(seed_offset: torch.Tensor, shape) -> tuple[torch.Tensor, torch.Tensor]:
    """Two uniforms in [0, 1) per element (float32, ``shape`` each) for a call's (seed,
    base): (u0, u1), words 0 and 1 of Philox at offset base + i for element i (row-major),
    each through :func:`uint32_to_uniform`."""
    numel = math.prod(shape)
    seed, offsets = _offsets(seed_offset, numel)
    word0, word1, _, _ = philox4x32(seed, offsets)
    return uint32_to_uniform(word0).reshape(shape), uint32_to_uniform(word1).reshape(shape)
