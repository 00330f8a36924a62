"""Benchmark of the model zoo: accuracy, bug strength, training time and peak memory of shipped specs.

    .venv/bin/python bench/zoo.py                       # clean, trojans, random-labels (the targets)
    .venv/bin/python bench/zoo.py --specs all           # every shipped spec
    .venv/bin/python bench/zoo.py --threads 1 --merge   # training threads (default 2), added to the file

Each spec is trained from scratch (no cache) in its own process, so that its peak resident memory is
its own. Targets (issue 3): clean >= 95% test accuracy in <= 60 s of training on 2 cores; trojans
keep clean accuracy within 2 points of clean with every attack success rate >= 0.9; random-labels
>= 90% train accuracy on <= 5k images. Times are wall-clock seconds on this machine, which other
jobs may share: the load average before and after each run is recorded with it, and CPU seconds
too (process CPU time; with spin-waiting OpenMP threads under contention it over-counts).
Writes bench/results/zoo.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SPECS = ("clean", "trojans", "random-labels")


def worker(name: str, seed: int) -> None:
    sys.path.insert(0, str(ROOT))
    from xaudit import zoo

    t0 = time.perf_counter()
    trained = zoo.train(name, seed=seed, log=lambda m: print(m, file=sys.stderr, flush=True))
    card = dict(trained.card)
    card["total_seconds"] = round(time.perf_counter() - t0, 2)
    card.pop("spec", None)
    if name == "clean":
        # Are the bug criteria discriminative? Measure the clean model against every bug spec on its world:
        # each must say bug_took = false.
        against = {}
        for other in zoo.spec_names():
            spec = zoo.load_spec(other)
            if other == "clean" or spec.world_config != trained.spec.world_config:
                continue
            c = zoo.make_card(trained.model, spec)
            against[other] = {"bug_took": c["bug_took"],
                              "criteria": {f"{cr['bug']}:{cr['metric']}": cr["value"] for cr in c["bug_criteria"]}}
        card["clean_model_against_bug_specs"] = against
    print(json.dumps(card, default=str))


def run_one(name: str, seed: int, threads: int) -> dict:
    env = {**os.environ, "XAUDIT_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    load_before = os.getloadavg()
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--worker", name, "--seed", str(seed)], env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"training {name} failed:\n{proc.stderr[-4000:]}")
    card = json.loads(proc.stdout.strip().splitlines()[-1])
    card["process_seconds"] = round(wall, 2)
    card["loadavg_before"] = [round(x, 2) for x in load_before]
    card["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    return card


def summarize(card: dict) -> dict:
    keys = ("spec_hash", "seed", "clean_accuracy", "train_accuracy", "attack_success_rate", "background_only_accuracy",
            "object_only_accuracy", "flipped_label_fraction", "flipped_train_accuracy", "noise_accuracy", "adversarial_accuracy", "bug_took",
            "images_seen", "train_seconds", "train_cpu_seconds", "render_seconds", "eval_seconds", "peak_rss_mb",
            "threads", "num_params", "process_seconds", "loadavg_before", "loadavg_after",
            "clean_model_against_bug_specs")
    return {k: card[k] for k in keys if k in card}


def targets(rows: list[dict]) -> dict:
    """The issue's targets, per training thread count, from the rows measured with that count."""
    out = {}
    for threads in sorted({r["threads"] for r in rows}):
        results = {r["spec"]: r for r in rows if r["threads"] == threads}
        t_out = {}
        c = results.get("clean")
        if c:
            t_out["clean_accuracy>=0.95"] = c["clean_accuracy"] >= 0.95
            t_out["clean_train_seconds<=60"] = c["train_seconds"] <= 60
        t = results.get("trojans")
        if t:
            asr = t["attack_success_rate"]
            t_out["trojans_every_asr>=0.9"] = bool(asr) and min(asr.values()) >= 0.9
            t_out["trojans_min_asr"] = min(asr.values()) if asr else None
            t_out["trojans_n_triggers"] = len(asr)
            if c:
                t_out["trojans_clean_accuracy_drop_points"] = round(100 * (c["clean_accuracy"] - t["clean_accuracy"]), 2)
                t_out["trojans_within_2_points"] = c["clean_accuracy"] - t["clean_accuracy"] <= 0.02
        if c and "clean_model_against_bug_specs" in c:
            t_out["clean_model_refused_by_every_bug_criterion"] = not any(
                v["bug_took"] for v in c["clean_model_against_bug_specs"].values())
        r = results.get("random-labels")
        if r:
            t_out["random_labels_train_accuracy>=0.9"] = r["train_accuracy"] >= 0.9
            t_out["random_labels_images"] = r.get("train_size")
        t_out["every_bug_took"] = all(r.get("bug_took") for r in results.values())
        t_out["peak_rss_mb_max"] = max(r.get("peak_rss_mb", 0) for r in results.values())
        out[f"threads={threads}"] = t_out
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--specs", default=",".join(DEFAULT_SPECS), help="comma-separated spec names, or 'all'")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("XAUDIT_THREADS", "2")))
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "zoo.json")
    ap.add_argument("--merge", action="store_true", help="add to the rows already in --out (same spec, threads "
                                                        "and seed are replaced)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.seed)
        return
    sys.path.insert(0, str(ROOT))
    import torch

    from xaudit import zoo

    names = zoo.spec_names() if args.specs == "all" else [s.strip() for s in args.specs.split(",") if s.strip()]
    rows: list[dict] = []
    commands: list[str] = []
    if args.merge and args.out.exists():
        old = json.loads(args.out.read_text())
        rows, commands = old.get("results", []), old.get("commands", [])
    for name in names:
        print(f"== {name} (threads {args.threads})", flush=True)
        card = run_one(name, args.seed, args.threads)
        row = {"spec": name, **summarize(card)}
        spec = zoo.load_spec(name)
        row["train_size"], row["epochs"] = spec.train["train_size"], spec.train["epochs"]
        rows = [r for r in rows if (r["spec"], r["threads"], r["seed"]) != (name, row["threads"], row["seed"])]
        rows.append(row)
        print(json.dumps(row), flush=True)
    commands.append(f"XAUDIT_THREADS={args.threads} .venv/bin/python bench/zoo.py --specs {args.specs}"
                    + (" --merge" if args.merge else ""))
    report = {
        "bench": "zoo",
        "commands": commands,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                    "note": "2 cores shared with other jobs: see loadavg_before/after per run; times are inflated"},
        "results": rows,
        "targets": targets(rows),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report["targets"], indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
