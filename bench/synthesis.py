"""Feature synthesis: time per synthesized image of xaudit's batched methods against their pass floor,
side by side with torch-lucent's ``render_vis`` and horama's Fourier / MaCo in one run.

On the zoo's trained ``clean`` CNN (32x32 shapes, 10 classes), each xaudit synthesis method
(fv_pixel, fv_fourier, fv_cppn, and fv_maco where registered) synthesizes K classes x R restarts in
one batch (R = 1 and 4 by default). Per method and R:

- ``s/image``: wall seconds of ``explain.get(m, steps=S, restarts=R).synthesize(model, classes)``
  divided by the K x R images;
- ``x floor``: that wall over the PASS FLOOR, S x one forward + backward (gradient w.r.t. the input)
  at the same batch size (K x R images), timed as a plain loop on the same model right before and
  right after the method (mean of the two);
- ``objective``: the mean target logit of the final images, evaluated here by the same model (every
  tool's images the same way), and ``argmax hits``: classes whose image (best restart) the model
  classifies as the target.

The reference side runs in a separate virtual environment (``--ref-python``, default
/tmp/xaudit-refvenv/bin/python; torch-lucent and horama need torchvision and cannot install beside
xaudit's torch) through bench/tools/synthesis_ref.py, on the same weights (exported here as safetensors;
its copy of the model must give xaudit's logits within 1e-5, asserted), same objective (the class
logit), image size, step count and thread count:

- ``lucent``: ``render_vis`` once per class (as lucent is normally used): Fourier parameterization,
  lucent's standard transforms, Adam lr 0.05;
- ``lucent_batch``: one ``render_vis`` call with lucent's ``batch`` parameter (K images, K objectives);
- ``lucent_scaled``: as ``lucent`` with the standard transforms' pixel amounts scaled to 32 px as
  xaudit scales them (pad 4, jitter 4, scale, rotate, jitter 2; lucent's own transform functions);
- ``horama_fourier`` / ``horama_maco``: one call per class with horama's defaults (NAdam lr 1.0, 6
  crops per step) at image size = model input size, values in [0, 1] and crops of 85-95% of the
  image (``--horama-box``); MaCo's magnitude spectrum is the world's own (xaudit's
  ``world_magnitude``: 1,024 training images, centred, in the decorrelated colour space), passed to
  horama as a .npy file instead of its download.

xaudit and the reference run alternately (A B A B, ``--pairs``): medians over pairs and the per-pair
ratio ``vs lucent`` = lucent's s/image / the row's s/image in the same pair (``vs lucent (CPU)``: the
same with process CPU seconds, which other jobs on the machine disturb less). lucent, lucent_batch and
lucent_scaled run in every pair, the other references in the first ``--side-pairs`` (1). Target: fv_fourier at
least 3x faster per image than lucent at an equal or higher objective value.

    .venv/bin/python bench/synthesis.py                      # ~4-5 min on 2 cores, 1 thread
    .venv/bin/python bench/synthesis.py --threads 2 --merge  # adds a 2-thread run to the JSON
    .venv/bin/python bench/synthesis.py --steps 512 --pairs 1 --methods fv_fourier \\
        --ref-methods lucent,lucent_batch --merge            # lucent's default step count
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from xaudit import explain as E  # noqa: E402

FV_METHODS = ("fv_pixel", "fv_fourier", "fv_cppn", "fv_maco")
REF_METHODS = ("lucent", "lucent_batch", "lucent_scaled", "horama_fourier", "horama_maco")
EVERY_PAIR = ("lucent", "lucent_batch", "lucent_scaled")  # the others run in the first --side-pairs pairs only
REF_SCRIPT = ROOT / "bench" / "tools" / "synthesis_ref.py"
DEFAULT_REF_PYTHON = "/tmp/xaudit-refvenv/bin/python"
LOGIT_TOL = 1e-5
TARGET_SPEEDUP = 3.0

# What the reference environment needed (measured when this bench was written; the run records the
# versions it finds). See bench/README.md#synthesis.
REF_INSTALL = (
    "python3 -m venv /tmp/xaudit-refvenv; env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null /tmp/xaudit-refvenv/bin/pip "
    "install torch==2.13.0 torchvision==0.28.0 torch-lucent==0.1.8 horama==0.3.0 einops safetensors. torch 2.13.0 "
    "from PyPI (the CUDA 13 build, run on the CPU): PyPI's torchvision wheels link libtorch_cuda, so torchvision "
    "0.28.0 beside xaudit's torch 2.13.0+cpu fails at import with 'RuntimeError: operator torchvision::nms does not "
    "exist' (the local wheels and pip configuration serving the +cpu wheel are bypassed). kornia 0.4.1 (lucent's "
    "pin <=0.4.1) works on torch 2.13 unpatched; horama 0.3.0 imports einops without declaring it")


# ------------------------------------------------------------------------------------------ helpers
def load_model():
    from xaudit import zoo

    trained = zoo.load_or_train("clean", log=lambda m: print("  zoo:", m, file=sys.stderr, flush=True))
    model = trained.model.eval()
    for p in model.parameters():
        p.requires_grad_(False)  # neither side needs gradients w.r.t. the weights
    card = trained.card
    return model, trained, {"model": "clean", "spec_hash": card.get("spec_hash"),
                            "clean_accuracy": card.get("clean_accuracy"), "world": card.get("spec", {}).get("world")}


def floor_per_step(model, batch: int, size: int, iters: int, channels: int = 3) -> float:
    """Seconds of one forward + backward (gradient w.r.t. the input) at ``batch``: a plain loop."""
    x = torch.rand(batch, channels, size, size, generator=torch.Generator().manual_seed(batch))
    t = torch.arange(batch) % 10

    def once():
        xr = x.clone().requires_grad_(True)
        torch.autograd.grad(model(xr).gather(1, t[:, None]).sum(), xr)

    for _ in range(3):
        once()
    t0 = time.perf_counter()
    for _ in range(iters):
        once()
    return (time.perf_counter() - t0) / iters


def evaluate(model, images: torch.Tensor, targets: torch.Tensor, restarts: int) -> dict:
    """Mean target logit, and argmax hits (per class: its best restart by target logit)."""
    with torch.no_grad():
        logits = model(images.float().contiguous())
    tl = logits.gather(1, targets[:, None])[:, 0]
    hit = logits.argmax(1) == targets
    k = len(targets) // restarts
    best = tl.view(k, restarts).argmax(1)
    classes_hit = int(hit.view(k, restarts)[torch.arange(k), best].sum())
    margin = tl - logits.scatter(1, targets[:, None], float("-inf")).max(1).values
    return {"objective": round(float(tl.mean()), 3), "objective_min": round(float(tl.min()), 3),
            "margin_mean": round(float(margin.mean()), 3), "classes_hit": classes_hit, "classes": k,
            "images_hit": int(hit.sum()), "images": len(targets),
            "in_range": bool(images.min() >= 0 and images.max() <= 1)}


def maco_spectrum(world_cfg: dict, n_images: int = 1024) -> tuple[np.ndarray, str]:
    """[3, S, S//2+1]: the magnitude spectrum xaudit's fv_maco uses (world_magnitude), for horama."""
    try:
        from xaudit.explain.synthesis.maco import world_magnitude

        mag = world_magnitude(dict(world_cfg), n_images=n_images)
        how = (f"xaudit.explain.synthesis.maco.world_magnitude({world_cfg}, n_images={n_images}): mean "
               "|rfft2| of the world's training images range(n), each channel centred, in the decorrelated "
               "colour space (inverse of the ImageNet colour-correlation square root that horama "
               "recorrelates with); saved as .npy and loaded by horama in place of its download "
               "(bench/tools/synthesis_ref.py sets horama.maco_fv.MACO_SPECTRUM_FILENAME to the file and "
               "replaces maco_fv.download_url by an error)")
    except ImportError:  # fv_maco not there yet: the same computation, self-contained
        from xaudit import world as W
        from xaudit.explain.synthesis.param import _COLOR_CORRELATION_SVD_SQRT, _MAX_NORM_SVD_SQRT

        cfg = dict(world_cfg)
        x = W.get(cfg.pop("name"), **cfg).sample(range(n_images), split="train").images.double()
        m = (_COLOR_CORRELATION_SVD_SQRT / _MAX_NORM_SVD_SQRT).double()
        x = torch.einsum("nchw,dc->ndhw", x, torch.linalg.inv(m))
        x = x - x.mean((2, 3), keepdim=True)
        mag = torch.fft.rfft2(x).abs().mean(0)
        mag[:, 0, 0] = 0
        how = (f"bench/synthesis.py: mean |rfft2| of {n_images} training images of {world_cfg}, centred, "
               "decorrelated colour space; passed to horama as .npy (MACO_SPECTRUM_FILENAME)")
    return mag.float().numpy(), how


def run_ref(ref_python: str, args_list: list[str], threads: int, timeout: float = 3600) -> tuple[int, str]:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), TQDM_DISABLE="1")
    p = subprocess.run([ref_python, str(REF_SCRIPT), *args_list], capture_output=True, text=True, env=env,
                       timeout=timeout, cwd=tempfile.gettempdir())
    return p.returncode, (p.stdout + p.stderr)


