"""Bench: the same preset on the local executor and on Ray (a local Ray instance), at 1 and 2 workers, warm.

    .venv/bin/python bench/scale.py [--cache DIR] [--preset default] [--configs local:1,local:2,ray:1,ray:2]

The runs are warm: models the cache lacks are trained first by a run that is not measured, so the runs
measure the cells, not training. Per configuration, written to bench/results/scale.json:

- ``wall_s``: the whole `xaudit run` command (a cold process: imports, planning, the executor's start-up
  (Ray: its local instance), the cells, the report);
- ``cells_s``: the cells' worker-seconds; ``efficiency``: parallel efficiency against the same executor at
  one worker, T1 / (K x TK);
- ``dispatch_overhead_ms``: per cell, the driver's time from dispatch to result minus the cell's own
  seconds in its worker (median): what the executor adds to every cell;
- ``predicted_s``: the cost model's (``xaudit plan``) wall time for this configuration, from the stores of
  the *other* configurations of the same executor (a prediction, not a fit), and its error.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run_one(preset: str, executor: str, workers: int, cache: str, out: Path) -> dict:
    cmd = [sys.executable, "-m", "xaudit.cli", "run", preset, "--out", str(out), "--cache", cache,
           "--workers", str(workers), "--executor", executor]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if p.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    con = sqlite3.connect(out / "results.sqlite")
    cells = con.execute("SELECT started_at, finished_at, seconds, status FROM cells WHERE active = 1").fetchall()
    models = con.execute("SELECT count(*) FROM models").fetchone()[0]
    con.close()
    ran = [(f - s, sec) for s, f, sec, st in cells if s is not None and f is not None and sec is not None]
    overhead = [max(0.0, span - sec) for span, sec in ran]
    return {"executor": executor, "workers": workers, "wall_s": round(wall, 2), "returncode": p.returncode,
            "cells": len(cells), "cells_done": sum(1 for c in cells if c[3] == "done"), "models": models,
            "cells_s": round(sum(sec for _, sec in ran), 2),
            "dispatch_overhead_ms": round(1000 * statistics.median(overhead), 2) if overhead else None,
            "dispatch_overhead_mean_ms": round(1000 * statistics.mean(overhead), 2) if overhead else None,
            "summary_line": next((line for line in p.stdout.splitlines() if " cells: " in line), "")}


def paper_estimate(models: int = 1000, workers: int = 16, methods: int = 4) -> dict:
    """The wall time of an audit population of ``models`` models on ``workers`` GPU workers, from the cost
    model's simulation (:func:`xaudit.run.cost.simulate`) with per-task times measured in the default run
    (bench/results/run.json, cold): a population member's preparation (training on 20,000 images plus its
    card's evaluation) and model_anomaly's seconds per model and method. CPU-equivalent: the times are this
    CPU's; a GPU would shorten both, by a factor not measured here."""
    from xaudit.run.cost import simulate

    run = json.loads((ROOT / "bench" / "results" / "run.json").read_text())["phases"]
    cold = run["cold"]
    prep = [p for label, p, train, took in cold["per_model_prep_s_train_s_took"]
            if label.startswith("clean on shapes, seed") and int(label.rsplit(" ", 1)[1]) >= 100]
    per_model = statistics.median(prep)
    anomaly = next(c for c in run["warm"]["per_check_cells_cell_s_and_pass_s"] if c[0] == "model_anomaly")
    population = 6 + 11              # the default preset's model_anomaly population
    per_model_method = anomaly[2] / anomaly[1] / population
    cell = models * per_model_method  # one cell per method explains the whole population
    sim = simulate([per_model] * models, [cell] * methods, workers, workers)
    return {"models": models, "workers": workers, "methods": methods,
            "per_model_prep_s": round(per_model, 2), "per_model_method_s": round(per_model_method, 3),
            "models_phase_s": round(sim["models_s"], 1), "cells_phase_s": round(sim["cells_s"], 1),
            "wall_s": round(sim["wall_s"], 1),
            "assumptions": ["one worker per GPU, each training one model at a time (models_phase = models x "
                            "prep / workers)", "per-task times of this CPU (2 threads): CPU-equivalent",
                            "model_anomaly runs one cell per method over the whole population: the cell phase "
                            "cannot use more workers than methods", "the population's pairwise distances grow "
                            "with the square of the models: not in the per-model cell time measured at 17 models"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="default")
    ap.add_argument("--cache", default=None, help="the model cache (default: the zoo's); models it lacks are "
                                                  "trained first, by a run that is not measured")
    ap.add_argument("--configs", default="local:1,local:2,ray:1,ray:2")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "scale.json")
    ap.add_argument("--predict-only", action="store_true", help="recompute the predictions and the summary of --out "
                                                                "from its runs' folders (kept in /tmp)")
    ap.add_argument("--paper-only", action="store_true", help="only (re)compute the 1,000-model estimate into --out")
    args = ap.parse_args()
    if args.predict_only:        # recompute from the kept run folders of an earlier --out
        finish(json.loads(args.out.read_text())["results"], args)
        return
    if args.paper_only:
        doc = json.loads(args.out.read_text()) if args.out.exists() else {}
        doc["paper_1000_models_16_gpus"] = paper_estimate()
        args.out.write_text(json.dumps(doc, indent=1) + "\n")
        print(json.dumps(doc["paper_1000_models_16_gpus"], indent=1))
        return
    import xaudit.api as xapi

    from xaudit.zoo.cache import cache_root

    args.cache = str(cache_root(args.cache))
    tmp = Path(tempfile.mkdtemp(prefix="xaudit-bench-scale-"))
    missing = xapi.plan(args.preset, workers=2, history=[], cache_dir=args.cache)["models_to_train"]
    if missing:
        print(f"== warm-up: training {missing} model(s) into {args.cache} (not measured)", flush=True)
        run_one(args.preset, "local", 2, args.cache, tmp / "warm-up")
    results = []
    for conf in args.configs.split(","):
        ex, k = conf.split(":")
        out = tmp / f"{ex}-{k}"
        print(f"== {ex} executor, {k} worker(s)", flush=True)
        r = run_one(args.preset, ex, int(k), args.cache, out)
        r["run_dir"] = str(out)
        print(json.dumps(r), flush=True)
        results.append(r)
    finish(results, args)


