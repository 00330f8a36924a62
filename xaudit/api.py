"""The Python way in: ``xaudit.run(preset)`` runs a preset end to end (models, cells, store, report).

    >>> import xaudit.run
    >>> res = xaudit.run("smoke", workers=1)
    >>> res.report, res.summary.done, res.summary.failed

This module sits on top of the stages (run -> report); the ``xaudit run`` command calls
:func:`main_run`.
"""
from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from xaudit.core.errors import ConfigError, XauditError
from xaudit.run.execute import Summary, execute, versions
from xaudit.run.executor import Executor, LocalExecutor, available_cores
from xaudit.run.plan import Plan, build_plan
from xaudit.run.preset import Preset, load_preset
from xaudit.run.progress import Progress
from xaudit.run.store import Store


@dataclass
class RunResult:
    name: str
    run_dir: Path
    store: Path                  # results.sqlite
    report: Path | None          # report.html
    summary: Summary
    plan: Plan
    audit: dict[str, Any] | None = None   # xaudit audit: what it inferred about the model and the data


@contextlib.contextmanager
def _run_lock(run_dir: Path) -> Iterator[None]:
    """One xaudit run per run directory at a time (the OS drops the lock if the process dies)."""
    import fcntl

    fd = os.open(run_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise XauditError(f"another xaudit run is using {run_dir}; wait for it to finish or pass "
                              "--out to write elsewhere") from None
        yield
    finally:
        os.close(fd)


def _check_snapshot(names: list[str]) -> list[dict[str, Any]]:
    from xaudit.checks import describe

    return [d for d in describe() if d["name"] in names]


def _method_snapshot(names: list[str]) -> list[dict[str, Any]]:
    try:
        from xaudit.explain import describe
        rows = {d["name"]: d for d in describe()}
    except ImportError:
        rows = {}
    return [rows.get(n, {"name": n}) for n in names]


def _preset_record(p: Preset, plan: Plan, record: dict[str, Any] | None = None) -> dict[str, Any]:
    return {**p.raw, **(record or {}), "_source": p.source,
            "_resolved": {"checks": plan.checks, "methods": plan.methods, "seeds": list(p.seeds),
                          "worlds": list({_canon(c.world): c.world for c in plan.cells}.values()),
                          "models": {k: m.label for k, m in plan.models.items()}, "cells": len(plan.cells)}}


def _canon(d: dict) -> str:
    import json

    return json.dumps(d, sort_keys=True)


def _check_workers(workers: Any) -> None:
    """``workers`` (``--workers``) is None or an integer >= 1."""
    if workers is None:
        return
    import numbers

    if isinstance(workers, bool) or not isinstance(workers, numbers.Integral) or workers < 1:
        raise ConfigError("--workers", f"must be an integer >= 1 (default: the number of cores, "
                                       f"{available_cores()} here); got {workers!r}")


def _make_run_dir(run_dir: Path) -> None:
    """Create the run directory, or say why it cannot be one (e.g. ``--out`` names an existing file)."""
    for q in (run_dir, *run_dir.parents):
        if q.exists():
            if not q.is_dir():
                what = str(q) if q == run_dir else f"{q} (a parent of {run_dir})"
                raise ConfigError("--out", f"{what} is an existing file, not a directory; pass --out a new "
                                           "directory or an earlier run directory; nothing was changed")
            break
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError("--out", f"cannot create the run directory {run_dir} ({e.strerror or e}); pass "
                                   "--out a directory you can write") from None


def run(preset: str | Path | dict | Preset = "default", *, out: str | Path | None = None,
        workers: int | None = None, methods: str | list[str] | None = None, checks: str | list[str] | None = None,
        cache_dir: str | Path | None = None, progress: Progress | bool | None = False,
        executor: Executor | str | dict | None = None, source: str | None = None, retry_failed: bool = True,
        report: bool = True, record: dict[str, Any] | None = None, address: str | None = None) -> RunResult:
    """Run ``preset`` (a shipped name, a YAML path, a dict or a Preset) into ``out`` (default runs/<name>).

    Only unfinished cells run: a rerun after a crash or Ctrl-C resumes. ``methods``/``checks`` keep
    a subset (comma-separated or lists). ``workers`` defaults to the preset's, else the number of
    cores. ``executor``: an Executor, ``"local"`` (default) or ``"ray"`` (``address``: a Ray cluster's;
    default a local Ray instance), or the preset's ``executor: {kind: ray, address: ...}``.
    ``source`` names the model source (``module:attr``, default the zoo). ``record``: extra
    fields stored with the run's preset record (``xaudit audit`` keeps what it inferred there, for the
    report). Returns a RunResult.
    """
    _check_workers(workers)
    p = preset if isinstance(preset, Preset) else load_preset(preset)
    plan = build_plan(p, methods=methods, checks=checks, source=source)
    run_dir = Path(out) if out is not None else Path("runs") / p.name
    _make_run_dir(run_dir)
    executor = make_executor(executor if executor is not None else p.executor, workers or p.workers, address)
    if not isinstance(progress, Progress):
        progress = Progress(enabled=None if progress is None else bool(progress))
    with _run_lock(run_dir):
        store = Store.open(run_dir)
        status, run_id = "failed", None
        try:
            run_id = store.begin_run(p.name, _preset_record(p, plan, record), len(plan.cells), executor.workers, versions(),
                                     _check_snapshot(plan.checks), _method_snapshot(plan.methods), argv=sys.argv)
            store.sync_plan(plan.cells)
            summary = execute(plan, store, executor, run_id=run_id, run_dir=run_dir, cache_dir=cache_dir,
                              progress=progress, retry_failed=retry_failed)
            status = "done" if summary.failed == 0 else "done_with_failures"
        except KeyboardInterrupt:
            status = "interrupted"
            raise
        finally:
            if run_id is not None:
                with contextlib.suppress(Exception):
                    store.end_run(run_id, status)
            store.close()
            if report and status != "done" and status != "done_with_failures":
                with contextlib.suppress(Exception):
                    _write_report(run_dir)
        path = _write_report(run_dir) if report else None
    return RunResult(name=p.name, run_dir=run_dir, store=run_dir / "results.sqlite", report=path,
                     summary=summary, plan=plan)


def make_executor(executor: Executor | str | dict | None, workers: int | None, address: str | None = None) -> Executor:
    """An Executor from an object, a kind (``local``, ``ray``) or a preset's ``{kind, address}`` mapping."""
    if executor is not None and not isinstance(executor, (str, dict)):
        return executor
    spec = {"kind": executor} if isinstance(executor, str) else dict(executor or {"kind": "local"})
    kind = spec.get("kind", "local")
    if kind == "local":
        return LocalExecutor(workers or available_cores())
    if kind == "ray":
        from xaudit.run.ray_executor import RayExecutor

        return RayExecutor(workers, address=address or spec.get("address"))
    raise ConfigError("--executor", f"must be 'local' or 'ray', got {kind!r}")


def _write_report(run_dir: Path) -> Path:
    from xaudit.report import write_report

    return write_report(run_dir)


def main_run(preset: str | Path = "default", *, out: str | Path | None = None, workers: int | None = None,
             methods: str | None = None, checks: str | None = None, cache_dir: str | Path | None = None,
             executor: str | None = None, address: str | None = None) -> int:
    """``xaudit run``: run with a progress display, print the answer table and the report path.
    Returns the exit code: 0, 1 when cells failed, 130 when interrupted."""
    from rich.console import Console

    err = Console(stderr=True, highlight=False)
    try:
        res = run(preset, out=out, workers=workers, methods=methods, checks=checks, cache_dir=cache_dir,
                  progress=None, executor=executor, address=address)
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]: finished cells are saved; run the same command again to resume")
        return 130
    return _print_outcome(res, err)


