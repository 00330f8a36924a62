"""report.html: one self-contained file (inline CSS, figures as base64 PNG) computed from the store.

Sections: summary, the answer table (which method reveals which bug; :mod:`xaudit.report.answer`), one
section per check (protocol and verdict rule from the check's description, citation, its verdict table
with a column per verdict key, figures with captions), models, failed and not-applicable cells with their
reasons, run configuration and versions. The answer table's sorting and filter are a small inline script;
the file loads anywhere with nothing else.
"""
from __future__ import annotations

import base64
import html
import json
import time
from pathlib import Path
from typing import Any

from xaudit.report import answer, figures as figs
from xaudit.checks.base import verdict_id, verdict_label
from xaudit.report.scorecard import (Entry, Scorecard, check_meta, registered_check, scorecard, verdict_key_of)
from xaudit.run.execute import artifact_dir
from xaudit.run.store import Store, find_db

REPORT_NAME = "report.html"

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1200px;color:#222;
line-height:1.4;padding:0 1em}
h1{margin-bottom:.2em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0;font-size:90%} th,td{border:1px solid #ddd;padding:4px 8px;
vertical-align:top;text-align:left} th{background:#f4f4f4}
td.na{color:#888} figcaption{font-size:90%;max-width:60em}
span.lab{color:#888;font-size:85%} .muted{color:#777} pre{background:#f7f7f7;padding:.6em;overflow-x:auto;
font-size:85%;white-space:pre-wrap} img{max-width:100%;border:1px solid #eee;margin:.3em 0}
tr.sep td{background:#fafafa;font-style:italic;color:#666} details{margin:.3em 0}
.desc{white-space:pre-wrap} p.warn{background:#fff3cd;padding:.4em}
""" + answer.CSS + "".join(
    f"td.{k}{{background:{bg};color:{fg}}} " for k, (_, _, bg, fg) in answer.STYLE.items() if k != "absent")

# a verdict row's word -> the answer table's state (its symbol and colour)
STATE_OF = {"pass": "reveals", "fail": "not", "inconclusive": "inconclusive"}


def _e(x: Any) -> str:
    return html.escape("" if x is None else str(x))


def _img(title: str, data: bytes, caption: str = "") -> str:
    b64 = base64.b64encode(data).decode("ascii")
    cap = f"<b>{_e(title)}.</b> {_e(caption)}" if caption else _e(title)
    return f'<figure><img alt="{_e(title)}" src="data:image/png;base64,{b64}"><figcaption>' \
           f'{cap}</figcaption></figure>'


def _figure_items(made) -> list[tuple]:
    """A figure maker's result as (title, figure or PNG bytes, caption) triples: it may return one
    figure, None, or a list of (title, figure) pairs or (title, figure, caption) triples."""
    if made is None:
        return []
    if not isinstance(made, list):
        return [("", made, "")]
    return [(t[0], t[1], t[2] if len(t) > 2 else "") for t in made]


# what the forked section workers read: set by _check_sections before the pool forks (inherited memory, so
# the rows are not pickled to them, and checks registered at run time, plugins or tests, are there too)
_SECTIONS: dict[str, Any] = {}


def report_workers(workers: int | None, sections: int) -> int:
    """Processes that draw the check sections: ``workers``, else this machine's cores (at most 8), never
    more than the sections; 1 where ``fork`` is not available (the workers inherit the rows and the
    registries by forking)."""
    import multiprocessing

    from xaudit.run.executor import available_cores

    if "fork" not in multiprocessing.get_all_start_methods():
        return 1
    n = available_cores() if workers is None else int(workers)
    return max(1, min(n, 8, sections))


def _check_sections(store: Store, sc: Scorecard, check_info: dict[str, dict], run_dir: Path,
                    rows: list[dict], workers: int | None = None) -> str:
    """One section per check (its verdict table and figures), the sections drawn by ``workers`` forked
    processes (:func:`report_workers`); the same HTML as drawing them one by one, in the checks' order."""
    # the artifact folders of the active, done cells, per check: figures never see a stale cell's files
    artifacts: dict[str, list[Path]] = {}
    for cell in store.cells(active_only=True):
        d = artifact_dir(run_dir / "artifacts", cell["key"])
        if cell["status"] == "done" and d.is_dir():
            artifacts.setdefault(cell["check_name"], []).append(d)
    by_check: dict[str, list[dict]] = {}
    for r in rows:
        by_check.setdefault(r["check"], []).append(r)
    _SECTIONS.update(rows=by_check, artifacts=artifacts, check_info=check_info, methods=sc.methods + sc.baselines,
                     baselines=tuple(sc.baselines))
    try:
        n = report_workers(workers, len(sc.checks))
        if n > 1:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor
            from concurrent.futures.process import BrokenProcessPool

            pool = ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("fork"))
            try:
                return "".join(pool.map(_check_section, sc.checks))
            except (BrokenProcessPool, OSError):     # a worker died (memory?): draw them here, one by one
                pass
            except BaseException:                    # Ctrl-C: stop the workers now, not after their queue
                for proc in list((getattr(pool, "_processes", None) or {}).values()):
                    proc.terminate()
                raise
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
        return "".join(_check_section(c) for c in sc.checks)
    finally:
        _SECTIONS.clear()


def _check_section(c: str) -> str:
    """One check's section, from :data:`_SECTIONS`."""
    check_info, methods, base = _SECTIONS["check_info"], _SECTIONS["methods"], _SECTIONS["baselines"]
    info = check_info.get(c, {})
    crow = _SECTIONS["rows"].get(c, [])
    out = [f'<h2 id="check-{_e(c)}">{_e(c)}</h2>']
    meta = []
    if info.get("version"):
        meta.append(f"version {_e(info['version'])}")
    if info.get("kind"):
        meta.append(f"kind {_e(info['kind'])}")
    if info.get("citation"):
        meta.append(_e(info["citation"]))
    if meta:
        out.append(f'<p class="muted">{" · ".join(meta)}</p>')
    if info.get("description"):
        out.append(f'<div class="desc">{_e(info["description"])}</div>')
    if info.get("defaults"):
        out.append(f'<p class="muted">defaults: {_e(json.dumps(info["defaults"], sort_keys=True))}</p>')
    if not crow:
        out.append("<p class=muted>No result rows.</p>")
        return "".join(out)
    images: list[tuple[str, bytes, str]] = []
    notes: list[str] = []
    own = None
    cls = registered_check(c)
    if cls is not None:
        try:
            own = cls().figures(crow, _SECTIONS["artifacts"].get(c, []))
        except Exception as e:   # a figure must never lose the report
            notes.append(f"the check's figures() failed: {type(e).__name__}: {e}")
    makers = [("verdict scores with CI", lambda: figs.verdict_figure(crow, methods, base))]
    if own is None:   # the check's own figures replace the generic curves
        makers += [("metrics", lambda: figs.metric_figure(crow, methods)),
                   ("curves", lambda: figs.curve_figures(crow, methods, base))]
    made: list[tuple] = []
    for title, make in makers:
        try:
            made += [(t or title, f, cap) for t, f, cap in _figure_items(make())]
        except Exception as e:   # a figure must never lose the report
            notes.append(f"{title} figure failed: {type(e).__name__}: {e}")
    out.append(_verdict_table(crow, methods, verdict_key_of(check_info, c)))
    for title, f, cap in made + _figure_items(own):
        try:
            images.append((title, f if isinstance(f, (bytes, bytearray)) else figs.png(f), cap))
        except Exception as e:
            notes.append(f"figure {title!r} failed: {type(e).__name__}: {e}")
    out += [_img(t, d, cap) for t, d, cap in images]
    out += [f'<p class="muted">{_e(n)}</p>' for n in notes]
    return "".join(out)


def _verdict_table(rows: list[dict], methods: list[str], key: tuple[str, ...] = ("metric",)) -> str:
    """Every verdict row of a check: methods as rows, one column per verdict key (the metric, or e.g.
    metric and trojan, under a header per metric), per world/model/seed; each cell the verdict's symbol
    and the score [CI], coloured as in the answer table."""
    vrows = [r for r in rows if r.get("verdict") is not None]
    if not vrows:
        return ""
    columns = list(dict.fromkeys(verdict_id(r, key) for r in vrows))
    heads = {verdict_id(r, key): verdict_label(r, key) for r in vrows}
    header = "<tr><th>method</th>" + "".join(f"<th>{_e(heads[k])}</th>" for k in columns) + "</tr>"
    if len(key) > 1 and key[0] == "metric":     # a header per metric over its columns (one per trojan, ...)
        metrics = list(dict.fromkeys(k[0] for k in columns))
        columns = [k for m in metrics for k in columns if k[0] == m]
        rest = key[1:]
        header = ("<tr><th rowspan=2>method</th>" + "".join(
            f'<th colspan="{sum(k[0] == m for k in columns)}" class="metric">{_e(m)}</th>' for m in metrics)
            + "</tr><tr>" + "".join(f"<th>{_e(verdict_label(dict(zip(rest, k[1:])), rest))}</th>" for k in columns)
            + "</tr>")
    vary = [k for k in ("world", "model", "seed") if len({r.get(k) for r in vrows}) > 1]
    groups: dict[tuple, list[dict]] = {}
    for r in vrows:
        groups.setdefault(tuple(r.get(k) for k in vary), []).append(r)
    out = []
    for g, rs in groups.items():
        cap = ", ".join(f"{k} {v}" for k, v in zip(vary, g))
        out.append(f"<table class=verdicts><caption class=muted>{_e(cap)}</caption>{header}")
        for m in methods:
            mine = {verdict_id(r, key): r for r in rs if r["method"] == m}
            if not mine:
                continue
            tds = []
            for k in columns:
                r = mine.get(k)
                if r is None:
                    tds.append("<td></td>")
                    continue
                state = STATE_OF.get(str(r["verdict"]).lower(), "inconclusive")
                e = Entry(world="", model="", seed=None, verdict=r["verdict"], value=r["value"], ci_low=r["ci_low"],
                          ci_high=r["ci_high"])
                sym = answer.STYLE[state][0]
                tds.append(f'<td class="{state}" title="{_e(str(r["verdict"]))}">{sym} {_e(e.score())}</td>')
            out.append(f"<tr><th>{_e(m)}</th>{''.join(tds)}</tr>")
        out.append("</table>")
    return "".join(out)


def _models_html(models: list[dict]) -> str:
    if not models:
        return "<p class=muted>No models prepared.</p>"
    keys = ("clean_accuracy", "train_accuracy", "attack_success_rate", "background_only_accuracy", "bug_took")
    out = ["<table><tr><th>model</th><th>key</th><th>status</th><th>prepare s</th>"
           + "".join(f"<th>{k}</th>" for k in keys) + "</tr>"]
    for m in models:
        card = m.get("card") or {}
        vals = "".join(f"<td>{_e(_fmt(card.get(k)))}</td>" for k in keys)
        err = f"<br><span class=lab>{_e(m.get('error'))}</span>" if m.get("error") else ""
        out.append(f"<tr><td>{_e(m['label'])}</td><td><code>{_e(m['key'])}</code></td><td>{_e(m['status'])}{err}"
                   f"</td><td>{_e(_fmt(m.get('seconds')))}</td>{vals}</tr>")
    out.append("</table>")
    return "".join(out)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    if isinstance(v, dict):
        return json.dumps(v, sort_keys=True)
    return "" if v is None else str(v)


def _cells_html(cells: list[dict]) -> str:
    failed = [c for c in cells if c["status"] == "failed"]
    na = [c for c in cells if c["status"] == "not_applicable"]
    pending = [c for c in cells if c["status"] in ("pending", "running")]
    out = [f"<h2>Failed cells ({len(failed)})</h2>"]
    if not failed:
        out.append("<p class=muted>None.</p>")
    for c in failed:
        out.append(f"<details><summary><b>{_e(c['check_name'])}</b> / {_e(c['method'])} / {_e(c['model_group'])}"
                   f"@{_e(c['world'])} / seed {_e(c['seed'])}: {_e(c['error'])}</summary>"
                   f"<pre>{_e(c['traceback'] or c['error'])}</pre><p class=muted>cell {_e(c['key'])}, "
                   f"attempts {_e(c['attempts'])}</p></details>")
    if na:
        out.append(f"<h2>Not applicable ({len(na)})</h2><table><tr><th>check</th><th>method</th><th>model</th>"
                   "<th>reason</th></tr>")
        for c in na:
            out.append(f"<tr><td>{_e(c['check_name'])}</td><td>{_e(c['method'])}</td><td>{_e(c['model_group'])}@"
                       f"{_e(c['world'])}</td><td>{_e(c['error'])}</td></tr>")
        out.append("</table>")
    if pending:
        out.append(f"<h2>Unfinished cells ({len(pending)})</h2><p>The run stopped before these cells finished; "
                   "run the same command again to resume.</p>")
    return "".join(out)


def _config_html(runs: list[dict]) -> str:
    if not runs:
        return ""
    last = runs[-1]
    out = ["<h2>Run configuration</h2>", f"<pre>{_e(json.dumps(last.get('preset'), indent=2, sort_keys=True))}</pre>",
           "<h3>Versions</h3><table>"]
    for k, v in (last.get("versions") or {}).items():
        out.append(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>")
    out.append("</table><h3>Invocations</h3><table><tr><th>#</th><th>started</th><th>finished</th><th>status</th>"
               "<th>workers</th><th>cells in plan</th></tr>")
    for r in runs:
        out.append(f"<tr><td>{r['id']}</td><td>{_e(_when(r['started_at']))}</td><td>{_e(_when(r['finished_at']))}"
                   f"</td><td>{_e(r['status'])}</td><td>{_e(r['workers'])}</td><td>{_e(r['plan_cells'])}</td></tr>")
    out.append("</table>")
    return "".join(out)


def _audit_html(runs: list[dict]) -> str:
    """``xaudit audit`` runs: the model and data as xaudit read them (the block order and Grad-CAM layer
    used, inferred or given; the images skipped, with their paths) and the missing retrain reference."""
    a = ((runs[-1].get("preset") or {}) if runs else {}).get("_audit")
    if not a:
        return ""
    d = a.get("data") or {}
    how = lambda inferred: "inferred" if inferred else "given"  # noqa: E731
    acc = a.get("accuracy")
    rows = [("model", a.get("model")), ("weights", f"{a.get('weights') or 'none (the factory initialization)'}"
                                        + (f" (blake2b {a['weights_digest']})" if a.get("weights_digest") else "")),
            ("normalization", json.dumps(a.get("normalize")) if a.get("normalize") else "none (images in [0, 1])"),
            ("classes", a.get("num_classes")),
            ("accuracy", "no labels" if acc is None else f"{acc:.3f} on the {d.get('images')} labeled images"),
            (f"cascading order ({how(a.get('blocks_inferred'))}, output first)", " → ".join(a.get("blocks") or [])),
            (f"Grad-CAM layer ({how(a.get('cam_layer_inferred'))})", a.get("cam_layer") or "none (no Conv2d)"),
            ("images", f"{d.get('images')} used from {d.get('path')} at {d.get('size')} px ({d.get('resize')}); "
                       f"{len(d.get('skipped') or [])} skipped; masks for {d.get('masks')}")]
    out = ["<h2>Your model and data</h2>", f"<p><b>No retrain reference.</b> {_e(a.get('no_reference'))}</p>",
           "<table>"] + [f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows] + ["</table>"]
    for n in a.get("notes") or []:
        out.append(f"<p class='warn'><b>Warning:</b> {_e(n)}</p>")
    if d.get("skipped"):
        out.append("<h3>Skipped image files</h3><table><tr><th>file</th><th>why</th></tr>")
        out += [f"<tr><td>{_e(p)}</td><td>{_e(why)}</td></tr>" for p, why in d["skipped"]]
        out.append("</table>")
    return "".join(out)


def _when(t: float | None) -> str:
    return "" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def render(store: Store, run_dir: Path, workers: int | None = None) -> str:
    """report.html's text; ``workers``: processes drawing the check sections (:func:`report_workers`)."""
    rows = store.rows(flatten=True)      # read once: the scorecard, the answer table and the sections share them
    sc = scorecard(store, rows)
    runs = store.runs()
    cells = store.cells(active_only=True)
    check_info = check_meta(store, runs)
    counts = {s: sum(c["status"] == s for c in cells) for s in ("done", "failed", "not_applicable", "pending")}
    counts["pending"] += sum(c["status"] == "running" for c in cells)
    secs = sum(c["seconds"] or 0 for c in cells)
    title = f"xaudit report: {sc.run}"
    desc = (runs[-1].get("preset") or {}).get("description", "") if runs else ""
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{_e(title)}</title><style>{CSS}</style>"
             f"</head><body><h1>{_e(title)}</h1>",
             f"<p>{_e(desc)}</p>" if desc else "",
             f"<p>{len(cells)} cells: {counts['done']} done, {counts['failed']} failed, {counts['not_applicable']} "
             f"not applicable, {counts['pending']} unfinished · {secs:.1f} s of cell time · written "
             f"{_e(_when(time.time()))}</p>",
             "<p>" + " · ".join(f'<a href="#check-{_e(c)}">{_e(c)}</a>' for c in sc.checks) + "</p>",
             '<h2 id="answer-title">Which method reveals which bug</h2>',
             answer.render_html(answer.answer_table(store, rows), check_info),
             _audit_html(runs),
             _check_sections(store, sc, check_info, run_dir, rows, workers),
             "<h2>Models</h2>", _models_html(store.models()),
             _cells_html(cells), _config_html(runs), f"<script>{answer.JS}</script></body></html>"]
    return "".join(parts)


def write_report(run_dir: str | Path, workers: int | None = None) -> Path:
    """(Re)write ``<run_dir>/report.html`` from the run's store; returns its path. ``workers``: processes that
    draw the check sections (default: the machine's cores, at most 8; 1 draws them in this process)."""
    db = find_db(run_dir)
    with Store(db, readonly=True) as store:
        text = render(store, db.parent, workers)
    path = db.parent / REPORT_NAME
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path
