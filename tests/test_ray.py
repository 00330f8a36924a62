"""The Ray executor (xaudit/run/ray_executor.py) on a local Ray instance (ray.init(num_cpus=2), loopback
only): the same rows as the local executor, a lost worker's task run again, resume, the missing-extra
message. Skipped where Ray is not installed (`make install` installs it)."""
from __future__ import annotations

import builtins
import os

import pytest

import run_fakes  # noqa: F401  (registers the fake checks in this process)
from test_run import comparable, fake_preset, log, run_fake  # noqa: F401  (log: a fixture)
from xaudit.core.errors import ConfigError
from xaudit.run import Store

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'xaudit[ray]'")

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in __import__("sys").path
                                                                      if p and os.path.isdir(p))}})
    yield
    ray.shutdown()


def rows(run_dir):
    with Store.open(run_dir, readonly=True) as s:
        return s.rows()


def test_same_rows_as_the_local_executor(tmp_path, cluster):
    from xaudit.run.ray_executor import RayExecutor

    local = run_fake(tmp_path, out="local", workers=1)
    ex = RayExecutor(2)
    remote = run_fake(tmp_path, out="ray", executor=ex)
    assert (remote.summary.done, remote.summary.failed, remote.summary.not_applicable) == (
        local.summary.done, local.summary.failed, local.summary.not_applicable)
    assert comparable(rows(remote.run_dir)) == comparable(rows(local.run_dir))
    # every cell ran on a Ray worker, and a second run resumes: only the failed cells run again
    with Store.open(remote.run_dir, readonly=True) as s:
        workers = {c["worker"] for c in s.cells() if c["status"] != "pending"}
    assert workers and all(w.startswith("ray") for w in workers)
    again = run_fake(tmp_path, out="ray", executor=RayExecutor(2))
    assert again.summary.ran == local.summary.failed and again.summary.skipped == local.summary.cells - local.summary.failed


def test_lost_worker_task_runs_again(tmp_path, cluster):
    from xaudit.run.ray_executor import RayExecutor

    marker = tmp_path / "crashed"
    preset = fake_preset(checks={"fake_crash": {"params": {"marker": str(marker)}}}, seeds=[0])
    res = run_fake(tmp_path, preset, out="ray", executor=RayExecutor(2))
    assert marker.exists()                              # a worker did die mid-cell
    assert res.summary.failed == 0 and res.summary.done == 3
    local = run_fake(tmp_path, preset, out="local", workers=1)     # (the marker exists: no crash)
    assert comparable(rows(res.run_dir)) == comparable(rows(local.run_dir))


def test_a_worker_that_keeps_dying_fails_its_cell(tmp_path, cluster):
    from xaudit.run.ray_executor import RayExecutor

    marker = tmp_path / "deaths"
    preset = fake_preset(checks={"fake_crash": {"params": {"marker": str(marker), "crashes": 10}}}, seeds=[0])
    res = run_fake(tmp_path, preset, out="ray", executor=RayExecutor(1, max_retries=1))
    assert len(marker.read_text().splitlines()) == 2        # the first try and one retry
    assert (res.summary.failed, res.summary.done) == (1, 2)
    assert "lost 2 times" in res.summary.failures[0][1]


def test_missing_ray_says_how_to_install(monkeypatch):
    from xaudit.run import ray_executor

    real = builtins.__import__

    def no_ray(name, *a, **kw):
        if name == "ray":
            raise ImportError("No module named 'ray'")
        return real(name, *a, **kw)
    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(ConfigError, match=r"pip install 'xaudit\[ray\]'"):
        ray_executor.RayExecutor(2)


def test_preset_executor_field():
    from xaudit.run import load_preset

    p = load_preset(fake_preset(executor={"kind": "ray", "address": "auto"}))
    assert p.executor == {"kind": "ray", "address": "auto"}
    with pytest.raises(ConfigError, match="executor"):
        load_preset(fake_preset(executor={"kind": "slurm"}))