def _print_outcome(res: RunResult, err) -> int:
    """The answer table (which method reveals which bug), the cell counts and the report path; the exit
    code (1 when cells failed)."""
    from rich.markup import escape

    from xaudit.report import answer

    with Store.open(res.run_dir, readonly=True) as store:
        answer.render_terminal(answer.answer_table(store))
    s = res.summary
    print(f"{s.cells} cells: {s.done} done, {s.failed} failed, {s.not_applicable} not applicable "
          f"({s.skipped} finished earlier, {s.ran} run now) in {s.seconds:.1f} s")
    print(f"report: {res.report}")
    if s.failed:
        err.print(f"[red]{s.failed} cell(s) failed[/]; the report lists them with their tracebacks")
        for label, error in s.failures[:5]:
            err.print(f"  {escape(label)}: {escape(error)}")
        return 1
    return 0


# ------------------------------------------------------------------------------------ xaudit audit
AUDIT_CHECKS = ("cascading_randomization", "independent_randomization", "random_logit", "ood_shift", "localization")
AUDIT_METHODS = ("saliency", "input_x_gradient", "integrated_gradients", "smoothgrad", "guided_backprop", "grad_cam",
                 "guided_grad_cam")
USER_SOURCE = "xaudit.run.models:UserSource"
NO_REFERENCE_NOTE = ("Your model has no retrained copy, so the sanity checks' verdicts use the random-map calibration "
                     "and tau alone (fail if CI_low(similarity) > tau; pass if CI_high(similarity) < tau; else "
                     "inconclusive), without the retrain reference of `xaudit run`.")


