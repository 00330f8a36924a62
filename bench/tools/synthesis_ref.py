"""The reference side of bench/synthesis.py: torch-lucent's ``render_vis`` and horama's ``fourier`` /
``maco`` on the zoo's ``clean`` CNN, run in a separate, throwaway virtual environment (they do not
install beside xaudit's torch: see bench/README.md#synthesis). Self-contained: it does not import
xaudit. bench/synthesis.py calls it in a subprocess::

    REF/bin/python bench/tools/synthesis_ref.py check --weights W.safetensors --images X.npy --out check.json
    REF/bin/python bench/tools/synthesis_ref.py run --weights W.safetensors --steps 256 --classes 10 \\
        --threads 1 --seed 0 --spectrum S.npy --out DIR

``check`` imports each tool (version or the error text) and compares this file's copy of the model's
logits with xaudit's on a few images. ``run`` writes DIR/<method>.npy (float32 [N, 3, 32, 32] in
[0, 1], image i for class i) and DIR/result.json (wall and process CPU seconds per call, pass floors
measured here).

The model: a copy of ``xaudit.zoo.arch.CNN`` (same module names, so lucent's hooks see ``fc2``),
its weights from the safetensors file that bench/synthesis.py exports, channels_last like the zoo's.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # horama's progress bars (lucent's: progress=False)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

METHODS = ("lucent", "lucent_batch", "lucent_scaled", "horama_fourier", "horama_maco")


class Normalize(nn.Module):
    def __init__(self, mean: float = 0.5, std: float = 0.25):
        super().__init__()
        self.mean, self.std = mean, std

    def forward(self, x):
        return (x - self.mean) / self.std


class CNN(nn.Module):
    """xaudit.zoo.arch.CNN: conv5x5-ReLU-maxpool2, conv5x5-ReLU-maxpool2, fc-ReLU, fc; 'same' padding;
    input normalization (x - 0.5) / 0.25 as its first module."""

    def __init__(self, channels=3, size=32, num_classes=10, hidden=128, width=32):
        super().__init__()
        self.normalize = Normalize()
        self.conv1 = nn.Conv2d(channels, width, 5, padding=2)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(width, 2 * width, 5, padding=2)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(2 * width * (size // 4) ** 2, hidden)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x):
        x = self.pool1(self.relu1(self.conv1(self.normalize(x))))
        x = self.pool2(self.relu2(self.conv2(x)))
        return self.fc2(self.relu3(self.fc1(self.flatten(x))))


def load_model(path: str) -> nn.Module:
    from safetensors.torch import load_file

    sd = load_file(path)
    width, channels = sd["conv1.weight"].shape[:2]
    hidden, flat = sd["fc1.weight"].shape
    size = int(round((flat / (2 * width)) ** 0.5)) * 4
    model = CNN(channels, size, sd["fc2.weight"].shape[0], hidden, width)
    model.load_state_dict(sd, strict=True)
    return model.to(memory_format=torch.channels_last).eval()


def _versions() -> dict:
    out = {"python": platform.python_version(), "torch": torch.__version__}
    for name, mod in (("torchvision", "torchvision"), ("kornia", "kornia"), ("torch-lucent", "lucent"),
                      ("horama", "horama"), ("numpy", "numpy"), ("safetensors", "safetensors")):
        try:
            from importlib.metadata import version

            m = __import__(mod)
            out[name] = getattr(m, "__version__", None) or version(name)
        except Exception as e:  # report exactly why
            out[name] = f"import failed: {type(e).__name__}: {e}"
    return out


def cmd_check(args) -> dict:
    res = {"versions": _versions(), "tools": {}}
    for tool, stmt in (("lucent", "from lucent.optvis import render, param, transform, objectives"),
                       ("horama", "import horama; horama.fourier; horama.maco")):
        try:
            exec(stmt, {})
            res["tools"][tool] = "ok"
        except Exception as e:
            res["tools"][tool] = f"{type(e).__name__}: {e}"
    model = load_model(args.weights)
    x = torch.from_numpy(np.load(args.images))
    with torch.no_grad():
        logits = model(x).numpy()
    res["logits"] = logits.tolist()
    if args.logits:
        ref = np.load(args.logits)
        res["max_abs_logit_diff"] = float(np.abs(ref - logits).max())
    Path(args.out).write_text(json.dumps(res, indent=2))
    return res


# ------------------------------------------------------------------------------------------- floors
def floor_per_step(model, batch: int, size: int, iters: int) -> float:
    """Median-free plain loop: seconds of one forward + backward w.r.t. the input at ``batch``."""
    x = torch.rand(batch, 3, size, size)
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


# ------------------------------------------------------------------------------------------ methods
def _seed(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % (2 ** 32))


def scaled_transforms(size):
    """lucent's standard_transforms with the pixel amounts scaled from lucent's ~224 px to ``size``
    the way xaudit scales them (pad and first jitter size/8, second jitter size/16), made with
    lucent's own transform functions."""
    from lucent.optvis import transform

    return [transform.pad(max(1, size // 8), mode="constant", constant_value=0.5),
            transform.jitter(max(2, size // 8)),
            transform.random_scale([1 + (i - 5) / 50.0 for i in range(11)]),
            transform.random_rotate(list(range(-10, 11)) + 5 * [0]),
            transform.jitter(max(2, size // 16))]


def run_lucent(model, classes, steps, size, seed, transforms=None):
    """One render_vis call per class, as lucent is normally used: Fourier parameterization with
    decorrelated colour (param.image(size)), lucent's standard_transforms, Adam lr 0.05 (render_vis's
    default optimizer), no ImageNet preprocessing (the model normalizes its own input) and
    ``fixed_image_size=size`` (otherwise render_vis upsamples to 224, which this model cannot take)."""
    from lucent.optvis import param, render, transform

    images, times = [], []
    for k in classes:
        _seed(seed * 1000 + k)
        t0, c0 = time.perf_counter(), time.process_time()
        out = render.render_vis(model, f"fc2:{k}", lambda: param.image(size),
                                optimizer=lambda p: torch.optim.Adam(p, lr=0.05),
                                transforms=transforms or transform.standard_transforms, thresholds=(steps,),
                                preprocess=False, progress=False, show_image=False, fixed_image_size=size)
        times.append((time.perf_counter() - t0, time.process_time() - c0))
        images.append(out[-1][0].transpose(2, 0, 1))
    return np.stack(images).astype(np.float32), times


def run_lucent_batch(model, classes, steps, size, seed):
    """The same in one render_vis call with lucent's batch parameter: param.image(size,
    batch=K) and the sum of objectives.channel('fc2', k, batch=i). lucent draws one transform per
    step for the whole batch."""
    from lucent.optvis import objectives, param, render, transform

    _seed(seed * 1000 + 999)
    obj = objectives.channel("fc2", classes[0], batch=0)
    for i, k in enumerate(classes[1:], 1):
        obj = obj + objectives.channel("fc2", k, batch=i)
    t0, c0 = time.perf_counter(), time.process_time()
    out = render.render_vis(model, obj, lambda: param.image(size, batch=len(classes)),
                            optimizer=lambda p: torch.optim.Adam(p, lr=0.05),
                            transforms=transform.standard_transforms, thresholds=(steps,),
                            preprocess=False, progress=False, show_image=False, fixed_image_size=size)
    dt = (time.perf_counter() - t0, time.process_time() - c0)
    return out[-1].transpose(0, 3, 1, 2).astype(np.float32), [dt]


def _horama_kwargs(size, steps, box):
    kw = {"total_steps": steps, "image_size": size, "model_input_size": size, "values_range": (0.0, 1.0),
          "device": "cpu"}
    if box is not None:
        kw["box_size"] = tuple(box)
    return kw


def run_horama(which, model, classes, steps, size, seed, spectrum=None, box=None):
    """horama.fourier / horama.maco, one call per class, with horama's defaults (NAdam lr 1.0, 6 crops
    per step, noise 0.05; Fourier decay power 1.5) except: image and model input size ``size``,
    values_range (0, 1) (the model takes [0, 1] images and normalizes them itself), device 'cpu', and
    ``box`` (crop size range; horama's default (0.20, 0.25) is for 1280-px images seen through
    224-px crops). MaCo: the magnitude spectrum from ``spectrum`` (computed by bench/synthesis.py
    from the world's training images) instead of horama's download."""
    import horama
    import horama.maco_fv as maco_fv

    if which == "maco":
        if spectrum is None:
            raise RuntimeError("horama.maco needs a magnitude spectrum (--spectrum); its download "
                               "cannot run offline")
        # horama.maco_fv.init_maco_buffer loads MACO_SPECTRUM_FILENAME and downloads it only when
        # the file is missing: point it at our file and make any download attempt an error.
        maco_fv.MACO_SPECTRUM_FILENAME = str(spectrum)

        def no_download(*a, **k):
            raise RuntimeError("horama tried to download its spectrum")
        maco_fv.download_url = no_download
    fn = horama.maco if which == "maco" else horama.fourier
    images, times = [], []
    for k in classes:
        _seed(seed * 1000 + k)

        def objective(crops, k=k):
            return model(crops)[:, k].mean()
        t0, c0 = time.perf_counter(), time.process_time()
        img, _ = fn(objective, **_horama_kwargs(size, steps, box))
        times.append((time.perf_counter() - t0, time.process_time() - c0))
        images.append(img.detach().clamp(0, 1).numpy())
    return np.stack(images).astype(np.float32), times


def cmd_run(args) -> dict:
    torch.set_num_threads(args.threads)
    model = load_model(args.weights)
    for p in model.parameters():
        p.requires_grad_(False)  # as xaudit: no gradient to the model's weights
    classes = list(range(args.classes))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res = {"threads": torch.get_num_threads(), "steps": args.steps, "classes": classes, "methods": {},
           "load_average_start": list(os.getloadavg())}
    methods = [m for m in args.methods.split(",") if m]
    box = [float(v) for v in args.horama_box.split(",")] if args.horama_box else None
    runners = {
        "lucent": lambda: run_lucent(model, classes, args.steps, args.size, args.seed),
        "lucent_batch": lambda: run_lucent_batch(model, classes, args.steps, args.size, args.seed),
        "lucent_scaled": lambda: run_lucent(model, classes, args.steps, args.size, args.seed,
                                            transforms=scaled_transforms(args.size)),
        "horama_fourier": lambda: run_horama("fourier", model, classes, args.steps, args.size, args.seed,
                                             box=box),
        "horama_maco": lambda: run_horama("maco", model, classes, args.steps, args.size, args.seed,
                                          spectrum=args.spectrum, box=box),
        "horama_fourier_default_box": lambda: run_horama("fourier", model, classes, args.steps, args.size,
                                                         args.seed),
        "horama_maco_default_box": lambda: run_horama("maco", model, classes, args.steps, args.size,
                                                      args.seed, spectrum=args.spectrum),
    }
    # warm-up (not timed): each method once, 2 steps, 2 classes (imports, first-call set-up)
    for name in methods:
        try:
            warm = {"lucent": run_lucent, "lucent_scaled": run_lucent, "lucent_batch": run_lucent_batch}.get(name)
            if warm is not None:
                warm(model, classes[:2], 2, args.size, args.seed)
            elif name.startswith("horama"):
                run_horama("maco" if "maco" in name else "fourier", model, classes[:2], 2, args.size, args.seed,
                           spectrum=args.spectrum, box=box if "default_box" not in name else None)
        except Exception:
            pass  # the timed call below records the error
    # plain-loop floors of this process (this torch build), for the batch each tool's steps use
    batches = sorted({1, 6, len(classes), 4 * len(classes)})
    res["floor_per_step_s_before"] = {str(b): floor_per_step(model, b, args.size, args.floor_iters)
                                      for b in batches}
    for name in methods:
        try:
            imgs, times = runners[name]()
            np.save(out / f"{name}.npy", imgs)
            res["methods"][name] = {"seconds": sum(t for t, _ in times), "cpu_seconds": sum(c for _, c in times),
                                    "seconds_per_call": [t for t, _ in times],
                                    "images": int(imgs.shape[0]), "calls": len(times)}
        except Exception as e:
            res["methods"][name] = {"error": f"{type(e).__name__}: {e}",
                                    "traceback": traceback.format_exc(limit=4)}
        print(f"    ref {name}: {res['methods'][name].get('seconds', res['methods'][name].get('error'))}",
              file=sys.stderr, flush=True)
    res["floor_per_step_s_after"] = {str(b): floor_per_step(model, b, args.size, args.floor_iters)
                                     for b in batches}
    res["floor_per_step_s"] = {b: statistics.mean([res["floor_per_step_s_before"][b],
                                                   res["floor_per_step_s_after"][b]])
                               for b in res["floor_per_step_s_before"]}
    res["load_average_end"] = list(os.getloadavg())
    res["versions"] = _versions()
    (out / "result.json").write_text(json.dumps(res, indent=2))
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check")
    c.add_argument("--weights", required=True)
    c.add_argument("--images", required=True)
    c.add_argument("--logits", default="")
    c.add_argument("--out", required=True)
    r = sub.add_parser("run")
    r.add_argument("--weights", required=True)
    r.add_argument("--steps", type=int, default=256)
    r.add_argument("--classes", type=int, default=10)
    r.add_argument("--size", type=int, default=32)
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--methods", default=",".join(METHODS))
    r.add_argument("--spectrum", default=None, help="MaCo magnitude spectrum .npy [3, S, S//2+1]")
    r.add_argument("--horama-box", default="0.85,0.9",
                   help="horama box_size (lo,hi); crops are hi..2hi-lo of the image; '' = horama's default")
    r.add_argument("--floor-iters", type=int, default=30)
    r.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    if args.cmd == "check":
        cmd_check(args)
    else:
        cmd_run(args)


if __name__ == "__main__":
    main()
