"""Compare two runs: ``compare.html`` (self-contained, inline CSS) and a short terminal summary.

    >>> from xaudit.report.compare import compare, comparison
    >>> compare("runs/base", "runs/tweak")         # runs/tweak/compare-base/compare.html
    >>> c = comparison("runs/base", "runs/tweak")  # the data only (a Comparison), no HTML

Matching. Verdict rows (rows whose ``verdict`` is set) are matched between run A and run B by
(check, method, world, model, seed, verdict key), the verdict key being the columns that identify
one verdict of the check (:func:`xaudit.report.scorecard.verdict_key_of`, e.g. ``("metric",
"trojan")``). Cell keys are not used: they hash the whole configuration, so they differ between
runs as soon as one parameter changed. Should one run hold several verdict rows with the same
identity, the k-th of A is matched with the k-th of B. A check's verdict key is taken from run B's
record (from A's where B lacks the check); a note says when the two runs recorded different keys.

The difference is B − A of the two rows' ``value``.

CI of the difference (the rule). The store keeps each row's estimate and its CI, not the samples,
so the CI of B − A is built from the two CIs alone, treating the two estimates as independent, with
the same confidence level, and each CI as a normal-approximation interval: the half-widths add in
quadrature, ``h = sqrt(h_A² + h_B²)`` with ``h = (ci_high − ci_low) / 2`` of each run. Each side is
combined separately (the MOVER rule of Zou & Donner 2008, which is exactly the quadrature rule for
symmetric CIs and keeps the asymmetry of a skewed CI, e.g. a bounded metric near 1)::

    low  = d − sqrt((v_B − low_B)² + (high_A − v_A)²)
    high = d + sqrt((high_B − v_B)² + (v_A − low_A)²)          with d = v_B − v_A

A row without a CI in either run gives a difference without a CI (never "significant"). A difference
whose CI excludes 0 is marked. When both runs evaluated the same models, data and seeds the two
estimates are positively correlated and the rule is conservative (the true CI is narrower).

Also reported: the verdicts that changed (first, grouped by check), the methods / checks / worlds /
models / seeds present in one run only, the verdict rows without a partner, both runs' names and
presets, and what differs between their configurations: check versions and parameters (as the cells
ran them, defaults included), method parameters, world configurations, other preset fields, and
the software versions.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from xaudit.checks.base import verdict_id, verdict_label
from xaudit.core.errors import ConfigError
from xaudit.report import answer
from xaudit.report.html import CSS as REPORT_CSS
from xaudit.report.html import STATE_OF, _e, _when
from xaudit.report.scorecard import Entry, check_meta, verdict_key_of
from xaudit.run.store import DB_NAME, Store, find_db

COMPARE_NAME = "compare.html"
IDENTITY = ("check", "method", "world", "model", "seed")
CI_RULE = ("CI of B − A: the two runs' estimates are treated as independent and their CIs as normal "
           "approximations at the same level; the half-widths add in quadrature, h = √(h_A² + h_B²) "
           "with h = (ci_high − ci_low)/2, each side of the interval separately (MOVER: the same for "
           "symmetric CIs, and a skewed CI keeps its skew). A row without a CI gives a difference without "
           "a CI. When both runs used the same models and seeds the estimates are positively correlated "
           "and this CI is conservative (too wide).")
# preset fields reported elsewhere (names in the header; check / method parameters as the cells ran them)
_PRESET_SKIP = ("name", "description", "checks", "methods", "check_defaults", "_source", "_resolved")


# ------------------------------------------------------------------------------------------- data
@dataclass
class RunData:
    """What a comparison reads from one run's store: its folder, active cells, tidy rows (flattened)
    and run records (:meth:`Store.runs`)."""
    path: Path
    cells: list[dict[str, Any]]
    rows: list[dict[str, Any]]
    runs: list[dict[str, Any]]

    @property
    def record(self) -> dict[str, Any]:
        """The latest invocation's record (its plan is the one the active cells belong to)."""
        return self.runs[-1] if self.runs else {}

    @property
    def name(self) -> str:
        return str(self.record.get("name") or self.path.name)

    @property
    def preset(self) -> dict[str, Any]:
        return self.record.get("preset") or {}


