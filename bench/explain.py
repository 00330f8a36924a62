"""Cost of every explanation method against the floor set by its model passes.

For each method on the zoo's ``clean`` model and 256 test images of the 32x32 shapes world: wall
time, the passes it made (counted by the registry's hooks; per image = batch-equivalents), and

    ratio = wall / floor

where the floor is the time of the same passes run as bare model calls over the 256 images, in calls
of ``internal_batch`` images like the method's own (forward+backward w.r.t. the input for each
backward pass, forward-only for the rest), timed right before and right after the method and
averaged -- the machine is shared and its speed drifts, so a floor measured at another moment would
not compare. ``ratio_cpu`` is the same with process CPU time; ``ratio_fb`` = wall / (passes x the
median time of one forward+backward over all 256 images in one call), the issue's definition.
Target: <= 1.15 for the gradient family. Also sweeps ``internal_batch`` for Integrated Gradients and
the per-image cost of a forward+backward pass by batch size (what DEFAULT_INTERNAL_BATCH rests on).

    .venv/bin/python bench/explain.py                 # all methods (~15-25 min on 2 busy cores)
    .venv/bin/python bench/explain.py --methods saliency,integrated_gradients --n 64 --no-sweep
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from xaudit import explain as E  # noqa: E402
from xaudit.core.errors import NotApplicable  # noqa: E402


def load_model(which: str):
    """The zoo's clean model (trained once and cached by the zoo), or a fresh CNN as a fallback."""
    if which == "clean":
        try:
            from xaudit import zoo

            trained = zoo.load_or_train("clean", log=lambda m: print("  zoo:", m, file=sys.stderr))
            return trained.model.eval(), {"model": "clean", "spec_hash": trained.card.get("spec_hash"),
                                          "clean_accuracy": trained.card.get("clean_accuracy")}
        except Exception as e:  # the zoo is another stage; the bench must still run
            note = f"zoo.load_or_train('clean') failed ({type(e).__name__}: {e}); fell back to a fresh CNN"
            print("  " + note, file=sys.stderr)
    else:
        note = "fresh (untrained) CNN requested with --model fresh"
    from xaudit.zoo import build_model, load_spec

    model = build_model(load_spec("clean")).eval()
    return model, {"model": "fresh_cnn", "note": note}


def images(n: int) -> torch.Tensor:
    from xaudit import world

    return world.get("shapes", size=32).sample(range(n), split="test").images


def pass_fns(model, x, target, chunk: int | None = None):
    """One forward+backward (gradient w.r.t. the input) and one forward-only pass over all of x, in
    model calls of ``chunk`` images (default: one call)."""
    chunk = chunk or len(x)
    parts = [(x[i:i + chunk], target[i:i + chunk]) for i in range(0, len(x), chunk)]

    def fwd_bwd():
        for xc, tc in parts:
            xr = xc.detach().clone().requires_grad_(True)
            torch.autograd.grad(model(xr).gather(1, tc[:, None]).sum(), xr)

    def fwd():
        with torch.no_grad():
            for xc, _ in parts:
                model(xc)

    return fwd_bwd, fwd


def pass_times(model, x, target, repeats: int = 3) -> tuple[float, float]:
    """Median seconds of one forward+backward and one forward pass over x."""
    out = []
    for fn in pass_fns(model, x, target):
        fn()
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        out.append(statistics.median(ts))
    return out[0], out[1]


def timed(fn):
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w0, time.process_time() - c0


def floor_run(fwd_bwd, fwd, n_fb: float, n_f: float, cap: int):
    """Run the passes a method made (at most ``cap`` of them, scaled up): (wall, cpu) seconds."""
    total = n_fb + n_f
    scale = max(1.0, total / cap)
    k_fb, k_f = round(n_fb / scale), round(n_f / scale)

    def run():
        for _ in range(k_fb):
            fwd_bwd()
        for _ in range(k_f):
            fwd()

    _, wall, cpu = timed(run)
    done = k_fb + k_f
    factor = total / done if done else 0.0
    return wall * factor, cpu * factor


def bench_method(name, model, x, target, params, cap: int, repeats: int):
    """Time the method, and the same number of bare passes right before and right after it (their
    mean is the floor), so that each ratio compares runs made under the same machine load. Methods of
    at most 60 passes per image are measured ``repeats`` times; the median ratio is reported."""
    ex = E.get(name, **params)
    try:
        ex(model, x[:2], target[:2])  # warm-up: lazy imports (sklearn for LIME), Captum set-up
    except NotApplicable as e:
        print(f"  {name:24s} not applicable: {e}", flush=True)
        return {"method": name, "family": ex.family, "not_applicable": str(e)}
    # the floor makes its passes in the model-call size the method uses (internal_batch images)
    fwd_bwd, fwd = pass_fns(model, x, target, ex.params.get("internal_batch", E.DEFAULT_INTERNAL_BATCH))
    fwd_bwd(), fwd()
    forward, backward = ex.expected_passes(tuple(x.shape[1:])) or (0, 0)
    n_fb, n_f = backward, max(forward - backward, 0.0)  # fwd+bwd passes, then forward-only ones
    reps = repeats if n_fb + n_f <= 60 else 1
    runs = []
    for _ in range(reps):
        before = floor_run(fwd_bwd, fwd, n_fb, n_f, cap)
        maps, wall, cpu = timed(lambda: ex(model, x, target))
        after = floor_run(fwd_bwd, fwd, n_fb, n_f, cap)
        runs.append((wall, cpu, (before[0] + after[0]) / 2, (before[1] + after[1]) / 2))
    p = ex.last_passes
    ratios = [w / fw for w, _, fw, _ in runs if fw > 0]
    cpu_ratios = [c / fc for _, c, _, fc in runs if fc > 0]
    wall, cpu, floor_wall, floor_cpu = (statistics.median(v) for v in zip(*runs))
    t_fb, t_f = pass_times(model, x, target)
    passes = max(p.forward, p.backward)
    row = {"method": name, "family": ex.family, "repeats": reps, "wall_s": round(wall, 4), "cpu_s": round(cpu, 4),
           "ms_per_image": round(1000 * wall / len(x), 3),
           "passes_forward": p.forward, "passes_backward": p.backward,
           "floor_wall_s": round(floor_wall, 4), "floor_cpu_s": round(floor_cpu, 4),
           "ratio": round(statistics.median(ratios), 3) if ratios else None,
           "ratio_cpu": round(statistics.median(cpu_ratios), 3) if cpu_ratios else None,
           "ratios_each_repeat": [round(r, 3) for r in ratios],
           "t_fwd_bwd_s": round(t_fb, 5), "t_fwd_s": round(t_f, 5),
           "ratio_fb": round(wall / (passes * t_fb), 3) if passes > 0 else None,
           "finite": bool(torch.isfinite(maps).all())}
    print(f"  {name:24s} {wall:8.2f}s  passes f={p.forward:g} b={p.backward:g}  floor={floor_wall:7.2f}s  "
          f"ratio={row['ratio']} {row['ratios_each_repeat']} cpu_ratio={row['ratio_cpu']}  "
          f"(t_fb={1000 * t_fb:.0f}ms)", flush=True)
    return row


