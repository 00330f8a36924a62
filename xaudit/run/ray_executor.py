"""The Ray executor: the same tasks as :class:`~xaudit.run.executor.LocalExecutor`, on a Ray cluster.

``xaudit run PRESET --executor ray [--address ADDR]`` (``pip install 'xaudit[ray]'``). Model preparation and
cells are Ray tasks on *actors*, one per worker: an actor keeps its models loaded and is given the cells of
a model it holds first (the local scheduler's policy, :class:`~xaudit.run.executor.Scheduler`, decides in the
driver). Each actor reserves ``cores // workers`` CPUs and runs that many torch threads, and on a GPU device
a share of the cluster's GPUs: the largest share a method or a model of the run declares (``num_gpus``),
else an equal share (:func:`actor_resources`). Results (rows and
artifacts) come back to the driver, which alone writes the store, so resume works as with the local
executor: a driver killed mid-run and started again finds every finished cell in the store.

A lost worker (its actor process killed or crashed) is replaced; its task is run again, up to
``max_retries`` times, then recorded as failed. Without ``address`` a local Ray instance with this
machine's cores is started for the run and shut down after it (``address="auto"`` joins a running cluster).

Trained models reach the workers in one of two ways (``model_sharing``):

- ``filesystem`` (default): every worker reads and writes the content-addressed cache at ``cache_dir``; on a
  cluster, a path every node mounts (NFS, a shared volume). A model is trained once, by the model task.
- ``object_store``: for a cluster without a shared disk. The worker that trained a model exports its cache
  entry (the safetensors weights and the card) into Ray's object store; before a cell runs on another
  worker, that worker installs the entry into its own cache (the bytes go from the object store to the
  worker, not through the driver), so it loads the model instead of training it again.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import replace

from xaudit.core.errors import ConfigError
from xaudit.run.executor import Scheduler, Sink, available_cores, failed, finished, training_threads
from xaudit.run.worker import CellTask, ModelTask, WorkerConfig, WorkerState, set_threads

INSTALL_HINT = "pip install 'xaudit[ray]' (or: pip install 'ray>=2.9')"
# how workers get the models others trained: a cache path every worker reads ("filesystem"), or the
# trained model's cache entry shipped through Ray's object store to each worker that needs it
MODEL_SHARING = ("filesystem", "object_store")


def import_ray():
    try:
        import ray
    except ImportError as e:
        raise ConfigError("--executor", f"the ray executor needs Ray, which is not installed ({e}); install it with "
                                        f"{INSTALL_HINT}, or use the local executor") from None
    return ray


class _Worker:
    """The actor: one WorkerState (models kept loaded), a task at a time."""

    def __init__(self, config: WorkerConfig):
        try:
            import torch

            torch.set_num_interop_threads(1)
        except RuntimeError:
            pass
        set_threads(config.threads)
        self.state = WorkerState(config)

    def pid(self) -> int:
        return os.getpid()

    def export_model(self, model) -> dict[str, bytes]:
        fn = getattr(self.state.source, "export", None)
        return fn(model, self.state.config.cache_dir) if callable(fn) else {}

    def install(self, files: dict[str, bytes]) -> None:
        fn = getattr(self.state.source, "install", None)
        if callable(fn) and files:
            fn(files, self.state.config.cache_dir)

    def run(self, task: ModelTask | CellTask):
        if task.kind == "model":
            return self.state.prepare_model(task)
        return self.state.run_cell(task)


def declared_gpus(models: list[ModelTask], cells: list[CellTask], source: str) -> tuple[float, str] | None:
    """The largest GPU share a task of the run declares, with who declares it: a method's ``num_gpus``
    (``xaudit.explain.register(num_gpus=)``) or a model's (a model source's optional ``num_gpus(model)``;
    the zoo's declares none: its small models take the equal share). None when nothing declares one."""
    from xaudit.explain.base import METHODS
    from xaudit.run.models import load_source

    hook = getattr(load_source(source), "num_gpus", None)
    seen: set[str] = set()
    found: list[tuple[float, str]] = []
    for t in cells:
        if t.method not in seen and t.method in METHODS:
            seen.add(t.method)
            g = METHODS.get(t.method).num_gpus
            if g is not None:
                found.append((float(g), f"method {t.method}"))
    if callable(hook):
        resolved = {m.model.key: m.model for m in models}
        for t in cells:
            resolved.update(t.resolved)
        for m in resolved.values():
            g = hook(m)
            if g is not None:
                found.append((float(g), f"model {m.label}"))
    return max(found, key=lambda f: f[0], default=None)


