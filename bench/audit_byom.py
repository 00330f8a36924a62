"""Bench: bring your own model. ``xaudit audit`` of a ResNet-18 at 224 px (cascading randomization of
saliency, integrated_gradients and grad_cam on 16 images) vs the pass floor vs Quantus 0.6.0's MPRT.

    .venv/bin/python bench/audit_byom.py [--threads 2] [--repeats 1] [--quantus-budget 80]

The model is ``bench/models/resnet.py:resnet18`` (torchvision's ResNet-18, written out; seeded random
weights saved as safetensors and passed with ``weights=``); the data 16 procedurally generated 256x256
PNGs in a temporary folder, read by xaudit at 224 px with its default center crop, ``normalize="imagenet"``.
Writes bench/results/audit_byom.json with, per method:

- ``xaudit_s``: the ``cascading_randomization`` cell's seconds from the run's store (one
  ``xaudit.audit(...)`` call with the three methods, ``workers=1``: cells run in this process with
  torch threads = the cores); split into ``xaudit_explain_s`` (inside the explainer) and
  ``xaudit_harness_s`` (the rest: argmax forwards, randomized copies, weight digests, five
  similarities per stage, calibration, edge map, bootstrap CIs, figure data).
- ``floor_s``: passes needed x one batched forward+backward of the wrapped model (16 images, gradient
  w.r.t. the input), the pass timed right before and right after the audit. Passes needed:
  (1 original + K stages) explanations x the method's declared passes per explanation (K = 7 blocks:
  fc, layer4, layer3, layer2, layer1, bn1, conv1; no retrain reference in ``xaudit audit``; IG: its
  default 50 steps = 50 passes).
- ``quantus_s``: ``quantus.MPRT(layer_order="top_down")`` on the same wrapped model, images and targets
  (the model's predicted classes) with plain Captum explain functions of xaudit's settings. MPRT
  re-initializes every module with ``reset_parameters`` (41 in a ResNet-18: 20 convs, 20 BatchNorms,
  fc), one stage each, and explains the original model twice: 43 explanations against xaudit's 8.
  A Quantus run is stopped before its next explanation would pass ``--quantus-budget`` seconds; its
  full time is then extrapolated from the seconds per explanation (``quantus_extrapolated: true``).
Plus ``audit_wall_s`` (the whole API call, all three methods: model build, image reading, inference of
blocks and Grad-CAM layer, cells, report) and ``cli``: ``cli_wall_s`` of ``xaudit audit ...`` as a cold
subprocess with its default workers (one process, a torch thread per core), methods ``--cli-methods``
(default: the three). ``--cli-only`` times just the command into the same file.
Requires the `bench` extra (``pip install -e '.[bench]'``, quantus==0.6.0).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import xaudit  # noqa: E402
from xaudit import explain  # noqa: E402
from xaudit.checks import toolkit  # noqa: E402
from xaudit.run.executor import available_cores  # noqa: E402
from xaudit.run.store import Store  # noqa: E402
from xaudit.world.folder import FolderWorld  # noqa: E402
from xaudit.zoo import user  # noqa: E402

MODEL = "bench/models/resnet.py:resnet18"
CHECK = "cascading_randomization"
METHODS = {"saliency": {}, "integrated_gradients": {}, "grad_cam": {}}   # xaudit's defaults (IG: 50 steps)


# ------------------------------------------------------------------------------------------ inputs
def make_images(folder: Path, n: int, size: int = 256, seed: int = 0) -> None:
    """``n`` smooth RGB images: a colored background gradient plus 3-6 soft blobs, seeded."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    for i in range(n):
        c0, c1 = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
        t = (np.cos(rng.uniform(0, np.pi)) * xx + np.sin(rng.uniform(0, np.pi)) * yy)[..., None]
        img = c0 * (1 - t / t.max()) + c1 * (t / t.max())
        for _ in range(rng.integers(3, 7)):
            cy, cx = rng.uniform(0.15, 0.85, 2)
            r = rng.uniform(0.06, 0.2)
            w = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))[..., None]
            img = img * (1 - w) + rng.uniform(0, 1, 3) * w
        img = img + rng.normal(0, 0.02, img.shape)
        Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(folder / f"img_{i:02d}.png")


