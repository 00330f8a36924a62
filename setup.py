"""Build configuration beyond pyproject.toml: the optional C kernels of xaudit.metrics.

The extension speeds up SSIM and rank correlations on the CPU; it is optional (``optional=True``): where
it cannot be compiled, xaudit falls back to its numpy implementations of the same measures.
"""
from setuptools import Extension, setup

setup(ext_modules=[Extension("xaudit.metrics._kernels", ["xaudit/metrics/_kernels.c"],
                             extra_compile_args=["-O3", "-Wno-psabi"], optional=True)])
