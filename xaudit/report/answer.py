"""The answer table: which method reveals which bug, at a glance. Methods are rows, bug types columns.

It is built from the store's verdict rows alone:

- **Columns.** A check names the bug it plants with ``Check.bug`` (``"randomized weights"``). A template
  such as ``"{trojan} trojan"`` splits the check into a column per value of that row column; a placeholder
  takes the part of the value after its last ``:`` (``family:patch`` -> ``patch trojan``). ``Check.bug_rows``
  ({column: glob}) keeps only the matching rows (the per-family trojan rows, not the per-trojan ones).
  A check without a ``bug`` gets a column of its own name. A check whose ``bug`` is ``""`` plants none (the
  localization check) and stays out. Checks naming the same bug share its column (cascading and
  independent randomization: "randomized weights").
- **Rows of a cell.** The verdict rows of the checks of the column: the check's headline metric
  (``Check.scorecard_metric``) when it declares one, else all of them, across worlds, models, seeds and the
  other verdict-key columns.
- **The rule.** *reveals* when every such row passes, *does not* when every one fails, *inconclusive*
  otherwise (an inconclusive row, or rows that disagree). A column the run has no verdict row of, for a
  method, is *absent*: a check that did not run, or a cell that failed or did not apply, is not a failure.
- **The sort score** (``data-sort``): (passes - fails) / rows, in [-1, 1]; absent sorts below every
  score.

The three verdict colours (:data:`STYLE`) differ in CIE lightness by at least :data:`LIGHTNESS_MARGIN`,
so a grayscale print keeps them apart, and each carries a symbol for colour-blind readers.
"""
from __future__ import annotations

import fnmatch
import html
import json
import string
from dataclasses import dataclass, field
from typing import Any

from xaudit.report.scorecard import BASELINE_FAMILIES, check_meta, method_families, registered_check
from xaudit.run.store import Store

# state -> (symbol, word, background, text colour). Backgrounds: dark blue, vermilion, pale yellow
# (Okabe-Ito hues, lightness spread so grayscale keeps them apart); absent is white with a dash.
STYLE = {
    "reveals": ("✔", "reveals", "#08519c", "#ffffff"),
    "not": ("✘", "does not", "#e06b4a", "#000000"),
    "inconclusive": ("?", "inconclusive", "#fde99c", "#000000"),
    "absent": ("–", "not run", "#ffffff", "#999999"),
}
STATES = tuple(STYLE)
LIGHTNESS_MARGIN = 20.0      # CIE L* units between any two of the three verdict backgrounds
ABSENT_SORT = -2.0
RULE = ("reveals: every verdict row of the column passes; does not: every one fails; inconclusive: an "
        "inconclusive row, or rows that disagree; not run: the run has no verdict row for it")


@dataclass
class AnswerCell:
    state: str                                   # one of STATES
    rows: list[dict[str, Any]] = field(default_factory=list)   # the verdict rows it is built from

    def counts(self) -> dict[str, int]:
        out = {"pass": 0, "fail": 0, "inconclusive": 0}
        for r in self.rows:
            v = str(r["verdict"]).lower()
            out[v if v in out else "inconclusive"] += 1
        return out

    def sort_key(self) -> float:
        if not self.rows:
            return ABSENT_SORT
        c = self.counts()
        return (c["pass"] - c["fail"]) / len(self.rows)

    def summary(self) -> str:
        if not self.rows:
            return "not run"
        c = self.counts()
        return f"{c['pass']} of {len(self.rows)} verdict rows pass, {c['fail']} fail, {c['inconclusive']} inconclusive"


@dataclass
class Column:
    label: str                                   # the bug type
    checks: list[str] = field(default_factory=list)
    metrics: dict[str, str | None] = field(default_factory=dict)   # check -> headline metric (None: all)


