"""Executors run a plan's tasks: first the models (each trained or loaded once), then the cells.

The interface is small so a cluster executor (Ray) can sit behind it: ``Executor.run(models, cells,
config, sink)`` runs every task and reports each start and each result to ``sink`` in the calling
process (which writes the store). A cell is dispatched only once all of its models are ready; a
model that fails to train fails its cells without running them.

:class:`LocalExecutor` uses worker processes (the 'spawn' start method: safe with torch's thread
pools) or, with one worker, runs everything in the calling process. :class:`Scheduler` holds the
dispatch policy shared by executors: models first (the long tasks), then cells, each worker
preferring cells of a model it already holds.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import queue
import time
from dataclasses import replace
from typing import Protocol

from xaudit.run.worker import (CellResult, CellTask, ModelResult, ModelTask, WorkerConfig, WorkerState,
                               set_threads, worker_main)


def available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def training_threads(source: str) -> int:
    """The threads the model source trains with (``training_threads()`` on the source; default 1)."""
    from xaudit.run.models import load_source

    fn = getattr(load_source(source), "training_threads", None)
    return max(1, int(fn())) if callable(fn) else 1


def affinity(task: CellTask) -> tuple:
    """Cells with equal affinity explain the same model with the same method (and parameters)."""
    import json

    return (task.primary, task.method, json.dumps(task.method_params, sort_keys=True, default=repr))


class Sink(Protocol):
    def model_started(self, key: str, worker: str) -> None: ...
    def model_finished(self, result: ModelResult) -> None: ...
    def cell_started(self, key: str, worker: str) -> None: ...
    def cell_finished(self, result: CellResult) -> None: ...


class Executor(Protocol):
    workers: int

    def run(self, models: list[ModelTask], cells: list[CellTask], config: WorkerConfig, sink: Sink) -> None:
        """Run every task; call ``sink`` for each start and result, in the calling process."""
        ...


class Scheduler:
    """Which task next, for which worker. Pure bookkeeping, no processes.

    A thread budget keeps the machine from being oversubscribed (OpenMP spin-waits make an
    oversubscribed CPU many times slower): a model task costs the threads the model source trains
    with (the zoo fixes its own count, for bit-identical weights), a cell costs ``cell_threads``, and
    tasks run together only while their threads fit in ``cores``. Models go first (the long tasks):
    while one waits for threads, no new cell starts. Then cells, each worker preferring cells of a
    model it already holds, then cells of a model no other worker is on."""

    def __init__(self, models: list[ModelTask], cells: list[CellTask], cores: int, workers: int,
                 model_threads: int = 1, cell_threads: int = 1):
        self.cores, self.workers = cores, max(1, workers)
        self.model_threads, self.cell_threads = max(1, model_threads), max(1, cell_threads)
        self.model_queue = list(models)
        self.models_running: set[str] = set()
        self.ready_models: set[str] = set()
        self.failed_models: dict[str, str] = {}
        need = {m.key for m in models}
        self.waiting = [c for c in cells]
        self.known_ready = lambda k: k not in need   # models not in this run's list are assumed ready
        self.cells_running: dict[str, CellTask] = {}
        self.threads_in_use = 0
        self.finished = 0
        self.total = len(models) + len(cells)

    def done(self) -> bool:
        return self.finished >= self.total

    def _model_ok(self, key: str) -> bool:
        return key in self.ready_models or self.known_ready(key)

    def _runnable(self, c: CellTask) -> bool:
        return all(self._model_ok(k) for _, _, k in c.models)

    def _fits(self, threads: int) -> bool:
        return self.threads_in_use == 0 or self.threads_in_use + threads <= self.cores

    def next_task(self, held: set[str], busy_others: set[str], last: tuple | None = None,
                  busy_affinities: set[tuple] | frozenset = frozenset()) -> ModelTask | CellTask | None:
        """The next task for a worker holding models ``held``; ``busy_others``: primary models other
        workers are on; ``last``: the affinity (:func:`affinity`) of the worker's previous cell;
        ``busy_affinities``: those of the cells other workers are running. None: nothing may start now
        (wait for a result).

        Preference among runnable cells: the same model and method as the worker's previous cell (the
        checks of one method on one model share explanations through the worker's memo), then a held
        model with a method no other worker is on, then any held model, then a model no other worker
        is on, then the rest; plan order within each rank."""
        if self.model_queue:
            if not self._fits(self.model_threads):
                return None
            m = self.model_queue.pop(0)
            self.models_running.add(m.key)
            self.threads_in_use += self.model_threads
            return replace(m, threads=self.model_threads)
        if not self._fits(self.cell_threads):
            return None
        best, best_rank = None, 5
        for i, c in enumerate(self.waiting):
            if not self._runnable(c):
                continue
            p = c.primary
            if p is None or p in held:
                aff = affinity(c)
                rank = 0 if (last is not None and aff == last) else (1 if aff not in busy_affinities else 2)
            else:
                rank = 3 if p not in busy_others else 4
            if rank < best_rank:
                best, best_rank = i, rank
                if rank == 0:
                    break
        if best is None:
            return None
        c = self.waiting.pop(best)
        self.cells_running[c.key] = c
        self.threads_in_use += self.cell_threads
        return c

    def model_finished(self, res: ModelResult) -> list[CellResult]:
        """Record a model; returns the failure results of cells that can no longer run."""
        if res.key in self.models_running:
            self.models_running.discard(res.key)
            self.threads_in_use -= self.model_threads
        self.finished += 1
        if res.status == "ok":
            self.ready_models.add(res.key)
            return []
        self.failed_models[res.key] = res.error or "failed"
        doomed = [c for c in self.waiting if any(k == res.key for _, _, k in c.models)]
        self.waiting = [c for c in self.waiting if c not in doomed]
        out = []
        for c in doomed:
            m = c.resolved[res.key]
            out.append(CellResult(c.key, "failed", error=f"model {m.label} ({res.key}) could not be prepared: "
                                                           f"{res.error}"))
        return out

    def cell_finished(self, key: str) -> None:
        if self.cells_running.pop(key, None) is not None:
            self.threads_in_use -= self.cell_threads
        self.finished += 1

    def requeue(self, task: ModelTask | CellTask) -> None:
        """Put a task whose worker was lost back at the head of its queue (a retry)."""
        if task.kind == "model":
            if task.key in self.models_running:
                self.models_running.discard(task.key)
                self.threads_in_use -= self.model_threads
            self.model_queue.insert(0, task)
        else:
            if self.cells_running.pop(task.key, None) is not None:
                self.threads_in_use -= self.cell_threads
            self.waiting.insert(0, task)

    def assign(self, wid, current: dict, held: dict, last: dict) -> "ModelTask | CellTask | None":
        """The next task for worker ``wid`` given what every worker runs (``current``), holds and ran
        last; records it in ``current`` and ``last``. None: nothing may start now."""
        others = [t for w, t in current.items() if w != wid and t is not None and t.kind == "cell"]
        task = self.next_task(held[wid], {t.primary for t in others}, last[wid], {affinity(t) for t in others})
        if task is not None:
            current[wid] = task
            if task.kind == "cell":
                last[wid] = affinity(task)
        return task

    def blocked(self) -> bool:
        """Nothing runnable and nothing running: should not happen (a dependency was never scheduled)."""
        return (not self.model_queue and not self.models_running and not self.cells_running
                and self.waiting and not any(self._runnable(c) for c in self.waiting))


def _skip_failed(sched: Scheduler, results: list[CellResult], sink: Sink) -> None:
    for r in results:
        sink.cell_finished(r)
        sched.finished += 1


def finished(sched: Scheduler, kind: str, res: ModelResult | CellResult, sink: Sink) -> None:
    """Record a task's result with the scheduler and the sink (a failed model also fails the cells that
    needed it), in every executor."""
    if kind == "model":
        sink.model_finished(res)
        _skip_failed(sched, sched.model_finished(res), sink)
    else:
        sched.cell_finished(res.key)
        sink.cell_finished(res)


def failed(task: ModelTask | CellTask, why: str) -> ModelResult | CellResult:
    """The result of a task whose worker was lost."""
    return (ModelResult if task.kind == "model" else CellResult)(task.key, "failed", error=why)


class LocalExecutor:
    """``workers`` processes on this machine (default: one per core); with workers=1 the tasks run
    in the calling process (no start-up cost). Each worker gets cores // workers torch threads."""

    def __init__(self, workers: int | None = None, *, start_method: str = "spawn", inline: bool | None = None):
        self.cores = available_cores()
        self.workers = max(1, int(workers or self.cores))
        self.start_method = start_method
        self.inline = (self.workers == 1) if inline is None else inline

    def run(self, models: list[ModelTask], cells: list[CellTask], config: WorkerConfig, sink: Sink) -> None:
        if not models and not cells:
            return
        if self.inline:
            return self._run_inline(models, cells, config, sink)
        return self._run_processes(models, cells, config, sink)

    # -- in this process
    def _run_inline(self, models, cells, config, sink) -> None:
        import torch

        before = torch.get_num_threads()
        config = replace(config, threads=self.cores)
        sched = Scheduler(models, cells, self.cores, 1, model_threads=self.cores, cell_threads=self.cores)
        state = WorkerState(config)
        last = None
        try:
            while not sched.done():
                task = sched.next_task(set(state.loaded), set(), last)
                if task is None:
                    if sched.blocked():
                        raise RuntimeError("scheduler blocked: cells wait on models that are not scheduled")
                    break
                if task.kind == "model":
                    task = replace(task, threads=self.cores)
                    sink.model_started(task.key, "main")
                    res = state.prepare_model(task)
                else:
                    sink.cell_started(task.key, "main")
                    last = affinity(task)
                    res = state.run_cell(task)
                finished(sched, task.kind, res, sink)
        finally:
            set_threads(before)

    # -- in worker processes
    def _run_processes(self, models, cells, config, sink) -> None:
        ctx = mp.get_context(self.start_method)
        n = max(1, min(self.workers, len(models) + len(cells)))
        config = replace(config, threads=max(1, self.cores // n))
        sched = Scheduler(models, cells, self.cores, n, model_threads=training_threads(config.source),
                          cell_threads=config.threads)
        outbox = ctx.Queue()
        procs: dict[int, object] = {}
        inboxes: dict[int, object] = {}
        ready: set[int] = set()
        current: dict[int, ModelTask | CellTask | None] = {}
        held: dict[int, set[str]] = {}
        last: dict[int, tuple | None] = {}
        respawns = 0
        next_wid = 0

        def spawn() -> None:
            nonlocal next_wid
            wid = next_wid
            next_wid += 1
            inboxes[wid] = ctx.Queue()
            p = ctx.Process(target=worker_main, args=(wid, inboxes[wid], outbox, config, os.getpid()),
                            name=f"xaudit-worker-{wid}", daemon=True)
            p.start()
            procs[wid], current[wid], held[wid], last[wid] = p, None, set(), None

        def dispatch() -> None:
            for wid in sorted(ready):
                if current.get(wid) is not None:
                    continue
                task = sched.assign(wid, current, held, last)
                if task is None:
                    return
                inboxes[wid].put(task)

        for _ in range(n):
            spawn()
        graceful = False
        try:
            while not sched.done():
                dispatch()
                try:
                    msg = outbox.get(timeout=0.5)
                except queue.Empty:
                    msg = None
                if msg is not None:
                    kind, wid = msg[0], msg[1]
                    if kind == "ready":
                        ready.add(wid)
                    elif kind == "init_failed":
                        raise RuntimeError(f"worker {wid} failed to start: {msg[2]}\n{msg[3]}")
                    elif kind == "start":
                        (sink.model_started if msg[2] == "model" else sink.cell_started)(msg[3], f"w{wid}")
                    elif kind == "result":
                        res = msg[4]
                        current[wid] = None
                        held[wid] = set(res.held)      # exactly what the worker holds now
                        finished(sched, msg[2], res, sink)
                    continue
                # no message: look for workers that died (killed, out of memory, segfault)
                for wid, p in list(procs.items()):
                    if p.is_alive():
                        continue
                    task = current.pop(wid, None)
                    procs.pop(wid)
                    ready.discard(wid)
                    why = f"worker process exited with code {p.exitcode} (killed, crashed or out of memory)"
                    if task is not None:
                        finished(sched, task.kind, failed(task, why), sink)
                    if not sched.done():
                        respawns += 1
                        if respawns > 2 * n + 2:
                            raise RuntimeError(f"workers keep dying; last: {why}")
                        spawn()
                if not procs and not sched.done():
                    raise RuntimeError("no worker processes left")
                if sched.blocked():
                    raise RuntimeError("scheduler blocked: cells wait on models that are not scheduled")
            graceful = True
        finally:
            # on success workers are idle and exit on None; on an error or Ctrl-C stop them at once
            for wid in list(procs):
                try:
                    inboxes[wid].put(None)
                except Exception:
                    pass
            deadline = time.monotonic() + (5.0 if graceful else 0.0)
            for p in procs.values():
                p.join(timeout=max(0.05, deadline - time.monotonic()))
                if p.is_alive():
                    p.terminate()
                    p.join(timeout=2.0)
                if p.is_alive():
                    p.kill()
            outbox.close()
            for q in inboxes.values():
                q.close()
