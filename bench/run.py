"""Benchmark `xaudit run`: a preset cold (empty model cache) and warm (models cached, cells recomputed).

For each phase: wall time, CPU time of the process tree, peak memory (sum of the RSS of the run's
process tree, sampled every 0.2 s, and the largest single process), and where the time went, read
back from the run's store: model preparation (training or loading), time inside cells spent in
model forward/backward passes (the preset is run with ``profile: true``, which times the root
module's forward and the backward from its output to its input), and everything else in cells.

    .venv/bin/python bench/run.py                      # default preset, cold then warm
    .venv/bin/python bench/run.py --preset smoke       # quick
    .venv/bin/python bench/run.py --workers 2 --phases warm

Writes bench/results/run.json (or --out).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PAGE = os.sysconf("SC_PAGE_SIZE")


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(d))
    return kids


def _rss(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


class TreeMemory(threading.Thread):
    """Samples the summed RSS of a process and its descendants."""

    def __init__(self, pid: int, every: float = 0.2):
        super().__init__(daemon=True)
        self.pid, self.every, self.peak, self.peak_single, self.stop = pid, every, 0, 0, False

    def run(self) -> None:
        while not self.stop:
            kids = _children_map()
            todo, tree = [self.pid], []
            while todo:
                p = todo.pop()
                tree.append(p)
                todo += kids.get(p, [])
            sizes = [_rss(p) for p in tree]
            self.peak = max(self.peak, sum(sizes))
            self.peak_single = max(self.peak_single, max(sizes, default=0))
            time.sleep(self.every)


def run_phase(preset_file: Path, out: Path, cache: Path, workers: int | None) -> dict:
    cmd = [sys.executable, "-m", "xaudit.cli", "run", str(preset_file), "--out", str(out), "--cache", str(cache)]
    if workers:
        cmd += ["--workers", str(workers)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    mem = TreeMemory(proc.pid)
    mem.start()
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - t0
    mem.stop = True
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    res = {"command": " ".join(cmd[1:]), "returncode": proc.returncode, "wall_s": round(wall, 2),
           "cpu_s": round(cpu, 2), "peak_tree_rss_mb": round(mem.peak / 2**20, 1),
           "peak_process_rss_mb": round(mem.peak_single / 2**20, 1)}
    if proc.returncode not in (0, 1):
        res["stderr_tail"] = stderr[-3000:]
        return res
    res.update(breakdown(out / "results.sqlite", wall))
    res["summary_line"] = next((line for line in stdout.splitlines() if " cells: " in line), "")
    return res


def breakdown(db: Path, wall: float) -> dict:
    con = sqlite3.connect(db)
    try:
        cells = con.execute("SELECT status, count(*), sum(seconds), sum(model_seconds) FROM cells "
                            "WHERE active = 1 GROUP BY status").fetchall()
        models = con.execute("SELECT seconds, json_extract(card, '$.train_seconds') FROM models").fetchall()
        workers = con.execute("SELECT workers FROM run ORDER BY id DESC LIMIT 1").fetchone()[0]
        slow = con.execute("SELECT check_name, method, world, round(seconds, 2) FROM cells WHERE active = 1 "
                           "ORDER BY seconds DESC LIMIT 8").fetchall()
        failures = con.execute("SELECT check_name || ' / ' || world || ': ' || substr(error, 1, 160), count(*) "
                               "FROM cells WHERE active = 1 AND status = 'failed' GROUP BY 1 ORDER BY 2 DESC").fetchall()
        per_method = con.execute("SELECT method, round(sum(seconds), 1), round(sum(model_seconds), 1) FROM cells "
                                 "WHERE active = 1 GROUP BY method ORDER BY sum(seconds) DESC").fetchall()
    finally:
        con.close()
    cell_s = sum(r[2] or 0 for r in cells)
    pass_s = sum(r[3] or 0 for r in cells)
    prep_s = sum(m[0] or 0.0 for m in models)
    trained = [m for m in models if m[1] and (m[0] or 0) >= 0.9 * m[1]]   # prepared by training, not loading
    busy = cell_s + prep_s
    capacity = wall * workers
    return {
        "workers": workers,
        "cells": {r[0]: r[1] for r in cells},
        "models_prepared": len(models), "models_trained": len(trained), "model_prep_s": round(prep_s, 2),
        "of_which_training_s": round(sum(m[0] for m in trained), 2),
        "cell_s": round(cell_s, 2), "cell_model_pass_s": round(pass_s, 2),
        "cell_other_s": round(cell_s - pass_s, 2),
        "share_of_worker_time": {
            "model_prep": round(prep_s / busy, 3) if busy else None,
            "cell_model_passes": round(pass_s / busy, 3) if busy else None,
            "cell_other": round((cell_s - pass_s) / busy, 3) if busy else None,
        },
        "share_of_cell_time_in_model_passes": round(pass_s / cell_s, 3) if cell_s else None,
        "runner_idle_or_overhead_share": round(max(0.0, 1 - busy / capacity), 3) if capacity else None,
        "failures": failures, "slowest_cells": slow, "per_method_cell_s_and_pass_s": per_method,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="default")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--phases", default="cold,warm", help="comma-separated: cold, warm")
    ap.add_argument("--cache", default=None, help="model cache for the warm phase when cold is skipped")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "run.json"))
    ap.add_argument("--keep", action="store_true", help="keep the temporary run directories and cache")
    args = ap.parse_args()

    sys.path.insert(0, str(ROOT))
    from xaudit.run import load_preset

    preset = load_preset(args.preset)
    raw = dict(preset.raw)
    raw["profile"] = True
    tmp = Path(tempfile.mkdtemp(prefix="xaudit-bench-run-"))
    pfile = tmp / f"{preset.name}.yaml"
    pfile.write_text(yaml.safe_dump(raw, sort_keys=False))
    cache = Path(args.cache) if args.cache else tmp / "cache"
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    results: dict = {"preset": preset.name, "phases": {}, "machine": {
        "python": platform.python_version(), "cores": len(os.sched_getaffinity(0)),
        "loadavg_before": os.getloadavg()}}
    try:
        for phase in phases:
            print(f"== {phase}: xaudit run {preset.name}", flush=True)
            r = run_phase(pfile, tmp / phase, cache, args.workers)
            r["loadavg_after"] = os.getloadavg()
            results["phases"][phase] = r
            print(json.dumps({k: v for k, v in r.items() if k not in ("slowest_cells", "per_method_cell_s_and_pass_s",
                                                                         "failures")},
                             indent=1), flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"kept {tmp}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