@dataclass
class AnswerTable:
    run: str
    methods: list[str]                           # plan order, baselines last
    families: dict[str, str]                     # method -> family
    columns: list[Column]
    cells: dict[tuple[str, str], AnswerCell]     # (method, column label) -> cell
    notes: list[str] = field(default_factory=list)

    def cell(self, method: str, column: str) -> AnswerCell:
        return self.cells.get((method, column)) or AnswerCell("absent")

    def sorted_methods(self, column: str, descending: bool = True) -> list[str]:
        """The methods ordered by a column's sort score (ties keep table order): what clicking the column
        header does in the report."""
        order = {m: i for i, m in enumerate(self.methods)}
        return sorted(self.methods, key=lambda m: ((-1 if descending else 1) * self.cell(m, column).sort_key(),
                                                    order[m]))


def _hook(meta: dict[str, dict[str, Any]], check: str, name: str, default: Any) -> Any:
    recorded = meta.get(check) or {}
    if name in recorded:
        return recorded[name]
    return getattr(registered_check(check), name, default)


def _short(v: Any) -> str:
    return str(v).rsplit(":", 1)[-1]


def column_label(template: str, row: dict[str, Any]) -> str:
    """A check's ``bug`` template filled from a row: each ``{column}`` by the part of that row's value after
    its last ``:``."""
    fields = [f for _, f, _, _ in string.Formatter().parse(template) if f]
    return template.format(**{f: _short(row.get(f)) for f in fields})


def answer_table(store: Store, rows: list[dict] | None = None) -> AnswerTable:
    """The answer table of a run's store (see the module docstring for the rule); ``rows``: its
    ``store.rows()``, when the caller has read them."""
    runs = store.runs()
    meta = check_meta(store, runs)
    cells = store.cells(active_only=True)
    fam = method_families(store)
    methods, checks = [], []
    for c in cells:
        if c["method"] not in methods:
            methods.append(c["method"])
        if c["check_name"] not in checks:
            checks.append(c["check_name"])
    base = [m for m in methods if fam.get(m, "").lower() in BASELINE_FAMILIES]
    methods = [m for m in methods if m not in base] + base
    columns: dict[str, Column] = {}
    template_of: dict[str, str] = {}
    found: dict[tuple[str, str], list[dict]] = {}
    rows = [r for r in (store.rows(flatten=True) if rows is None else rows) if r.get("verdict") is not None]
    skipped = []
    for check in checks:
        bug = _hook(meta, check, "bug", None)
        if bug == "":
            skipped.append(check)
            continue
        template = check if bug is None else str(bug)
        metric = _hook(meta, check, "scorecard_metric", None)
        keep = dict(_hook(meta, check, "bug_rows", None) or {})
        mine = [r for r in rows if r["check"] == check]
        if metric is not None and any(r["metric"] == metric for r in mine):
            mine = [r for r in mine if r["metric"] == metric]
        mine = [r for r in mine if all(fnmatch.fnmatchcase(str(r.get(k)), pat) for k, pat in keep.items())]
        labels = [column_label(template, r) for r in mine]
        if not mine:     # the check ran no verdict row: its column still shows, every cell absent
            labels_present = [template if "{" not in template else check]
        else:
            labels_present = list(dict.fromkeys(labels))
        for lab in labels_present:
            if lab not in columns:      # next to the columns of the same template (the trojan families together)
                columns[lab] = Column(lab)
                kin = [c for c in columns if template_of.get(c) == template]
                template_of[lab] = template
                if kin:
                    order = [c for c in columns if c != lab]
                    order.insert(order.index(kin[-1]) + 1, lab)
                    columns = {c: columns[c] for c in order}
            col = columns[lab]
            if check not in col.checks:
                col.checks.append(check)
                col.metrics[check] = metric
        for r, lab in zip(mine, labels):
            found.setdefault((r["method"], lab), []).append(r)
    out = AnswerTable(run=runs[-1]["name"] if runs else "", methods=methods, families={m: fam.get(m, "") for m in methods},
                      columns=list(columns.values()), cells={})
    for (m, lab), rs in found.items():
        verdicts = {str(r["verdict"]).lower() for r in rs}
        state = "reveals" if verdicts == {"pass"} else "not" if verdicts == {"fail"} else "inconclusive"
        out.cells[(m, lab)] = AnswerCell(state, rs)
    if skipped:
        out.notes.append(f"{', '.join(skipped)}: no planted bug (see {'its' if len(skipped) == 1 else 'their'} "
                         f"section below)")
    return out


