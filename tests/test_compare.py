"""``xaudit compare``: two real (fake-check) runs that differ in one check parameter and one method.

Run A: fake_score, cmp_shift (level 0.3) and fake_fail on saliency and blank, seeds 0 and 1.
Run B: fake_score, cmp_shift (level 0.45) on saliency, blank and grad_cam. cmp_shift (defined here,
registered only while the runs are made) has two verdict rows per cell, told apart by ``part``
(verdict key ("metric", "part")): its values move by +0.15 and part b's verdicts go fail -> pass;
fake_score's values are the same in both runs (B - A = 0 with CI +-sqrt(0.1^2 + 0.1^2)).
"""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from run_fakes import value_of  # also registers the fake checks in this process
from test_run import fake_preset, run_fake
from xaudit.checks.base import CHECKS, Check, row
from xaudit.core.errors import ConfigError
from xaudit.report.compare import RunData, build_comparison, compare, comparison, diff_ci
from xaudit.run import Store

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
H = 0.05                     # cmp_shift's CI half-width in both runs


class CmpShift(Check):
    """Two verdict rows per cell (part a, part b): level (+0.1 for b) plus a small per-cell offset."""
    name = "cmp_shift"
    version = "1"
    verdict_key = ("metric", "part")
    defaults = {"level": 0.3, "halfwidth": H}

    def models(self, params, model_group, seed):
        return []

    def run(self, ctx):
        out = []
        for i, part in enumerate(("a", "b")):
            v = ctx.params["level"] + 0.1 * i + 0.01 * value_of(ctx.method, ctx.seed)
            h = ctx.params["halfwidth"]
            out.append(row(ctx, "score", v, v - h, v + h, n=10, verdict="pass" if v > 0.5 else "fail", part=part))
        return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compare")
    added = CmpShift.name not in CHECKS
    if added:
        CHECKS.register(CmpShift.name)(CmpShift)
    try:
        a = run_fake(tmp, fake_preset(name="base", methods=["saliency", "blank"],
                                      checks={"fake_score": {}, "cmp_shift": {}, "fake_fail": {}}),
                     out="base", report=False)
        b = run_fake(tmp, fake_preset(name="tweak", methods=["saliency", "blank", "grad_cam"],
                                      checks={"fake_score": {}, "cmp_shift": {"params": {"level": 0.45}}}),
                     out="tweak", report=False)
    finally:
        if added:   # other test modules must not see this check
            del CHECKS._items[CmpShift.name]
            CHECKS._meta.pop(CmpShift.name, None)
    return a.run_dir, b.run_dir


def verdict_rows(run_dir: Path) -> dict[tuple, dict]:
    """A store's verdict rows by (check, method, world, model, seed, metric, part), read directly."""
    with Store.open(run_dir, readonly=True) as s:
        rows = s.rows(flatten=True)
    out = {}
    for r in rows:
        if r["verdict"] is not None:
            k = (r["check"], r["method"], r["world"], r["model"], r["seed"], r["metric"], r.get("part"))
            assert k not in out
            out[k] = r
    return out


def ident(d) -> tuple:
    return (d.check, d.method, d.world, d.model, d.seed, d.key[0], d.key[1] if len(d.key) > 1 else None)


def test_differences_are_b_minus_a_of_the_stored_rows(runs):
    a, b = runs
    ra, rb = verdict_rows(a), verdict_rows(b)
    comp = comparison(a, b)
    assert {ident(d) for d in comp.rows} == set(ra) & set(rb)
    assert len(comp.rows) == 4 + 8                      # fake_score 2 methods x 2 seeds; cmp_shift x 2 parts
    for d in comp.rows:
        k = ident(d)
        assert d.diff == pytest.approx(rb[k]["value"] - ra[k]["value"], abs=1e-12)
        assert d.a["value"] == ra[k]["value"] and d.b["value"] == rb[k]["value"]
        assert d.diff == pytest.approx(0.15 if d.check == "cmp_shift" else 0.0, abs=1e-9)
    assert comp.checks == ["fake_score", "cmp_shift"]
    assert len(comp.significant()) == 8 and {d.check for d in comp.significant()} == {"cmp_shift"}


