"""The scorecard: methods as rows (baselines in their own block), checks as columns; each entry is
the verdict with its score and CI from the check's verdict rows, or the cell status (error, n/a,
pending) where there is no verdict. Computed from the store only."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from xaudit.checks.base import VERDICT_CODE, verdict_label   # one letter per verdict where a cell has several
from xaudit.run.store import Store

BASELINE_FAMILIES = ("baseline", "baselines")
MIXED = "mixed"   # a cell whose verdict rows (one per metric) disagree
VERDICT_STYLE = {"pass": ("PASS", "green"), "fail": ("FAIL", "red"), "inconclusive": ("?", "yellow"),
                 "mixed": ("MIXED", "yellow")}
STATUS_TEXT = {"failed": "error", "not_applicable": "n/a", "pending": "pending", "running": "pending",
               "done": "no verdict"}


@dataclass
class Entry:
    """One cell's headline: its verdict with the headline metric's score and CI (or the cell status
    where the cell has no verdict row). ``details`` holds every verdict row of the cell."""
    world: str
    model: str
    seed: int | None
    verdict: str | None = None
    metric: str | None = None
    value: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    n: int | None = None
    status: str = "done"
    details: list[dict[str, Any]] = field(default_factory=list)

    def score(self) -> str:
        if self.value is None:
            return ""
        s = f"{self.value:.3g}"
        if self.ci_low is not None and self.ci_high is not None:
            s += f" [{self.ci_low:.3g}, {self.ci_high:.3g}]"
        return s

    def codes(self) -> str:
        """One letter per verdict row (P pass, F fail, ? inconclusive), in the rows' order."""
        return "".join(VERDICT_CODE.get(str(d["verdict"]).lower(), "-") for d in self.details)

    def metrics(self) -> list[str]:
        """The verdict key of each verdict row (its metric, or e.g. ``l1 / patch_a``), in order."""
        return [str(d.get("key", d["metric"])) for d in self.details]

    def text(self) -> str:
        if self.verdict is not None:
            if len(self.details) > 1:   # a verdict per metric: their letters, then the first metric's score
                return f"{self.codes()} {self.score()}".strip()
            word = VERDICT_STYLE.get(str(self.verdict).lower(), (str(self.verdict).upper(),))[0]
            return f"{word} {self.score()}".strip()
        return STATUS_TEXT.get(self.status, self.status)


@dataclass
class Scorecard:
    run: str
    methods: list[str]                 # explanation methods, plan order
    baselines: list[str]               # baseline methods, plan order
    checks: list[str]
    entries: dict[tuple[str, str], list[Entry]] = field(default_factory=dict)   # (method, check) -> entries
    vary: tuple[str, ...] = ()         # which of world / model / seed differ between entries

    def label(self, e: Entry) -> str:
        parts = []
        if "world" in self.vary:
            parts.append(e.world)
        if "model" in self.vary:
            parts.append(e.model)
        if "seed" in self.vary:
            parts.append(f"s{e.seed}")
        return "/".join(parts)

    def lines(self, method: str, check: str) -> list[tuple[str, Entry]]:
        return [(self.label(e), e) for e in self.entries.get((method, check), [])]

    def metric_orders(self) -> dict[str, list[str]]:
        """check -> the order of its verdict letters, by verdict key (checks with several verdict rows)."""
        out: dict[str, list[str]] = {}
        for (_, check), es in self.entries.items():
            for e in es:
                if len(e.details) > 1 and check not in out:
                    out[check] = e.metrics()
        return out

    def legend(self) -> list[str]:
        """Lines that explain the entries: the verdict words, and each letter code's metric order."""
        lines = ["PASS / FAIL / ? (inconclusive): the verdict, then the score [CI] at the verdict stage."]
        orders = self.metric_orders()
        groups: dict[tuple[str, ...], list[str]] = {}
        for check, metrics in orders.items():
            groups.setdefault(tuple(metrics), []).append(check)
        for metrics, checks in groups.items():
            lines.append(f"{', '.join(checks)}: one letter per verdict (P pass, F fail, ? inconclusive) in the "
                         f"order {', '.join(metrics)}; the score is {metrics[0]}'s.")
        return lines


def method_families(store: Store) -> dict[str, str]:
    """Method name -> family, from the latest run's snapshot of xaudit.explain.describe()."""
    fam: dict[str, str] = {}
    for r in store.runs():
        for m in r.get("methods") or []:
            if isinstance(m, dict) and "name" in m:
                fam[m["name"]] = str(m.get("family", ""))
    return fam


def check_meta(store: Store, runs: list[dict] | None = None) -> dict[str, dict[str, Any]]:
    """Check name -> its metadata as the runs recorded it (:func:`xaudit.checks.describe`; the latest
    run wins)."""
    info: dict[str, dict[str, Any]] = {}
    for r in store.runs() if runs is None else runs:
        for c in r.get("checks") or []:
            if isinstance(c, dict) and "name" in c:
                info[c["name"]] = dict(c)
    return info


