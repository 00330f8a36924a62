"""The results store: one SQLite file per run directory (``runs/<name>/results.sqlite``, WAL mode).

Tables (query them with any SQLite client; the ``results`` view has the tidy row contract)::

    run     one row per invocation: preset, versions, check/method descriptions, start/finish, status
    models  every model a run prepared: spec, seed, card, seconds, status, error
    cells   one row per cell key: config, status (pending | running | done | failed | not_applicable),
            attempts (times a worker started it), timings, error and traceback, active
    rows    the tidy result rows of done cells; check-specific columns as JSON in ``extra``
    results VIEW: the rows of active cells, columns run, check, method, model, world, seed, metric,
            value, ci_low, ci_high, n, verdict, cell, extra

Only the parent process writes. A cell's rows and its ``done`` status are committed in one
transaction, so a kill at any moment leaves each cell either done with all its rows or unfinished.
``active`` marks the cells of the latest plan: when a preset changes a cell's configuration, the old
cell (same check, method, model group, world and seed) stays in the file but leaves the results.
"""
from __future__ import annotations

import json
import math
import sqlite3
import time
from pathlib import Path
from typing import Any, Iterable

from xaudit.core.canon import canonical_json   # compact and sorted, as SQLite's json() compares

# the row contract of xaudit.checks.base.ROW_COLUMNS, repeated here so reading a store needs no torch
# (a test asserts they are equal)
ROW_COLUMNS = ("check", "method", "model", "world", "seed", "metric", "value",
               "ci_low", "ci_high", "n", "verdict")

SCHEMA_VERSION = 1
DB_NAME = "results.sqlite"
FINAL = ("done", "not_applicable")          # a cell in these states is never computed again

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS run (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL, preset TEXT, plan_cells INTEGER, workers INTEGER,
    started_at REAL, finished_at REAL, status TEXT,
    versions TEXT, checks TEXT, methods TEXT, argv TEXT
);
CREATE TABLE IF NOT EXISTS models (
    key TEXT PRIMARY KEY, label TEXT, spec TEXT, seed INTEGER,
    status TEXT, card TEXT, seconds REAL, attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT, traceback TEXT, prepared_at REAL, run_id INTEGER
);
CREATE TABLE IF NOT EXISTS cells (
    key TEXT PRIMARY KEY, ordinal INTEGER, active INTEGER NOT NULL DEFAULT 1,
    check_name TEXT, check_version TEXT, method TEXT, model_group TEXT, world TEXT, seed INTEGER,
    config TEXT, status TEXT NOT NULL DEFAULT 'pending', attempts INTEGER NOT NULL DEFAULT 0,
    run_id INTEGER, worker TEXT, started_at REAL, finished_at REAL, seconds REAL, model_seconds REAL,
    error TEXT, traceback TEXT
);
CREATE INDEX IF NOT EXISTS cells_identity ON cells (check_name, method, model_group, world, seed);
CREATE TABLE IF NOT EXISTS rows (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    cell TEXT NOT NULL REFERENCES cells (key), row_index INTEGER NOT NULL,
    run TEXT, check_name TEXT, method TEXT, model TEXT, world TEXT, seed INTEGER,
    metric TEXT, value REAL, ci_low REAL, ci_high REAL, n INTEGER, verdict TEXT, extra TEXT
);
CREATE INDEX IF NOT EXISTS rows_cell ON rows (cell);
CREATE VIEW IF NOT EXISTS results AS
    SELECT r.run, r.check_name AS "check", r.method, r.model, r.world, r.seed, r.metric, r.value,
           r.ci_low, r.ci_high, r.n, r.verdict, r.cell, r.extra
    FROM rows r JOIN cells c ON c.key = r.cell
    WHERE c.active = 1 AND c.status = 'done'
    ORDER BY c.ordinal, r.row_index;
