"""Bench: cascading randomization of four methods on 64 images of the `clean` CNN, xaudit vs the pass
floor vs Quantus 0.6.0's MPRT.

    .venv/bin/python bench/sanity.py [--threads 2] [--repeats 3] [--images 64]

Per method and in total, writes bench/results/sanity.json with:
- ``floor_s``: passes needed x the time of one batched forward+backward (64 images, gradient w.r.t.
  the input), measured in the same run. Passes needed: (1 original + K stages + 1 retrain reference)
  explanations x the method's declared passes per explanation (K = 4 blocks). That is the work of the
  xaudit check; Quantus' MPRT also explains K + 2 times (it explains the original model twice).
- ``xaudit_s``: the full ``cascading_randomization`` cell (targets, K + 2 explanations, five similarities
  per stage, retrain reference, calibration, edge map, bootstrap CIs, verdicts); models preloaded.
  ``xaudit_explain_s`` is the part spent inside the explainer, ``xaudit_harness_s`` the rest.
- ``quantus_s``: ``quantus.MPRT(layer_order="top_down")`` on the same model, images and targets (the
  original model's predicted classes) with plain Captum explain functions, the same Captum classes and
  settings as xaudit's methods (Saliency abs=False; IntegratedGradients 50 steps, zero baseline,
  Gauss-Legendre, Captum's default of one batch; GuidedBackprop; LayerGradCam on the last conv layer,
  ReLU, bilinear upsampling): what a Quantus user writes. Its default similarity (Spearman) only.
  (``quantus.explain`` itself cannot be used: it hard-codes 10 IG steps.)
- ``quantus_xaudit_explain_s``: the same MPRT with xaudit's explainers as ``explain_func``: identical
  explanation code, so the difference to ``xaudit_s`` is the harness alone.
Every repeat measures the pass time right before and after its runs, so each ratio compares timings
taken under the same load (the machine is shared); reported values are medians over ``--repeats``.
Requires the `bench` extra (``pip install -e '.[bench]'``, quantus==0.6.0).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from xaudit import explain, world, zoo  # noqa: E402
from xaudit.checks.base import CheckContext  # noqa: E402
from xaudit.checks.randomization import CascadingRandomization  # noqa: E402
from xaudit.checks.sanity import predict  # noqa: E402
from xaudit.core import model as core_model  # noqa: E402

METHODS = {
    "saliency": {},
    "integrated_gradients": {"steps": 50},
    "guided_backprop": {},
    "grad_cam": {},
}


def pass_time(model, x: torch.Tensor, reps: int = 10) -> list[float]:
    """Seconds of one batched forward + backward to the input (the pass the floor counts)."""
    out = []
    for _ in range(reps + 2):
        xi = x.clone().requires_grad_(True)
        t0 = time.perf_counter()
        logits = model(xi)
        torch.autograd.grad(logits.max(1).values.sum(), xi)
        out.append(time.perf_counter() - t0)
    return out[2:]


class ExplainTimer:
    """Accumulates the wall time the check spends inside the explainer (the rest is the harness:
    argmax forwards, post-processing, similarities, bootstrap CIs, rows)."""

    def __init__(self):
        from xaudit.checks import sanity

        self.seconds = 0.0
        self._mod, self._orig = sanity, sanity.explain_robust

        def timed(*a, **kw):
            t0 = time.perf_counter()
            try:
                return self._orig(*a, **kw)
            finally:
                self.seconds += time.perf_counter() - t0
        sanity.explain_robust = timed

    def close(self):
        self._mod.explain_robust = self._orig


def run_xaudit(method: str, params: dict, models: dict, world_cfg: dict, n_images: int) -> tuple[float, list]:
    ctx = CheckContext(check="cascading_randomization", method=method, method_params=params,
                       model_group="clean", world=world_cfg, seed=0,
                       params={"n_images": n_images, "figure_images": 0},
                       load_model=lambda ref: models[(ref.spec, ref.seed)])
    from xaudit.checks.memo import EXPLANATIONS
    EXPLANATIONS.clear()      # each repeat computes its explanations (a cell reuses none of its own)
    t0 = time.perf_counter()
    rows = CascadingRandomization().run(ctx)
    return time.perf_counter() - t0, rows


def captum_explain_func(method: str, params: dict, internal_batch_size: int | None = None):
    """A plain Captum explain function for Quantus, with the settings of xaudit's method
    (``internal_batch_size``: Integrated Gradients' images per model call; None: Captum's default, all)."""
    from captum.attr import GuidedBackprop, IntegratedGradients, LayerAttribution, LayerGradCam, Saliency

    def explain_func(model, inputs, targets, **kwargs):
        x = torch.as_tensor(inputs)
        t = torch.as_tensor(targets, dtype=torch.int64)
        if method == "saliency":
            a = Saliency(model).attribute(x, target=t, abs=False)
        elif method == "integrated_gradients":
            a = IntegratedGradients(model).attribute(x, baselines=torch.zeros_like(x), target=t,
                                                     n_steps=params.get("steps", 50), method="gausslegendre",
                                                     internal_batch_size=internal_batch_size)
        elif method == "guided_backprop":
            a = GuidedBackprop(model).attribute(x, target=t)
        elif method == "grad_cam":
            cam = LayerGradCam(model, core_model.last_conv(model)).attribute(x, target=t, relu_attributions=True)
            a = LayerAttribution.interpolate(cam, tuple(x.shape[2:]), interpolate_mode="bilinear")
        else:
            raise ValueError(f"no plain Captum explain function for {method!r}")
        return a.sum(1, keepdim=True).detach().numpy()
    return explain_func


def xaudit_explain_func(method: str, params: dict):
    explainer = explain.get(method, **params)

    def explain_func(model, inputs, targets, **kwargs):
        raw = explainer(model, torch.as_tensor(inputs), torch.as_tensor(targets, dtype=torch.int64))
        return raw.sum(1, keepdim=True).numpy()
    return explain_func


def run_quantus(explain_func, model, x: np.ndarray, y: np.ndarray) -> tuple[float, dict]:
    import quantus

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        metric = quantus.MPRT(layer_order="top_down", seed=42, disable_warnings=True, display_progressbar=False)
        t0 = time.perf_counter()
        scores = metric(model=model, x_batch=x, y_batch=y, a_batch=None, explain_func=explain_func,
                        device="cpu", batch_size=len(x), channel_first=True)
        return time.perf_counter() - t0, scores


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--methods", nargs="*", default=list(METHODS))
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "sanity.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import quantus

    trained = {s: zoo.load_or_train("clean", seed=s) for s in (0, 1)}
    models = {("clean", s): (t.model.eval(), t.card) for s, t in trained.items()}
    model = models[("clean", 0)][0]
    wcfg = dict(trained[0].card["world"])
    world_cfg = {"world": wcfg.pop("name", None) or wcfg.pop("world"), **wcfg}
    name = world_cfg["world"]
    w = world.get(name, **{k: v for k, v in world_cfg.items() if k != "world"})
    x = w.sample(range(args.images), split="test").images
    y = predict(model, x)
    k_blocks = len(core_model.blocks(model))
    explanations = k_blocks + 2

    results: dict[str, dict] = {}
    for method in args.methods:
        params = METHODS.get(method, {})
        fwd, bwd = explain.get(method, **params).expected_passes(tuple(x.shape[1:]))
        per_expl = max(fwd, bwd)
        passes = per_expl * explanations
        runs: dict[str, list[float]] = {"floor_s": [], "xaudit_s": [], "xaudit_explain_s": [],
                                        "xaudit_harness_s": [], "quantus_s": [], "quantus_xaudit_explain_s": [],
                                        "pass_s": []}
        run_xaudit(method, params, models, world_cfg, args.images)           # warm-up
        for _ in range(args.repeats):
            before = statistics.median(pass_time(model, x))
            timer = ExplainTimer()
            try:
                runs["xaudit_s"].append(run_xaudit(method, params, models, world_cfg, args.images)[0])
            finally:
                timer.close()
            runs["xaudit_explain_s"].append(timer.seconds)
            runs["xaudit_harness_s"].append(runs["xaudit_s"][-1] - timer.seconds)
            runs["quantus_s"].append(run_quantus(captum_explain_func(method, params), model, x.numpy(),
                                                 y.numpy())[0])
            runs["quantus_xaudit_explain_s"].append(run_quantus(xaudit_explain_func(method, params), model,
                                                                x.numpy(), y.numpy())[0])
            after = statistics.median(pass_time(model, x))
            runs["pass_s"].append((before + after) / 2)
            runs["floor_s"].append(passes * runs["pass_s"][-1])
        r = {k: statistics.median(v) for k, v in runs.items()}
        r.update({"passes_per_explanation": per_expl, "explanations": explanations, "passes": passes,
                  "xaudit_over_floor": statistics.median(a / b for a, b in zip(runs["xaudit_s"], runs["floor_s"])),
                  "quantus_over_floor": statistics.median(a / b for a, b in zip(runs["quantus_s"],
                                                                                 runs["floor_s"])),
                  "speedup_vs_quantus": statistics.median(a / b for a, b in zip(runs["quantus_s"],
                                                                                 runs["xaudit_s"])),
                  "runs": runs})
        results[method] = r
        print(f"{method}: floor {r['floor_s']:.2f}s, xaudit {r['xaudit_s']:.2f}s, quantus {r['quantus_s']:.2f}s, "
              f"quantus with xaudit's explainers {r['quantus_xaudit_explain_s']:.2f}s", flush=True)
    keys = ("floor_s", "xaudit_s", "xaudit_explain_s", "xaudit_harness_s", "quantus_s", "quantus_xaudit_explain_s")
    total: dict[str, float] = {k: sum(r[k] for r in results.values()) for k in keys}
    total["passes"] = sum(r["passes"] for r in results.values())
    total["xaudit_over_floor"] = total["xaudit_s"] / total["floor_s"]
    total["quantus_over_floor"] = total["quantus_s"] / total["floor_s"]
    total["quantus_xaudit_explain_over_floor"] = total["quantus_xaudit_explain_s"] / total["floor_s"]
    total["speedup_vs_quantus"] = total["quantus_s"] / total["xaudit_s"]
    total["speedup_vs_quantus_xaudit_explain"] = total["quantus_xaudit_explain_s"] / total["xaudit_s"]
    out = {
        "bench": "sanity: cascading randomization, clean cnn",
        "command": "python bench/sanity.py " + " ".join(sys.argv[1:]),
        "n_images": args.images, "blocks": core_model.blocks(model), "threads": args.threads,
        "repeats": args.repeats,
        "pass": "one forward + backward to the input, batch of n_images (median of 10, before and after each repeat)",
        "torch": torch.__version__, "quantus": quantus.__version__, "numpy": np.__version__,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "methods": results, "total": total,
        "targets": {"xaudit_over_floor_total": "<= 1.25", "speedup_vs_quantus_total": ">= 2"},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(total, indent=2))


if __name__ == "__main__":
    main()
