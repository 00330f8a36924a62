"""Run a plan against a store with an executor; export a store's rows."""
from __future__ import annotations

import csv
import io
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xaudit.core.errors import ConfigError, NotApplicable, XauditError
from xaudit.run.executor import Executor
from xaudit.run.plan import Cell, Plan
from xaudit.run.progress import Progress
from xaudit.run.store import FINAL, ROW_COLUMNS, Store, find_db
from xaudit.run.worker import MAX_LOADED_MODELS, CellResult, CellTask, ModelResult, ModelTask, WorkerConfig


@dataclass
class Summary:
    """What one execution did (counts over the plan's cells after it)."""
    cells: int = 0                 # cells in the plan
    skipped: int = 0               # already finished before this execution
    ran: int = 0                   # cells this execution ran (or failed without running)
    done: int = 0                  # done cells of the plan, after
    failed: int = 0
    not_applicable: int = 0
    models_prepared: int = 0
    models_failed: int = 0
    seconds: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)   # (cell label, error)


class _StoreSink:
    """Records every result in the store (the parent process alone writes it). A cell's artifacts
    are written under ``<run dir>/artifacts/<key[:16]>/`` before its rows and status are committed,
    so a kill in between leaves the cell unfinished (and rerun), never done without its artifacts."""

    def __init__(self, store: Store, plan: Plan, run_id: int, progress: Progress, artifacts_root: Path):
        self.store, self.plan, self.run_id, self.progress = store, plan, run_id, progress
        self.artifacts_root = artifacts_root
        self.by_key = {c.key: c for c in plan.cells}
        self.summary = Summary()

    def model_started(self, key: str, worker: str) -> None:
        pass

    def model_finished(self, res: ModelResult) -> None:
        m = self.plan.models[res.key]
        self.store.model_prepared(res.key, m.label, m.spec, m.seed, self.run_id,
                                  "ready" if res.status == "ok" else "failed", card=res.card, seconds=res.seconds,
                                  error=res.error, traceback=res.traceback)
        self.summary.models_prepared += res.status == "ok"
        self.summary.models_failed += res.status != "ok"
        self.progress.model_finished(m.label, res.status == "ok")

    def cell_started(self, key: str, worker: str) -> None:
        self.store.cell_started(key, self.run_id, worker)

    def cell_finished(self, res: CellResult) -> None:
        write_artifacts(self.artifacts_root, res.key, res.artifacts)
        self.store.cell_finished(res.key, self.plan.preset.name, res.status, res.rows, seconds=res.seconds,
                                 model_seconds=res.model_seconds, error=res.error, traceback=res.traceback)
        self.summary.ran += 1
        if res.status == "failed":
            self.summary.failures.append((self.by_key[res.key].label, res.error or ""))
        self.progress.cell_finished(res.status)


def artifact_dir(artifacts_root: str | Path, key: str) -> Path:
    """Where the parent keeps a cell's artifacts."""
    return Path(artifacts_root) / key[:16]


