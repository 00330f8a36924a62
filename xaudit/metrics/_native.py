"""The compiled CPU kernels (``_kernels.c``), when they were built; else None and the numpy paths run.

``XAUDIT_NO_KERNELS=1`` in the environment disables them (the tests use it to cross-check both paths).
"""
from __future__ import annotations

import os

kernels = None
if os.environ.get("XAUDIT_NO_KERNELS", "") in ("", "0"):
    try:
        from xaudit.metrics import _kernels as kernels  # noqa: F401
    except ImportError:       # not compiled (no C compiler at install time): numpy fallbacks
        kernels = None


def available() -> bool:
    return kernels is not None