def finish(results: list[dict], args) -> None:
    """Efficiencies, the cost model's predictions (each configuration from the others' stores) and the
    summary, written to ``args.out``."""
    import xaudit.api as xapi

    by = {(r["executor"], r["workers"]): r for r in results}
    for r in results:
        one = by.get((r["executor"], 1))
        if one:
            r["efficiency"] = round(one["wall_s"] / (r["workers"] * r["wall_s"]), 3)
        others = [o["run_dir"] for o in results if o["executor"] == r["executor"] and o is not r]
        if others:
            pred = xapi.plan(args.preset, workers=r["workers"], history=others, cache_dir=args.cache)
            r["predicted_s"] = round(pred["wall_s"], 1)
            r["predicted_from"] = [Path(o).name for o in others]
            r["prediction_error"] = round(pred["wall_s"] / r["wall_s"] - 1, 3)
    local2, ray2 = by.get(("local", 2)), by.get(("ray", 2))
    doc = {"bench": "scale: local vs Ray executor, 1 and 2 workers, warm", "preset": args.preset,
           "machine": {"platform": platform.platform(), "cores": os.cpu_count(), "python": platform.python_version()},
           "results": results,
           "ray2_over_local2": round(ray2["wall_s"] / local2["wall_s"], 3) if local2 and ray2 else None,
           "targets": {"ray_overhead_per_cell_ms": "< 50", "ray2_within_10pct_of_local2": "ray2_over_local2 <= 1.10"},
           "paper_1000_models_16_gpus": paper_estimate()}
    try:
        import ray

        doc["ray"] = ray.__version__
    except ImportError:
        pass
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps({k: v for k, v in doc.items() if k != "results"}, indent=1))
    for r in results:
        print(r["executor"], r["workers"], r["wall_s"], r.get("efficiency"), r["dispatch_overhead_ms"],
              r.get("predicted_s"), r.get("prediction_error"))


if __name__ == "__main__":
    main()