def test_ci_of_the_difference_follows_the_rule(runs):
    comp = comparison(*runs)
    d = next(d for d in comp.rows if ident(d)[:5] == ("cmp_shift", "saliency", "shapes@32", "clean", 0)
             and d.key == ("score", "b"))
    h = math.sqrt(H ** 2 + H ** 2)                      # 0.0707...: quadrature of the two half-widths
    assert (d.diff_low, d.diff_high) == pytest.approx((0.15 - 0.0707107, 0.15 + 0.0707107), abs=1e-6)
    assert d.diff_high - d.diff == pytest.approx(h) and d.excludes_zero
    same = next(d for d in comp.rows if d.check == "fake_score")
    assert (same.diff_low, same.diff_high) == pytest.approx((-0.1414214, 0.1414214), abs=1e-6)
    assert not same.excludes_zero
    # hand-checked numbers: 3-4-5 for symmetric CIs; a skewed CI keeps its skew side by side; no CI, no CI
    assert diff_ci({"value": 1.0, "ci_low": 0.7, "ci_high": 1.3},
                   {"value": 2.0, "ci_low": 1.6, "ci_high": 2.4}) == pytest.approx((1.0, 0.5, 1.5))
    assert diff_ci({"value": 0.5, "ci_low": 0.4, "ci_high": 0.55}, {"value": 0.7, "ci_low": 0.67, "ci_high": 0.8}) \
        == pytest.approx((0.2, 0.2 - math.sqrt(0.03 ** 2 + 0.05 ** 2), 0.2 + math.sqrt(0.1 ** 2 + 0.1 ** 2)))
    assert diff_ci({"value": 1.0}, {"value": 3.0, "ci_low": 2.0, "ci_high": 4.0}) == (2.0, None, None)


def test_changed_verdicts_one_run_only_and_the_changed_parameter(runs):
    a, b = runs
    ra, rb = verdict_rows(a), verdict_rows(b)
    expected = {k for k in set(ra) & set(rb) if ra[k]["verdict"] != rb[k]["verdict"]}
    comp = comparison(a, b)
    changed = comp.changed_verdicts()
    assert list(changed) == ["cmp_shift"]
    assert {ident(d) for d in changed["cmp_shift"]} == expected and len(expected) == 4
    assert all(d.a["verdict"] == "fail" and d.b["verdict"] == "pass" and d.label == "score / b"
               for d in changed["cmp_shift"])
    assert comp.only["method"] == ([], ["grad_cam"])
    assert comp.only["check"] == (["fake_fail"], [])
    assert comp.only["seed"] == ([], []) and comp.only["world"] == ([], [])
    assert {u.row["method"] for u in comp.only_b_rows} == {"grad_cam"} and len(comp.only_b_rows) == 6
    assert {u.row["check"] for u in comp.only_a_rows} == {"fake_fail"}
    assert [(c.kind, c.name, c.a, c.b) for c in comp.parameter_changes()] == [
        ("check parameter", "cmp_shift.level", "0.3", "0.45")]
    assert comp.config_note().startswith("One changed parameter: check parameter cmp_shift.level: 0.3 → 0.45")
    assert (comp.a.name, comp.b.name) == ("base", "tweak")


