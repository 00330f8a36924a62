"""What a worker does: prepare (train or load) a model, run a cell. Used in-process by the inline
executor and in each process of the local executor; a Ray executor would call the same functions.

A worker keeps the models it loaded (LRU, at least as many as the largest cell uses), so all the
cells of one model group load it once; every result reports which models the worker holds, so the
scheduler's record of it is exact. After every cell it checks that the check left every model it
used untouched (a fingerprint of its parameters and buffers): a check that randomizes weights must
work on a copy, or later cells of the same model would see a corrupted model and the run would
depend on scheduling.

A cell writes its artifacts (figure data) into a scratch folder of the worker; their bytes travel
back with the cell's rows in :class:`CellResult`, and the parent alone writes them into the run
directory, so a worker on another machine works the same way.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import traceback as tb_mod
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xaudit.core.errors import NotApplicable
from xaudit.run.models import ResolvedModel, load_source
from xaudit.run.store import ROW_COLUMNS, _json

MAX_LOADED_MODELS = 8


@dataclass(frozen=True)
class WorkerConfig:
    source: str                        # model source, "module:attr"
    cache_dir: str | None = None       # zoo cache (None: the zoo's default)
    device: str = "cpu"                # cpu | cuda | auto
    threads: int = 1                   # torch intra-op threads for cell tasks
    plugins: tuple[str, ...] = ()      # modules to import first (they register checks/methods)
    profile: bool = False              # time forward/backward passes of the models inside cells
    max_models: int = MAX_LOADED_MODELS   # models kept loaded: at least the largest set one cell uses


@dataclass(frozen=True)
class ModelTask:
    key: str
    model: ResolvedModel
    threads: int = 1

    kind = "model"


@dataclass(frozen=True)
class CellTask:
    key: str
    check: str
    method: str
    method_params: dict[str, Any]
    model_group: str
    world: dict[str, Any]
    seed: int
    params: dict[str, Any]
    models: tuple[tuple[str, int, str], ...]    # (ModelRef.alias, seed, model key)
    resolved: dict[str, ResolvedModel]          # model key -> model
    label: str = ""
    world_label: str = ""
    method_kind: str = "attribution"

    kind = "cell"

    @property
    def primary(self) -> str | None:
        return self.models[0][2] if self.models else None


@dataclass
class ModelResult:
    key: str
    status: str                        # ok | failed
    card: dict[str, Any] | None = None
    seconds: float = 0.0
    error: str | None = None
    traceback: str | None = None
    held: tuple[str, ...] = ()         # the models the worker holds after this task


@dataclass
class CellResult:
    key: str
    status: str                        # done | failed | not_applicable
    rows: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    model_seconds: float | None = None
    error: str | None = None
    traceback: str | None = None
    artifacts: dict[str, bytes] = field(default_factory=dict)   # relative path -> bytes
    held: tuple[str, ...] = ()         # the models the worker holds after this cell


def resolve_device(device: str) -> str:
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def set_threads(n: int) -> None:
    import torch

    n = max(1, int(n))
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


class PassTimer:
    """Accumulates wall time spent in a model's forward passes and in backward passes from its
    output to its input (when the input requires grad), via hooks on the root module. The hooks are
    closures, so deep copies of the model (randomized copies) keep reporting to the same timer."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def attach(self, model) -> None:
        import torch

        state = {"depth": 0, "t0": 0.0, "bw": None}
        timer = self

        def pre(module, args):
            if state["depth"] == 0:
                state["t0"] = time.perf_counter()
            state["depth"] += 1

        def post(module, args, out):
            state["depth"] -= 1
            if state["depth"] != 0:
                return
            now = time.perf_counter()
            timer.seconds += now - state["t0"]
            x = args[0] if args else None
            if (torch.is_grad_enabled() and isinstance(out, torch.Tensor) and out.requires_grad
                    and isinstance(x, torch.Tensor) and x.requires_grad):
                def bw_start(grad):
                    state["bw"] = time.perf_counter()

                def bw_end(grad):
                    if state["bw"] is not None:
                        timer.seconds += time.perf_counter() - state["bw"]
                        state["bw"] = None
                try:
                    out.register_hook(bw_start)
                    x.register_hook(bw_end)
                except RuntimeError:   # e.g. inside a functorch transform
                    pass

        model.register_forward_pre_hook(pre)
        model.register_forward_hook(post)


def _fingerprint(model) -> str:
    from xaudit.core.model import fingerprint

    return fingerprint(model)


