"""The cost model behind ``xaudit plan``: how long a plan takes on K workers, before running it.

Per task, a measured time where one exists, else an estimate, each prediction saying which:

- a **cell**: its seconds in an earlier run's store with the same cell key (``exact``); else the median of
  the cells of the same check, method and method parameters on the same world label (``similar``); else of
  the same check and method anywhere (``same method``); else the median of the same check's cells times
  the method's declared passes over the median passes of those cells' methods (``scaled by passes``);
  else the median of every known cell (``any cell``), else :data:`DEFAULT_CELL_S` (``default``);
- a **model**: 0.05 s to load when the zoo cache holds it; else its training seconds on its card in an
  earlier store (``train_seconds``); else the median training time of the models in the history, else
  :data:`DEFAULT_TRAIN_S`.

A cell's seconds are measured at the thread count of the run that measured them (a worker of K on C cores
runs C // K torch threads); predicting for another thread count t, they are scaled by (t_measured / t) **
:data:`THREAD_EXPONENT` (the default preset's cells took 454.7 worker-seconds at 1 thread and 261.2 at 2:
1.74x faster, exponent 0.80; bench/results/scale.json). The history's machine is taken to have this
machine's cores.

The wall time is simulated with the local scheduler's policy (:class:`xaudit.run.executor.Scheduler`):
the models first, as many at a time as their threads fit the cores, then the cells in plan order, each
to the first free worker; a cell waits for its models. It does not model the scheduler's preference for a
worker's held model (which mostly saves loading) or its idle gaps.
"""
from __future__ import annotations

import heapq
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

DEFAULT_CELL_S = 1.0          # a cell with nothing known about it (the default preset's median warm cell: 0.3 s)
DEFAULT_TRAIN_S = 15.0        # a model to train with nothing known (the zoo's small CNN on 20k images: ~15 s)
LOAD_S = 0.05                 # loading a cached model (30 in 0.48 s in a warm default run)
THREAD_EXPONENT = 0.80        # cell seconds ~ threads ** -0.80 (measured: 2 threads 1.74x faster than 1)
# what an executor adds to every cell (median, dispatch to result minus the cell's own time; bench/scale.py)
CELL_OVERHEAD_S = {"local": 0.0010, "ray": 0.0039}


