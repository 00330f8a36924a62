"""The report: scorecard from the store, report.html self-contained, check figure hooks."""
from __future__ import annotations

import base64
import io
import json
from pathlib import Path
import re
import struct

import pytest

import run_fakes
import xaudit.run as xrun
from xaudit.checks.base import CHECKS, Check, row
from xaudit.core.errors import ConfigError
from xaudit.report import render_terminal, scorecard, write_report
from xaudit.report.scorecard import MIXED, headline_entry
from xaudit.run import Store, export_results

HOOK_PNG = {}


def _tiny_png() -> bytes:
    from matplotlib.figure import Figure
    from xaudit.report.figures import png
    fig = Figure(figsize=(1, 1))
    fig.add_subplot().plot([0, 1], [1, 0])
    return png(fig)


class HookCheck(Check):
    """A check with its own figures: one as PNG bytes, one as a matplotlib Figure."""
    name = "fake_hooked"
    description = "Hooked fake.\nVerdict: always pass."
    defaults = {}

    def models(self, params, model_group, seed):
        return []

    def run(self, ctx):
        # an artifact written in the worker's scratch folder travels back with the rows
        Path(ctx.artifacts_dir, "sub").mkdir()
        Path(ctx.artifacts_dir, "sub", "method.txt").write_text(ctx.method)
        return [row(ctx, "score", 0.25, 0.2, 0.3, n=4, verdict="pass")]

    def figures(self, rows, artifacts):
        from matplotlib.figure import Figure
        HOOK_PNG["rows"] = list(rows)
        HOOK_PNG["artifacts"] = list(artifacts)
        fig = Figure(figsize=(2, 2))
        fig.add_subplot().bar([0, 1], [1, 2])
        return [("hook bytes figure", HOOK_PNG["bytes"]), ("hook matplotlib figure", fig)]


class BrokenHookCheck(HookCheck):
    name = "fake_broken_hook"

    def run(self, ctx):
        return [row(ctx, "score", 0.25, 0.2, 0.3, n=4, verdict="pass")]

    def figures(self, rows, artifacts):
        raise RuntimeError("figure hook exploded")


for cls in (HookCheck, BrokenHookCheck):
    if cls.name not in CHECKS:
        CHECKS.register(cls.name)(cls)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    HOOK_PNG["bytes"] = _tiny_png()
    tmp = tmp_path_factory.mktemp("report")
    preset = {"name": "rep", "plugins": ["run_fakes"], "seeds": [0], "worlds": [{"world": "shapes", "size": 32}],
              "checks": ["fake_score", "fake_fail", "fake_hooked", "fake_broken_hook"],
              "methods": ["saliency", "grad_cam", "blank"]}
    res = xrun.run(preset, out=tmp / "run", workers=1, source=run_fakes.__name__ + ":FakeSource",
                   cache_dir=tmp / "cache", progress=False)
    assert res.report is not None and res.report.name == "report.html"
    return res.run_dir


def _pngs(html: str) -> list[bytes]:
    return [base64.b64decode(b) for b in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)]


def test_report_is_self_contained_with_valid_figures(run_dir):
    html = (run_dir / "report.html").read_text()
    assert not re.search(r'(src|href)="(https?:|//|file:)', html) and "<link" not in html
    assert re.findall(r"<script[^>]*>", html) == ["<script>"]          # the answer table's, inline
    srcs = re.findall(r'<img[^>]*src="([^"]{0,30})', html)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    for data in _pngs(html):
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
        w, h = struct.unpack(">II", data[16:24])
        assert w > 10 and h > 10


