"""The answer table (xaudit/report/answer.py), built from a store written by hand: every state, the
column templates and filters, checks sharing a column, absent families, the sort order, the HTML
contract the browser test drives, the terminal, and the verdict colours' grayscale margin."""
from __future__ import annotations

import io
import re
from dataclasses import dataclass

import pytest

from xaudit.report import answer
from xaudit.run import Store

# check metadata as a run records it (xaudit.checks.describe()): the report reads it from the store
CHECKS = [
    {"name": "cascading_randomization", "bug": "randomized weights", "scorecard_metric": "spearman_abs",
     "verdict_key": ["metric"]},
    {"name": "independent_randomization", "bug": "randomized weights", "scorecard_metric": "spearman_abs",
     "verdict_key": ["metric"]},
    {"name": "trojan_localization", "bug": "{trojan} trojan", "bug_rows": {"trojan": "family:*"},
     "scorecard_metric": "l1", "verdict_key": ["metric", "trojan"]},
    {"name": "localization", "bug": "", "scorecard_metric": "l1", "verdict_key": ["metric"]},
    {"name": "my_plugin_check", "bug": None, "scorecard_metric": None, "verdict_key": ["metric"]},
    {"name": "spurious", "bug": "spurious cue", "scorecard_metric": "mass", "verdict_key": ["metric"]},
]
METHODS = [{"name": "saliency", "family": "gradient"}, {"name": "grad_cam", "family": "cam"},
           {"name": "occlusion", "family": "perturbation"}, {"name": "edge", "family": "baseline"}]


@dataclass
class PlanCell:
    key: str
    check: str
    method: str
    world_name: str
    ordinal: int
    seed: int = 0
    model_group: str = "clean"
    check_version: str = "1"

    @property
    def world(self):
        return {"world": self.world_name}

    @property
    def config(self):
        return {"world": self.world}


def R(check, method, world, metric, verdict, value=0.5, **extra):
    return {"check": check, "method": method, "model": "clean", "world": world, "seed": 0, "metric": metric,
            "value": value, "ci_low": value - 0.1, "ci_high": value + 0.1, "n": 16, "verdict": verdict, **extra}


# (check, method, world) -> rows; a cell listed with None failed
CELLS = {
    # saliency passes both randomizations in both worlds (the headline metric; another metric fails: ignored)
    ("cascading_randomization", "saliency", "a"): [R("cascading_randomization", "saliency", "a", "spearman_abs", "pass"),
                                                   R("cascading_randomization", "saliency", "a", "ssim", "fail")],
    ("cascading_randomization", "saliency", "b"): [R("cascading_randomization", "saliency", "b", "spearman_abs", "pass")],
    ("independent_randomization", "saliency", "a"): [R("independent_randomization", "saliency", "a", "spearman_abs",
                                                       "pass")],
    # grad_cam: pass on one world, fail on the other -> inconclusive
    ("cascading_randomization", "grad_cam", "a"): [R("cascading_randomization", "grad_cam", "a", "spearman_abs", "pass")],
    ("cascading_randomization", "grad_cam", "b"): [R("cascading_randomization", "grad_cam", "b", "spearman_abs", "fail")],
    # occlusion: an inconclusive row -> inconclusive
    ("cascading_randomization", "occlusion", "a"): [R("cascading_randomization", "occlusion", "a", "spearman_abs",
                                                      "inconclusive")],
    # the edge baseline fails
    ("cascading_randomization", "edge", "a"): [R("cascading_randomization", "edge", "a", "spearman_abs", "fail")],
    # trojans: per-family rows count, per-trojan rows do not
    ("trojan_localization", "saliency", "a"): [
        R("trojan_localization", "saliency", "a", "l1", "pass", trojan="family:patch"),
        R("trojan_localization", "saliency", "a", "l1", "fail", trojan="patch_a"),
        R("trojan_localization", "saliency", "a", "l1", "fail", trojan="family:natural")],
    ("trojan_localization", "grad_cam", "a"): None,          # the cell failed: absent, not failing
    ("localization", "saliency", "a"): [R("localization", "saliency", "a", "l1", "pass")],
    ("my_plugin_check", "grad_cam", "a"): [R("my_plugin_check", "grad_cam", "a", "score", "fail")],
}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    d = tmp_path_factory.mktemp("answer")
    st = Store(d / "results.sqlite")
    st.begin_run("handmade", {"name": "handmade"}, len(CELLS), 1, {}, CHECKS, METHODS)
    plan = [PlanCell(f"k{i}", c, m, w, i) for i, (c, m, w) in enumerate(CELLS)]
    st.sync_plan(plan)
    for pc, rows in zip(plan, CELLS.values()):
        if rows is None:
            st.cell_finished(pc.key, "handmade", "failed", error="boom")
        else:
            st.cell_finished(pc.key, "handmade", "done", rows=[{**r, "cell": pc.key} for r in rows])
    st.close()
    s = Store(d / "results.sqlite", readonly=True)
    yield s
    s.close()


