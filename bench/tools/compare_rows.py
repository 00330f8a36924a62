"""Compare the result rows of two xaudit run directories value by value (cell keys may differ).

    .venv/bin/python bench/tools/compare_rows.py runs/before runs/after

A row is identified by check, method, model, world name (the part before ``@``, so stores written
before world labels compare with later ones), seed, series, stage, metric, block and failed_maps;
every other column (value, CI, n, verdict and every check-specific column) must be equal. Exits 1 on
any difference, listing the first ten.
"""
from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

IDENTITY = ("series", "stage", "block", "failed_maps", "subset", "domain",   # subset, domain: debugging tests
            "trojan", "baseline")                                               # trojan_localization


def load(run_dir: str) -> dict[tuple, dict]:
    con = sqlite3.connect(f"file:{Path(run_dir) / 'results.sqlite'}?mode=ro", uri=True)
    out: dict[tuple, dict] = {}
    for r in con.execute("SELECT [check], method, model, world, seed, metric, value, ci_low, ci_high, n, verdict, "
                         "extra FROM results"):
        extra = json.loads(r[11]) if r[11] else {}
        ident = (r[0], r[1], r[2], str(r[3]).split("@")[0], r[4], r[5], *(extra.get(k) for k in IDENTITY))
        if ident in out:
            raise SystemExit(f"{run_dir}: two rows share the identity {ident}")
        out[ident] = {"value": r[6], "ci_low": r[7], "ci_high": r[8], "n": r[9], "verdict": r[10], **extra}
    return out


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__)
        return 2
    a, b = load(sys.argv[1]), load(sys.argv[2])
    only = set(a) ^ set(b)
    diffs = [(k, c, a[k].get(c, "<absent>"), b[k].get(c, "<absent>")) for k in set(a) & set(b)
             for c in sorted(set(a[k]) | set(b[k])) if a[k].get(c, "<absent>") != b[k].get(c, "<absent>")]
    values = sum(len(set(a[k]) | set(b[k])) for k in set(a) & set(b))
    print(f"rows: {len(a)} and {len(b)}; in one only: {len(only)}; values compared: {values}; differing: {len(diffs)}")
    for d in sorted(diffs, key=str)[:10]:
        print("  differs:", *d)
    for k in sorted(only, key=str)[:10]:
        print("  in one only:", k)
    return 1 if diffs or only else 0


if __name__ == "__main__":
    sys.exit(main())