def save_weights(path: Path) -> None:
    from safetensors.torch import save_file

    factory = user.factory(user.make_spec(str(ROOT / MODEL)))
    save_file({k: v.contiguous() for k, v in factory().state_dict().items()}, str(path))


# ------------------------------------------------------------------------------------------ timing
def pass_time(model, x: torch.Tensor, reps: int) -> float:
    """Median seconds of one batched forward + backward to the input (the pass the floor counts)."""
    out = []
    for _ in range(reps + 1):
        xi = x.clone().requires_grad_(True)
        t0 = time.perf_counter()
        logits = model(xi)
        torch.autograd.grad(logits.max(1).values.sum(), xi)
        out.append(time.perf_counter() - t0)
    return statistics.median(out[1:])


class ExplainTimer:
    """Wall time the cells spend inside the explainer, per method (cells run in this process)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._orig = toolkit.explain_robust

        def timed(explainer, *a, **kw):
            t0 = time.perf_counter()
            try:
                return self._orig(explainer, *a, **kw)
            finally:
                self.seconds[explainer.name] = self.seconds.get(explainer.name, 0.0) + time.perf_counter() - t0
        toolkit.explain_robust = timed

    def close(self):
        toolkit.explain_robust = self._orig


def run_xaudit(folder: Path, weights: Path, out: Path, methods: list[str], n_images: int, size: int):
    from xaudit.checks.memo import EXPLANATIONS

    EXPLANATIONS.clear()          # a repeat computes its explanations again
    timer = ExplainTimer()
    try:
        t0 = time.perf_counter()
        res = xaudit.audit(str(ROOT / MODEL), str(folder), weights=str(weights), normalize="imagenet", size=size,
                           methods=",".join(methods), checks=CHECK, params={CHECK: {"n_images": n_images}},
                           workers=1, out=str(out))
        wall = time.perf_counter() - t0
    finally:
        timer.close()
    with Store.open(res.run_dir, readonly=True) as store:
        cells = {c["method"]: c for c in store.cells() if c["check_name"] == CHECK}
    bad = {m: c["status"] for m, c in cells.items() if c["status"] != "done"}
    if bad:
        raise RuntimeError(f"xaudit cells did not finish: {bad}")
    return res, wall, {m: c["seconds"] for m, c in cells.items()}, timer.seconds


class OverBudget(Exception):
    pass


def captum_explain_func(method: str, params: dict, budget: dict):
    """bench/sanity.py's plain Captum explain function for Quantus with xaudit's settings, stopping
    (OverBudget) before an explanation that would end past ``budget['deadline']``. Integrated Gradients gets
    the images per model call xaudit uses (its internal_batch, 64, capped for large images: 16 at 224 px,
    explain.base.call_budget): Captum's default (all 50 x 16 interpolated 224 px images in one batch) needs
    tens of GB here."""
    from sanity import captum_explain_func as plain

    from xaudit.explain.base import call_budget

    def explain_func(model, inputs, targets, **kwargs):
        now = time.perf_counter()
        if budget["calls"] and now + budget["seconds"] / budget["calls"] > budget["deadline"]:
            raise OverBudget
        per_call = call_budget(params.get("internal_batch", 64), torch.as_tensor(inputs))
        out = plain(method, params, internal_batch_size=per_call)(model, inputs, targets)
        budget["calls"] += 1
        budget["seconds"] += time.perf_counter() - now
        return out
    return explain_func


def run_quantus(method: str, model, x: np.ndarray, y: np.ndarray, budget_s: float) -> dict:
    import quantus

    n_layers = sum(1 for _, m in model.named_modules() if hasattr(m, "reset_parameters"))
    expected = n_layers + 2              # a_batch=None: explained once for a_batch, once as "original"
    budget = {"calls": 0, "seconds": 0.0, "deadline": 0.0}
    fn = captum_explain_func(method, METHODS[method], budget)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        metric = quantus.MPRT(layer_order="top_down", seed=42, disable_warnings=True, display_progressbar=False)
        t0 = time.perf_counter()
        budget["deadline"] = t0 + budget_s
        try:
            scores = metric(model=model, x_batch=x, y_batch=y, a_batch=None, explain_func=fn, device="cpu",
                            batch_size=len(x), channel_first=True)
            done, error = True, None
        except OverBudget:
            scores, done, error = None, False, None
        except AssertionError as e:        # Quantus refuses an all-zero batch of maps (e.g. Grad-CAM after ReLU)
            scores, done, error = None, False, f"AssertionError: {e}"
        elapsed = time.perf_counter() - t0
    r = {"layers": n_layers, "explanations_expected": expected, "explanations_done": budget["calls"],
         "explain_s": budget["seconds"], "quantus_extrapolated": not done, "quantus_error": error}
    if done:
        r["quantus_s"] = elapsed
        r["stages_scored"] = len(scores) - 1     # minus "original"
    else:
        r["quantus_measured_s"] = elapsed
        r["quantus_s"] = elapsed / max(1, budget["calls"]) * expected
    return r


def run_cli(folder: Path, weights: Path, out: Path, methods: list[str], timeout: float) -> dict:
    exe = Path(sys.executable).with_name("xaudit")
    cmd = [str(exe), "audit", "--model", MODEL, "--data", str(folder), "--weights", str(weights),
           "--normalize", "imagenet", "--methods", ",".join(methods), "--checks", CHECK, "--out", str(out)]
    env = {k: v for k, v in os.environ.items() if k != "XAUDIT_EXPLAIN_MEMO_MB"}
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t0
    if p.returncode:
        raise RuntimeError(f"xaudit audit exited {p.returncode}:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    with Store.open(out, readonly=True) as store:
        cells = {c["method"]: c["seconds"] for c in store.cells() if c["check_name"] == CHECK}
        workers = store.runs()[-1].get("workers")
    shown = " ".join(shlex.quote(c) for c in ["xaudit", *cmd[1:]]).replace(str(folder), "DIR").replace(
        str(weights), "W.safetensors").replace(str(out), "OUT")
    return {"cli_wall_s": wall, "cli_command": shown, "cli_methods": methods, "cli_workers": workers,
            "cli_cell_s": cells, "cli_stdout_tail": p.stdout.strip().splitlines()[-3:]}


def timed_cli(folder: Path, weights: Path, tmp: Path, methods: list[str], timeout: float) -> dict:
    r = run_cli(folder, weights, tmp / "cli", methods, timeout)
    r["measured_at"] = time.strftime("%Y-%m-%d %H:%M:%S")
    print(f"cli ({','.join(methods)}): {r['cli_wall_s']:.1f}s, cells "
          + ", ".join(f"{m} {v:.1f}s" for m, v in r["cli_cell_s"].items()), flush=True)
    return r


# --------------------------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the floor and Quantus "
                                                            "(xaudit's in-process cells use the cores)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--pass-reps", type=int, default=5, help="timed passes per floor measurement (median)")
    ap.add_argument("--quantus-budget", type=float, default=80.0,
                    help="seconds per Quantus run; beyond it the run is stopped and extrapolated")
    ap.add_argument("--no-quantus", action="store_true")
    ap.add_argument("--cli-methods", default="saliency,integrated_gradients,grad_cam",
                    help="methods of the timed `xaudit audit` subprocess ('' skips it)")
    ap.add_argument("--cli-timeout", type=float, default=600.0)
    ap.add_argument("--cli-only", action="store_true",
                    help="time only the `xaudit audit` subprocess (--cli-methods) and add it to the `cli` entries "
                         "of an existing --out file")
    ap.add_argument("--keep", action="store_true", help="keep the temporary images, weights and run folders")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "audit_byom.json")
    args = ap.parse_args()
    methods = [m for m in args.methods.split(",") if m]
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()

    tmp = Path(tempfile.mkdtemp(prefix="xaudit-bench-byom-"))
    folder, weights = tmp / "images", tmp / "resnet18.safetensors"
    folder.mkdir()
    make_images(folder, args.images)
    save_weights(weights)
    if args.cli_only:
        data = json.loads(args.out.read_text())
        methods_cli = [m for m in args.cli_methods.split(",") if m]
        data.setdefault("cli", {})[",".join(methods_cli)] = timed_cli(folder, weights, tmp, methods_cli,
                                                                      args.cli_timeout)
        data.setdefault("cli_only_commands", []).append("python bench/audit_byom.py " + " ".join(sys.argv[1:]))
        args.out.write_text(json.dumps(data, indent=2) + "\n")
        shutil.rmtree(tmp, ignore_errors=True)
        return

    # the model and images as xaudit sees them (same spec, same reading rule)
    world = FolderWorld(str(folder), size=args.size, limit=args.images)
    x = world.sample(range(len(world))).images
    spec = user.make_spec(str(ROOT / MODEL), weights=str(weights), normalize="imagenet")
    module = user.build_module(spec)
    blocks = user.infer_blocks(module)
    cam_layer = user.infer_cam_layer(module, user.Normalize(spec["normalize"]["mean"], spec["normalize"]["std"])(x[:8]))
    model = user.Audited(module, spec["normalize"], blocks, cam_layer).eval()
    y = toolkit.predict(model, x)
    # warm-up: the pass at the floor's batch and at IG's 64-image chunks (oneDNN primitive set-up)
    pass_time(model, x, 1)
    pass_time(model, torch.cat([x] * 4), 1)

    passes, per_expl = {}, {}
    for m in methods:
        fwd, bwd = explain.get(m, **METHODS[m]).expected_passes(tuple(x.shape[1:]))
        per_expl[m] = int(max(fwd, bwd))
        passes[m] = per_expl[m] * (1 + len(blocks))
    runs: dict[str, dict[str, list]] = {m: {k: [] for k in ("pass_s", "floor_s", "xaudit_s", "xaudit_explain_s",
                                                            "xaudit_harness_s", "quantus_pass_s", "quantus_s")}
                                        for m in methods}
    walls, quantus_info, audit_info = [], {}, None
    for r in range(args.repeats):
        before = pass_time(model, x, args.pass_reps)
        res, wall, cell_s, explain_s = run_xaudit(folder, weights, tmp / f"api-{r}", methods, args.images, args.size)
        after = pass_time(model, x, args.pass_reps)
        audit_info = res.audit
        walls.append(wall)
        for m in methods:
            p = (before + after) / 2
            runs[m]["pass_s"].append(p)
            runs[m]["floor_s"].append(passes[m] * p)
            runs[m]["xaudit_s"].append(cell_s[m])
            runs[m]["xaudit_explain_s"].append(explain_s.get(m, 0.0))
            runs[m]["xaudit_harness_s"].append(cell_s[m] - explain_s.get(m, 0.0))
        print(f"repeat {r}: audit {wall:.1f}s, cells " + ", ".join(f"{m} {cell_s[m]:.1f}s" for m in methods)
              + f", pass {before:.3f}/{after:.3f}s", flush=True)
        if args.no_quantus:
            continue
        before = after
        for m in methods:
            q = run_quantus(m, model, x.numpy(), y.numpy(), args.quantus_budget)
            after = pass_time(model, x, args.pass_reps)
            runs[m]["quantus_pass_s"].append((before + after) / 2)
            runs[m]["quantus_s"].append(q["quantus_s"])
            quantus_info[m] = q
            before = after
            print(f"  quantus {m}: {q['quantus_s']:.1f}s ({q['explanations_done']}/{q['explanations_expected']} "
                  f"explanations{', extrapolated' if q['quantus_extrapolated'] else ''})"
                  + (f"; stopped by {q['quantus_error'][:80]}" if q["quantus_error"] else ""), flush=True)

    results: dict[str, dict] = {}
    k_stages = len(blocks)
    for m in methods:
        rr = {k: v for k, v in runs[m].items() if v}
        out = {k: statistics.median(v) for k, v in rr.items()}
        out.update({"passes_per_explanation": per_expl[m], "explanations": 1 + k_stages,
                    "passes": passes[m], "stages": k_stages,
                    "xaudit_over_floor": statistics.median(a / b for a, b in zip(rr["xaudit_s"], rr["floor_s"])),
                    "xaudit_s_per_explanation": out["xaudit_s"] / (1 + k_stages)})
        if "quantus_s" in rr:
            q = quantus_info[m]
            qfloor = [per_expl[m] * q["explanations_expected"] * p for p in rr["quantus_pass_s"]]
            out.update({"quantus_stages": q["layers"], "quantus_explanations": q["explanations_expected"],
                        "quantus_explanations_done": q["explanations_done"],
                        "quantus_extrapolated": q["quantus_extrapolated"], "quantus_error": q["quantus_error"],
                        "quantus_s_per_explanation": out["quantus_s"] / q["explanations_expected"],
                        "quantus_over_floor": statistics.median(a / b for a, b in zip(rr["quantus_s"], qfloor)),
                        "quantus_over_xaudit": statistics.median(a / b for a, b in zip(rr["quantus_s"],
                                                                                        rr["xaudit_s"])),
                        "per_explanation_quantus_over_xaudit": (out["quantus_s"] / q["explanations_expected"])
                        / out["xaudit_s_per_explanation"]})
        out["runs"] = rr
        results[m] = out
        print(f"{m}: floor {out['floor_s']:.2f}s, xaudit {out['xaudit_s']:.2f}s "
              f"({out['xaudit_over_floor']:.2f}x)" + (f", quantus {out['quantus_s']:.2f}s" if "quantus_s" in out
                                                      else ""), flush=True)
    keys = ("floor_s", "xaudit_s", "xaudit_explain_s", "xaudit_harness_s")
    total: dict[str, float] = {k: sum(r[k] for r in results.values()) for k in keys}
    total["passes"] = sum(passes.values())
    total["xaudit_over_floor"] = total["xaudit_s"] / total["floor_s"]
    if all("quantus_s" in r for r in results.values()):
        total["quantus_s"] = sum(r["quantus_s"] for r in results.values())
        total["quantus_over_xaudit"] = total["quantus_s"] / total["xaudit_s"]

    cli = {}
    cli_methods = [m for m in args.cli_methods.split(",") if m]
    if cli_methods:
        cli[",".join(cli_methods)] = timed_cli(folder, weights, tmp, cli_methods, args.cli_timeout)

    import quantus

    out = {
        "bench": "audit_byom: xaudit audit of a ResNet-18 at 224 px, cascading randomization",
        "command": "python bench/audit_byom.py " + " ".join(sys.argv[1:]),
        "model": MODEL, "weights": "seeded random (torch.manual_seed(0), torchvision's init), safetensors",
        "n_images": args.images, "size": args.size, "data": f"{args.images} generated 256x256 PNGs (smooth blobs), "
                                                            "center crop to 224, imagenet normalization",
        "blocks": blocks, "cam_layer": cam_layer, "audit_inferred": {k: audit_info.get(k) for k in
                                                                     ("blocks", "cam_layer", "num_classes")},
        "predicted_classes": sorted(set(y.tolist())),
        "threads": args.threads, "xaudit_threads": available_cores(), "repeats": args.repeats,
        "pass": f"one forward + backward to the input, batch of {args.images} (median of {args.pass_reps}, before "
                "and after each measurement)",
        "ig": "integrated_gradients with xaudit's defaults: 50 steps, zero baseline, gausslegendre, internal_batch 64 capped at 16 images a call at 224 px (explain.base.call_budget); Quantus' Captum IG gets the same",
        "quantus_budget_s": args.quantus_budget,
        "torch": torch.__version__, "quantus": quantus.__version__, "numpy": np.__version__,
        "xaudit": getattr(xaudit, "__version__", None), "platform": platform.platform(),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "cores": available_cores(),
        "audit_wall_s": statistics.median(walls), "audit_wall_runs": walls, "audit_methods": methods,
        "cli": cli, "methods": results, "total": total,
        "targets": {"xaudit_over_floor": "<= 1.2", "quantus_over_xaudit": "> 1"},
        "bench_wall_s": time.perf_counter() - t_start,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(total, indent=2))
    if args.keep:
        print(f"temporary files kept in {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"bench wall {out['bench_wall_s']:.0f}s")


if __name__ == "__main__":
    main()