def sweep_internal_batch(model, x, target, sizes, steps: int = 50, rounds: int = 3):
    """IG (``steps``) on x at several internal batch sizes, round-robin over ``rounds`` so that load
    drift hits every size alike; the median per size. Also the per-image cost of one forward+backward
    at each batch size."""
    explainers = {ib: E.get("integrated_gradients", steps=steps, internal_batch=ib) for ib in sizes}
    for ex in explainers.values():
        ex(model, x[:2], target[:2])
    ig = {ib: [] for ib in sizes}
    fb = {ib: [] for ib in sizes}
    for _ in range(rounds):
        for ib in sizes:
            ig[ib].append(timed(lambda: explainers[ib](model, x, target))[1])
            reps = max(1, -(-ib // len(x)))
            xb, tb = x.repeat(reps, 1, 1, 1)[:ib], target.repeat(reps)[:ib]
            f, _ = pass_fns(model, xb, tb)
            f()
            fb[ib].append(timed(f)[1] / len(xb))
    rows = []
    for ib in sizes:
        t_ig, t_fb = statistics.median(ig[ib]), statistics.median(fb[ib])
        rows.append({"internal_batch": ib, "ig_wall_s": round(t_ig, 4),
                     "ig_ms_per_image_step": round(1000 * t_ig / (len(x) * steps), 4),
                     "fwd_bwd_ms_per_image_at_this_batch": round(1000 * t_fb, 4)})
        print(f"  internal_batch={ib:5d}  IG {t_ig:6.2f}s ({1000 * t_ig / (len(x) * steps):.3f} ms/image-step)  "
              f"fwd+bwd {1000 * t_fb:.3f} ms/image", flush=True)
    return rows


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=256, help="images explained (default 256)")
    ap.add_argument("--methods", default="", help="comma-separated subset (default: all registered)")
    ap.add_argument("--model", choices=("clean", "fresh"), default="clean")
    ap.add_argument("--no-sweep", action="store_true", help="skip the internal_batch sweep")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    ap.add_argument("--repeats", type=int, default=3, help="repeats of methods with <= 60 passes per image")
    ap.add_argument("--floor-cap", type=int, default=25,
                    help="bare passes timed before and after each method, at most (scaled to the method's count)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "explain.json"))
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    model, model_info = load_model(args.model)
    x = images(args.n)
    with torch.no_grad():
        target = model(x).argmax(1)  # the predicted class, as the sanity checks explain
    names = [m for m in args.methods.split(",") if m] or E.names()
    print(f"model={model_info['model']} n={args.n} threads={torch.get_num_threads()}", flush=True)

    sweep = []
    if not args.no_sweep:
        print("internal_batch sweep (IG, 50 steps, 64 images):", flush=True)
        sweep = sweep_internal_batch(model, x[:64], target[:64], [16, 32, 64, 128, 256, 512, 3200])

    print("methods:", flush=True)
    rows = []
    t_start = time.perf_counter()
    for name in names:
        rows.append(bench_method(name, model, x, target, {}, cap=args.floor_cap, repeats=args.repeats))
    grad = [r["ratio"] for r in rows if r.get("family") == "gradient" and r.get("ratio")]
    result = {
        "bench": "explain",
        "command": "python bench/explain.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "n_images": args.n, "image_shape": list(x.shape[1:]), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "machine": platform.machine(), **model_info,
        "default_internal_batch": E.DEFAULT_INTERNAL_BATCH,
        "ratio_definition": "wall / floor, floor = the time of the same passes as bare model calls of "
                            "internal_batch images over the n images (passes_backward forward+backward passes, then passes_forward - "
                            "passes_backward forward passes), timed right before and right after the method "
                            "and averaged; ratio_cpu the same with process CPU time; ratio_fb = wall / "
                            "(max(passes) x one median fwd+bwd pass time). Passes per image = batch-equivalents.",
        "gradient_family_ratio_max": max(grad) if grad else None, "target_gradient_ratio": 1.15,
        "total_s": round(time.perf_counter() - t_start, 1),
        "methods": rows, "internal_batch_sweep": sweep,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"gradient-family max ratio: {result['gradient_family_ratio_max']}; wrote {out}")
    return result


if __name__ == "__main__":
    main()
