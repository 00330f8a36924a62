"""World generation speed: images/s for 32x32 and 64x64 shapes (with and without bugs) and digits.

Run: .venv/bin/python bench/world.py   -> bench/results/world.json
Target (issue 2): >= 20,000 images/s of 32x32 on 2 cores.
"""
from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import torch

from xaudit import world
from xaudit.world import LabelNoise, NaturalTrigger, PatchTrigger, SpuriousCue, StyleTrigger

N = 10_000
REPEATS = 5


def bugs():
    return [PatchTrigger("checker", 5, target_class=1, poison_rate=0.05),
            PatchTrigger("rgb", 5, location="fixed", target_class=2, poison_rate=0.05),
            StyleTrigger("sepia", target_class=3, poison_rate=0.05),
            NaturalTrigger("sun", target_class=4, poison_rate=0.05),
            SpuriousCue("watermark", 0.7, 0.3), LabelNoise(0.1)]


def rate(w, with_bugs: bool, n: int = N) -> dict:
    w.sample(range(256), bugs=bugs() if with_bugs else [])            # warm caches
    times = []
    for r in range(REPEATS):
        t0 = time.perf_counter()
        w.sample(range(r * n, (r + 1) * n), bugs=bugs() if with_bugs else [])
        times.append(time.perf_counter() - t0)
    best, med = min(times), sorted(times)[len(times) // 2]
    return {"n": n, "best_s": best, "median_s": med, "images_per_s_best": n / best, "images_per_s_median": n / med}


def main():
    torch.set_num_threads(2)
    cases = {
        "shapes32": (world.get("shapes", size=32), False),
        "shapes32+bugs": (world.get("shapes", size=32), True),
        "shapes64": (world.get("shapes", size=64), False),
        "shapes64+bugs": (world.get("shapes", size=64), True),
        "digits28": (world.get("digits"), False),
        "spurious32": (world.get("spurious"), False),
    }
    results = {name: rate(w, b) for name, (w, b) in cases.items()}
    out = {"bench": "world", "threads": torch.get_num_threads(), "torch": torch.__version__,
           "machine": platform.machine(), "target_images_per_s_32": 20_000, "results": results,
           "target_met": results["shapes32"]["images_per_s_median"] >= 20_000}
    path = Path(__file__).parent / "results" / "world.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    for k, v in results.items():
        print(f"{k:>14}: {v['images_per_s_median']:>9,.0f} img/s (median of {REPEATS}), best {v['images_per_s_best']:,.0f}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