def test_driver_killed_mid_run_resumes(tmp_path, log, request):
    """kill -9 of a driver running on Ray: the finished cells stay in the store, the workers go, and the same
    command again runs only the unfinished cells."""
    import itertools
    import signal

    import yaml

    from test_run import REPO, TESTS, _alive, _cell_counts, _cli, _wait_for, table

    gate = tmp_path / "gate"
    gate.mkdir()
    tickets = itertools.count()
    preset = fake_preset(checks={"fake_gated": {"params": {"gate": str(gate)}}}, seeds=[0, 1])   # 6 cells
    pfile = tmp_path / "fake.yaml"
    pfile.write_text(yaml.safe_dump(preset))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(REPO)]),
           "XAUDIT_TEST_LOG": os.environ["XAUDIT_TEST_LOG"], "RAY_AUTH_MODE": "disabled"}
    out = tmp_path / "killed"
    db = out / "results.sqlite"
    args = [str(pfile), "--out", str(out), "--workers", "2", "--executor", "ray"]
    runs = []
    request.addfinalizer(lambda: [(gate / "open").touch()] + [r.kill() for r in runs if r.poll() is None])
    runs.append(_cli(args, env, tmp_path))
    for _ in range(2):
        (gate / f"ticket-{next(tickets):03d}").touch()
    _wait_for("2 cells done and 2 held at the gate",
              lambda: _cell_counts(db).get("done") == 2 and len(log("gate")) == 4, runs[-1], timeout=180)
    runs[-1].send_signal(signal.SIGKILL)
    runs[-1].communicate(timeout=30)
    done = {k for (k,) in table(db, "SELECT key FROM cells WHERE status = 'done'")}
    assert len(done) == 2
    workers = {r["pid"] for r in log("gate")}
    import time

    deadline = time.monotonic() + 60
    while any(_alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(w) for w in workers), "Ray workers outlived the killed driver"
    (gate / "open").touch()
    runs.append(_cli(args, env, tmp_path))
    stdout, err = runs[-1].communicate(timeout=300)
    assert runs[-1].returncode == 0, err
    assert table(db, "SELECT count(*) FROM cells WHERE status = 'done'") == [(6,)]
    key_of = {(c["method"], c["seed"]): c["key"] for c in Store.open(out, readonly=True).cells()}
    started = [key_of[(r["method"], r["seed"])] for r in log("gate")]
    assert all(started.count(k) == 1 for k in done)        # finished before the kill: never run again


def test_object_store_sharing_trains_each_model_once_without_a_shared_disk(tmp_path, cluster, log):
    """Each worker with a cache of its own (a node without the others' disk): through the filesystem a
    model is trained again by every worker that needs it; through Ray's object store, once."""
    from xaudit.run.ray_executor import RayExecutor

    preset = fake_preset(checks={"fake_model": {"params": {"partner": "other"}}}, seeds=[0, 1],
                         methods=["saliency", "grad_cam", "blank", "edge"])
    local = run_fake(tmp_path, preset, out="local", workers=1)
    models = {r["key"] for r in log("train")}
    assert len(models) == 4

    events = tmp_path / "cache" / "train-events.log"   # the trainings in the workers' caches (cache/worker-N)

    def trained(out, **kw) -> list[str]:
        before = len(events.read_text().splitlines()) if events.exists() else 0
        res = run_fake(tmp_path, preset, out=out, executor=RayExecutor(2, worker_cache_dirs=True, **kw))
        assert res.summary.failed == 0
        assert comparable(rows(res.run_dir)) == comparable(rows(local.run_dir))
        return events.read_text().splitlines()[before:]

    shared = trained("object_store", model_sharing="object_store")
    assert sorted(shared) == sorted(models)                  # each model trained exactly once
    assert (tmp_path / "cache" / "worker-0").is_dir() and (tmp_path / "cache" / "worker-1").is_dir()
    import shutil

    for d in (tmp_path / "cache").glob("worker-*"):
        shutil.rmtree(d)
    separate = trained("filesystem", model_sharing="filesystem")
    assert len(separate) > len(models)                        # the other worker trained them again


def test_two_worlds_and_a_population_check_give_the_same_rows(tmp_path, cluster):
    """A two-world preset whose population check declares ten models per cell: Ray and local, value by
    value."""
    import importlib

    import contract_fakes
    import xaudit.run as xrun
    from xaudit.checks import CHECKS
    from xaudit.run.ray_executor import RayExecutor

    from xaudit import explain

    reloaded = "toy_population" not in CHECKS    # test_contract unregisters its toys when it ends: again
    if reloaded:
        if "toy_synth" in explain.names():
            explain.unregister("toy_synth")
        importlib.reload(contract_fakes)
    try:
        p = {"name": "pop", "plugins": ["contract_fakes"], "seeds": [0, 1],
             "worlds": [{"world": "shapes", "size": 32}, {"world": "digits"}],
             "checks": ["toy_population"], "methods": ["saliency", "grad_cam"]}
        kw = dict(source="contract_fakes:ContractSource", cache_dir=tmp_path / "cache", progress=False)
        local = xrun.run(p, out=tmp_path / "local", workers=1, **kw)
        remote = xrun.run(p, out=tmp_path / "ray", executor=RayExecutor(2), **kw)
        assert local.summary.done == remote.summary.done == 8 and remote.summary.failed == 0
        a, b = rows(local.run_dir), rows(remote.run_dir)
        assert len(a) == 8 * 10 and comparable(a) == comparable(b)
        assert len({r["world"] for r in b}) == 2
    finally:
        if reloaded:                         # leave the registries as this test found them
            for name in [n for n in CHECKS.names() if n.startswith("toy_")]:
                del CHECKS._items[name]
                CHECKS._meta.pop(name, None)
            if "toy_synth" in explain.names():
                explain.unregister("toy_synth")