def test_html_report(runs):
    a, b = runs
    path = compare(a, b)
    assert path == b / "compare-base" / "compare.html"
    text = path.read_text(encoding="utf-8")
    changed_at, per_check_at = text.index("Changed verdicts (4)"), text.index("Differences per check")
    assert changed_at < per_check_at
    changed = text[changed_at:text.index("Only in one run")]
    assert "cmp_shift" in changed and "fake_score" not in changed
    assert changed.count('<td class="not">✘ fail</td>') == 4 and changed.count('<td class="reveals">✔ pass</td>') == 4
    assert "+0.15 [0.0793, 0.221]" in changed                 # B - A with the CI of the rule
    only = text[text.index("Only in one run"):per_check_at]
    assert "<th>methods</th><td>–</td><td>grad_cam</td>" in only
    assert "<th>checks</th><td>fake_fail</td><td>–</td>" in only
    assert "cmp_shift.level" in text and "One changed parameter" in text and "quadrature" in text
    assert "base" in text and "tweak" in text
    assert "0 [-0.141, 0.141]" in text[per_check_at:]
    low = text.lower()
    assert "<script" not in low and "<link" not in low and "src=" not in low and "url(" not in low
    # everything from the store is escaped
    comp = comparison(a, b)
    comp.a.runs[-1]["name"] = "<b>x</b>"
    from xaudit.report.compare import render
    page = render(comp)
    assert "&lt;b&gt;x&lt;/b&gt;" in page and "<b>x</b>" not in page


def test_matching_uses_the_verdict_key_not_row_order(tmp_path):
    """Hand-made rows: B lists part b before part a; a check recorded with verdict key (metric, part)."""
    def rows(parts):
        return [{"check": "x", "method": "m", "world": "w", "model": "g", "seed": 0, "metric": "s", "part": p,
                 "value": v, "ci_low": None, "ci_high": None, "n": 1, "verdict": ver, "cell": "k"}
                for p, v, ver in parts]
    runs = [{"name": "r", "checks": [{"name": "x", "version": "1", "verdict_key": ["metric", "part"]}]}]
    cells = [{"check_name": "x", "method": "m", "world": "w", "model_group": "g", "seed": 0, "status": "done",
              "config": {"params": {}}}]
    a = RunData(tmp_path / "a", cells, rows([("a", 0.1, "fail"), ("b", 0.2, "fail")]), runs)
    b = RunData(tmp_path / "b", cells, rows([("b", 0.5, "pass"), ("a", 0.3, "fail")]), runs)
    comp = build_comparison(a, b)
    got = {d.key: d.diff for d in comp.rows}
    assert got == pytest.approx({("s", "b"): 0.3, ("s", "a"): 0.2})
    assert [d.key for d in comp.rows if d.verdict_changed] == [("s", "b")]
    assert all(d.diff_low is None and not d.excludes_zero for d in comp.rows)   # rows without a CI


def test_same_run_twice_and_not_a_run_folder(runs, tmp_path):
    a, _ = runs
    with pytest.raises(ConfigError, match="same run"):
        comparison(a, a / "results.sqlite")
    with pytest.raises(ConfigError, match="RUN_B: .*nothing is not a run folder"):
        comparison(a, tmp_path / "nothing")


def _cli(*args, cwd):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "xaudit.cli", "compare", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=120)


def test_cli_writes_the_report_and_a_summary(runs, tmp_path):
    a, b = runs
    r = _cli(a, b, "--out", tmp_path / "cmp", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (tmp_path / "cmp" / "compare.html").is_file()
    assert "One changed parameter" in r.stdout and "4 changed verdicts" in r.stdout
    assert "only in B: methods grad_cam" in r.stdout and f"wrote {tmp_path / 'cmp' / 'compare.html'}" in r.stdout


def test_cli_bad_path_is_a_clear_error(runs, tmp_path):
    a, _ = runs
    bad = tmp_path / "not-a-run"
    bad.mkdir()
    r = _cli(a, bad, "--out", tmp_path / "cmp2", cwd=tmp_path)
    assert r.returncode != 0 and "Traceback" not in r.stdout + r.stderr
    assert "error: " in r.stderr and str(bad) in r.stderr
    assert not (tmp_path / "cmp2").exists()
