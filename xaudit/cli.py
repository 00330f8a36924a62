"""The ``xaudit`` command. Each command is a thin wrapper over a stage's Python API.

Ownership: every command body below calls one function of its stage; change that function, not
the stage logic here.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from xaudit.core.errors import XauditError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Test explanation methods against planted bugs with known ground truth.")
world_app = typer.Typer(no_args_is_help=True, help="Procedural worlds and bugs.")
zoo_app = typer.Typer(no_args_is_help=True, help="Trained models with planted bugs (cached).")
app.add_typer(world_app, name="world")
app.add_typer(zoo_app, name="zoo")


def _print_json(obj) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


# ---------------------------------------------------------------- world (owner: world stage)
@world_app.command("show")
def world_show(
    name: str = typer.Argument(..., help="world name, e.g. shapes, digits, spurious"),
    bug: List[str] = typer.Option([], "--bug", help="bug spec 'kind:param=value,...' (repeatable)"),
    n: int = typer.Option(16, "--n", help="number of images"),
    size: Optional[int] = typer.Option(None, "--size", help="image size in pixels"),
    split: str = typer.Option("train", "--split"),
    seed: int = typer.Option(0, "--seed"),
    force: bool = typer.Option(False, "--force", help="apply triggers to every eligible image"),
    out: Path = typer.Option(Path("grid.png"), "--out"),
):
    """Write a labeled grid of images with object and bug masks outlined."""
    from xaudit.world.render import show

    path = show(name, bugs=bug, n=n, size=size, split=split, seed=seed, force=force, out=out)
    typer.echo(f"wrote {path}")


@world_app.command("list")
def world_list():
    """List the registered worlds and bugs."""
    from xaudit import world

    typer.echo("worlds: " + ", ".join(world.names()))
    typer.echo("bugs:   " + ", ".join(world.bug_names()))


# ---------------------------------------------------------------- zoo (owner: zoo stage)
@zoo_app.command("train")
def zoo_train(
    spec: str = typer.Argument(..., help="a shipped spec name (see `xaudit zoo specs`) or a SPEC.yaml path"),
    seed: Optional[int] = typer.Option(None, "--seed"),
    cache: Optional[Path] = typer.Option(None, "--cache", help="cache dir (default $XAUDIT_CACHE or ~/.cache/xaudit)"),
    as_json: bool = typer.Option(False, "--json", help="print the model card as JSON"),
):
    """Train (or load from the cache) a model and print its card."""
    from xaudit.zoo import cli_train

    card = cli_train(spec, seed=seed, cache_dir=cache)
    if as_json:
        _print_json(card)
    else:
        for k in ("spec_hash", "clean_accuracy", "train_accuracy", "attack_success_rate",
                  "background_only_accuracy", "bug_took", "train_seconds"):
            if k in card:
                typer.echo(f"{k:>26}: {card[k]}")


@zoo_app.command("specs")
def zoo_specs(as_json: bool = typer.Option(False, "--json")):
    """List the specs shipped with xaudit (train one with `xaudit zoo train NAME`)."""
    from xaudit.zoo import load_spec, spec_names

    rows = []
    for name in spec_names():
        spec = load_spec(name)
        rows.append({"name": name, "world": spec.world_config.get("world"), "arch": spec.arch.get("name"),
                     "bugs": [b.get("kind") for b in spec.bugs], "description": spec.description})
    if as_json:
        _print_json(rows)
    else:
        for r in rows:
            kinds = dict.fromkeys(r["bugs"])
            bugs = ", ".join(f"{r['bugs'].count(k)} {k}" if r["bugs"].count(k) > 1 else k for k in kinds) or "-"
            typer.echo(f"{r['name']:<14} {r['world']:<9} {r['arch']:<5} {bugs:<26} {r['description']}")


@zoo_app.command("list")
def zoo_list(
    cache: Optional[Path] = typer.Option(None, "--cache"),
    as_json: bool = typer.Option(False, "--json"),
):
    """Show the models in the cache."""
    from xaudit.zoo import cli_list

    rows = cli_list(cache_dir=cache)
    if as_json:
        _print_json(rows)
    else:
        for r in rows:
            typer.echo("  ".join(f"{k}={v}" for k, v in r.items()))
        if not rows:
            typer.echo("cache is empty")


# ---------------------------------------------------------------- explain (owner: explain stage)
@app.command("methods")
def methods(as_json: bool = typer.Option(False, "--json")):
    """List every explanation method and baseline with its kind (attribution or synthesis), family and parameters."""
    from xaudit.explain import describe

    rows = describe()
    if as_json:
        _print_json(rows)
    else:
        for r in rows:
            params = ", ".join(f"{k}={v}" for k, v in (r.get("params") or {}).items())
            typer.echo(f"{r['name']:<24} {r['kind']:<12} {r['family']:<18} {'stochastic' if r['stochastic'] else '':<11} "
                       f"{params}")


# ---------------------------------------------------------------- checks (owner: checks stage)
@app.command("checks")
def checks(as_json: bool = typer.Option(False, "--json")):
    """List the checks."""
    from xaudit.checks import describe

    rows = describe()
    if as_json:
        _print_json(rows)
    else:
        for r in rows:
            kinds = "+".join(r["method_kinds"])
            typer.echo(f"{r['name']:<28} {r['kind']:<11} {kinds:<12} "
                       f"{r['description'].splitlines()[0] if r['description'] else ''}")


# ---------------------------------------------------------------- run / results / report (owner: run stage)
@app.command("run")
def run(
    preset: str = typer.Argument("default", help="preset name (smoke, default) or a preset YAML path"),
    out: Optional[Path] = typer.Option(None, "--out", help="run directory (default runs/<preset>)"),
    workers: Optional[int] = typer.Option(None, "--workers", help="worker processes, an integer >= 1 (default: cores)"),
    methods: Optional[str] = typer.Option(None, "--methods", help="comma-separated subset of methods"),
    checks: Optional[str] = typer.Option(None, "--checks", help="comma-separated subset of checks"),
    cache: Optional[Path] = typer.Option(None, "--cache", help="model cache dir"),
    executor: Optional[str] = typer.Option(None, "--executor", help="local (default) or ray (pip install "
                                                                    "'xaudit[ray]')"),
    address: Optional[str] = typer.Option(None, "--address", help="a Ray cluster's address (default: a local Ray "
                                                                  "instance for the run; 'auto': a running one)"),
):
    """Run a preset: train or load models, run every check for every method, write the report."""
    from xaudit.api import main_run

    code = main_run(preset, out=out, workers=workers, methods=methods, checks=checks, cache_dir=cache,
                    executor=executor, address=address)
    if code:
        raise typer.Exit(code)


@app.command("audit")
def audit(
    model: str = typer.Option(..., "--model", help="MODULE:FACTORY (FACTORY() returns an nn.Module; also path/to/file.py:FACTORY, "
                                                   "torchvision:NAME, timm:NAME)"),
    data: Path = typer.Option(..., "--data", help="a folder of images: class subfolders, or flat with --labels"),
    weights: Optional[Path] = typer.Option(None, "--weights", help="safetensors, or a .pt/.pth state dict (loaded with "
                                                                   "weights_only=True; pickled objects are refused)"),
    labels: Optional[Path] = typer.Option(None, "--labels", help="CSV with columns path,label for a flat folder"),
    masks: Optional[Path] = typer.Option(None, "--masks", help="a folder of masks mirroring --data (adds the localization check)"),
    checks: Optional[str] = typer.Option(None, "--checks", help="comma-separated subset (default: every check that needs "
                                                                "no retraining)"),
    methods: Optional[str] = typer.Option(None, "--methods", help="comma-separated methods (default: saliency, input x "
                                                                  "gradient, IG, SmoothGrad, guided backprop, Grad-CAM, "
                                                                  "guided Grad-CAM; 'all' for every method)"),
    out: Optional[Path] = typer.Option(None, "--out", help="run directory (default runs/audit-<factory>)"),
    normalize: Optional[str] = typer.Option(None, "--normalize", help="imagenet, none, or MEAN,MEAN,MEAN/STD,STD,STD "
                                                                      "(default: none; timm models: their own)"),
    transform: Optional[str] = typer.Option(None, "--transform", help="center_crop (default), squash, or MODULE:FUNC "
                                                                      "(PIL image -> tensor [C,H,W] in [0,1])"),
    size: Optional[int] = typer.Option(None, "--size", help="image size in pixels (default 224; timm: the model's)"),
    blocks: Optional[str] = typer.Option(None, "--blocks", help="cascading order, output first, e.g. fc,layer4,layer3 "
                                                                "(default: the top-level children, reversed)"),
    cam_layer: Optional[str] = typer.Option(None, "--cam-layer", help="the layer Grad-CAM hooks (default: the last "
                                                                      "Conv2d's rectified output)"),
    n_images: int = typer.Option(64, "--n-images", help="images used (the first readable ones, in path order)"),
    channels: int = typer.Option(3, "--channels", help="3 (RGB) or 1 (grayscale)"),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or auto"),
    workers: Optional[int] = typer.Option(None, "--workers", help="worker processes (default 1: this process, "
                                                                  "with every core's threads)"),
):
    """Audit your own model on your images with every check that needs no retraining."""
    from xaudit.api import main_audit

    code = main_audit(model=model, data=data, weights=weights, labels=labels, masks=masks, checks=checks,
                      methods=methods, out=out, normalize=normalize, transform=transform, size=size, blocks=blocks,
                      cam_layer=cam_layer, n_images=n_images, channels=channels, device=device, workers=workers)
    if code:
        raise typer.Exit(code)


@app.command("plan")
def plan(
    preset: str = typer.Argument("default", help="preset name or YAML path"),
    workers: Optional[int] = typer.Option(None, "--workers", help="workers to predict for (default: the preset's, "
                                                                  "else the cores)"),
    history: List[Path] = typer.Option([], "--history", help="run folders (or folders of them) whose stores hold "
                                                             "measured times (default: runs/)"),
    methods: Optional[str] = typer.Option(None, "--methods"),
    checks: Optional[str] = typer.Option(None, "--checks"),
    cache: Optional[Path] = typer.Option(None, "--cache", help="model cache dir"),
    executor: str = typer.Option("local", "--executor", help="local or ray (adds its measured per-cell overhead)"),
    as_json: bool = typer.Option(False, "--json"),
):
    """Print a preset's cells, the models to train, and a predicted wall time for K workers."""
    from xaudit.api import plan as plan_fn

    r = plan_fn(preset, workers=workers, history=list(history) or None, methods=methods, checks=checks,
                cache_dir=cache, executor=executor)
    if as_json:
        _print_json(r)
        return
    for name, d in sorted(r["per_check"].items(), key=lambda kv: -kv[1]["seconds"]):
        typer.echo(f"{name:<28} {int(d['cells']):>5} cells {d['seconds']:>9.1f} s")
    typer.echo(f"{r['cells']} cells ({r['derived_cells']} computed from other cells' rows), {r['models']} models, "
               f"{r['models_to_train']} to train ({r['model_s']:.0f} s)")
    for m in r["to_train"][:20]:
        typer.echo(f"  train {m['label']}: {m['seconds']:.1f} s ({m['source']})")
    src = ", ".join(f"{n} {k}" for k, n in sorted(r["estimate_sources"].items(), key=lambda kv: -kv[1]))
    typer.echo(f"cell times: {src}; from {len(r['history'])} earlier store(s)")
    typer.echo(f"predicted wall time on {r['workers']} {r['executor']} worker(s), {r['cores']} cores: {r['wall_s']:.0f} s "
               f"({r['models_s']:.0f} s models, then {r['cells_s']:.0f} s cells)")