@dataclass
class History:
    """Timings read from earlier runs' stores."""
    cells: dict[str, float] = field(default_factory=dict)                  # cell key -> seconds at 1 thread
    by_similar: dict[tuple, list[float]] = field(default_factory=dict)     # (check, method, params, world)
    by_method: dict[tuple, list[float]] = field(default_factory=dict)      # (check, method)
    by_check: dict[str, list[tuple[float, str]]] = field(default_factory=dict)   # check -> (seconds, method)
    train: dict[str, float] = field(default_factory=dict)                  # model key -> training seconds
    stores: list[str] = field(default_factory=list)

    def add_store(self, path: str | Path) -> None:
        from xaudit.run.store import Store, find_db

        from xaudit.run.executor import available_cores

        db = find_db(path)
        with Store(db, readonly=True) as store:
            workers = {r["id"]: r["workers"] for r in store.runs()}
            for c in store.cells(active_only=False):
                if c["status"] != "done" or c["seconds"] is None:
                    continue
                cfg = c["config"] or {}
                params = json.dumps(cfg.get("method_params") or {}, sort_keys=True)
                threads = max(1, available_cores() // max(1, int(workers.get(c["run_id"]) or 1)))
                s = float(c["seconds"]) * threads ** THREAD_EXPONENT     # as if at 1 thread
                self.cells[c["key"]] = s
                self.by_similar.setdefault((c["check_name"], c["method"], params, c["world"]), []).append(s)
                self.by_method.setdefault((c["check_name"], c["method"]), []).append(s)
                self.by_check.setdefault(c["check_name"], []).append((s, c["method"]))
            for m in store.models():
                card = m.get("card") or {}
                t = card.get("train_seconds")
                if m.get("status") == "ok" and isinstance(t, (int, float)):
                    self.train[m["key"]] = float(t)
        self.stores.append(str(db))


def history_from(paths: Iterable[str | Path]) -> History:
    """A History of every store under ``paths`` (run folders, or folders of run folders such as runs/)."""
    from xaudit.run.store import DB_NAME

    h = History()
    for p in paths:
        p = Path(p)
        dbs = [p / DB_NAME] if (p / DB_NAME).is_file() else sorted(p.glob(f"*/{DB_NAME}"))
        for db in dbs:
            h.add_store(db.parent)
    return h


@dataclass
class Estimate:
    seconds: float
    source: str


def _passes(method: str, params: dict[str, Any]) -> float | None:
    """The method's declared (forward + backward) passes per image, None when it declares none."""
    try:
        from xaudit import explain

        info = explain.info(method)
        if info.passes is None:
            return None
        fwd, bwd = info.passes({**dict(info.params or {}), **params}, (3, 32, 32))
        return float(fwd) + float(bwd)
    except Exception:
        return None


def cell_estimate(cell, h: History) -> Estimate:
    if cell.key in h.cells:
        return Estimate(h.cells[cell.key], "exact")
    params = json.dumps(cell.method_params or {}, sort_keys=True)
    similar = h.by_similar.get((cell.check, cell.method, params, cell.world_name))
    if similar:
        return Estimate(statistics.median(similar), "similar")
    same = h.by_method.get((cell.check, cell.method))
    if same:
        return Estimate(statistics.median(same), "same method")
    of_check = h.by_check.get(cell.check)
    if of_check:
        mine = _passes(cell.method, cell.method_params or {})
        theirs = [p for p in (_passes(m, {}) for _, m in of_check) if p]
        base = statistics.median(s for s, _ in of_check)
        if mine and theirs:
            return Estimate(base * mine / statistics.median(theirs), "scaled by passes")
        return Estimate(base, "same check")
    every = [s for s in h.cells.values()]
    if every:
        return Estimate(statistics.median(every), "any cell")
    return Estimate(DEFAULT_CELL_S, "default")


def model_estimate(model, h: History, cached: bool) -> Estimate:
    if cached:
        return Estimate(LOAD_S, "cached")
    if model.key in h.train:
        return Estimate(h.train[model.key], "trained before")
    if h.train:
        return Estimate(statistics.median(h.train.values()), "median training")
    return Estimate(DEFAULT_TRAIN_S, "default")


def simulate(model_s: list[float], cell_s: list[float], workers: int, model_slots: int) -> dict[str, float]:
    """Wall seconds of the models (``model_slots`` at a time) then the cells (``workers`` at a time, in the
    given order, each to the first free worker)."""
    def phase(durations: list[float], slots: int) -> float:
        free = [0.0] * max(1, slots)
        heapq.heapify(free)
        end = 0.0
        for d in durations:
            t = heapq.heappop(free) + d
            end = max(end, t)
            heapq.heappush(free, t)
        return end

    m = phase(model_s, model_slots)
    c = phase(cell_s, workers)
    return {"models_s": m, "cells_s": c, "wall_s": m + c}


def predict(plan, workers: int, history: History, cache_dir: str | None = None, cores: int | None = None,
            executor: str = "local") -> dict[str, Any]:
    """The plan's cells and models with their estimates, and the predicted wall time on ``workers``."""
    from xaudit.run.executor import available_cores, training_threads

    cores = cores or available_cores()
    model_slots = max(1, cores // max(1, training_threads(plan.source)))
    cached = _cached_keys(plan, cache_dir)
    models = [(m, model_estimate(m, history, m.key in cached)) for m in plan.models.values()]
    threads = max(1, cores // max(1, workers))
    cells = [(c, cell_estimate(c, history)) for c in plan.cells if not c.upstream]
    extra = CELL_OVERHEAD_S.get(executor, 0.0)
    cells = [(c, Estimate(e.seconds / threads ** THREAD_EXPONENT + extra, e.source)) for c, e in cells]
    sim = simulate([e.seconds for _, e in models], [e.seconds for _, e in cells], max(1, workers), model_slots)
    sources: dict[str, int] = {}
    for _, e in cells:
        sources[e.source] = sources.get(e.source, 0) + 1
    per_check: dict[str, dict[str, float]] = {}
    for c, e in cells:
        d = per_check.setdefault(c.check, {"cells": 0, "seconds": 0.0})
        d["cells"] += 1
        d["seconds"] += e.seconds
    return {"workers": workers, "cores": cores, "executor": executor, "cells": len(plan.cells), "derived_cells": len(plan.cells) - len(cells),
            "models": len(models), "models_to_train": sum(1 for m, e in models if e.source != "cached"),
            "model_s": sum(e.seconds for _, e in models), "cell_s": sum(e.seconds for _, e in cells),
            "estimate_sources": sources, "per_check": per_check, "history": history.stores, **sim,
            "to_train": [{"label": m.label, "seconds": e.seconds, "source": e.source}
                         for m, e in models if e.source != "cached"]}


def _cached_keys(plan, cache_dir: str | None) -> set[str]:
    """The plan's zoo models whose weights the cache holds (other sources: none)."""
    from xaudit.run.models import DEFAULT_SOURCE

    if plan.source != DEFAULT_SOURCE:
        return set()
    from xaudit.zoo.cache import cache_root

    root = cache_root(cache_dir) / "models"
    return {k for k in plan.models if (root / k / "card.json").is_file()}