@dataclass
class RowDiff:
    """One verdict row matched between the runs; ``a`` and ``b`` hold value, ci_low, ci_high, n, verdict."""
    check: str
    method: str
    world: str
    model: str
    seed: int | None
    key: tuple                      # the verdict key's values, e.g. ("score",) or ("l1", "patch_a")
    label: str                      # the same for people: "score", "l1 / patch_a"
    a: dict[str, Any]
    b: dict[str, Any]
    diff: float | None = None
    diff_low: float | None = None
    diff_high: float | None = None

    @property
    def verdict_changed(self) -> bool:
        return _vword(self.a.get("verdict")) != _vword(self.b.get("verdict"))

    @property
    def excludes_zero(self) -> bool:
        """Whether the CI of B − A excludes 0 (False without a CI)."""
        if self.diff_low is None or self.diff_high is None:
            return False
        return self.diff_low > 0 or self.diff_high < 0

    def where(self) -> str:
        return f"{self.method} · {self.world} · {self.model} · seed {self.seed}"


@dataclass
class Unmatched:
    """A verdict row of one run without a partner in the other; ``other_status`` is the other run's
    cell status for the same (check, method, model, world, seed), or None where it has no such cell."""
    row: dict[str, Any]
    label: str
    other_status: str | None


@dataclass
class Change:
    """One difference between the runs' configurations: ``kind`` is one of check version, check
    parameter, method parameter, world, preset, verdict key, software; ``a`` / ``b`` are display
    strings (None: absent in that run)."""
    kind: str
    name: str
    a: str | None
    b: str | None

    @property
    def is_parameter(self) -> bool:
        """A change of what was computed (everything except software versions)."""
        return self.kind != "software"

    def text(self) -> str:
        return f"{self.kind} {self.name}: {_absent(self.a)} → {_absent(self.b)}"


@dataclass
class Comparison:
    a: RunData
    b: RunData
    rows: list[RowDiff] = field(default_factory=list)           # matched verdict rows, B's order
    only_a_rows: list[Unmatched] = field(default_factory=list)
    only_b_rows: list[Unmatched] = field(default_factory=list)
    only: dict[str, tuple[list, list]] = field(default_factory=dict)   # "method" -> (only in A, only in B)
    changes: list[Change] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)              # checks with matched rows, in order

    def changed_verdicts(self) -> dict[str, list[RowDiff]]:
        """check -> its matched rows whose verdict changed (checks in order)."""
        out: dict[str, list[RowDiff]] = {}
        for r in self.rows:
            if r.verdict_changed:
                out.setdefault(r.check, []).append(r)
        return out

    def significant(self) -> list[RowDiff]:
        return [r for r in self.rows if r.excludes_zero]

    def parameter_changes(self) -> list[Change]:
        return [c for c in self.changes if c.is_parameter]

    def config_note(self) -> str:
        """One sentence on how the two configurations differ ("one changed parameter: ...")."""
        ch = self.parameter_changes()
        if not ch:
            return "Same check versions and parameters in both runs."
        if len(ch) == 1:
            return f"One changed parameter: {ch[0].text()}."
        return f"{len(ch)} changed parameters or versions (listed below)."