# ----------------------------------------------------------------------------------------- HTML
CSS = """
div.answer-wrap{overflow-x:auto;max-width:100%} table.answer{border-collapse:collapse;font-size:88%} table.answer th,table.answer td{border:1px solid #ccc;
padding:3px 6px;text-align:center} table.answer td.m,table.answer td.f{text-align:left}
table.answer thead th{cursor:pointer;background:#f4f4f4;vertical-align:bottom;max-width:7em}
table.answer thead th[aria-sort=descending]::after{content:" \\25BC"} table.answer thead th[aria-sort=ascending]::after{content:" \\25B2"}
table.answer td.v{font-weight:bold;min-width:2.2em} .answer-key span{display:inline-block;padding:1px 8px;margin-right:6px;
border:1px solid #ccc}
"""

JS = """
(function(){
  var t=document.getElementById('answer'); if(!t) return;
  var body=t.tBodies[0];
  t.tHead.querySelectorAll('th').forEach(function(th){
    th.addEventListener('click',function(){
      var col=+th.dataset.col, text=col<2;
      var dir=th.getAttribute('aria-sort')==='descending'?'ascending':(th.getAttribute('aria-sort')==='ascending'?'descending':(text?'ascending':'descending'));
      t.tHead.querySelectorAll('th').forEach(function(o){o.removeAttribute('aria-sort');});
      th.setAttribute('aria-sort',dir);
      var rows=Array.prototype.slice.call(body.rows), sign=dir==='ascending'?1:-1;
      rows.forEach(function(r,i){r._i=i;});
      rows.sort(function(a,b){
        var x=a.cells[col], y=b.cells[col], d;
        if(text){d=x.textContent.localeCompare(y.textContent);} else {d=parseFloat(x.dataset.sort)-parseFloat(y.dataset.sort);}
        return d!==0?sign*d:a._i-b._i;
      });
      rows.forEach(function(r){body.appendChild(r);});
    });
  });
  var f=document.getElementById('answer-filter');
  if(f) f.addEventListener('change',function(){
    Array.prototype.forEach.call(body.rows,function(r){r.style.display=(!f.value||r.dataset.family===f.value)?'':'none';});
  });
})();
"""


def _e(x: Any) -> str:
    return html.escape("" if x is None else str(x), quote=True)


def _num(v: Any) -> str:
    return "" if v is None else f"{v:.3g}"


def row_text(r: dict[str, Any], key: tuple[str, ...] = ()) -> str:
    """One verdict row for a tooltip: check, its key, where, verdict, score [CI]."""
    where = ", ".join(str(r.get(k)) for k in ("world", "model") if r.get(k) is not None)
    seed = f", seed {r['seed']}" if r.get("seed") is not None else ""
    extra = " / ".join(str(r.get(k)) for k in key if r.get(k) is not None)
    ci = f" [{_num(r.get('ci_low'))}, {_num(r.get('ci_high'))}]" if r.get("ci_low") is not None else ""
    return f"{r['check']} {r['metric']}{(' / ' + extra) if extra else ''} ({where}{seed}): {r['verdict']} " \
           f"{_num(r.get('value'))}{ci}"


def tooltip(at: AnswerTable, method: str, col: Column, meta: dict[str, dict[str, Any]]) -> str:
    cell = at.cell(method, col.label)
    lines = [f"{method} × {col.label}: {STYLE[cell.state][1]} ({cell.summary()})"]
    for r in cell.rows[:24]:
        key = tuple(k for k in (_hook(meta, r["check"], "verdict_key", None) or ("metric",)) if k != "metric")
        lines.append(row_text(r, key))
    if len(cell.rows) > 24:
        lines.append(f"... and {len(cell.rows) - 24} more rows (the check's section lists them)")
    rules = "; ".join(f"{c}: {m or 'every metric'}" for c, m in col.metrics.items())
    lines.append(f"Headline metric: {rules}. Rule: {RULE}.")
    return "\n".join(lines)


