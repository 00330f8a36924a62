"""The Python way in: ``xaudit.run(preset)`` runs a preset end to end (models, cells, store, report).

    >>> import xaudit.run
    >>> res = xaudit.run("smoke", workers=1)
    >>> res.report, res.summary.done, res.summary.failed

This module sits on top of the stages (run -> report); the ``xaudit run`` command calls
:func:`main_run`.
"""
from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from xaudit.core.errors import ConfigError, XauditError
from xaudit.run.execute import Summary, execute, versions
from xaudit.run.executor import Executor, LocalExecutor, available_cores
from xaudit.run.plan import Plan, build_plan
from xaudit.run.preset import Preset, load_preset
from xaudit.run.progress import Progress
from xaudit.run.store import Store


@dataclass
class RunResult:
    name: str
    run_dir: Path
    store: Path                  # results.sqlite
    report: Path | None          # report.html
    summary: Summary
    plan: Plan


@contextlib.contextmanager
def _run_lock(run_dir: Path) -> Iterator[None]:
    """One xaudit run per run directory at a time (the OS drops the lock if the process dies)."""
    import fcntl

    fd = os.open(run_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise XauditError(f"another xaudit run is using {run_dir}; wait for it to finish or pass "
                              "--out to write elsewhere") from None
        yield
    finally:
        os.close(fd)


def _check_snapshot(names: list[str]) -> list[dict[str, Any]]:
    from xaudit.checks import describe

    return [d for d in describe() if d["name"] in names]


def _method_snapshot(names: list[str]) -> list[dict[str, Any]]:
    try:
        from xaudit.explain import describe
        rows = {d["name"]: d for d in describe()}
    except ImportError:
        rows = {}
    return [rows.get(n, {"name": n}) for n in names]


def _preset_record(p: Preset, plan: Plan) -> dict[str, Any]:
    return {**p.raw, "_source": p.source,
            "_resolved": {"checks": plan.checks, "methods": plan.methods, "seeds": list(p.seeds),
                          "worlds": list({_canon(c.world): c.world for c in plan.cells}.values()),
                          "models": {k: m.label for k, m in plan.models.items()}, "cells": len(plan.cells)}}


def _canon(d: dict) -> str:
    import json

    return json.dumps(d, sort_keys=True)


def _check_workers(workers: Any) -> None:
    """``workers`` (``--workers``) is None or an integer >= 1."""
    if workers is None:
        return
    import numbers

    if isinstance(workers, bool) or not isinstance(workers, numbers.Integral) or workers < 1:
        raise ConfigError("--workers", f"must be an integer >= 1 (default: the number of cores, "
                                       f"{available_cores()} here); got {workers!r}")


def _make_run_dir(run_dir: Path) -> None:
    """Create the run directory, or say why it cannot be one (e.g. ``--out`` names an existing file)."""
    for q in (run_dir, *run_dir.parents):
        if q.exists():
            if not q.is_dir():
                what = str(q) if q == run_dir else f"{q} (a parent of {run_dir})"
                raise ConfigError("--out", f"{what} is an existing file, not a directory; pass --out a new "
                                           "directory or an earlier run directory; nothing was changed")
            break
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError("--out", f"cannot create the run directory {run_dir} ({e.strerror or e}); pass "
                                   "--out a directory you can write") from None


def run(preset: str | Path | dict | Preset = "default", *, out: str | Path | None = None,
        workers: int | None = None, methods: str | list[str] | None = None, checks: str | list[str] | None = None,
        cache_dir: str | Path | None = None, progress: Progress | bool | None = False,
        executor: Executor | None = None, source: str | None = None, retry_failed: bool = True,
        report: bool = True) -> RunResult:
    """Run ``preset`` (a shipped name, a YAML path, a dict or a Preset) into ``out`` (default runs/<name>).

    Only unfinished cells run: a rerun after a crash or Ctrl-C resumes. ``methods``/``checks`` keep
    a subset (comma-separated or lists). ``workers`` defaults to the preset's, else the number of
    cores. ``source`` names the model source (``module:attr``, default the zoo). Returns a RunResult.
    """
    _check_workers(workers)
    p = preset if isinstance(preset, Preset) else load_preset(preset)
    plan = build_plan(p, methods=methods, checks=checks, source=source)
    run_dir = Path(out) if out is not None else Path("runs") / p.name
    _make_run_dir(run_dir)
    if executor is None:
        executor = LocalExecutor(workers or p.workers or available_cores())
    if not isinstance(progress, Progress):
        progress = Progress(enabled=None if progress is None else bool(progress))
    with _run_lock(run_dir):
        store = Store.open(run_dir)
        status, run_id = "failed", None
        try:
            run_id = store.begin_run(p.name, _preset_record(p, plan), len(plan.cells), executor.workers, versions(),
                                     _check_snapshot(plan.checks), _method_snapshot(plan.methods), argv=sys.argv)
            store.sync_plan(plan.cells)
            summary = execute(plan, store, executor, run_id=run_id, run_dir=run_dir, cache_dir=cache_dir,
                              progress=progress, retry_failed=retry_failed)
            status = "done" if summary.failed == 0 else "done_with_failures"
        except KeyboardInterrupt:
            status = "interrupted"
            raise
        finally:
            if run_id is not None:
                with contextlib.suppress(Exception):
                    store.end_run(run_id, status)
            store.close()
            if report and status != "done" and status != "done_with_failures":
                with contextlib.suppress(Exception):
                    _write_report(run_dir)
        path = _write_report(run_dir) if report else None
    return RunResult(name=p.name, run_dir=run_dir, store=run_dir / "results.sqlite", report=path,
                     summary=summary, plan=plan)


def _write_report(run_dir: Path) -> Path:
    from xaudit.report import write_report

    return write_report(run_dir)


def main_run(preset: str | Path = "default", *, out: str | Path | None = None, workers: int | None = None,
             methods: str | None = None, checks: str | None = None, cache_dir: str | Path | None = None) -> int:
    """``xaudit run``: run with a progress display, print the scorecard and the report path.
    Returns the exit code: 0, 1 when cells failed, 130 when interrupted."""
    from rich.console import Console

    from xaudit.report import render_terminal, scorecard

    from rich.markup import escape

    err = Console(stderr=True, highlight=False)
    try:
        res = run(preset, out=out, workers=workers, methods=methods, checks=checks, cache_dir=cache_dir,
                  progress=None)
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]: finished cells are saved; run the same command again to resume")
        return 130
    with Store.open(res.run_dir, readonly=True) as store:
        render_terminal(scorecard(store))
    s = res.summary
    print(f"{s.cells} cells: {s.done} done, {s.failed} failed, {s.not_applicable} not applicable "
          f"({s.skipped} finished earlier, {s.ran} run now) in {s.seconds:.1f} s")
    print(f"report: {res.report}")
    if s.failed:
        err.print(f"[red]{s.failed} cell(s) failed[/]; the report lists them with their tracebacks")
        for label, error in s.failures[:5]:
            err.print(f"  {escape(label)}: {escape(error)}")
        return 1
    return 0
