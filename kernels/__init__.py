"""Triton kernels of fastvae, one file per op family (installed as ``fastvae.kernels``).

Each file holds its ``@triton.jit`` kernels and their launchers: plain tensors in,
tensors out, no autograd and no argument checks (those live in ``fastvae/ops``).
Kernels are decorated at import, so ``TRITON_INTERPRET=1`` must be set before the first
import for them to run CPU tensors under Triton's interpreter.
"""
