"""Does `adversarial_patch` rediscover the patch trojans of the zoo's `trojans` model?

    .venv/bin/python bench/patch.py                 # about 4 minutes on one thread
    .venv/bin/python bench/patch.py --steps 100 300 # the step counts to try

For each patch trojan of the `trojans` spec: a patch of the trigger's size is optimized for the trojan's
target class (cross-entropy, `adversarial_patch` at its defaults but `steps`) on clean test images (the
first 512 of indices 0-1999; for a patch that fires only on a source class, that class's images among
them, about 200), on the trojaned model and, as the control, on the `clean` model. Reported on the
clean test images 2000-5999 (a source-class patch: that class's, about 400; positions from a fixed
generator): the attack success of the learned patch (images of other classes than the target predicted
as the target), of the true trigger, and the largest of 5 uniform-random patches; the learned patch's L1 distance and Pearson correlation with the true trigger (a checkerboard
learned one pixel out of phase correlates at -1 with the trigger yet is the same pattern shifted); and
its seconds. Writes bench/results/patch.json. Models come from the cache (trained when missing).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, nargs="+", default=[100, 300])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "patch.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from xaudit import explain, world, zoo
    from xaudit.explain.synthesis import patch as pm
    from xaudit.world.bugs import bug_from_config

    trojans, clean = zoo.load_or_train("trojans"), zoo.load_or_train("clean")
    cfg = dict(trojans.spec.world_config)
    w = world.get(cfg.pop("world"), **cfg)
    train = w.sample(range(2000), split="test")           # a source-class patch trains on its class's ~200
    held = w.sample(range(2000, 6000), split="test")
    bugs = [bug_from_config(c) for c in trojans.spec.bugs if c["kind"] == "patch"]
    load_before = os.getloadavg()
    rows = []

    def asr(model, patch, target, on):
        return round(pm.attack_success(model, held.images[on], held.labels[on], patch, target,
                                       torch.Generator().manual_seed(7)), 4)

    for b in bugs:
        true = b.patch(w)[None]
        side = true.shape[-1]
        # a source-class patch fires on its source class only: optimize and measure on that class's images
        on = (held.true_labels == b.source_class) if b.source_class is not None else torch.ones(len(held), dtype=torch.bool)
        on_train = ((train.true_labels == b.source_class) if b.source_class is not None
                    else torch.arange(len(train)) < 512)
        for name, model in (("trojans", trojans.model), ("clean", clean.model)):
            randoms = [asr(model, torch.rand(1, w.channels, side, side,
                                             generator=torch.Generator().manual_seed(100 + i)), b.target_class, on)
                       for i in range(5)]
            for steps in args.steps:
                ex = explain.get("adversarial_patch", size_px=side, steps=steps)
                t = time.perf_counter()
                p = ex.synthesize(model, {"images": train.images[on_train], "target": b.target_class},
                                  generator=torch.Generator().manual_seed(0))
                seconds = time.perf_counter() - t
                pearson = float(torch.corrcoef(torch.stack([p.flatten(), true.flatten()]))[0, 1])
                row = {"trojan": b.name, "pattern": b.pattern, "target": b.target_class, "source": b.source_class,
                       "model": name, "steps": steps, "n_optimize": int(on_train.sum()), "n_held_out": int(on.sum()),
                       "asr_learned": asr(model, p, b.target_class, on),
                       "asr_true_trigger": asr(model, true, b.target_class, on), "asr_random_max": max(randoms),
                       "l1_to_trigger": round(float((p - true).abs().mean()), 4),
                       "pearson_to_trigger": round(pearson, 4), "seconds": round(seconds, 2)}
                print(json.dumps(row), flush=True)
                rows.append(row)
    out = {"bench": "patch", "date": time.strftime("%Y-%m-%d"), "machine": platform.machine(),
           "cpus": os.cpu_count(), "threads": args.threads, "torch": torch.__version__,
           "loadavg_before": [round(x, 2) for x in load_before],
           "loadavg_after": [round(x, 2) for x in os.getloadavg()],
           "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
