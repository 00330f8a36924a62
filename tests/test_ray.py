"""The Ray executor (xaudit/run/ray_executor.py) on a local Ray instance (ray.init(num_cpus=2), loopback
only): the same rows as the local executor, a lost worker's task run again, resume, the missing-extra
message. Skipped where Ray is not installed (`make install` installs it)."""
from __future__ import annotations

import builtins
import os

import pytest

import run_fakes  # noqa: F401  (registers the fake checks in this process)
from test_run import comparable, fake_preset, run_fake
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