def actor_resources(cpus: int, gpus: float, workers: int, device: str,
                    declared: tuple[float, str] | None = None) -> tuple[int, int, float]:
    """(actors, CPUs, GPUs) for a run asking for ``workers`` actors on a cluster of ``cpus`` CPUs and
    ``gpus`` GPUs: each actor reserves the CPUs of the thread budget (``cpus // workers``). On a GPU device
    (``cuda``, or ``auto`` where the cluster has GPUs) each reserves the largest GPU share a task declares
    (:func:`declared_gpus`: an actor may be given any task), and as many actors start as those shares fit
    in; where nothing declares one, an equal share of the GPUs, fractional when there are more workers
    than GPUs (several small models share one), at most 1."""
    n = max(1, workers)
    num_gpus = 0.0
    if device in ("cuda", "auto") and gpus > 0:
        if declared is not None:
            num_gpus, who = declared
            if num_gpus > gpus:
                raise ConfigError("num_gpus", f"{who} needs {num_gpus:g} GPUs per task but the Ray cluster has "
                                              f"{gpus:g}; run on a larger cluster or declare a smaller share")
            n = max(1, min(n, int(gpus / num_gpus + 1e-9)))
        else:
            num_gpus = min(1.0, gpus / n)
    elif device == "cuda":
        raise ConfigError("device", "the preset asks for cuda but the Ray cluster has no GPU; use device: auto or cpu")
    return n, max(1, cpus // n), num_gpus


class RayExecutor:
    """Tasks on Ray actors (see the module docstring)."""

    def __init__(self, workers: int | None = None, *, address: str | None = None, max_retries: int = 2,
                 num_cpus: int | None = None, model_sharing: str = "filesystem", worker_cache_dirs: bool = False):
        if model_sharing not in MODEL_SHARING:
            raise ConfigError("model_sharing", f"must be one of {', '.join(MODEL_SHARING)}, got {model_sharing!r}")
        self.address, self.max_retries, self.num_cpus = address, int(max_retries), num_cpus
        self.model_sharing, self.worker_cache_dirs = model_sharing, bool(worker_cache_dirs)
        self.workers = max(1, int(workers or num_cpus or available_cores()))
        self.actor_pids: dict[int, int] = {}       # worker id -> actor process id (tests kill one)
        import_ray()

    def run(self, models: list[ModelTask], cells: list[CellTask], config: WorkerConfig, sink: Sink) -> None:
        if not models and not cells:
            return
        ray = import_ray()
        own = not ray.is_initialized()
        if own:
            path = os.pathsep.join(p for p in sys.path if p and os.path.isdir(p))
            ray.init(address=self.address, num_cpus=None if self.address else (self.num_cpus or available_cores()),
                     include_dashboard=False, log_to_driver=False, ignore_reinit_error=True,
                     runtime_env={"env_vars": {"PYTHONPATH": path}})
        try:
            self._run(ray, models, cells, config, sink)
        finally:
            if own:
                ray.shutdown()

    def _run(self, ray, models, cells, config, sink) -> None:
        resources = ray.cluster_resources()
        cpus = max(1, int(resources.get("CPU", 1)))
        n = max(1, min(self.workers, len(models) + len(cells)))
        n, threads, num_gpus = actor_resources(cpus, float(resources.get("GPU", 0)), n, config.device,
                                               declared_gpus(models, cells, config.source))
        config = replace(config, threads=threads)
        sched = Scheduler(models, cells, cpus, n, model_threads=min(cpus, training_threads(config.source)),
                          cell_threads=threads)
        Actor = ray.remote(num_cpus=threads, num_gpus=num_gpus, max_restarts=0)(_Worker)
        actors: dict[int, object] = {}
        current: dict[int, ModelTask | CellTask | None] = {}
        held: dict[int, set[str]] = {}
        last: dict[int, tuple | None] = {}
        pending: dict[object, int] = {}
        retries: dict[str, int] = {}

        exported: dict[str, object] = {}        # model key -> ObjectRef of its cache files (object_store)
        installed: dict[int, set[str]] = {}

        def spawn(wid: int) -> None:
            cfg = config
            if self.worker_cache_dirs:           # a worker without the others' disk (a node of its own)
                cfg = replace(config, cache_dir=os.path.join(str(config.cache_dir or "."), f"worker-{wid}"))
            actors[wid] = Actor.remote(cfg)
            current[wid], held[wid], last[wid], installed[wid] = None, set(), None, set()
            self.actor_pids[wid] = ray.get(actors[wid].pid.remote())

        def dispatch() -> None:
            for wid in sorted(actors):
                if current[wid] is not None:
                    continue
                task = sched.assign(wid, current, held, last)
                if task is None:
                    return
                (sink.model_started if task.kind == "model" else sink.cell_started)(task.key, f"ray{wid}")
                if task.kind == "cell" and self.model_sharing == "object_store":
                    for _, _, k in task.models:      # before the cell: an actor runs its calls in order
                        if k in exported and k not in installed[wid]:
                            actors[wid].install.remote(exported[k])
                            installed[wid].add(k)
                pending[actors[wid].run.remote(task)] = wid

        for wid in range(n):
            spawn(wid)
        try:
            while not sched.done():
                dispatch()
                if not pending:
                    if sched.blocked():
                        raise RuntimeError("scheduler blocked: cells wait on models that are not scheduled")
                    time.sleep(0.01)
                    continue
                done, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
                for ref in done:
                    wid = pending.pop(ref)
                    task, current[wid] = current[wid], None
                    try:
                        res = ray.get(ref)
                    except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError,
                            ray.exceptions.ObjectLostError) as e:
                        self._lost(task, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                                   retries, sched, sink)
                        spawn(wid)
                        continue
                    held[wid] = set(res.held)
                    if task.kind == "model" and res.status == "ok" and self.model_sharing == "object_store":
                        exported[res.key] = actors[wid].export_model.remote(task.model)   # stays in Ray
                        installed[wid].add(res.key)
                    finished(sched, task.kind, res, sink)
        finally:
            for a in actors.values():
                try:
                    ray.kill(a)
                except Exception:
                    pass

    def _lost(self, task, why: str, retries: dict[str, int], sched: Scheduler, sink: Sink) -> None:
        """A task whose worker died: run it again on a new worker, or record it as failed after max_retries."""
        retries[task.key] = retries.get(task.key, 0) + 1
        if retries[task.key] <= self.max_retries:
            sched.requeue(task)
            return
        finished(sched, task.kind, failed(task, f"the Ray worker running it was lost {retries[task.key]} times "
                                             f"(last: {why})"), sink)