def diff_ci(a: dict[str, Any], b: dict[str, Any]) -> tuple[float | None, float | None, float | None]:
    """(B − A, its CI low, its CI high) of two rows with value, ci_low, ci_high, by the module's rule
    (independent estimates, half-widths in quadrature per side); the CI is (None, None) unless both
    rows have a finite CI around a finite value."""
    va, vb = _f(a.get("value")), _f(b.get("value"))
    if va is None or vb is None:
        return None, None, None
    d = vb - va
    la, ha, lb, hb = (_f(a.get("ci_low")), _f(a.get("ci_high")), _f(b.get("ci_low")), _f(b.get("ci_high")))
    if None in (la, ha, lb, hb):
        return d, None, None
    below = math.hypot(max(vb - lb, 0.0), max(ha - va, 0.0))
    above = math.hypot(max(hb - vb, 0.0), max(va - la, 0.0))
    return d, d - below, d + above


def read_run(run_dir: str | Path, *, arg: str = "run_dir") -> RunData:
    """Read one run's store (``run_dir``: a run folder, its results.sqlite, or a name under runs/).
    ``arg`` names the argument in the error raised when it is not a run folder."""
    db = _db(run_dir, arg)
    with Store(db, readonly=True) as store:
        return RunData(path=db.parent, cells=store.cells(active_only=True), rows=store.rows(flatten=True),
                       runs=store.runs())


def build_comparison(a: RunData, b: RunData) -> Comparison:
    """The comparison of two runs' data (pure: no files are read or written)."""
    meta_a, meta_b = check_meta(None, a.runs), check_meta(None, b.runs)
    keys: dict[str, tuple[str, ...]] = {}
    changes: list[Change] = []
    for check in dict.fromkeys([*meta_a, *meta_b, *(r["check"] for r in a.rows), *(r["check"] for r in b.rows)]):
        ka, kb = verdict_key_of(meta_a, check), verdict_key_of(meta_b, check)
        keys[check] = kb if check in meta_b or check not in meta_a else ka
        if check in meta_a and check in meta_b and ka != kb:
            changes.append(Change("verdict key", check, " / ".join(ka), " / ".join(kb)))

    ia, ib = _index(a.rows, keys), _index(b.rows, keys)
    comp = Comparison(a=a, b=b)
    for ident, rb in ib.items():
        ra = ia.get(ident)
        if ra is None:
            continue
        d, lo, hi = diff_ci(ra, rb)
        check = rb["check"]
        comp.rows.append(RowDiff(check=check, method=rb["method"], world=rb["world"], model=rb["model"],
                                 seed=rb["seed"], key=ident[len(IDENTITY)], label=verdict_label(rb, keys[check]),
                                 a=_stats(ra), b=_stats(rb), diff=d, diff_low=lo, diff_high=hi))
    comp.checks = list(dict.fromkeys(r.check for r in comp.rows))
    status_a, status_b = _statuses(a.cells), _statuses(b.cells)
    comp.only_a_rows = [Unmatched(r, verdict_label(r, keys[r["check"]]), status_b.get(_cell_ident(r)))
                        for i, r in ia.items() if i not in ib]
    comp.only_b_rows = [Unmatched(r, verdict_label(r, keys[r["check"]]), status_a.get(_cell_ident(r)))
                        for i, r in ib.items() if i not in ia]
    for what, col in (("check", "check_name"), ("method", "method"), ("world", "world"), ("model", "model_group"),
                      ("seed", "seed")):
        va = list(dict.fromkeys(c[col] for c in a.cells))
        vb = list(dict.fromkeys(c[col] for c in b.cells))
        comp.only[what] = ([v for v in va if v not in vb], [v for v in vb if v not in va])
    comp.changes = _config_changes(a, b, meta_a, meta_b) + changes
    return comp


def comparison(run_a: str | Path, run_b: str | Path) -> Comparison:
    """Read two run folders and compare them (ConfigError when a path is not a run folder or both
    name the same run)."""
    da, db = _db(run_a, "RUN_A"), _db(run_b, "RUN_B")
    if da.resolve() == db.resolve():
        raise ConfigError("RUN_B", f"{run_b} is the same run as {run_a} ({da}); give two different run folders")
    return build_comparison(read_run(da, arg="RUN_A"), read_run(db, arg="RUN_B"))