def _split(v: str | list[str] | tuple[str, ...] | None) -> list[str] | None:
    if v is None:
        return None
    return [s.strip() for s in v.split(",") if s.strip()] if isinstance(v, str) else list(v)


def audit(model: Any, data: Any, *, weights: str | Path | None = None, labels: Any = None, masks: Any = None,
          checks: str | list[str] | None = None, methods: str | list[str] | None = None, out: str | Path | None = None,
          normalize: Any = None, transform: str | None = None, size: int | None = None,
          resize: str = "center_crop", crop_pct: float | None = None, interpolation: str | None = None,
          channels: int = 3, blocks: str | list[str] | None = None, cam_layer: str | None = None,
          n_images: int = 64, params: dict[str, dict[str, Any]] | None = None, device: str = "cpu",
          workers: int | None = None, progress: Progress | bool | None = False, report: bool = True,
          name: str | None = None) -> RunResult:
    """Audit a user's model on the user's images with every check that needs no retraining.

    ``model``: ``"MODULE:FACTORY"`` (FACTORY() returns an nn.Module; a file path ``nets/cnn.py:make``,
    ``torchvision:resnet18`` and ``timm:resnet18`` work too), or an ``nn.Module`` (run in this process).
    ``data``: a folder of images (class subfolders, or flat with ``labels``, a CSV path), a ``.safetensors``
    file, or a tensor [N, C, H, W] in [0, 1] (then ``labels`` [N] and ``masks`` [N, H, W] may be tensors).
    ``masks``: a folder of per-image masks (adds the ``localization`` check). ``weights``: safetensors or a
    ``.pt`` state dict (never unpickled). ``normalize``: ``imagenet``, ``MEAN,.../STD,...`` or None (timm
    models: their own). ``blocks``/``cam_layer`` override what is inferred. ``params``: check parameters
    ({check: {param: value}}). ``workers``: default 1 (this process, every core's threads). Same store,
    resume, report and scorecard as :func:`run`.
    """
    import warnings

    import torch

    from xaudit.world.folder import FolderWorld
    from xaudit.zoo import user

    _check_workers(workers)
    check_names = _split(checks)
    method_names = _split(methods) or list(AUDIT_METHODS)
    run_dir = Path(out) if out is not None else None
    in_memory = isinstance(model, torch.nn.Module)
    if in_memory:
        if workers not in (None, 1):
            raise ConfigError("workers", "an in-memory model runs in this process (workers=1); pass the model as "
                                         "'MODULE:FACTORY' to use worker processes")
        spec = user.memory_spec(model, normalize=normalize, blocks=blocks, cam_layer=cam_layer)
        workers = 1
    else:
        spec = user.make_spec(model, weights=weights, normalize=normalize, blocks=blocks, cam_layer=cam_layer)
        # one process using every core's threads by default: an audit is one model and a few cells of very
        # different cost (IG is 50 passes a stage); on 2 cores a ResNet-18's cascade of saliency, IG and
        # Grad-CAM took 442 s in 2 one-thread workers and 260 s in one process (bench/audit_byom.py)
        workers = workers or 1
    module = user.build_module(spec)
    timm_cfg = user.timm_data_config(spec, module)
    if timm_cfg is not None:
        size = size or timm_cfg["size"]
        crop_pct = crop_pct if crop_pct is not None else timm_cfg["crop_pct"]
        interpolation = interpolation or (timm_cfg["interpolation"] if timm_cfg["interpolation"] in
                                          ("bilinear", "bicubic", "nearest") else None)
        if normalize is None:
            spec["normalize"] = timm_cfg["normalize"]
    group = _group_name(spec["model"])
    if run_dir is None:
        run_dir = Path("runs") / (name or f"audit-{group}")
    # the data: tensors become a safetensors file in the run folder
    if isinstance(data, torch.Tensor):
        data = _write_tensor_inputs(run_dir, data, labels, masks)
        labels = masks = None
    world_cfg: dict[str, Any] = {"world": "folder", "path": str(Path(data).expanduser().resolve()),
                                 "labels": None if labels is None else str(Path(labels).expanduser().resolve()),
                                 "masks": None if masks is None else str(Path(masks).expanduser().resolve()),
                                 "resize": resize, "crop_pct": 0.875 if crop_pct is None else float(crop_pct),
                                 "interpolation": interpolation or "bilinear", "channels": channels,
                                 "transform": transform, "limit": n_images}
    if str(world_cfg["path"]).endswith(".safetensors") and size is None:
        size = _tensor_file_size(world_cfg["path"])
    world_cfg["size"] = size or 224
    try:
        world = FolderWorld(**{k: v for k, v in world_cfg.items() if k != "world"})
    except ConfigError as e:
        fld = {"path": "--data", "labels": "--labels", "masks": "--masks", "size": "--size", "limit": "--n-images",
               "resize": "--transform"}.get(e.field, f"--{e.field}")
        raise ConfigError(fld, str(e).split(": ", 1)[-1]) from None
    world_cfg = world.config()
    # the model on the data, before any work: outputs, the inferred layers
    wrapped_blocks = spec["blocks"] if spec["blocks"] is not None else user.infer_blocks(module)
    blocks_inferred = spec["blocks"] is None
    user.check_blocks(module, wrapped_blocks)
    x = world.sample(range(len(world))).images
    audited = user.Audited(module, spec["normalize"]).eval()
    logits = user.check_outputs(audited, x, world.paths)
    cam_inferred = spec["cam_layer"] is None
    if not cam_inferred:
        user.check_layer(module, spec["cam_layer"])
    else:
        spec["cam_layer"] = user.infer_cam_layer(module, audited.normalize(x[:8]))
    spec["blocks"] = list(wrapped_blocks)
    spec["input"] = list(x.shape[1:])
    notes: list[str] = []
    if len(world) < 2:
        notes.append(f"only {len(world)} image: every confidence interval is meaningless (a bootstrap over one image); "
                     "give more images for a verdict that means something")
        warnings.warn(notes[-1], UserWarning, stacklevel=2)
    if world.skipped:
        notes.append(f"{len(world.skipped)} image file(s) could not be read and were skipped (listed in the report)")
    accuracy = None
    if world.has_labels:
        accuracy = float((logits.argmax(1) == world.labels(range(len(world)))).double().mean())
    # the checks
    available = [c for c in AUDIT_CHECKS if c != "localization" or world.has_masks]
    if check_names is None:
        check_names = available
    for c in check_names:
        if c == "localization" and not world.has_masks:
            raise ConfigError("--checks", "localization scores maps against a mask per image; pass --masks DIR "
                                          "(a mask image per image, same relative path)")
        if c not in AUDIT_CHECKS:
            raise ConfigError("--checks", f"{c!r} cannot run on your model: it needs models xaudit trains (with "
                                          f"planted bugs); xaudit audit runs {', '.join(AUDIT_CHECKS)}")
    n = max(2, len(world))
    check_params: dict[str, Any] = {}
    for c in check_names:
        p = {"n_images": n}
        if c in ("cascading_randomization", "independent_randomization", "random_logit"):
            p["retrain_reference"] = False
        p.update((params or {}).get(c, {}))
        check_params[c] = {"params": p}
    preset = {"name": _run_name(run_dir), "description": f"xaudit audit of {spec['model']} on {world_cfg['path']}",
              "seeds": [int(spec["seed"])], "device": device,
              "worlds": [{**world_cfg, "models": [group], "specs": {group: spec}}],
              "checks": check_params, "methods": method_names}
    info = {"model": spec["model"], "weights": spec.get("weights"), "weights_digest": spec.get("weights_digest"),
            "normalize": spec["normalize"], "blocks": list(wrapped_blocks), "blocks_inferred": blocks_inferred,
            "cam_layer": spec["cam_layer"], "cam_layer_inferred": cam_inferred, "num_classes": int(logits.shape[1]),
            "accuracy": accuracy, "data": world.summary(), "notes": notes, "no_reference": NO_REFERENCE_NOTE,
            "timm_data_config": timm_cfg}
    executor = LocalExecutor(1, inline=True) if in_memory else None
    res = run(preset, out=run_dir, workers=workers, source=USER_SOURCE, progress=progress, report=report,
              record={"_audit": info}, executor=executor)
    res.audit = info
    return res