def test_smoke_preset_gives_the_same_rows(tmp_path, cluster):
    """The shipped smoke preset (a trained model and its retrain reference, saliency and Grad-CAM):
    Ray and local, value by value. The models come from the shared cache (trained once, by whichever
    run is first)."""
    import xaudit.run as xrun
    from xaudit.run.ray_executor import RayExecutor

    local = xrun.run("smoke", out=tmp_path / "local", workers=2, progress=False)
    remote = xrun.run("smoke", out=tmp_path / "ray", executor=RayExecutor(2), progress=False)
    assert local.summary.done == remote.summary.done == 2 and remote.summary.failed == 0
    a, b = rows(local.run_dir), rows(remote.run_dir)
    assert len(a) > 10 and {r["method"] for r in b} == {"saliency", "grad_cam"}
    assert comparable(a) == comparable(b)
    with Store.open(remote.run_dir, readonly=True) as s:
        assert all(c["worker"].startswith("ray") for c in s.cells())


def test_actor_resources():
    from xaudit.run.ray_executor import actor_resources

    assert actor_resources(2, 0, 2, "cpu") == (2, 1, 0.0)
    assert actor_resources(16, 4, 8, "cuda") == (8, 2, 0.5)        # two small-model workers share a GPU
    assert actor_resources(16, 16, 8, "auto") == (8, 2, 1.0)
    assert actor_resources(4, 0, 1, "auto") == (1, 4, 0.0)
    with pytest.raises(ConfigError, match="no GPU"):
        actor_resources(4, 0, 2, "cuda")
    # a declared share: every actor reserves it, and only as many actors start as the GPUs hold
    assert actor_resources(16, 4, 8, "cuda", (0.25, "method m")) == (8, 2, 0.25)
    assert actor_resources(16, 4, 8, "cuda", (1.0, "method m")) == (4, 4, 1.0)
    assert actor_resources(16, 4, 8, "auto", (2.0, "model big")) == (2, 8, 2.0)
    assert actor_resources(16, 0, 8, "cpu", (1.0, "method m")) == (8, 2, 0.0)    # no GPU device: ignored
    with pytest.raises(ConfigError, match="model big needs 8 GPUs per task but the Ray cluster has 4"):
        actor_resources(16, 4, 2, "cuda", (8.0, "model big"))


class _GpuSource:
    """A model source that declares a GPU share per model (the optional ``num_gpus`` hook)."""

    def num_gpus(self, model):
        return 0.5 if model.key == "big" else None


def test_declared_gpus_come_from_method_and_model_metadata(monkeypatch):
    import sys
    import types

    from xaudit import explain
    from xaudit.run.models import ResolvedModel
    from xaudit.run.ray_executor import declared_gpus
    from xaudit.run.worker import CellTask, ModelTask

    with pytest.raises(ConfigError, match="num_gpus: must be a positive number"):
        explain.register("gpu_hungry", num_gpus=0)

    @explain.register("gpu_hungry", family="gradient", passes=(1, 1), num_gpus=0.25)
    def gpu_hungry(model, x, target):
        return x

    try:
        assert {d["name"]: d["num_gpus"] for d in explain.describe()}["gpu_hungry"] == 0.25
        small, big = (ResolvedModel(key=k, label=k, spec=k, seed=0) for k in ("small", "big"))

        def cell(method, model):
            return CellTask(key=f"{method}-{model.key}", check="c", method=method, method_params={}, model_group="g",
                            world={}, seed=0, params={}, models=(("m", 0, model.key),), resolved={model.key: model})

        mod = types.ModuleType("gpu_source_mod")
        mod.GpuSource = _GpuSource
        monkeypatch.setitem(sys.modules, "gpu_source_mod", mod)
        zoo = "xaudit.run.models:ZooSource"          # declares nothing
        assert declared_gpus([], [cell("saliency", small)], zoo) is None
        assert declared_gpus([], [cell("saliency", small), cell("gpu_hungry", small)], zoo) == (0.25, "method gpu_hungry")
        assert declared_gpus([ModelTask("big", big)], [cell("gpu_hungry", small)], "gpu_source_mod:GpuSource") == \
            (0.5, "model big")
        assert declared_gpus([], [cell("saliency", small)], "gpu_source_mod:GpuSource") is None
    finally:
        explain.unregister("gpu_hungry")