def test_report_contents(run_dir):
    html = (run_dir / "report.html").read_text()
    # protocol text of each check, failed cell with traceback, n/a reason, versions, config
    assert "Fake check for tests.\nVerdict: pass when the score is above 0.5." in html
    assert "Hooked fake." in html
    assert "Failed cells (1)" in html and "ValueError: planted failure for grad_cam" in html
    assert "raise ValueError(f&quot;planted failure for {ctx.method}&quot;)" in html
    assert "Not applicable (1)" in html and "blank does not apply to this fake check" in html
    import platform
    import torch
    assert f"<th>python</th><td>{platform.python_version()}</td>" in html
    assert f"<th>torch</th><td>{torch.__version__.split('+')[0]}" in html
    assert "git_commit" in html and "&quot;plugins&quot;" in html
    # the check's own figures: the bytes verbatim, the Figure rendered; the broken hook noted
    assert base64.b64encode(HOOK_PNG["bytes"]).decode() in html
    assert "hook matplotlib figure" in html
    assert "the check&#x27;s figures() failed: RuntimeError: figure hook exploded" in html
    # the sections were drawn by forked processes: draw them here, one by one, to see what the hook got;
    # the same report either way
    parallel = write_report(run_dir, workers=2).read_text()
    serial = write_report(run_dir, workers=1).read_text()
    unstamped = lambda t: re.sub(r"written [0-9: -]+", "", t)  # noqa: E731
    assert unstamped(serial) == unstamped(parallel) and unstamped(serial) == unstamped(html)
    assert {r["check"] for r in HOOK_PNG["rows"]} == {"fake_hooked"} and len(HOOK_PNG["rows"]) == 3
    # the hook gets the artifact folders of its own done cells, which hold what each cell wrote
    with Store.open(run_dir, readonly=True) as store:
        hooked = [c for c in store.cells() if c["check_name"] == "fake_hooked" and c["status"] == "done"]
    assert sorted(HOOK_PNG["artifacts"]) == sorted(run_dir / "artifacts" / c["key"][:16] for c in hooked)
    assert sorted((d / "sub" / "method.txt").read_text() for d in HOOK_PNG["artifacts"]) == \
        sorted(c["method"] for c in hooked)
    # the answer table comes first; baselines are its last rows
    assert html.index('id="answer"') < html.index('id="check-')
    assert html.index('data-method="grad_cam"') < html.index('data-method="blank"')


def test_scorecard_matches_the_exported_rows(run_dir, tmp_path):
    rows = json.loads(export_results(run_dir, "json", tmp_path / "rows.json").read_text())
    with Store.open(run_dir, readonly=True) as store:
        sc = scorecard(store)
    assert sc.methods == ["saliency", "grad_cam"] and sc.baselines == ["blank"]
    assert sc.checks == ["fake_score", "fake_fail", "fake_hooked", "fake_broken_hook"]
    for r in rows:
        if r["verdict"] is None:
            continue
        (label, e), = sc.lines(r["method"], r["check"])
        assert (e.verdict, e.value, e.ci_low, e.ci_high, e.metric) == (r["verdict"], r["value"], r["ci_low"],
                                                                        r["ci_high"], r["metric"])
        word = {"pass": "PASS", "fail": "FAIL"}[r["verdict"]]
        ci = f" [{r['ci_low']:.3g}, {r['ci_high']:.3g}]" if r["ci_low"] is not None else ""
        assert e.text() == f"{word} {r['value']:.3g}{ci}"
        sym = {"pass": "✔", "fail": "✘"}[r["verdict"]]        # the check's verdict table: symbol and score [CI]
        assert f"{sym} {e.score()}</td>" in (run_dir / "report.html").read_text()
    assert [e.text() for _, e in sc.lines("grad_cam", "fake_fail")] == ["error"]
    assert [e.text() for _, e in sc.lines("blank", "fake_fail")] == ["n/a"]
    from rich.console import Console
    con = Console(file=io.StringIO(), width=200)
    render_terminal(sc, con)
    out = con.file.getvalue()
    assert "saliency" in out and "blank (baseline)" in out and "error" in out and "PASS 0.25 [0.2, 0.3]" in out


def test_headline_of_several_verdict_rows():
    def v(metric, verdict, value):
        return {"metric": metric, "verdict": verdict, "value": value, "ci_low": value - 0.1, "ci_high": value + 0.1,
                "n": 8, "world": "shapes", "model": "clean", "seed": 0}
    rows = [v("a", "pass", 0.1), v("b", "fail", 0.9), v("c", "fail", 0.8)]
    e = headline_entry(rows, None)
    assert e.verdict == MIXED and e.metric == "a" and e.text() == "PFF 0.1 [0, 0.2]" and e.codes() == "PFF"
    assert e.metrics() == ["a", "b", "c"]
    e = headline_entry(rows, "b")
    assert e.verdict == "fail" and e.value == 0.9 and e.text() == "FAIL 0.9 [0.8, 1]"
    assert headline_entry(rows[1:], None).verdict == "fail"


def test_unfinished_cells_and_missing_store(run_dir, tmp_path):
    with pytest.raises(ConfigError, match="no results store"):
        write_report(tmp_path)
    import shutil
    import sqlite3
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    con = sqlite3.connect(copy / "results.sqlite")
    con.execute("UPDATE cells SET status = 'pending' WHERE check_name = 'fake_hooked'")
    con.commit()
    con.close()
    html = write_report(copy).read_text()
    assert "Unfinished cells (3)" in html and "run the same command again to resume" in html