def write_artifacts(artifacts_root: str | Path, key: str, files: dict[str, bytes]) -> None:
    """Replace the cell's artifact folder by ``files`` (relative path -> bytes); none: no folder."""
    import shutil

    d = artifact_dir(artifacts_root, key)
    shutil.rmtree(d, ignore_errors=True)
    for rel, data in files.items():
        p = (d / rel).resolve()
        if d.resolve() not in p.parents:
            raise ValueError(f"artifact path {rel!r} of cell {key[:16]} leaves its folder")
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(p.name + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(p)


def pending_cells(plan: Plan, store: Store, retry_failed: bool = True) -> list[Cell]:
    """The plan's cells that are not finished (failed ones too, unless retry_failed=False)."""
    final = FINAL + (() if retry_failed else ("failed",))
    st = store.statuses(c.key for c in plan.cells)
    return [c for c in plan.cells if st.get(c.key) not in final]


def cell_task(plan: Plan, c: Cell) -> CellTask:
    return CellTask(key=c.key, check=c.check, method=c.method, method_params=c.method_params,
                    model_group=c.model_group, world=c.world, seed=c.seed, params=c.params, models=c.models,
                    resolved={k: plan.models[k] for _, _, k in c.models}, label=c.label, world_label=c.world_label,
                    method_kind=plan.method_kinds.get(c.method, "attribution"))


def run_derived(plan: Plan, store: Store, cells: list[Cell], sink: _StoreSink) -> None:
    """Run derived checks' cells (``Check.derives_from``) in this process from their upstream cells'
    stored rows. An upstream cell that is not applicable or failed makes its derived cell so, with the
    reason; one left unfinished (a stopped run) leaves it pending."""
    import traceback as tb_mod

    from xaudit import checks as checks_mod
    from xaudit.checks.base import CheckContext, ModelRef
    from xaudit.run.worker import _clean_rows

    if not cells:
        return
    upstream = {c.upstream: store.cell(c.upstream) for c in cells}

    def no_model(ref: ModelRef):
        raise RuntimeError(f"a derived check reads stored rows and loads no model (asked for {ref.alias}@{ref.seed})")

    for c in cells:
        up = upstream.get(c.upstream) or {}
        status = up.get("status")
        if status not in FINAL + ("failed",):
            continue
        sink.cell_started(c.key, "driver")
        t0 = time.perf_counter()
        check = checks_mod.get(c.check)
        task = cell_task(plan, c)
        what = f"the {check.derives_from} cell it reads ({up.get('check_name')} / {c.method} / {c.model_group}@" \
               f"{c.world_name} / seed {c.seed})"
        rows, error, trace = [], None, None
        if status == "not_applicable":
            out = "not_applicable"
            error = f"{what} is not applicable: {up.get('error')}"
        elif status == "failed":
            out = "failed"
            error = f"{what} failed: {up.get('error')}"
        else:
            ctx = CheckContext(check=c.check, method=c.method, method_params=dict(c.method_params),
                               model_group=c.model_group, world=dict(c.world), seed=c.seed, params=dict(c.params),
                               load_model=no_model, world_label=c.world_label,
                               method_kind=plan.method_kinds.get(c.method, "attribution"),
                               upstream_rows=store.cell_rows(c.upstream), upstream_key=c.upstream)
            try:
                rows = _clean_rows(task, check.run(ctx))
                out = "done"
            except NotApplicable as e:
                out, error = "not_applicable", str(e) or type(e).__name__
            except Exception as e:
                out, error, trace = "failed", f"{type(e).__name__}: {e}", tb_mod.format_exc()
        sink.cell_finished(CellResult(c.key, out, rows=rows, seconds=time.perf_counter() - t0, error=error,
                                      traceback=trace))


def execute(plan: Plan, store: Store, executor: Executor, *, run_id: int, run_dir: str | Path,
            cache_dir: str | Path | None = None, progress: Progress | None = None,
            retry_failed: bool = True) -> Summary:
    """Run the unfinished cells of ``plan`` (their models first) and record everything in ``store``."""
    t0 = time.perf_counter()
    progress = progress or Progress(enabled=False)
    todo = pending_cells(plan, store, retry_failed)
    derived = [c for c in todo if c.upstream is not None]    # run here, after the cells they read
    models = plan.models_for(todo)
    # a worker keeps loaded at least the largest set of models one cell uses (a population check)
    max_models = max([MAX_LOADED_MODELS, *(len(c.models) for c in todo)])
    config = WorkerConfig(source=plan.source, cache_dir=None if cache_dir is None else str(cache_dir),
                          device=plan.preset.device, plugins=tuple(plan.preset.plugins), profile=plan.preset.profile,
                          max_models=max_models)
    art = Path(run_dir).resolve() / "artifacts"
    sink = _StoreSink(store, plan, run_id, progress, art)
    progress.start(len(models), len(todo), len(plan.cells) - len(todo), getattr(executor, "workers", 1))
    try:
        executor.run([ModelTask(m.key, m) for m in models],
                     [cell_task(plan, c) for c in todo if c.upstream is None], config, sink)
        run_derived(plan, store, derived, sink)
    finally:
        progress.stop()
        # cells a stopped run left 'running' are unfinished: show them as pending
        with store._tx() as con:
            con.execute("UPDATE cells SET status = 'pending' WHERE status = 'running' AND run_id = ?", (run_id,))
        if art.is_dir() and not any(art.iterdir()):
            art.rmdir()
    s = sink.summary
    st = store.statuses(c.key for c in plan.cells)
    s.cells, s.skipped = len(plan.cells), len(plan.cells) - len(todo)
    s.done = sum(v == "done" for v in st.values())
    s.failed = sum(v == "failed" for v in st.values())
    s.not_applicable = sum(v == "not_applicable" for v in st.values())
    s.seconds = time.perf_counter() - t0
    return s


# ---------------------------------------------------------------------------------------- versions
def versions() -> dict[str, Any]:
    """Python and library versions and the git commit of the xaudit source, for the run record."""
    from importlib import metadata

    out: dict[str, Any] = {"python": sys.version.split()[0], "platform": platform.platform(),
                           "cores": os.cpu_count()}
    for dist in ("xaudit", "torch", "captum", "numpy", "scipy", "scikit-image", "scikit-learn"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    try:
        src = Path(__file__).resolve().parents[2]
        commit = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=5)
        out["git_commit"] = commit.stdout.strip() or None
        if out["git_commit"]:
            dirty = subprocess.run(["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=5)
            out["git_dirty"] = bool(dirty.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        out["git_commit"] = None
    return out


# ---------------------------------------------------------------------------------------- export
EXPORT_FORMATS = ("json", "csv", "parquet")


def export_results(run_dir: str | Path, fmt: str = "json", out: str | Path | None = None) -> Path | None:
    """Write the run's tidy rows as JSON (a list of row objects), CSV or Parquet.

    Check-specific columns are flattened into the rows (absent values are empty / null). ``out=None``
    writes JSON and CSV to stdout and Parquet to ``<run_dir>/results.parquet``. Returns the path written.
    """
    if fmt not in EXPORT_FORMATS:
        raise ConfigError("--format", f"must be one of {', '.join(EXPORT_FORMATS)}; got {fmt!r}")
    db = find_db(run_dir)
    with Store(db, readonly=True) as store:
        rows = store.rows(flatten=True)
    columns = ["run", *ROW_COLUMNS, "cell"]
    extra = sorted({k for r in rows for k in r} - set(columns))
    columns += extra
    if fmt == "json":
        text = json.dumps([{c: r.get(c) for c in columns} for r in rows], indent=1, default=str)
        return _emit(text, out)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({c: _cell(r.get(c)) for c in columns})
        return _emit(buf.getvalue(), out)
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise XauditError("parquet export needs pyarrow, which is not installed: pip install 'xaudit[parquet]' "
                          "(or use --format json / csv)") from None
    table = pa.Table.from_pylist([{c: _parquet_value(r.get(c)) for c in columns} for r in rows])
    path = Path(out) if out is not None else db.parent / "results.parquet"
    pq.write_table(table, path)
    return path


def _cell(v: Any) -> Any:
    if isinstance(v, (dict, list)):
        return json.dumps(v, sort_keys=True)
    return "" if v is None else v


def _parquet_value(v: Any) -> Any:
    return json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v


def _emit(text: str, out: str | Path | None) -> Path | None:
    if out is None:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        return None
    p = Path(out)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p
