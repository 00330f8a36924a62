"""xaudit: test explanation methods against planted bugs whose ground truth is known.

    >>> import xaudit
    >>> result = xaudit.run("smoke")        # train or load the models, run the checks, write the report
    >>> result = xaudit.audit("mymodels:make_net", "images/", weights="net.safetensors")   # your own model

The stages (``xaudit.world``, ``zoo``, ``explain``, ``metrics``, ``checks``, ``run``, ``report``) are
imported on first use, so ``import xaudit`` stays cheap.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_STAGES = ("core", "world", "zoo", "explain", "metrics", "checks", "run", "report")


def __getattr__(name: str):
    if name in _STAGES:
        return importlib.import_module(f"xaudit.{name}")
    if name == "audit":
        from xaudit.api import audit

        return audit
    raise AttributeError(f"module 'xaudit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_STAGES) + ["audit"])