def _group_name(model: str) -> str:
    import re

    attr = model.rpartition(":")[2] or "model"
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", attr).strip("-") or "model"


def _run_name(run_dir: Path) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9_.-]+", "-", run_dir.name).strip("-.") or "audit"


def _write_tensor_inputs(run_dir: Path, images, labels, masks) -> Path:
    """In-memory images (and labels, masks) as ``<run_dir>/inputs/images.safetensors`` (rewritten only when
    they differ, so a rerun with the same tensors resumes)."""
    import torch
    from safetensors.torch import load_file, save_file

    t = {"images": images.detach().float().cpu().contiguous()}
    if labels is not None:
        t["labels"] = torch.as_tensor(labels, dtype=torch.int64).cpu().contiguous()
    if masks is not None:
        t["masks"] = torch.as_tensor(masks).to(torch.uint8).cpu().contiguous()
    path = run_dir / "inputs" / "images.safetensors"
    _make_run_dir(path.parent)
    if path.is_file():
        old = load_file(str(path))
        if set(old) == set(t) and all(old[k].shape == t[k].shape and torch.equal(old[k], t[k]) for k in t):
            return path
    save_file(t, str(path))
    return path


def _tensor_file_size(path: str) -> int | None:
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            return int(f.get_slice("images").get_shape()[-1])
    except Exception:
        return None