class WorkerState:
    """Per-process state: the model source, the loaded models, the check instances."""

    def __init__(self, config: WorkerConfig):
        from xaudit.run.plan import import_plugins

        import_plugins(config.plugins)
        self.config = config
        self.device = resolve_device(config.device)
        self.source = load_source(config.source)
        self.loaded: OrderedDict[str, tuple[Any, dict, str]] = OrderedDict()
        self.timer = PassTimer() if config.profile else None
        self._checks: dict[str, Any] = {}

    # -- models
    def _load(self, m: ResolvedModel) -> tuple[Any, dict]:
        if m.key in self.loaded:
            self.loaded.move_to_end(m.key)
            model, card, _ = self.loaded[m.key]
            return model, card
        model, card = self.source.load(m, self.config.cache_dir)
        if hasattr(model, "to"):
            model = model.to(self.device)
        if hasattr(model, "eval"):
            model.eval()
        if self.timer is not None and hasattr(model, "register_forward_hook"):
            self.timer.attach(model)
        self.loaded[m.key] = (model, card, _fingerprint(model) if hasattr(model, "named_parameters") else "")
        while len(self.loaded) > max(1, self.config.max_models):
            self.loaded.popitem(last=False)
        return model, card

    def held(self) -> tuple[str, ...]:
        return tuple(self.loaded)

    def prepare_model(self, task: ModelTask) -> ModelResult:
        set_threads(task.threads)
        t0 = time.perf_counter()
        try:
            _, card = self._load(task.model)
            card = json.loads(_json(card))
            return ModelResult(task.key, "ok", card=card, seconds=time.perf_counter() - t0, held=self.held())
        except Exception as e:
            return ModelResult(task.key, "failed", seconds=time.perf_counter() - t0,
                               error=f"{type(e).__name__}: {e}", traceback=tb_mod.format_exc(), held=self.held())

    # -- cells
    def run_cell(self, task: CellTask) -> CellResult:
        from xaudit import checks as checks_mod
        from xaudit.checks.base import CheckContext, ModelRef

        set_threads(self.config.threads)
        aliases = {(a, s): k for a, s, k in task.models}
        used: dict[str, tuple[Any, str]] = {}     # model key -> (the object the cell got, its fingerprint)

        def load_model(ref: ModelRef):
            k = aliases.get((ref.alias, int(ref.seed)))
            if k is None:
                declared = ", ".join(f"{a}@{s}" for a, s, _ in task.models) or "none"
                raise RuntimeError(f"check {task.check!r} asked for model {ref.alias}@{ref.seed}, which its models() "
                                   f"did not declare (declared: {declared}); the runner prepares only declared models")
            model, card = self._load(task.resolved[k])
            if k not in used:
                used[k] = (model, self.loaded[k][2])
            return model, card

        artifacts = Path(tempfile.mkdtemp(prefix=f"xaudit-cell-{task.key[:12]}-"))   # returned with the rows
        t_model0 = self.timer.seconds if self.timer else 0.0
        t0 = time.perf_counter()
        try:
            if task.check not in self._checks:
                self._checks[task.check] = checks_mod.get(task.check)
            check = self._checks[task.check]
            ctx = CheckContext(check=task.check, method=task.method, method_params=dict(task.method_params),
                               model_group=task.model_group, world=dict(task.world), seed=task.seed,
                               params=dict(task.params), load_model=load_model, device=self.device,
                               artifacts_dir=str(artifacts), world_label=task.world_label,
                               method_kind=task.method_kind)
            rows = check.run(ctx)
            rows = _clean_rows(task, rows)
            self._verify_untouched(used)
            files = _collect(artifacts)
            status, error, trace = "done", None, None
        except NotApplicable as e:
            rows, files, status, error, trace = [], {}, "not_applicable", str(e) or type(e).__name__, None
        except Exception as e:
            rows, files, status, error, trace = [], {}, "failed", f"{type(e).__name__}: {e}", tb_mod.format_exc()
        finally:
            shutil.rmtree(artifacts, ignore_errors=True)
        seconds = time.perf_counter() - t0
        return CellResult(task.key, status, rows=rows, seconds=seconds,
                          model_seconds=(self.timer.seconds - t_model0) if self.timer else None,
                          error=error, traceback=trace, artifacts=files, held=self.held())

    def _verify_untouched(self, used: dict[str, tuple[Any, str]]) -> None:
        """Every model the cell was handed still has its weights (also one evicted from the cache
        during the cell: the check is judged on the object it got)."""
        for k, (model, fp) in used.items():
            if fp and _fingerprint(model) != fp:
                self.loaded.pop(k, None)     # reload a clean copy for the next cell
                raise RuntimeError("the check changed the weights of the shared model in place; checks must "
                                   "modify a copy (copy.deepcopy or the zoo's randomize context) so every cell "
                                   "sees the trained model")
            if getattr(model, "training", False):
                model.eval()


def _collect(root: Path) -> dict[str, bytes]:
    """The files a cell wrote under ``root``: relative POSIX path -> bytes."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _clean_rows(task: CellTask, rows: Any) -> list[dict[str, Any]]:
    """Validate the row contract and turn values into plain Python (JSON round trip); the world
    column is the cell's world label (the runner's identity of the world, not the check's)."""
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise TypeError(f"check {task.check!r} must return a list of row dicts, got {type(rows).__name__}")
    for i, r in enumerate(rows):
        missing = [c for c in ROW_COLUMNS if c not in r]
        if missing:
            raise ValueError(f"row {i} of check {task.check!r} lacks column(s) {', '.join(missing)} "
                             "(build rows with xaudit.checks.row)")
    rows = json.loads(_json(rows))
    if task.world_label:
        for r in rows:
            r["world"] = task.world_label
    return rows


def worker_main(wid: int, inbox, outbox, config: WorkerConfig, parent_pid: int) -> None:
    """Process entry point: take tasks from ``inbox`` until None, report on ``outbox``."""
    import queue
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)      # the parent handles Ctrl-C and stops us
    _die_with_parent()
    try:
        import torch

        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    try:
        state = WorkerState(config)
    except Exception as e:
        outbox.put(("init_failed", wid, f"{type(e).__name__}: {e}", tb_mod.format_exc()))
        return
    outbox.put(("ready", wid, os.getpid()))
    while True:
        try:
            task = inbox.get(timeout=1.0)
        except queue.Empty:
            if os.getppid() != parent_pid:
                return
            continue
        if task is None:
            return
        outbox.put(("start", wid, task.kind, task.key, time.time()))
        result = state.prepare_model(task) if task.kind == "model" else state.run_cell(task)
        outbox.put(("result", wid, task.kind, task.key, result))


def _die_with_parent() -> None:
    """Linux: SIGKILL this worker when its parent dies, so a killed run leaves no orphans behind."""
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG
    except Exception:
        pass
