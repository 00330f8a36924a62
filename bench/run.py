"""Benchmark `xaudit run`: a preset cold (empty model cache) and warm (models cached, cells recomputed).

For each phase: wall time, CPU time of the process tree, peak memory (sum of the RSS of the run's
process tree, sampled every 0.2 s, and the largest single process), and where the time went, read
back from the run's store: model preparation (training or loading), time inside cells spent in
model forward/backward passes (the preset is run with ``profile: true``, which times the root
module's forward and the backward from its output to its input), and everything else in cells.

    .venv/bin/python bench/run.py                      # default preset, cold then warm
    .venv/bin/python bench/run.py --preset smoke       # quick
    .venv/bin/python bench/run.py --workers 2 --phases warm
    .venv/bin/python bench/run.py --phases warm --against 0b0fb09 --repeats 2 --cache ~/.cache/xaudit

``--against REF`` runs each phase also with the code of git commit REF (a temporary worktree, with
this checkout's compiled kernels), alternating new and old ``--repeats`` times on the same model
cache, and records the ratio new / old of the median wall times: a side-by-side comparison in one run.

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


def run_phase(preset_file: Path, out: Path, cache: Path, workers: int | None, root: Path = ROOT) -> dict:
    """One ``xaudit run`` with the code in ``root`` (this checkout, or a worktree of another commit)."""
    cmd = [sys.executable, "-m", "xaudit.cli", "run", str(preset_file), "--out", str(out), "--cache", str(cache)]
    if workers:
        cmd += ["--workers", str(workers)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(root)}
    proc = subprocess.Popen(cmd, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
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
        per_check = con.execute("SELECT check_name, count(*), round(sum(seconds), 1), round(sum(model_seconds), 1) "
                                "FROM cells WHERE active = 1 GROUP BY check_name ORDER BY sum(seconds) DESC").fetchall()
        per_model = con.execute("SELECT label, round(seconds, 1), json_extract(card, '$.train_seconds'), "
                                "json_extract(card, '$.bug_took') FROM models ORDER BY seconds DESC").fetchall()
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
        # check, cells, cell seconds, of which model passes (forward/backward) seconds
        "per_check_cells_cell_s_and_pass_s": per_check,
        # model label, preparation seconds in this run, its card's training seconds, bug took
        "per_model_prep_s_train_s_took": per_model,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="default")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--phases", default="cold,warm", help="comma-separated: cold, warm")
    ap.add_argument("--cache", default=None, help="model cache for the warm phase when cold is skipped")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "run.json"))
    ap.add_argument("--keep", action="store_true", help="keep the temporary run directories and cache")
    ap.add_argument("--against", default=None, help="a git commit to run each phase with too, alternating")
    ap.add_argument("--repeats", type=int, default=1, help="runs of each phase (and of --against's)")
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
    roots = {"new": ROOT}
    if args.against:
        roots["old"] = _worktree(args.against, tmp / "against")
        results["against"] = {"commit": args.against, "resolved": _git("rev-parse", args.against).strip(),
                              "new_commit": _git("rev-parse", "HEAD").strip()}
    try:
        for phase in phases:
            runs: dict[str, list[dict]] = {k: [] for k in roots}
            for i in range(max(1, args.repeats)):
                for which, root in roots.items():       # alternate: the machine's drift hits both alike
                    print(f"== {phase} ({which}, {i + 1}/{args.repeats}): xaudit run {preset.name}", flush=True)
                    out_dir = tmp / f"{phase}-{which}-{i}"
                    r = run_phase(pfile, out_dir, cache, args.workers, root)
                    r["loadavg_after"] = os.getloadavg()
                    runs[which].append(r)
                    print(json.dumps({k: v for k, v in r.items()
                                      if k not in ("slowest_cells", "per_method_cell_s_and_pass_s", "failures")},
                                     indent=1), flush=True)
                    if phase == "cold" and not args.keep:
                        shutil.rmtree(out_dir, ignore_errors=True)
            results["phases"][phase] = runs["new"][-1] if args.repeats == 1 else {
                "runs": runs["new"], "median_wall_s": _median([r["wall_s"] for r in runs["new"]])}
            if "old" in runs:
                new_w = _median([r["wall_s"] for r in runs["new"]])
                old_w = _median([r["wall_s"] for r in runs["old"]])
                results["against"][phase] = {"old_runs": runs["old"], "new_wall_s": [r["wall_s"] for r in runs["new"]],
                                             "old_wall_s": [r["wall_s"] for r in runs["old"]],
                                             "ratio_new_over_old_median_wall": round(new_w / old_w, 3)}
                print(f"== {phase}: new/old median wall {new_w:.1f} / {old_w:.1f} s = {new_w / old_w:.3f}", flush=True)
    finally:
        if args.against:
            _git("worktree", "remove", "--force", str(tmp / "against"), check=False)
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"kept {tmp}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(f"wrote {out}")


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    return (xs[(len(xs) - 1) // 2] + xs[len(xs) // 2]) / 2


def _git(*args: str, check: bool = True) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=check).stdout


def _worktree(ref: str, where: Path) -> Path:
    """A worktree of ``ref`` with this checkout's compiled kernels (the same C code, so both runs use them)."""
    _git("worktree", "add", "--detach", str(where), ref)
    for so in (ROOT / "xaudit" / "metrics").glob("_kernels*.so"):
        shutil.copy2(so, where / "xaudit" / "metrics" / so.name)
    return where


if __name__ == "__main__":
    main()
