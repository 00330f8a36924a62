"""The cost model of ``xaudit plan`` (xaudit/run/cost.py): measured times from earlier stores, the
fallbacks, and the simulated wall time against hand-worked schedules."""
from __future__ import annotations

import sqlite3
import subprocess
import sys

import pytest

import run_fakes  # noqa: F401  (registers the fake checks in this process)
import xaudit.api as xapi
from xaudit.run.cost import History, cell_estimate, history_from, simulate
from test_run import FAKE_SOURCE, fake_preset, run_fake


def test_simulate_matches_hand_worked_schedules():
    # 2 workers, cells 3, 2, 2, 1 in plan order: A 0-3, B 0-2, B 2-4, A 3-4 -> 4
    assert simulate([], [3, 2, 2, 1], 2, 1)["cells_s"] == 4
    # 1 worker: the sum; 3 workers: the longest chain
    assert simulate([], [3, 2, 2, 1], 1, 1)["cells_s"] == 8
    assert simulate([], [3, 2, 2, 1], 3, 1)["cells_s"] == 3
    # models one at a time (their threads fill the cores), then cells
    r = simulate([5, 4], [1, 1], 2, 1)
    assert (r["models_s"], r["cells_s"], r["wall_s"]) == (9, 1, 10)
    assert simulate([5, 4], [], 2, 2)["models_s"] == 5


def test_predict_from_an_earlier_store(tmp_path):
    preset = fake_preset(checks={"fake_score": {}, "fake_model": {"params": {"partner": "other"}}})
    res = run_fake(tmp_path, preset)
    assert res.summary.failed == 0
    db = res.run_dir / "results.sqlite"
    con = sqlite3.connect(db)             # give the cells known durations
    keys = [k for (k,) in con.execute("SELECT key FROM cells WHERE status = 'done' ORDER BY ordinal")]
    for i, k in enumerate(keys):
        con.execute("UPDATE cells SET seconds = ? WHERE key = ?", (float(i + 1), k))
    con.commit()
    con.close()
    assert len(history_from([tmp_path]).cells) == len(keys)
    r = xapi.plan(preset, workers=1, history=[tmp_path], source=FAKE_SOURCE)
    assert r["estimate_sources"] == {"exact": len(keys)} and r["cells"] == len(keys)
    from xaudit.run.cost import CELL_OVERHEAD_S

    n = len(keys)            # one worker: the sum 1 + ... + n, plus the executor's overhead per cell
    assert r["cells_s"] == pytest.approx(n * (n + 1) / 2 + n * CELL_OVERHEAD_S["local"])
    ray_r = xapi.plan(preset, workers=1, history=[tmp_path], source=FAKE_SOURCE, executor="ray")
    assert ray_r["cells_s"] == pytest.approx(n * (n + 1) / 2 + n * CELL_OVERHEAD_S["ray"])
    # two workers in plan order: simulated as the hand-checked list schedule, each cell slower by the thread
    # ratio (measured with every core's threads in one worker, predicted with cores // 2 each)
    from xaudit.run.cost import THREAD_EXPONENT
    from xaudit.run.executor import available_cores

    cores = available_cores()
    slower = (cores / max(1, cores // 2)) ** THREAD_EXPONENT
    r2 = xapi.plan(preset, workers=2, history=[tmp_path], source=FAKE_SOURCE)
    assert r2["cells_s"] == pytest.approx(simulate([], [(i + 1) * slower + CELL_OVERHEAD_S["local"]
                                                        for i in range(len(keys))], 2, 1)["cells_s"])
    # another method parameter: not the same cell; the same check and method on the same world
    other = dict(preset, methods=[{"saliency": {"internal_batch": 8}}, "grad_cam", "blank"])
    r3 = xapi.plan(other, workers=1, history=[tmp_path], source=FAKE_SOURCE)
    assert r3["estimate_sources"].get("same method", 0) > 0 and r3["estimate_sources"].get("exact", 0) > 0


def test_fallbacks_without_history():
    h = History()

    class C:
        key, check, method, method_params, world_name, upstream = "k", "fake_score", "saliency", {}, "shapes@32", None
    e = cell_estimate(C, h)
    assert e.source == "default"
    h.by_check["fake_score"] = [(2.0, "saliency"), (4.0, "saliency")]
    C.method = "integrated_gradients"     # 50 steps: 50x saliency's passes
    e = cell_estimate(C, h)
    assert e.source == "scaled by passes" and e.seconds == pytest.approx(3.0 * 50)


def test_plan_command(tmp_path):
    r = subprocess.run([sys.executable, "-m", "xaudit.cli", "plan", "smoke", "--workers", "2", "--history",
                        str(tmp_path), "--cache", str(tmp_path / "cache")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "2 cells" in r.stdout and "2 to train" in r.stdout and "predicted wall time on 2 local worker(s)" in r.stdout
    bad = subprocess.run([sys.executable, "-m", "xaudit.cli", "plan", "smoke", "--history", str(tmp_path / "nope")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--history: no such folder" in bad.stderr
