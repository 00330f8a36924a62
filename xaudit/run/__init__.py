"""The run stage: presets -> plan of cells -> executor -> results store (see docs/architecture.md#data-flow).

    >>> import xaudit.run
    >>> result = xaudit.run("smoke")            # the package itself is callable: xaudit.run(preset)
    >>> result.report                           # runs/smoke/report.html

Pieces: :func:`load_preset` (validated YAML), :func:`build_plan` (cells keyed by the hash of their
configuration), :class:`Store` (SQLite, WAL), :class:`LocalExecutor` (worker processes; the
:class:`Executor` protocol admits other executors), :func:`execute` (resume: only unfinished cells
run), :func:`export_results`. ``main_run`` is the ``xaudit run`` command.
"""
from __future__ import annotations

import sys
import types

from xaudit.run.executor import Executor, LocalExecutor, Scheduler, available_cores
from xaudit.run.execute import Summary, execute, export_results, pending_cells, versions
from xaudit.run.models import ModelSource, ResolvedModel, ZooSource
from xaudit.run.plan import Cell, Plan, build_plan, canonical_json, cell_key
from xaudit.run.preset import Preset, load_preset, parse_preset, shipped
from xaudit.run.progress import Progress
from xaudit.run.store import Store, find_db

__all__ = ["Cell", "Executor", "LocalExecutor", "ModelSource", "Plan", "Preset", "Progress", "ResolvedModel",
           "Scheduler", "Store", "Summary", "ZooSource", "available_cores", "build_plan", "canonical_json",
           "cell_key", "execute", "export_results", "find_db", "load_preset", "main_run", "parse_preset",
           "pending_cells", "run", "shipped", "versions"]


def run(preset="default", **kwargs):
    """Run a preset end to end (see :func:`xaudit.api.run`)."""
    from xaudit.api import run as _run

    return _run(preset, **kwargs)


def main_run(preset="default", out=None, workers=None, methods=None, checks=None, cache_dir=None) -> int:
    """The ``xaudit run`` command (see :func:`xaudit.api.main_run`); returns the exit code."""
    from xaudit.api import main_run as _main_run

    return _main_run(preset, out=out, workers=workers, methods=methods, checks=checks, cache_dir=cache_dir)


class _CallableModule(types.ModuleType):
    """Makes ``xaudit.run(preset)`` work although ``xaudit.run`` is this package."""

    def __call__(self, preset="default", **kwargs):
        return run(preset, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
