"""Benchmark writing report.html: its size and the time to write it, for a run of the `default` preset.

    .venv/bin/python bench/report.py --run /tmp/xaudit-bench-run-XXXX/warm-new-0   # a kept run
    .venv/bin/python bench/report.py                        # runs `default` first (warm: about 5 min)
    .venv/bin/python bench/report.py --run DIR --against c96b8d5 --repeats 3

Each write is a fresh process (``xaudit report RUN``'s work: ``write_report``) on a copy of the run's store,
so nothing is cached between writes. ``--against REF`` writes the same store's report with the code of git
commit REF too (a temporary worktree), alternating, and records the ratios new / old of the median times
and of the sizes: before and after, side by side in one run. Targets (issue 18): under 5 MB and under 15 s
for the `default` run.

Writes bench/results/report.json (or --out).
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import ROOT, _git, _median, _worktree  # noqa: E402  (bench/run.py's helpers)

TARGET_MB, TARGET_S = 5.0, 15.0
WRITE = "import sys, time; t = time.perf_counter(); from xaudit.report import write_report; " \
        "write_report(sys.argv[1]); print(time.perf_counter() - t)"


def _write(code_root: Path, run_dir: Path) -> dict:
    """One report write in a fresh process with the code in ``code_root``; wall time of the process and
    the time inside it (imports excluded)."""
    env = {**os.environ, "PYTHONPATH": str(code_root)}
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", WRITE, str(run_dir)], capture_output=True, text=True, env=env,
                         cwd=code_root)
    wall = time.perf_counter() - t
    if out.returncode != 0:
        raise RuntimeError(f"report write failed with the code in {code_root}:\n{out.stderr[-3000:]}")
    return {"wall_s": round(wall, 2), "write_s": round(float(out.stdout.strip().splitlines()[-1]), 2)}


def measure(report: Path) -> dict:
    """Size of the file and of its embedded images."""
    text = report.read_text(encoding="utf-8")
    images = re.findall(r'src="data:image/(\w+);base64,([A-Za-z0-9+/=]+)"', text)
    sizes = sorted((len(base64.b64decode(b)) for _, b in images), reverse=True)
    return {"bytes": len(text.encode("utf-8")), "mb": round(len(text.encode("utf-8")) / 1e6, 3),
            "images": len(images), "image_formats": sorted({f for f, _ in images}),
            "image_base64_mb": round(sum(len(b) for _, b in images) / 1e6, 3),
            "largest_images_kb": [round(s / 1e3, 1) for s in sizes[:5]]}


def _copy(run_dir: Path, where: Path) -> Path:
    """The store and a link to the artifacts: the report reads both and writes report.html beside the store."""
    where.mkdir(parents=True)
    shutil.copy2(run_dir / "results.sqlite", where / "results.sqlite")
    (where / "artifacts").symlink_to((run_dir / "artifacts").resolve())
    return where


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, default=None, help="a run folder of the default preset (default: run it)")
    ap.add_argument("--against", default=None, help="a git commit to write the report with too, alternating")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "report.json")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="xaudit-bench-report-"))
    try:
        run_dir = args.run
        if run_dir is None:
            run_dir = tmp / "default"
            subprocess.run([sys.executable, "-m", "xaudit.cli", "run", "default", "--out", str(run_dir)], check=True,
                           cwd=ROOT)
        if not (run_dir / "results.sqlite").exists():
            sys.exit(f"--run: {run_dir} is not a run folder (no results.sqlite)")
        roots = {"new": ROOT}
        if args.against:
            roots["old"] = _worktree(args.against, tmp / "against")
        times: dict[str, list[dict]] = {k: [] for k in roots}
        sizes: dict[str, dict] = {}
        for i in range(args.repeats):
            for name, root in roots.items():
                copy = _copy(run_dir, tmp / f"{name}-{i}")
                times[name].append(_write(root, copy))
                sizes[name] = measure(copy / "report.html")
                print(f"{name} #{i}: {times[name][-1]} {sizes[name]['mb']} MB", flush=True)
        result = {"run": str(run_dir), "repeats": args.repeats, "targets": {"mb": TARGET_MB, "write_s": TARGET_S},
                  "commit": _git("rev-parse", "HEAD").strip(), "cpus": os.cpu_count()}
        for name in roots:
            med = _median([t["write_s"] for t in times[name]])
            result[name] = {"write_s_median": med, "runs": times[name], **sizes[name],
                            "meets_targets": sizes[name]["mb"] < TARGET_MB and med < TARGET_S}
        if args.against:
            result["against"] = {"commit": args.against, "resolved": _git("rev-parse", args.against).strip(),
                                 "time_ratio_new_over_old": round(result["new"]["write_s_median"]
                                                                  / result["old"]["write_s_median"], 3),
                                 "size_ratio_new_over_old": round(result["new"]["bytes"] / result["old"]["bytes"], 3)}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        print(json.dumps({k: v for k, v in result.items() if k in ("new", "old", "against")}, indent=1))
    finally:
        if args.against:
            _git("worktree", "remove", "--force", str(tmp / "against"), check=False)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
