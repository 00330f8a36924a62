"""Cost of the model audit (`model_anomaly`, issue 15).

1. **Population training, 1 and 2 workers**: ``xaudit run`` of a preset holding only the audit with a
   small population (``--normals`` normal models + one backdoor variant, `population_train` as in
   `default`) and Grad-CAM, on a fresh model cache each time: wall time with ``--workers 1`` and 2.
2. **Visualization time per model**: one audit cell per method on the `default` population (its models
   must be in the cache: run ``make run`` or bench/run.py first, else they are trained here): the cell's
   seconds over its models.
3. **Scoring time**: leave-one-out scores, flags and pairwise distances (1 - SSIM, L2, the LPIPS-style
   feature distance's Gram form) for a synthetic population of ``--score-models`` (50) models x 50 inputs
   of 32 x 32 maps. Target: under 10 s.
4. **Share of the `default` run**: from bench/results/run.json (bench/run.py).

    .venv/bin/python bench/audit.py
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "bench" / "results"
WORLD = {"world": "shapes", "size": 32, "seed": 0}


def training(normals: int, workers: int, tmp: Path) -> dict:
    preset = {"name": f"audit-bench-{workers}", "seeds": [0],
              "worlds": [{"world": "shapes", "size": 32, "seed": 0, "models": ["clean"]}],
              "checks": {"model_anomaly": {"params": {
                  "n_normal": normals, "distances": ["ssim"], "n_identify": 0,
                  "families": {"backdoor": [{"bugs": [{"kind": "patch", "name": "backdoor", "pattern": "checker",
                                                       "size_px": 3, "location": "fixed", "target_class": 0,
                                                       "poison_rate": 0.05}]}]}}}},
              "methods": ["grad_cam"]}
    path = tmp / f"audit-{workers}.yaml"
    path.write_text(yaml.safe_dump(preset))
    cache, out = tmp / f"cache-{workers}", tmp / f"run-{workers}"
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "xaudit.cli", "run", str(path), "--out", str(out), "--cache", str(cache),
                        "--workers", str(workers)], cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode:
        print(r.stdout[-2000:], r.stderr[-2000:], file=sys.stderr)
    print(f"  {normals + 1} models, {workers} worker(s): {wall:.1f}s (rc {r.returncode})", flush=True)
    return {"models": normals + 1, "workers": workers, "wall_s": round(wall, 1), "returncode": r.returncode}


def visualization(methods: list[str]) -> list[dict]:
    from xaudit import zoo
    from xaudit.checks.base import CheckContext
    from xaudit.checks.model_anomaly import ModelAnomaly

    check = ModelAnomaly()
    params = check.resolve({"n_normal": 6, "anomaly_seeds": 1})
    refs = check.models(params, "clean", 0, WORLD)
    loaded = {}

    def load(ref):
        key = (json.dumps(ref.spec, sort_keys=True, default=str), ref.seed)
        if key not in loaded:
            t = zoo.load_or_train(ref.spec, seed=ref.seed, log=lambda m: print("  zoo:", m, file=sys.stderr))
            loaded[key] = (t.model.eval(), t.card)
        return loaded[key]

    for r in refs:
        load(r)
    rows = []
    for m in methods:
        ctx = CheckContext(check="model_anomaly", method=m, method_params={}, model_group="clean", world=dict(WORLD),
                           seed=0, params=params, load_model=load, world_label="shapes@32")
        t0 = time.perf_counter()
        out = check.run(ctx)
        wall = time.perf_counter() - t0
        n_models = len([r for r in out if r.get("series") == "member"])
        verdicts = {f"{r['anomaly']} {r['distance']}": r["verdict"] for r in out if r.get("series") == "verdict"}
        rows.append({"method": m, "cell_s": round(wall, 2), "models": n_models,
                     "s_per_model": round(wall / max(1, n_models), 3), "verdicts": verdicts})
        print(f"  {m:22s} cell {wall:6.1f}s  {wall / max(1, n_models):.2f}s per model", flush=True)
    return rows


def scoring(n_models: int, n_inputs: int = 50) -> dict:
    from xaudit import metrics
    from xaudit.metrics import population as P

    g = torch.Generator().manual_seed(0)
    maps = torch.rand(n_models, n_inputs, 32, 32, generator=g)
    normal = torch.zeros(n_models, dtype=torch.bool)
    normal[: n_models // 2] = True
    out = {"models": n_models, "inputs": n_inputs}
    for name, fn in (("ssim", lambda st: P.pairwise(st, lambda a, b: 1 - metrics.ssim(a.unsqueeze(1), b.unsqueeze(1)))),
                     ("l2", lambda st: P.pairwise(st, lambda a, b: (a - b).flatten(1).pow(2).mean(1).sqrt())),
                     ("features_gram", lambda st: P.pairwise_sqeuclidean(torch.rand(n_models, n_inputs, 16 * 32 * 32,
                                                                                    generator=g)))):
        t0 = time.perf_counter()
        d = fn(maps)
        s = P.loo_scores(d, normal).mean(0)
        P.flagged(s, normal)
        out[f"{name}_s"] = round(time.perf_counter() - t0, 3)
        print(f"  scoring {n_models} models x {n_inputs} inputs, {name}: {out[f'{name}_s']:.2f}s", flush=True)
    return out


def default_share() -> dict:
    path = RESULTS / "run.json"
    if not path.exists():
        return {"note": "bench/results/run.json missing: run bench/run.py first"}
    out = {}
    for phase, v in json.loads(path.read_text()).get("phases", {}).items():
        per_check = {c: (n, s) for c, n, s, _ in v.get("per_check_cells_cell_s_and_pass_s", [])}
        cells, cell_s = per_check.get("model_anomaly", (0, 0.0))
        out[phase] = {"wall_s": v.get("wall_s"), "model_anomaly_cells": cells, "model_anomaly_cell_s": cell_s,
                      "share_of_cell_time": round(cell_s / v["cell_s"], 3) if v.get("cell_s") else None,
                      "estimated_wall_added_s": round(cell_s / max(1, v.get("workers") or 1), 1)}
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--normals", type=int, default=3)
    ap.add_argument("--methods", default="grad_cam,guided_backprop,guided_grad_cam,integrated_gradients")
    ap.add_argument("--score-models", type=int, default=50)
    ap.add_argument("--skip", default="", help="comma-separated: training, visualization, scoring")
    args = ap.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    torch.set_num_threads(1)
    res = {"bench": "audit", "date": time.strftime("%Y-%m-%d"), "machine": platform.machine(),
           "torch": torch.__version__, "loadavg_before": list(os.getloadavg())}
    if "training" not in skip:
        print("population training:", flush=True)
        with tempfile.TemporaryDirectory(prefix="xaudit-bench-audit-") as tmp:
            res["training"] = [training(args.normals, w, Path(tmp)) for w in (1, 2)]
    if "visualization" not in skip:
        print("visualization (default population):", flush=True)
        res["visualization"] = visualization([m for m in args.methods.split(",") if m])
    if "scoring" not in skip:
        print("scoring:", flush=True)
        res["scoring"] = scoring(args.score_models)
    res["default_share"] = default_share()
    res["loadavg_after"] = list(os.getloadavg())
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "audit.json").write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