def _git(*a) -> str:
    try:
        return subprocess.run(["git", *a], capture_output=True, text=True, cwd=ROOT, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def median(v):
    v = [x for x in v if x is not None]
    return statistics.median(v) if v else None


def r3(v, n=3):
    return None if v is None else round(v, n)


# ---------------------------------------------------------------------------------------------- run
def one_run(args, threads: int, model, trained, model_info, work: Path) -> dict:
    torch.set_num_threads(threads)
    steps, k = args.steps, args.classes
    classes = list(range(k))
    restarts = [int(r) for r in args.restarts.split(",") if r]
    size = 32
    registered = E.names()
    wanted = [m for m in (args.methods.split(",") if args.methods else FV_METHODS) if m]
    methods = [m for m in wanted if m in registered]
    missing = [m for m in wanted if m not in registered]
    load = {"start": list(os.getloadavg())}
    t_run = time.perf_counter()

    # --- the reference side: check it installs, imports and computes the same logits
    ref = {"python": args.ref_python, "install": REF_INSTALL}
    ref_methods = [m for m in args.ref_methods.split(",") if m]
    ref_ok = False
    if not Path(args.ref_python).exists():
        ref["status"] = f"not installed: {args.ref_python} does not exist"
    else:
        x = trained.spec.make_world().sample(range(16), split="test").images
        with torch.no_grad():
            logits = model(x)
        np.save(work / "check_images.npy", x.numpy())
        np.save(work / "check_logits.npy", logits.numpy())
        rc, out = run_ref(args.ref_python, ["check", "--weights", str(work / "clean.safetensors"),
                                            "--images", str(work / "check_images.npy"),
                                            "--logits", str(work / "check_logits.npy"),
                                            "--out", str(work / "check.json")], threads, timeout=600)
        if rc != 0:
            ref["status"] = "reference python failed: " + out.strip().splitlines()[-1] if out.strip() else f"rc {rc}"
            ref["output_tail"] = out[-3000:]
        else:
            chk = json.loads((work / "check.json").read_text())
            ref.update(versions=chk["versions"], tools=chk["tools"], max_abs_logit_diff=chk["max_abs_logit_diff"])
            assert chk["max_abs_logit_diff"] <= LOGIT_TOL, (
                f"the reference model's logits differ from xaudit's by {chk['max_abs_logit_diff']} > {LOGIT_TOL}")
            ref["status"] = "ok"
            ref_ok = True
    unavailable = {}
    for m in ref_methods:
        tool = "lucent" if m.startswith("lucent") else "horama"
        if not ref_ok:
            unavailable[m] = ref["status"]
        elif ref.get("tools", {}).get(tool) != "ok":
            unavailable[m] = f"{tool} does not import: {ref['tools'].get(tool)}"
    runnable_ref = [m for m in ref_methods if m not in unavailable]

    # --- A B A B
    xa = {(m, r): {"wall": [], "cpu": [], "floor_step": [], "images": []} for m in methods for r in restarts}
    rf = {m: {"wall": [], "cpu": [], "calls": [], "floor_step": [], "images": None, "error": None}
          for m in runnable_ref}
    build = []  # (ref floor / xaudit floor) at the same batch, per pair
    pair_load = []
    print(f"threads={threads} steps={steps} classes={k} restarts={restarts} pairs={args.pairs} "
          f"methods={methods} ref={runnable_ref}", flush=True)
    for m in methods:  # warm-up, not timed: first-call set-up of each method
        E.get(m, steps=2).synthesize(model, classes[:2], generator=torch.Generator().manual_seed(1))
    for pair in range(args.pairs):
        pair_load.append(list(os.getloadavg()))
        x_floor_at = {}
        for m in methods:
            for r in restarts:
                b = k * r
                before = floor_per_step(model, b, size, args.floor_iters)
                ex = E.get(m, steps=steps, restarts=r)
                g = torch.Generator().manual_seed(args.seed)
                t0, c0 = time.perf_counter(), time.process_time()
                imgs = ex.synthesize(model, classes, generator=g)
                wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                after = floor_per_step(model, b, size, args.floor_iters)
                fl = (before + after) / 2
                x_floor_at.setdefault(b, []).append(fl)
                cell = xa[(m, r)]
                cell["wall"].append(wall)
                cell["cpu"].append(cpu)
                cell["floor_step"].append(fl)
                cell["images"].append(imgs)
                if "settings" not in cell:
                    syn = getattr(ex, "last_synthesis", None)
                    cell["settings"] = dict(getattr(syn, "settings", {}) or {}) if syn is not None else {}
                print(f"  pair {pair} xaudit {m:10s} R={r}: {wall:7.2f}s  {wall / b * 1000:7.1f} ms/image  "
                      f"x floor {wall / (steps * fl):5.2f}", flush=True)
        x_floor_1 = floor_per_step(model, 1, size, args.floor_iters)
        if runnable_ref:
            out_dir = work / f"ref_t{threads}_p{pair}"
            # the side references (horama, lucent_scaled) run in the first --side-pairs pairs only
            ms = [m for m in runnable_ref if m in EVERY_PAIR or pair < args.side_pairs]
            cmd = ["run", "--weights", str(work / "clean.safetensors"), "--steps", str(steps),
                   "--classes", str(k), "--threads", str(threads), "--seed", str(args.seed),
                   "--methods", ",".join(ms), "--spectrum", str(work / "maco_spectrum.npy"),
                   "--horama-box", args.horama_box, "--floor-iters", str(args.floor_iters), "--out", str(out_dir)]
            rc, out = run_ref(args.ref_python, cmd, threads)
            if rc != 0:
                for m in ms:
                    rf[m]["error"] = f"reference run failed (rc {rc}): {out.strip()[-2000:]}"
                continue
            res = json.loads((out_dir / "result.json").read_text())
            fs = res["floor_per_step_s"]
            for m in ms:
                mr = res["methods"][m]
                if "error" in mr:
                    rf[m]["error"] = mr["error"]
                    print(f"  pair {pair} ref {m}: ERROR {mr['error']}", flush=True)
                    continue
                b = {"lucent": 1, "lucent_scaled": 1, "lucent_batch": k}.get(m, 6)  # horama: 6 crops per step
                rf[m]["wall"].append(mr["seconds"])
                rf[m]["cpu"].append(mr["cpu_seconds"])
                rf[m]["calls"].append(mr["calls"])
                rf[m]["floor_step"].append(fs[str(b)])
                rf[m]["batch"] = b
                if rf[m]["images"] is None:
                    rf[m]["images"] = torch.from_numpy(np.load(out_dir / f"{m}.npy"))
                print(f"  pair {pair} ref    {m:14s}: {mr['seconds']:7.2f}s  "
                      f"{mr['seconds'] / mr['images'] * 1000:7.1f} ms/image  "
                      f"x floor {mr['seconds'] / (mr['calls'] * steps * fs[str(b)]):5.2f}", flush=True)
            if k in x_floor_at:
                build.append({"batch": k, "ref_over_xaudit": fs[str(k)] / statistics.mean(x_floor_at[k])})
            build.append({"batch": 1, "ref_over_xaudit": fs["1"] / x_floor_1})
    load["end"] = list(os.getloadavg())

    # --- rows: evaluate every image set here, with the same model
    rows = []
    lucent_ppi = [w / k for w in (rf.get("lucent", {}).get("wall") or [])]
    lucent_cpi = [c / k for c in (rf.get("lucent", {}).get("cpu") or [])]

    def vs_lucent(ppi, ref=None):
        ref = lucent_ppi if ref is None else ref
        return [ref[i] / p for i, p in enumerate(ppi) if i < len(ref) and p > 0]

    for m in methods:
        for r in restarts:
            c = xa[(m, r)]
            n = k * r
            targets = torch.arange(k).repeat_interleave(r)
            ev = evaluate(model, c["images"][0], targets, r)
            ppi = [w / n for w in c["wall"]]
            cpi = [v / n for v in c["cpu"]]
            xf = [w / (steps * f) for w, f in zip(c["wall"], c["floor_step"])]
            ratios = vs_lucent(ppi)
            rows.append({"method": m, "side": "xaudit", "restarts": r, "batch": n, "calls": 1, **ev,
                         "s_per_image": r3(median(ppi), 4), "s_per_image_each_pair": [r3(v, 4) for v in ppi],
                         "cpu_s_per_image": r3(median(cpi), 4),
                         "vs_lucent_cpu": r3(median(vs_lucent(cpi, lucent_cpi)), 2),
                         "floor_s_per_image": r3(median([steps * f / n for f in c["floor_step"]]), 4),
                         "x_floor": r3(median(xf)), "x_floor_each_pair": [r3(v) for v in xf],
                         "vs_lucent": r3(median(ratios), 2), "vs_lucent_each_pair": [r3(v, 2) for v in ratios],
                         "deterministic_across_pairs": all(torch.equal(c["images"][0], i) for i in c["images"][1:]),
                         "settings": {kk: c["settings"].get(kk) for kk in ("steps", "lr", "size", "restarts",
                                                                            "param", "transforms", "init")
                                      if kk in c["settings"]}})
    for m in ref_methods:
        if m in unavailable:
            rows.append({"method": m, "side": "reference", "not_run": unavailable[m]})
            continue
        c = rf[m]
        if not c["wall"]:
            rows.append({"method": m, "side": "reference", "not_run": c["error"] or "no result"})
            continue
        n = c["images"].shape[0]
        ev = evaluate(model, c["images"], torch.arange(n), 1)
        ppi = [w / n for w in c["wall"]]
        cpi = [v / n for v in c["cpu"]]
        xf = [w / (calls * steps * f) for w, calls, f in zip(c["wall"], c["calls"], c["floor_step"])]
        ratios = vs_lucent(ppi)
        rows.append({"method": m, "side": "reference", "restarts": 1, "batch": c["batch"], "calls": c["calls"][0],
                     **ev, "s_per_image": r3(median(ppi), 4), "s_per_image_each_pair": [r3(v, 4) for v in ppi],
                     "cpu_s_per_image": r3(median(cpi), 4),
                     "vs_lucent_cpu": r3(median(vs_lucent(cpi, lucent_cpi)), 2),
                     "floor_s_per_image": r3(median([cl * steps * f / n
                                                     for cl, f in zip(c["calls"], c["floor_step"])]), 4),
                     "x_floor": r3(median(xf)), "x_floor_each_pair": [r3(v) for v in xf],
                     "vs_lucent": r3(median(ratios), 2), "vs_lucent_each_pair": [r3(v, 2) for v in ratios],
                     "pairs_run": len(c["wall"]), **({"error_in_some_pair": c["error"]} if c["error"] else {})})

    lucent_row = next((r for r in rows if r["method"] == "lucent" and "objective" in r), None)
    target = {"definition": f"fv_fourier at least {TARGET_SPEEDUP:g}x faster per image than lucent (per-pair "
                            "ratio, median) at an equal or higher objective value (mean target logit)"}
    if lucent_row:
        for row in rows:
            if row["side"] == "xaudit":
                row["meets_target"] = bool(row["vs_lucent"] is not None and row["vs_lucent"] >= TARGET_SPEEDUP
                                           and row["objective"] >= lucent_row["objective"])
                row["meets_target_cpu"] = bool(row.get("vs_lucent_cpu") is not None
                                               and row["vs_lucent_cpu"] >= TARGET_SPEEDUP
                                               and row["objective"] >= lucent_row["objective"])
        target["fv_fourier"] = {f"R={r['restarts']}": r["meets_target"] for r in rows
                                if r["method"] == "fv_fourier" and "meets_target" in r}
        target["met"] = bool(target["fv_fourier"]) and all(target["fv_fourier"].values())
        target["fv_fourier_cpu"] = {f"R={r['restarts']}": r["meets_target_cpu"] for r in rows
                                    if r["method"] == "fv_fourier" and "meets_target_cpu" in r}
    else:
        target["met"] = None
        target["note"] = "lucent did not run: nothing to compare with"
    return {
        "label": (f"{args.label}-threads{threads}" if args.label and "," in args.threads else args.label)
        or f"steps{steps}-threads{threads}",
        "command": "python bench/synthesis.py " + " ".join(sys.argv[1:]),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "git_head": _git("rev-parse", "--short", "HEAD"),
        "synthesis_uncommitted": bool(_git("status", "--porcelain", "--", "xaudit/explain/synthesis")),
        "steps": steps, "classes": k, "restarts": restarts, "pairs": args.pairs, "threads": threads,
        "seed": args.seed, "image_size": size, "torch": torch.__version__, "machine": platform.machine(),
        "cpus": os.cpu_count(), **model_info,
        "methods_missing": missing, "load_average": load, "load_average_each_pair": pair_load,
        "floor_definition": "steps x one forward + backward w.r.t. the input at the tool's batch (xaudit: K x R; "
                            "lucent: 1; lucent_batch: K; horama: its 6 crops), a plain loop on the same model in "
                            "the same process, timed right before and after (mean); x_floor = wall / (calls x floor)",
        "torch_build_check": {"each_pair": [{**b, "ref_over_xaudit": r3(b["ref_over_xaudit"])} for b in build],
                              "note": "plain-loop floor of the reference venv's torch over xaudit's at the same "
                                      "batch: ~1 means the two torch builds run the passes equally fast"},
        "reference": {**ref, "horama_box": args.horama_box, "side_pairs": min(args.side_pairs, args.pairs)},
        "maco_spectrum": args._spectrum_how, "rows": rows, "target": target,
        "wall_s": round(time.perf_counter() - t_run, 1),
    }


def table(run: dict) -> str:
    lines = ["| method | R | s/image | x pass floor | objective | argmax hits | vs lucent (wall) | vs lucent (CPU) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in run["rows"]:
        if "not_run" in r:
            lines.append(f"| {r['method']} | - | not run: {r['not_run'][:80]} | | | | | |")
            continue
        lines.append(f"| {r['method']} | {r['restarts']} | {r['s_per_image']:.4f} | {r['x_floor']:.2f} | "
                     f"{r['objective']:.1f} | {r['classes_hit']}/{r['classes']} | "
                     f"{'-' if r['vs_lucent'] is None else format(r['vs_lucent'], '.2f') + 'x'} | "
                     f"{'-' if r.get('vs_lucent_cpu') is None else format(r['vs_lucent_cpu'], '.2f') + 'x'} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=256)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--restarts", default="1,4", help="comma-separated R values (default 1,4)")
    ap.add_argument("--pairs", type=int, default=2, help="A B alternations (default 2)")
    ap.add_argument("--threads", default="1", help="comma-separated thread counts, one run each (default 1)")
    ap.add_argument("--methods", default="",
                    help=f"xaudit methods (default: those of {','.join(FV_METHODS)} registered)")
    ap.add_argument("--ref-python", default=DEFAULT_REF_PYTHON)
    ap.add_argument("--ref-methods", default=",".join(REF_METHODS))
    ap.add_argument("--horama-box", default="0.85,0.9",
                    help="horama box_size: crops of hi..2hi-lo of the image ('' = horama's default 0.20,0.25)")
    ap.add_argument("--side-pairs", type=int, default=1,
                    help="run the reference methods other than lucent and lucent_batch in the first N pairs only")
    ap.add_argument("--floor-iters", type=int, default=24, help="plain-loop passes per floor measurement")
    ap.add_argument("--label", default="", help="name of this run in the JSON (default steps<S>-threads<T>)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", default="", help="keep the exchanged files (weights, images) in this directory")
    ap.add_argument("--merge", action="store_true",
                    help="add the run(s) to the existing JSON (replacing a run of the same label)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "synthesis.json"))
    args = ap.parse_args(argv)

    model, trained, info = load_model()
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="xaudit-synthesis-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        from xaudit.zoo.cache import state_dict_bytes

        (work / "clean.safetensors").write_bytes(state_dict_bytes(model))
        spec, args._spectrum_how = maco_spectrum(info["world"])
        np.save(work / "maco_spectrum.npy", spec)
        runs = [one_run(args, int(t), model, trained, info, work) for t in args.threads.split(",") if t]
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    out = Path(args.out)
    old = json.loads(out.read_text()) if args.merge and out.exists() else {"bench": "synthesis", "runs": []}
    key = lambda r: r.get("label")  # noqa: E731
    new_keys = {key(r) for r in runs}
    old["runs"] = [r for r in old.get("runs", []) if key(r) not in new_keys] + runs
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(old, indent=2) + "\n")
    for run in runs:
        print(f"\n{run['label']}: threads={run['threads']} steps={run['steps']} load {run['load_average']}")
        print(table(run))
        print("target:", json.dumps(run["target"]))
    print(f"wrote {out}")
    return old


if __name__ == "__main__":
    main()
