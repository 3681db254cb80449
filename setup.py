"""Build script: the pure-Python package plus the Triton kernels.

``kernels/`` lives at the top of the repository (one file per op family, next to
``csrc/`` later) and is installed as the subpackage ``fastvae.kernels`` through
``package_dir``.  An editable install (``pip install -e .``) maps it the same way.
"""
from setuptools import setup

setup(
    packages=["fastvae", "fastvae.ops", "fastvae.kernels"],
    package_dir={"fastvae": "fastvae", "fastvae.kernels": "kernels"},
)
