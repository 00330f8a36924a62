"""Cost of the two trojan checks (issue 14), on the zoo's `trojans` model.

1. **Localization**: per attribution method, the wall time of explaining ``--n`` triggered images per
   patch and natural trojan (the images trojan_localization uses: non-target test images the trigger
   flips; 8 trojans x n), against its pass floor: the same passes run as bare model calls right before
   and right after the method (bench/explain.py's ``bench_method``, whose ratio this reports).
   Target: gradient-family methods <= 1.2x.
2. **Rediscovery**: per synthesis method, one trojan_rediscovery cell at the `default` preset's settings
   (4 restarts per target class; fv_* 256 steps; adversarial_patch 100 steps of 32 images): synthesis
   seconds (all 10 classes: 9 targets and the trojan-free class), per trojan (12), and the judging
   seconds (4 judges, controls included: the rest of the cell).
3. **Share of the `default` run**: read from bench/results/run.json (bench/run.py): the two checks'
   summed cell seconds (worker time, 2 workers), and the `trojans` and judge models' preparation.

    .venv/bin/python bench/trojans.py                       # ~6 min on 1 thread
    .venv/bin/python bench/trojans.py --methods all --n 100 # every attribution method
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from xaudit import explain as E, zoo  # noqa: E402
from xaudit.checks.base import CheckContext  # noqa: E402

RESULTS = ROOT / "bench" / "results"
WORLD = {"world": "shapes", "size": 32, "seed": 0}
FAST_FAMILIES = ("gradient", "modified_backprop", "cam")
DEFAULT_METHOD_PARAMS = {"fv_pixel": {"steps": 256}, "fv_fourier": {"steps": 256}, "fv_maco": {"steps": 256},
                         "fv_cppn": {"steps": 256}, "adversarial_patch": {"steps": 100, "batch_size": 32}}


def _bench_explain():
    spec = importlib.util.spec_from_file_location("bench_explain", ROOT / "bench" / "explain.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def context(check: str, method: str, params: dict, method_params: dict | None = None) -> CheckContext:
    def load(ref):
        t = zoo.load_or_train(ref.spec, seed=ref.seed, log=lambda m: print("  zoo:", m, file=sys.stderr))
        return t.model.eval(), t.card

    return CheckContext(check=check, method=method, method_params=method_params or {}, model_group="trojans",
                        world=dict(WORLD), seed=0, params=params, load_model=load, world_label="shapes@32",
                        method_kind=E.info(method).kind)


def localization(n: int, methods: list[str], repeats: int) -> dict:
    from xaudit.checks.trojan_localization import FAMILIES, TrojanLocalization, _find_flipped
    from xaudit.world import bug_from_config

    trained = zoo.load_or_train("trojans", seed=0)
    model = trained.model.eval()
    bugs = [bug_from_config(c) for c in trained.card["spec"]["bugs"] if c.get("kind") in FAMILIES]
    ctx = context("trojan_localization", "saliency", TrojanLocalization().resolve({"n_images": n}))
    t0 = time.perf_counter()
    parts = [(_find_flipped(ctx, model, b, n, 2000)[0], b.target_class) for b in bugs]
    x = torch.cat([p for p, _ in parts])
    target = torch.cat([torch.full((len(p),), t, dtype=torch.int64) for p, t in parts])
    find_s = time.perf_counter() - t0
    print(f"  {len(x)} triggered images ({len(bugs)} trojans) found in {find_s:.1f}s", flush=True)
    be = _bench_explain()
    rows = []
    for m in methods:
        r = be.bench_method(m, model, x, target, {}, cap=400, repeats=repeats)
        rows.append(r)
    return {"n_images": len(x), "per_trojan": {b.name: len(p) for b, (p, _) in zip(bugs, parts)},
            "find_images_s": round(find_s, 2), "rows": rows}


def rediscovery(methods: list[str]) -> list[dict]:
    from xaudit.checks import trojan_rediscovery as TR

    check = TR.TrojanRediscovery()
    rows = []
    for m in methods:
        mp = DEFAULT_METHOD_PARAMS.get(m, {})
        ctx = context("trojan_rediscovery", m, check.resolve({"restarts": 4}), mp)
        # the models load (and train when the cache lacks them) before timing
        model, card = ctx.load_model(check.models(ctx.params, "trojans", 0, WORLD)[0])
        ctx.load_model(check.models(ctx.params, "trojans", 0, WORLD)[1])
        TR._CONTROLS.clear()
        ex = E.get(m, **mp)
        t0 = time.perf_counter()
        synth, _ = TR.synthesize(ctx, ex, model, TR.make_world(ctx), list(range(10)), ctx.params)
        synth_s = time.perf_counter() - t0
        TR._CONTROLS.clear()
        t0 = time.perf_counter()
        out = check.run(ctx)
        cell_s = time.perf_counter() - t0
        passes = sum(v for v in (ex.expected_passes((3, 32, 32)) or (0, 0)))
        row = {"method": m, "params": mp, "restarts": 4, "classes": 10, "synthesis_s": round(synth_s, 2),
               "synthesis_s_per_trojan": round(synth_s / 12, 3), "cell_s": round(cell_s, 2),
               "judging_and_controls_s": round(max(0.0, cell_s - synth_s), 2), "rows": len(out),
               "declared_passes_per_image_or_patch": passes,
               "verdicts": {f"{r['judge']} {r['trojan']}": r["verdict"] for r in out if r.get("series") == "verdict"}}
        print(f"  {m:18s} synthesis {synth_s:6.1f}s ({synth_s / 12:.2f}s per trojan)  cell {cell_s:6.1f}s", flush=True)
        rows.append(row)
    return rows


def default_share() -> dict:
    path = RESULTS / "run.json"
    if not path.exists():
        return {"note": "bench/results/run.json missing: run bench/run.py first"}
    run = json.loads(path.read_text())
    out = {}
    for phase, v in run.get("phases", {}).items():
        per_check = {c: {"cells": n, "cell_s": s} for c, n, s, _ in v.get("per_check_cells_cell_s_and_pass_s", [])}
        ours = {c: per_check[c] for c in ("trojan_localization", "trojan_rediscovery") if c in per_check}
        models = {name: prep for name, prep, _, _ in v.get("per_model_prep_s_train_s_took", [])
                  if name.startswith("trojans") or "vgg" in name}
        total_cell = v.get("cell_s") or 0.0
        summed = sum(o["cell_s"] for o in ours.values())
        out[phase] = {"wall_s": v.get("wall_s"), "workers": v.get("workers"), "checks": ours,
                      "checks_cell_s": round(summed, 1),
                      "share_of_cell_time": round(summed / total_cell, 3) if total_cell else None,
                      "estimated_wall_added_s": round(summed / max(1, v.get("workers") or 1), 1),
                      "model_prep_s": models}
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100, help="triggered images per trojan (default 100, Casper et al.)")
    ap.add_argument("--methods", default="fast", help="'fast' (gradient, modified-backprop and CAM families), "
                                                      "'all', or a comma-separated list")
    ap.add_argument("--synthesis", default="fv_pixel,fv_fourier,fv_maco,fv_cppn,adversarial_patch")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: localization, rediscovery")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    attribution = E.names(kind="attribution")
    if args.methods == "fast":
        methods = [m for m in attribution if E.info(m).family in FAST_FAMILIES]
    elif args.methods == "all":
        methods = attribution
    else:
        methods = [m for m in args.methods.split(",") if m]
    skip = set(filter(None, args.skip.split(",")))
    result = {"bench": "trojans", "date": time.strftime("%Y-%m-%d"), "machine": platform.machine(),
              "threads": args.threads, "torch": torch.__version__, "loadavg_before": list(_load())}
    if "localization" not in skip:
        print("localization:", flush=True)
        result["localization"] = localization(args.n, methods, args.repeats)
    if "rediscovery" not in skip:
        print("rediscovery:", flush=True)
        result["rediscovery"] = rediscovery([m for m in args.synthesis.split(",") if m])
    result["default_share"] = default_share()
    result["loadavg_after"] = list(_load())
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "trojans.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result["default_share"], indent=1))
    return result


def _load():
    import os

    try:
        return os.getloadavg()
    except OSError:
        return (float("nan"),) * 3


if __name__ == "__main__":
    main()