def default_out(comp: Comparison) -> Path:
    """Where ``compare`` writes without ``out``: ``<RUN_B>/compare-<folder name of RUN_A>``."""
    return comp.b.path / f"compare-{comp.a.path.resolve().name}"


def compare(run_a: str | Path, run_b: str | Path, out: str | Path | None = None) -> Path:
    """Write ``compare.html`` comparing run B with run A into ``out`` (default
    ``<RUN_B>/compare-<folder name of RUN_A>``); returns its path."""
    return _write(comparison(run_a, run_b), out)


def main_compare(run_a: str | Path, run_b: str | Path, out: str | Path | None = None,
                 echo: Callable[[str], Any] = print) -> Path:
    """``xaudit compare``: write the HTML, then print the summary and its path."""
    comp = comparison(run_a, run_b)
    path = _write(comp, out)
    for line in summary_lines(comp):
        echo(line)
    echo(f"wrote {path}")
    return path


# ---------------------------------------------------------------------------------- helpers (data)
def _db(run_dir: str | Path, arg: str) -> Path:
    try:
        return find_db(run_dir)
    except ConfigError:
        raise ConfigError(arg, f"{run_dir} is not a run folder (no {DB_NAME} in it); give a run directory "
                               "written by `xaudit run`, e.g. runs/smoke") from None


def _f(v: Any) -> float | None:
    if v is None:
        return None
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _vword(v: Any) -> str | None:
    return None if v is None else str(v).lower()


def _absent(v: str | None) -> str:
    return "(absent)" if v is None else v


def _stats(r: dict[str, Any]) -> dict[str, Any]:
    return {k: r.get(k) for k in ("value", "ci_low", "ci_high", "n", "verdict")}


def _index(rows: list[dict], keys: dict[str, tuple[str, ...]]) -> dict[tuple, dict]:
    """Verdict rows by identity: (check, method, world, model, seed, verdict key values, occurrence)."""
    out: dict[tuple, dict] = {}
    seen: dict[tuple, int] = {}
    for r in rows:
        if r.get("verdict") is None:
            continue
        base = (*(r.get(k) for k in IDENTITY), _hashable(verdict_id(r, keys[r["check"]])))
        k = seen.get(base, 0)
        seen[base] = k + 1
        out[(*base, k)] = r
    return out