"""


def _json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=_default, allow_nan=True)


def _default(o: Any) -> Any:
    if hasattr(o, "item") and callable(o.item) and getattr(o, "ndim", 0) == 0:
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    return str(o)


def _num(v: Any) -> float | None:
    """A float for the store; None for missing or non-finite values (SQLite has no NaN)."""
    if v is None:
        return None
    if hasattr(v, "item"):
        v = v.item()
    v = float(v)
    return v if math.isfinite(v) else None


def _int_or_none(v: Any) -> int | None:
    if v is None:
        return None
    if hasattr(v, "item"):
        v = v.item()
    return int(v)


def find_db(run_dir: str | Path) -> Path:
    """``run_dir``'s results.sqlite; ``run_dir`` may be a directory, the file, or a run name under runs/."""
    from xaudit.core.errors import ConfigError

    p = Path(run_dir)
    for cand in (p if p.suffix == ".sqlite" else p / DB_NAME, Path("runs") / p / DB_NAME):
        if cand.is_file():
            return cand
    raise ConfigError("run_dir", f"no results store at {p / DB_NAME}; give a run directory written by "
                                 "`xaudit run` (e.g. runs/smoke)")


class Store:
    """The results store of one run directory."""

    def __init__(self, path: str | Path, *, readonly: bool = False):
        from xaudit.core.errors import StoreError

        self.path = Path(path)
        if self.path.exists() and not self.path.is_file():
            raise StoreError(self.path, "it is a directory or other non-file")
        if not readonly:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        uri = f"file:{self.path}?mode=ro" if readonly else f"file:{self.path}"
        try:
            self.con = sqlite3.connect(uri, uri=True, timeout=30.0, isolation_level=None)
        except sqlite3.DatabaseError as e:
            raise StoreError(self.path, str(e)) from None
        self.con.row_factory = sqlite3.Row
        try:
            self._probe(readonly)
        except BaseException:
            self.con.close()
            raise
        if not readonly:
            self.con.execute("PRAGMA journal_mode=WAL")
            self.con.execute("PRAGMA synchronous=NORMAL")   # durable across process kills in WAL mode
            self.con.executescript(_SCHEMA)
            self.con.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))

    def _probe(self, readonly: bool) -> None:
        """Read the file before anything writes to it (PRAGMA journal_mode, the schema): a truncated or
        corrupt file, or an SQLite file of another program, raises StoreError and stays byte for byte
        as it was. A new (empty) file passes unless ``readonly``."""
        from xaudit.core.errors import StoreError

        try:
            self.con.execute("PRAGMA schema_version").fetchone()
            tables = {r[0] for r in self.con.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")}
            version = None
            if "meta" in tables:
                version = self.con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        except sqlite3.DatabaseError as e:
            if isinstance(e, sqlite3.OperationalError) and ("locked" in str(e) or "busy" in str(e)):
                raise                                   # a live writer, not a broken file
            raise StoreError(self.path, str(e)) from None
        if not tables and not readonly:
            return                                      # a new store
        missing = [t for t in ("meta", "run", "models", "cells", "rows", "results") if t not in tables]
        if "meta" not in tables or (readonly and missing):
            raise StoreError(self.path, "an SQLite file without the xaudit tables " + ", ".join(missing)
                             if tables else "an empty file, without the xaudit tables")
        if version is not None:
            try:
                newer = int(version[0]) > SCHEMA_VERSION
            except (TypeError, ValueError):
                raise StoreError(self.path, f"unknown schema_version {version[0]!r}") from None
            if newer:
                raise StoreError(self.path, f"schema version {version[0]}, written by a newer xaudit; this one "
                                            f"reads up to {SCHEMA_VERSION}")

    @classmethod
    def open(cls, run_dir: str | Path, *, readonly: bool = False) -> "Store":
        return cls(find_db(run_dir) if readonly else Path(run_dir) / DB_NAME, readonly=readonly)

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- writes (parent process only) --------------------------------------------------------
    def _tx(self):
        return _Tx(self.con)

    def begin_run(self, name: str, preset: dict, plan_cells: int, workers: int, versions: dict,
                  checks: list[dict], methods: list[dict], argv: list[str] | None = None) -> int:
        with self._tx():
            cur = self.con.execute(
                "INSERT INTO run (name, preset, plan_cells, workers, started_at, status, versions, checks, methods, argv)"
                " VALUES (?, ?, ?, ?, ?, 'running', ?, ?, ?, ?)",
                (name, _json(preset), plan_cells, workers, time.time(), _json(versions), _json(checks),
                 _json(methods), _json(argv or [])))
            return int(cur.lastrowid)

    def end_run(self, run_id: int, status: str) -> None:
        with self._tx():
            self.con.execute("UPDATE run SET finished_at = ?, status = ? WHERE id = ?", (time.time(), status, run_id))

    def sync_plan(self, cells: Iterable[Any]) -> None:
        """Insert the plan's cells (keeping the state of known keys) and make them the active ones.

        A plan cell replaces (deactivates) the stored cells of the same check, method, model group,
        seed and world *config* (not name: shapes at 32 and at 64 px are two worlds); the label column
        is refreshed, so a store written before world labels existed is relabelled."""
        with self._tx():
            for c in cells:
                self.con.execute(
                    "UPDATE cells SET active = 0 WHERE check_name = ? AND method = ? AND model_group = ? "
                    "AND seed = ? AND key != ? AND json_extract(config, '$.world') = json(?)",
                    (c.check, c.method, c.model_group, c.seed, c.key, canonical_json(c.world)))
                self.con.execute(
                    "INSERT INTO cells (key, ordinal, active, check_name, check_version, method, model_group, "
                    "world, seed, config) VALUES (?, ?, 1, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (key) DO UPDATE SET active = 1, ordinal = excluded.ordinal, world = excluded.world",
                    (c.key, c.ordinal, c.check, c.check_version, c.method, c.model_group, c.world_name, c.seed,
                     _json(c.config)))

    def cell_started(self, key: str, run_id: int, worker: str, t: float | None = None) -> None:
        with self._tx():
            self.con.execute("UPDATE cells SET status = 'running', attempts = attempts + 1, run_id = ?, "
                             "worker = ?, started_at = ?, error = NULL, traceback = NULL WHERE key = ?",
                             (run_id, worker, t or time.time(), key))

    def cell_finished(self, key: str, run_name: str, status: str, rows: list[dict] | None = None,
                      seconds: float | None = None, model_seconds: float | None = None,
                      error: str | None = None, traceback: str | None = None) -> None:
        """Record a cell's outcome and (when done) its rows, atomically."""
        with self._tx():
            self.con.execute("DELETE FROM rows WHERE cell = ?", (key,))
            for i, r in enumerate(rows or []):
                extra = {k: v for k, v in r.items() if k not in ROW_COLUMNS and k not in ("run", "cell")}
                self.con.execute(
                    "INSERT INTO rows (cell, row_index, run, check_name, method, model, world, seed, metric, value,"
                    " ci_low, ci_high, n, verdict, extra) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (key, i, run_name, r["check"], r["method"], r["model"], r["world"], _int_or_none(r["seed"]),
                     r["metric"], _num(r["value"]), _num(r["ci_low"]), _num(r["ci_high"]), _int_or_none(r["n"]),
                     r["verdict"], _json(extra) if extra else None))
            self.con.execute("UPDATE cells SET status = ?, finished_at = ?, seconds = ?, model_seconds = ?, "
                             "error = ?, traceback = ? WHERE key = ?",
                             (status, time.time(), seconds, model_seconds, error, traceback, key))

    def model_prepared(self, key: str, label: str, spec: Any, seed: int, run_id: int, status: str,
                       card: dict | None = None, seconds: float | None = None, error: str | None = None,
                       traceback: str | None = None) -> None:
        with self._tx():
            self.con.execute(
                "INSERT INTO models (key, label, spec, seed, status, card, seconds, attempts, error, traceback, "
                "prepared_at, run_id) VALUES (?, ?, ?, ?, ?, ?, ?, 1, ?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET "
                "label = excluded.label, status = excluded.status, card = excluded.card, seconds = excluded.seconds,"
                " attempts = attempts + 1, error = excluded.error, traceback = excluded.traceback, "
                "prepared_at = excluded.prepared_at, run_id = excluded.run_id",
                (key, label, _json(spec), seed, status, _json(card) if card is not None else None, seconds, error,
                 traceback, time.time(), run_id))

    # -- reads ---------------------------------------------------------------------------------
    def statuses(self, keys: Iterable[str] | None = None) -> dict[str, str]:
        if keys is None:
            return {r["key"]: r["status"] for r in self.con.execute("SELECT key, status FROM cells")}
        keys = list(keys)
        out: dict[str, str] = {}
        for i in range(0, len(keys), 500):
            chunk = keys[i:i + 500]
            q = f"SELECT key, status FROM cells WHERE key IN ({','.join('?' * len(chunk))})"
            out.update({r["key"]: r["status"] for r in self.con.execute(q, chunk)})
        return out

    def cell(self, key: str) -> dict[str, Any] | None:
        """One cell's record (status, error, config, ...), or None for an unknown key."""
        r = self.con.execute("SELECT * FROM cells WHERE key = ?", (key,)).fetchone()
        if r is None:
            return None
        d = dict(r)
        d["config"] = json.loads(d["config"]) if d["config"] else {}
        return d

    def cell_rows(self, key: str) -> list[dict[str, Any]]:
        """The rows one cell stored, in its order, check-specific columns flattened (whether or not the
        cell is active)."""
        out = []
        for r in self.con.execute("SELECT * FROM rows WHERE cell = ? ORDER BY row_index", (key,)):
            d = {"run": r["run"], "check": r["check_name"], "method": r["method"], "model": r["model"],
                 "world": r["world"], "seed": r["seed"], "metric": r["metric"], "value": r["value"],
                 "ci_low": r["ci_low"], "ci_high": r["ci_high"], "n": r["n"], "verdict": r["verdict"]}
            d.update(json.loads(r["extra"]) if r["extra"] else {})
            out.append(d)
        return out

    def cells(self, *, active_only: bool = True) -> list[dict[str, Any]]:
        q = "SELECT * FROM cells" + (" WHERE active = 1" if active_only else "") + " ORDER BY ordinal, key"
        out = []
        for r in self.con.execute(q):
            d = dict(r)
            d["config"] = json.loads(d["config"]) if d["config"] else {}
            out.append(d)
        return out

    def rows(self, *, flatten: bool = True) -> list[dict[str, Any]]:
        """The tidy rows of the active, done cells in plan order. ``flatten``: check-specific columns
        become columns of every row (None where a row lacks them); else they stay in ``extra``."""
        out = []
        for r in self.con.execute("SELECT * FROM results"):
            d = {k: r[k] for k in ("run", *ROW_COLUMNS)}
            d["cell"] = r["cell"]
            extra = json.loads(r["extra"]) if r["extra"] else {}
            if flatten:
                for k, v in extra.items():
                    d.setdefault(k, v)
            else:
                d["extra"] = extra
            out.append(d)
        if flatten:
            cols = list(dict.fromkeys(k for d in out for k in d))
            out = [{k: d.get(k) for k in cols} for d in out]
        return out

    def runs(self) -> list[dict[str, Any]]:
        out = []
        for r in self.con.execute("SELECT * FROM run ORDER BY id"):
            d = dict(r)
            for k in ("preset", "versions", "checks", "methods", "argv"):
                d[k] = json.loads(d[k]) if d[k] else None
            out.append(d)
        return out

    def models(self) -> list[dict[str, Any]]:
        out = []
        for r in self.con.execute("SELECT * FROM models ORDER BY prepared_at"):
            d = dict(r)
            for k in ("spec", "card"):
                d[k] = json.loads(d[k]) if d[k] else None
            out.append(d)
        return out


class _Tx:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error) on an autocommit connection."""

    def __init__(self, con: sqlite3.Connection):
        self.con = con

    def __enter__(self):
        self.con.execute("BEGIN IMMEDIATE")
        return self.con

    def __exit__(self, exc_type, exc, tb):
        self.con.execute("ROLLBACK" if exc_type else "COMMIT")
        return False