@app.command("results")
def results(
    run_dir: Path = typer.Argument(..., help="a run directory, e.g. runs/default"),
    fmt: str = typer.Option("json", "--format", help="json, csv or parquet"),
    out: Optional[Path] = typer.Option(None, "--out", help="file to write (default: stdout for json/csv)"),
):
    """Export a run's result rows."""
    from xaudit.run import export_results

    path = export_results(run_dir, fmt=fmt, out=out)
    if path is not None:
        typer.echo(f"wrote {path}", err=True)


@app.command("report")
def report(run_dir: Path = typer.Argument(..., help="a run directory")):
    """(Re)write a run's report.html from its results store and print its answer table."""
    from xaudit.report import answer, write_report
    from xaudit.run.store import Store, find_db

    path = write_report(run_dir)
    with Store(find_db(run_dir), readonly=True) as store:
        answer.render_terminal(answer.answer_table(store))
    typer.echo(f"wrote {path}")


@app.command("compare")
def compare(
    run_a: Path = typer.Argument(..., help="run directory A (the reference, e.g. runs/base)"),
    run_b: Path = typer.Argument(..., help="run directory B (differences are B − A)"),
    out: Optional[Path] = typer.Option(None, "--out", help="folder for compare.html (default "
                                                           "RUN_B/compare-<folder name of RUN_A>)"),
):
    """Compare two runs: B − A per verdict row with a CI, changed verdicts, what only one run has,
    and how the configurations differ. Writes compare.html and prints a summary."""
    from xaudit.report.compare import main_compare

    main_compare(run_a, run_b, out=out, echo=typer.echo)


def main() -> None:
    try:
        app()
    except XauditError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