def _hashable(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return tuple(_hashable(x) for x in v)
    if isinstance(v, dict):
        return json.dumps(v, sort_keys=True, default=str)
    return v


def _cell_ident(r: dict) -> tuple:
    return (r.get("check"), r.get("method"), r.get("model"), r.get("world"), r.get("seed"))


def _statuses(cells: list[dict]) -> dict[tuple, str]:
    return {(c["check_name"], c["method"], c["model_group"], c["world"], c["seed"]): c["status"] for c in cells}


def _show(v: Any) -> str:
    return json.dumps(v, sort_keys=True, default=str)


def _flat(obj: Any, prefix: str = "") -> dict[str, str]:
    """Nested dicts / lists as {dotted path: JSON text of the leaf}."""
    if isinstance(obj, dict) and obj:
        out: dict[str, str] = {}
        for k, v in obj.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(obj, list) and obj and any(isinstance(x, (dict, list)) for x in obj):
        out = {}
        for i, v in enumerate(obj):
            out.update(_flat(v, f"{prefix}[{i}]"))
        return out
    return {prefix: _show(obj)}


def _diff_maps(kind: str, prefix: str, a: dict[str, str], b: dict[str, str]) -> list[Change]:
    return [Change(kind, f"{prefix}{k}", a.get(k), b.get(k)) for k in dict.fromkeys([*a, *b]) if a.get(k) != b.get(k)]


def _values(cells: list[dict], group: str, part: Callable[[dict], Any]) -> dict[str, dict[str, str]]:
    """group value -> {parameter path: its value(s) over the cells, ' | '-joined when they differ}."""
    seen: dict[str, dict[str, list[str]]] = {}
    for c in cells:
        for k, v in _flat(part(c) or {}).items():
            if not k:
                continue
            vals = seen.setdefault(str(c[group]), {}).setdefault(k, [])
            if v not in vals:
                vals.append(v)
    return {g: {k: " | ".join(sorted(vs)) for k, vs in d.items()} for g, d in seen.items()}


def _config_changes(a: RunData, b: RunData, meta_a: dict, meta_b: dict) -> list[Change]:
    out: list[Change] = []
    for check in meta_a:
        if check in meta_b and meta_a[check].get("version") != meta_b[check].get("version"):
            out.append(Change("check version", check, str(meta_a[check].get("version")),
                              str(meta_b[check].get("version"))))
    for kind, group, part in (("check parameter", "check_name", lambda c: c["config"].get("params")),
                              ("method parameter", "method", lambda c: c["config"].get("method_params")),
                              ("world", "world", lambda c: c["config"].get("world"))):
        pa, pb = _values(a.cells, group, part), _values(b.cells, group, part)
        ga = list(dict.fromkeys(str(c[group]) for c in a.cells))
        gb = {str(c[group]) for c in b.cells}
        for g in ga:
            if g in gb:
                out += _diff_maps(kind, f"{g}.", pa.get(g, {}), pb.get(g, {}))
    fa = _flat({k: v for k, v in a.preset.items() if k not in _PRESET_SKIP})
    fb = _flat({k: v for k, v in b.preset.items() if k not in _PRESET_SKIP})
    fa.pop("", None), fb.pop("", None)
    out += _diff_maps("preset", "", fa, fb)
    va = {k: _show(v) for k, v in (a.record.get("versions") or {}).items()}
    vb = {k: _show(v) for k, v in (b.record.get("versions") or {}).items()}
    out += _diff_maps("software", "", va, vb)
    return out


# ------------------------------------------------------------------------------------ terminal
def _score(value: Any, low: Any = None, high: Any = None) -> str:
    return Entry(world="", model="", seed=None, value=_f(value), ci_low=_f(low), ci_high=_f(high)).score() or "–"


def _diff_text(r: RowDiff) -> str:
    if r.diff is None:
        return "–"
    s = _score(r.diff, r.diff_low, r.diff_high)
    return ("+" + s) if r.diff > 0 else s


def summary_lines(comp: Comparison, limit: int = 20) -> list[str]:
    """A short plain-text summary for the terminal."""
    a, b = comp.a, comp.b
    lines = [f"compare A {a.name} ({a.path}) → B {b.name} ({b.path})", comp.config_note()]
    ch = comp.parameter_changes()
    if len(ch) > 1:
        lines += [f"  {c.text()}" for c in ch[:limit]]
        if len(ch) > limit:
            lines.append(f"  ... and {len(ch) - limit} more")
    changed = comp.changed_verdicts()
    n_changed = sum(len(v) for v in changed.values())
    lines.append(f"{len(comp.rows)} matched verdict rows: {len(comp.significant())} with a CI of B − A that "
                 f"excludes 0, {n_changed} changed verdicts")
    shown = 0
    for check, rs in changed.items():
        for r in rs:
            if shown == limit:
                break
            lines.append(f"  {check}: {r.where()} · {r.label}: {_vword(r.a['verdict'])} → {_vword(r.b['verdict'])} "
                         f"(B − A {_diff_text(r)})")
            shown += 1
    if n_changed > shown:
        lines.append(f"  ... and {n_changed - shown} more")
    for side, i in (("A", 0), ("B", 1)):
        parts = [f"{what}s {', '.join(map(str, v[i]))}" for what, v in comp.only.items() if v[i]]
        if parts:
            lines.append(f"only in {side}: " + "; ".join(parts))
    if comp.only_a_rows or comp.only_b_rows:
        lines.append(f"verdict rows without a partner: {len(comp.only_a_rows)} only in A, {len(comp.only_b_rows)} "
                     "only in B")
    return lines


# ---------------------------------------------------------------------------------------- html
CSS = REPORT_CSS + """
tr.sig td.diff{font-weight:bold;background:#e8f0fe} td.num{text-align:right;white-space:nowrap}
"""


def _verdict_td(v: Any) -> str:
    """A verdict cell with the report's symbol and colour (the answer table's palette)."""
    w = _vword(v)
    state = STATE_OF.get(w or "")
    if state is None:
        return f"<td>{_e(w)}</td>"
    return f'<td class="{state}">{answer.STYLE[state][0]} {_e(w)}</td>'


def _row_cells(r: RowDiff) -> str:
    sig = "yes" if r.excludes_zero else ("no CI" if r.diff is not None and r.diff_low is None else "")
    return (f"<td>{_e(r.method)}</td><td>{_e(r.world)}</td><td>{_e(r.model)}</td><td>{_e(r.seed)}</td>"
            f"<td>{_e(r.label)}</td>{_verdict_td(r.a['verdict'])}{_verdict_td(r.b['verdict'])}"
            f"<td class=num title='n = {_e(r.a['n'])}'>{_e(_score(r.a['value'], r.a['ci_low'], r.a['ci_high']))}</td>"
            f"<td class=num title='n = {_e(r.b['n'])}'>{_e(_score(r.b['value'], r.b['ci_low'], r.b['ci_high']))}</td>"
            f"<td class='num diff'>{_e(_diff_text(r))}</td><td>{_e(sig)}</td>")


_HEAD = ("<tr><th>method</th><th>world</th><th>model</th><th>seed</th><th>verdict of</th><th>A</th><th>B</th>"
         "<th>A value [CI]</th><th>B value [CI]</th><th>B − A [CI]</th><th>CI excludes 0</th></tr>")


def _rows_table(rows: Iterable[RowDiff]) -> str:
    body = "".join(f"<tr class='{'sig' if r.excludes_zero else ''}'>{_row_cells(r)}</tr>" for r in rows)
    return f"<table>{_HEAD}{body}</table>"


def _runs_html(comp: Comparison) -> str:
    def col(d: RunData) -> list[str]:
        rec, v = d.record, d.record.get("versions") or {}
        return [d.name, str(d.path), str(d.preset.get("_source", "")), str(d.preset.get("description", "")),
                str(rec.get("status", "")), _when(rec.get("started_at")), _when(rec.get("finished_at")),
                f"{len(d.cells)} ({sum(c['status'] == 'done' for c in d.cells)} done)", str(len(d.runs)),
                f"{v.get('xaudit', '')} · git {str(v.get('git_commit', ''))[:10]}"]
    names = ["run name", "folder", "preset", "description", "status", "started", "finished", "cells",
             "invocations", "xaudit"]
    ca, cb = col(comp.a), col(comp.b)
    return ("<table><tr><th></th><th>A</th><th>B</th></tr>"
            + "".join(f"<tr><th>{_e(n)}</th><td>{_e(x)}</td><td>{_e(y)}</td></tr>" for n, x, y in zip(names, ca, cb))
            + "</table>")


def _changes_html(comp: Comparison) -> str:
    out = [f"<p><b>{_e(comp.config_note())}</b></p>"]
    if comp.changes:
        out.append("<table><tr><th>what</th><th>name</th><th>A</th><th>B</th></tr>")
        out += [f"<tr><td>{_e(c.kind)}</td><td>{_e(c.name)}</td><td>{_e(_absent(c.a))}</td><td>{_e(_absent(c.b))}"
                "</td></tr>" for c in comp.changes]
        out.append("</table>")
    out.append("<p class=muted>Check and method parameters and world configurations as the active cells ran them "
               "(defaults included); preset: the other fields of the recorded preset; software: the recorded "
               "versions (not counted as a changed parameter).</p>")
    return "".join(out)


def _only_html(comp: Comparison) -> str:
    out = ["<table><tr><th></th><th>only in A</th><th>only in B</th></tr>"]
    for what, (xa, xb) in comp.only.items():
        out.append(f"<tr><th>{_e(what)}s</th><td>{_e(', '.join(map(str, xa)) or '–')}</td>"
                   f"<td>{_e(', '.join(map(str, xb)) or '–')}</td></tr>")
    out.append("</table>")
    for side, other, rows in (("A", "B", comp.only_a_rows), ("B", "A", comp.only_b_rows)):
        if not rows:
            continue
        out.append(f"<h3>Verdict rows only in {side} ({len(rows)})</h3><table><tr><th>check</th><th>method</th>"
                   f"<th>world</th><th>model</th><th>seed</th><th>verdict of</th><th>verdict</th><th>value [CI]</th>"
                   f"<th>cell in {other}</th></tr>")
        for u in rows:
            r = u.row
            out.append(f"<tr><td>{_e(r['check'])}</td><td>{_e(r['method'])}</td><td>{_e(r['world'])}</td>"
                       f"<td>{_e(r['model'])}</td><td>{_e(r['seed'])}</td><td>{_e(u.label)}</td>"
                       f"{_verdict_td(r['verdict'])}<td class=num>{_e(_score(r['value'], r['ci_low'], r['ci_high']))}"
                       f"</td><td>{_e(u.other_status or 'no such cell')}</td></tr>")
        out.append("</table>")
    return "".join(out)


def render(comp: Comparison) -> str:
    """compare.html's text."""
    a, b = comp.a, comp.b
    title = f"xaudit compare: {a.name} → {b.name}"
    changed = comp.changed_verdicts()
    n_changed = sum(len(v) for v in changed.values())
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{_e(title)}</title><style>{CSS}</style>"
             f"</head><body><h1>{_e(title)}</h1>",
             f"<p>A = {_e(a.name)} ({_e(a.path)}), B = {_e(b.name)} ({_e(b.path)}). {len(comp.rows)} verdict rows "
             f"matched by check, method, world, model, seed and verdict key; {n_changed} changed verdicts; "
             f"{len(comp.significant())} differences whose CI excludes 0 · written {_e(_when(time.time()))}</p>",
             f'<p class="muted">{_e(CI_RULE)}</p>',
             "<h2>Runs</h2>", _runs_html(comp),
             "<h2>What changed between the runs</h2>", _changes_html(comp),
             f"<h2>Changed verdicts ({n_changed})</h2>"]
    if not changed:
        parts.append("<p class=muted>None: every matched verdict row has the same verdict in both runs.</p>")
    for check, rs in changed.items():
        parts += [f"<h3>{_e(check)} ({len(rs)})</h3>", _rows_table(rs)]
    parts.append("<h2>Only in one run</h2>")
    parts.append(_only_html(comp))
    parts.append("<h2>Differences per check (B − A)</h2>")
    if not comp.rows:
        parts.append("<p class=muted>No verdict rows matched.</p>")
    for check in comp.checks:
        rs = [r for r in comp.rows if r.check == check]
        parts += [f'<h3 id="check-{_e(check)}">{_e(check)}</h3>',
                  f"<p class=muted>{sum(r.excludes_zero for r in rs)} of {len(rs)} differences have a CI that "
                  "excludes 0 (bold).</p>", _rows_table(rs)]
    parts.append("</body></html>")
    return "".join(parts)


def _write(comp: Comparison, out: str | Path | None) -> Path:
    folder = Path(out) if out is not None else default_out(comp)
    if folder.exists() and not folder.is_dir():
        raise ConfigError("--out", f"{folder} is an existing file, not a folder; pass --out a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError("--out", f"cannot create the folder {folder} ({e.strerror or e}); pass --out a folder you "
                                   "can write") from None
    path = folder / COMPARE_NAME
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(render(comp), encoding="utf-8")
    tmp.replace(path)
    return path