def render_html(at: AnswerTable, meta: dict[str, dict[str, Any]]) -> str:
    """The answer table as HTML (sortable by any column, filterable by method family); the caller puts
    :data:`CSS` and :data:`JS` in the page."""
    if not at.methods:
        return "<p>No cells.</p>"
    if not at.columns:
        return "<p class=muted>No check of this run plants a bug.</p>"
    head = ['<th data-col="0" title="method">method</th>', '<th data-col="1" title="method family">family</th>']
    for k, col in enumerate(at.columns, start=2):
        checks = ", ".join(f"{c} ({m or 'every metric'})" for c, m in col.metrics.items())
        head.append(f'<th data-col="{k}" title="{_e("from " + checks + ". Click to sort.")}">{_e(col.label)}</th>')
    body = []
    for m in at.methods:
        tds = [f'<td class="m" data-col="0">{_e(m)}</td>', f'<td class="f" data-col="1">{_e(at.families.get(m))}</td>']
        for k, col in enumerate(at.columns, start=2):
            c = at.cell(m, col.label)
            sym, _, bg, fg = STYLE[c.state]
            tds.append(f'<td class="v" data-col="{k}" data-verdict="{c.state}" data-sort="{c.sort_key():.6g}" '
                       f'style="background:{bg};color:{fg}" title="{_e(tooltip(at, m, col, meta))}">{sym}</td>')
        body.append(f'<tr data-method="{_e(m)}" data-family="{_e(at.families.get(m))}">{"".join(tds)}</tr>')
    families = sorted({f for f in at.families.values() if f})
    options = "".join(f'<option value="{_e(f)}">{_e(f)}</option>' for f in families)
    key = " ".join(f'<span style="background:{bg};color:{fg}">{sym} {_e(word)}</span>'
                   for _, (sym, word, bg, fg) in STYLE.items())
    notes = "".join(f'<p class="muted">{_e(n)}</p>' for n in at.notes)
    return (f'<p class="answer-key">{key} <label>method family: <select id="answer-filter"><option value="">all'
            f'</option>{options}</select></label></p>'
            f'<div class="answer-wrap"><table id="answer" class="answer"><thead><tr>{"".join(head)}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div><p class="muted">{_e(RULE)}. Each cell is built from the verdict rows of the checks '
            f'in its column (the headline metric where a check declares one), across worlds and seeds; hover a cell '
            f'for its rows with their scores and CIs, click a header to sort.</p>{notes}')


# ------------------------------------------------------------------------------------- terminal
TERMINAL_STYLE = {"reveals": "bold white on blue", "not": "bold black on dark_orange", "inconclusive":
                  "black on light_goldenrod1", "absent": "dim"}


def render_terminal(at: AnswerTable, console=None) -> None:
    """The answer table as a rich table: a symbol per cell, coloured as in the report; the columns are
    lettered (A, B, ...) and named below, so 16 bug types fit in 80 characters."""
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = console or Console()
    letters = [chr(ord("A") + i) if i < 26 else str(i) for i in range(len(at.columns))]
    t = Table(title=f"which method reveals which bug: {at.run}", box=box.SIMPLE_HEAD, padding=(0, 0),
              collapse_padding=True, title_justify="left")
    t.add_column("method ", style="bold", no_wrap=True)
    for a in letters:
        t.add_column(f" {a} ", justify="center", no_wrap=True)
    base = [m for m in at.methods if at.families.get(m, "").lower() in BASELINE_FAMILIES]
    for m in at.methods:
        if base and m == base[0]:
            t.add_section()
        cells = [Text(f" {STYLE[at.cell(m, c.label).state][0]} ", style=TERMINAL_STYLE[at.cell(m, c.label).state])
                 for c in at.columns]
        t.add_row(m + (" (baseline)" if m in base else "") + " ", *cells)
    console.print(t)
    console.print("; ".join(f"{a} {c.label}" for a, c in zip(letters, at.columns)), markup=False, highlight=False)
    console.print("  ".join(f"{sym} {word}" for sym, word, _, _ in STYLE.values()) + f". {RULE}.", style="dim",
                  markup=False, highlight=False)
    for n in at.notes:
        console.print(n, style="dim", markup=False, highlight=False)


def to_json(at: AnswerTable) -> str:
    """The table as JSON (method -> column -> state): for scripts and tests."""
    return json.dumps({m: {c.label: at.cell(m, c.label).state for c in at.columns} for m in at.methods}, indent=1)