def test_states_columns_and_rule(store):
    at = answer.answer_table(store)
    assert at.methods == ["saliency", "grad_cam", "occlusion", "edge"]        # baselines last
    assert [c.label for c in at.columns] == ["randomized weights", "patch trojan", "natural trojan", "my_plugin_check"]
    assert at.columns[0].checks == ["cascading_randomization", "independent_randomization"]
    got = {(m, c.label): at.cell(m, c.label).state for m in at.methods for c in at.columns}
    assert got == {
        ("saliency", "randomized weights"): "reveals",
        ("grad_cam", "randomized weights"): "inconclusive",
        ("occlusion", "randomized weights"): "inconclusive",
        ("edge", "randomized weights"): "not",
        ("saliency", "patch trojan"): "reveals", ("saliency", "natural trojan"): "not",
        ("grad_cam", "patch trojan"): "absent", ("grad_cam", "natural trojan"): "absent",
        ("occlusion", "patch trojan"): "absent", ("edge", "natural trojan"): "absent",
        ("occlusion", "natural trojan"): "absent", ("edge", "patch trojan"): "absent",
        ("saliency", "my_plugin_check"): "absent", ("grad_cam", "my_plugin_check"): "not",
        ("occlusion", "my_plugin_check"): "absent", ("edge", "my_plugin_check"): "absent",
    }
    # the headline metric only: saliency's failing ssim row is not in its cell
    assert [r["metric"] for r in at.cell("saliency", "randomized weights").rows] == ["spearman_abs"] * 3
    # localization plants no bug; spurious did not run: neither has a column, and no method "fails" them
    assert "localization" in at.notes[0]
    assert not any("spurious" in c.label for c in at.columns)
    # sort scores: (passes - fails) / rows; absent below everything
    assert at.cell("grad_cam", "randomized weights").sort_key() == 0.0
    assert at.cell("saliency", "randomized weights").sort_key() == 1.0
    assert at.cell("edge", "randomized weights").sort_key() == -1.0
    assert at.sorted_methods("randomized weights") == ["saliency", "grad_cam", "occlusion", "edge"]
    assert at.sorted_methods("my_plugin_check") == ["grad_cam", "saliency", "occlusion", "edge"]


def test_html_contract(store):
    at = answer.answer_table(store)
    meta = {c["name"]: c for c in CHECKS}
    html = answer.render_html(at, meta)
    assert html.count("<tr data-method=") == len(at.methods)
    assert re.findall(r'<tr data-method="([^"]+)" data-family="([^"]*)"', html) == [
        ("saliency", "gradient"), ("grad_cam", "cam"), ("occlusion", "perturbation"), ("edge", "baseline")]
    assert re.findall(r'<th data-col="(\d+)"', html) == [str(i) for i in range(2 + len(at.columns))]
    cells = re.findall(r'<td class="v" data-col="(\d+)" data-verdict="(\w+)" data-sort="([-\d.e]+)"[^>]*title="([^"]*)"'
                       r'>([^<]*)</td>', html)
    assert len(cells) == len(at.methods) * len(at.columns)
    first = cells[0]            # saliency x randomized weights
    assert first[1] == "reveals" and float(first[2]) == 1.0 and first[4] == "✔"
    # the hover text: the score with its CI for each row, and the rule
    assert "cascading_randomization spearman_abs (a, clean, seed 0): pass 0.5 [0.4, 0.6]" in first[3]
    assert "every verdict row of the column passes" in first[3]
    assert '<select id="answer-filter">' in html and '<option value="cam">cam</option>' in html


def test_terminal(store):
    from rich.console import Console

    con = Console(file=io.StringIO(), width=80)
    answer.render_terminal(answer.answer_table(store), con)
    out = con.file.getvalue()
    lines = [ln for ln in out.splitlines() if ln.strip().startswith(("saliency", "edge"))]
    assert "✔" in lines[0] and "–" in lines[0]
    assert lines[1].startswith(" edge (baseline)") and "✘" in lines[1]
    assert "A randomized weights; B patch trojan; C natural trojan; D my_plugin_check" in out
    assert max(len(ln) for ln in out.splitlines()) <= 80


def _lightness(hex_colour: str) -> float:
    """CIE L* of an sRGB colour (D65), by the standard formulas."""
    rgb = [int(hex_colour[i:i + 2], 16) / 255 for i in (1, 3, 5)]
    lin = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in rgb]
    y = 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]
    return 116 * (y ** (1 / 3) if y > (6 / 29) ** 3 else y / (3 * (6 / 29) ** 2) + 4 / 29) - 16


def test_lightness_formula_against_hand_worked_values():
    assert _lightness("#ffffff") == pytest.approx(100, abs=1e-6)
    assert _lightness("#000000") == pytest.approx(0, abs=1e-6)
    assert _lightness("#808080") == pytest.approx(53.585, abs=0.01)     # mid grey: L* 53.59


def test_verdict_colours_stay_apart_in_grayscale():
    """Printed in grayscale, the three verdict backgrounds differ in lightness by the stated margin, and
    each symbol has contrast on its own background."""
    bg = {k: _lightness(answer.STYLE[k][2]) for k in ("reveals", "not", "inconclusive")}
    ls = sorted(bg.values())
    assert min(b - a for a, b in zip(ls, ls[1:])) >= answer.LIGHTNESS_MARGIN
    for k in bg:
        assert abs(_lightness(answer.STYLE[k][3]) - bg[k]) >= 35          # the symbol on its background
    assert len({answer.STYLE[k][0] for k in answer.STYLE}) == len(answer.STYLE)   # a distinct symbol each