def main_audit(**kw: Any) -> int:
    """``xaudit audit``: :func:`audit` with a progress display; prints what was inferred, the skipped
    images, the scorecard and the report path. Exit code as :func:`main_run`."""
    import warnings

    from rich.console import Console
    from rich.markup import escape

    err = Console(stderr=True, highlight=False)
    transform = kw.pop("transform", None)
    if transform in ("center_crop", "squash"):
        kw["resize"], transform = transform, None
    if kw.get("methods") == "all":
        kw["methods"] = _all_attribution_methods()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)      # printed below from the run's notes
            res = audit(transform=transform, progress=None, **kw)
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]: finished cells are saved; run the same command again to resume")
        return 130
    a = res.audit or {}
    order = ", ".join(a.get("blocks") or [])
    print(f"model: {a.get('model')} ({a.get('num_classes')} classes"
          + (f", accuracy {a['accuracy']:.3f} on the labeled images" if a.get("accuracy") is not None else "") + ")")
    print(f"cascading order ({'inferred' if a.get('blocks_inferred') else 'given'}): {order}")
    print(f"Grad-CAM layer ({'inferred' if a.get('cam_layer_inferred') else 'given'}): {a.get('cam_layer')}")
    d = a.get("data") or {}
    print(f"images: {d.get('images')} used from {d.get('path')}, {len(d.get('skipped') or [])} skipped")
    for path, why in (d.get("skipped") or [])[:10]:
        err.print(f"  skipped {escape(str(path))}: {escape(str(why))}")
    for n in a.get("notes") or []:
        err.print(f"[yellow]warning[/]: {escape(n)}")
    print(a.get("no_reference", ""))
    return _print_outcome(res, err)


def _all_attribution_methods() -> list[str]:
    from xaudit.explain import describe

    return [d["name"] for d in describe() if d.get("kind") == "attribution"]


# ------------------------------------------------------------------------------------- xaudit plan
def plan(preset: str | Path | dict | Preset = "default", *, workers: int | None = None,
         history: list[str | Path] | None = None, methods: str | list[str] | None = None,
         checks: str | list[str] | None = None, cache_dir: str | Path | None = None,
         source: str | None = None, executor: str = "local") -> dict[str, Any]:
    """What running ``preset`` would do, and how long it would take on ``workers`` workers: the cells per
    check, the models to train, and a predicted wall time from the timings of earlier runs' stores
    (``history``: run folders or folders of them; default ``runs/``), else estimates
    (:mod:`xaudit.run.cost`)."""
    from xaudit.run.cost import history_from, predict

    _check_workers(workers)
    p = preset if isinstance(preset, Preset) else load_preset(preset)
    pl = build_plan(p, methods=methods, checks=checks, source=source)
    paths = [Path(h) for h in (history if history is not None else ["runs"])]
    for h in paths:
        if history is not None and not h.exists():
            raise ConfigError("--history", f"no such folder: {h}")
    if executor not in ("local", "ray"):
        raise ConfigError("--executor", f"must be 'local' or 'ray', got {executor!r}")
    return predict(pl, workers or p.workers or available_cores(), history_from(h for h in paths if h.exists()),
                   cache_dir=None if cache_dir is None else str(cache_dir), executor=executor)