def registered_check(check: str):
    """The registered check class, or None (a store read where the check's plugin is not importable)."""
    try:
        from xaudit.checks import CHECKS

        return CHECKS.get(check)
    except Exception:
        return None


def _hook(meta: dict[str, dict[str, Any]], check: str, hook: str, default: Any) -> Any:
    """A contract hook's value as the run recorded it, else as the registered check declares it
    (stores written before the hook was recorded), else its default."""
    recorded = meta.get(check) or {}
    return recorded[hook] if hook in recorded else getattr(registered_check(check), hook, default)


def verdict_key_of(meta: dict[str, dict[str, Any]], check: str) -> tuple[str, ...]:
    """The row columns that identify one verdict of ``check`` (``("metric",)`` unless it declares more)."""
    return tuple(_hook(meta, check, "verdict_key", None) or ("metric",))


def scorecard(store: Store, rows: list[dict] | None = None) -> Scorecard:
    """The scorecard of a run's store (``rows``: its ``store.rows()``, when the caller has read them)."""
    cells = store.cells(active_only=True)
    rows = store.rows(flatten=True) if rows is None else rows
    runs = store.runs()
    meta = check_meta(store, runs)
    run_name = runs[-1]["name"] if runs else ""
    methods: list[str] = []
    checks: list[str] = []
    for c in cells:
        if c["method"] not in methods:
            methods.append(c["method"])
        if c["check_name"] not in checks:
            checks.append(c["check_name"])
    fam = method_families(store)
    baselines = [m for m in methods if fam.get(m, "").lower() in BASELINE_FAMILIES]
    sc = Scorecard(run=run_name, methods=[m for m in methods if m not in baselines], baselines=baselines,
                   checks=checks)
    by_cell: dict[str, list[dict]] = {}
    for r in rows:
        if r["verdict"] is not None:
            by_cell.setdefault(r["cell"], []).append(r)
    headline = {c: _hook(meta, c, "scorecard_metric", None) for c in checks}
    for c in cells:
        key = (c["method"], c["check_name"])
        vrows = by_cell.get(c["key"])
        if not vrows:
            sc.entries.setdefault(key, []).append(
                Entry(world=c["world"], model=c["model_group"], seed=c["seed"], status=c["status"]))
            continue
        sc.entries.setdefault(key, []).append(headline_entry(vrows, headline[c["check_name"]],
                                                             verdict_key_of(meta, c["check_name"])))
    allents = [e for es in sc.entries.values() for e in es]
    sc.vary = tuple(k for k in ("world", "model", "seed") if len({getattr(e, k) for e in allents}) > 1)
    return sc


def scorecard_metric(check: str) -> str | None:
    """The metric whose verdict a check puts on the scorecard (``Check.scorecard_metric``), if declared."""
    return getattr(registered_check(check), "scorecard_metric", None)


def headline_entry(vrows: list[dict], metric: str | None, verdict_key: tuple[str, ...] = ("metric",)) -> Entry:
    """One cell's entry from its verdict rows: the declared headline metric's rows when the check names
    one (one per value of the other verdict-key columns, e.g. one per trojan); otherwise all rows. The
    verdict is their common verdict ('mixed' when they disagree), the score the first row's. Every
    chosen row stays in ``details``, labelled by its verdict key: none is dropped."""
    chosen = [r for r in vrows if r["metric"] == metric] or vrows
    verdicts = {str(r["verdict"]).lower() for r in chosen}
    verdict = chosen[0]["verdict"] if len(verdicts) == 1 else MIXED
    r = chosen[0]
    details = [{**{k: v.get(k) for k in ("metric", "verdict", "value", "ci_low", "ci_high", "n")},
                "key": verdict_label(v, verdict_key)} for v in chosen]
    return Entry(world=r["world"], model=r["model"], seed=r["seed"], verdict=verdict, metric=r["metric"],
                 value=r["value"], ci_low=r["ci_low"], ci_high=r["ci_high"], n=r["n"], details=details)


def render_terminal(sc: Scorecard, console=None) -> None:
    """Print the scorecard as a rich table (plain text when not a terminal)."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = console or Console()
    t = Table(title=f"xaudit scorecard: {sc.run}", show_lines=True)
    t.add_column("method", style="bold")
    for c in sc.checks:
        t.add_column(c)

    def cell(method: str, check: str) -> Text:
        out = Text()
        for i, (label, e) in enumerate(sc.lines(method, check)):
            if i:
                out.append("\n")
            if label:
                out.append(f"{label}: ", style="dim")
            style = VERDICT_STYLE.get(str(e.verdict).lower(), ("", "bold"))[1] if e.verdict else (
                "red" if e.status == "failed" else "dim")
            out.append(e.text(), style=style)
        return out

    for m in sc.methods:
        t.add_row(m, *[cell(m, c) for c in sc.checks])
    if sc.baselines:
        t.add_section()
        for m in sc.baselines:
            t.add_row(Text(f"{m} (baseline)", style="italic"), *[cell(m, c) for c in sc.checks])
    console.print(t)
    for line in sc.legend():
        console.print(line, style="dim", markup=False, highlight=False)
