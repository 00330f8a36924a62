"""The runner: presets, plan keys, the store, executors, resume after a kill, export.

Cheap fake checks and a fake model source live in tests/run_fakes.py (imported by workers as a
plugin); they log every cell they run to $XAUDIT_TEST_LOG so recomputation is counted outside the store.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import run_fakes  # noqa: F401  (registers the fake checks in this process)
import xaudit.run as xrun
from xaudit.core.errors import ConfigError, UnknownName
from xaudit.run import Scheduler, Store, build_plan, export_results, load_preset
from xaudit.run.worker import CellTask, ModelResult, ModelTask

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
FAKE_SOURCE = "run_fakes:FakeSource"


def fake_preset(**over) -> dict:
    p = {"name": "fake", "plugins": ["run_fakes"], "seeds": [0, 1],
         "worlds": [{"world": "shapes", "size": 32}],
         "checks": {"fake_score": {}, "fake_fail": {}, "fake_model": {"params": {"partner": "other"}}},
         "methods": ["saliency", "grad_cam", "blank"]}
    p.update(over)
    return p


@pytest.fixture
def log(tmp_path, monkeypatch):
    path = tmp_path / "log.jsonl"
    monkeypatch.setenv("XAUDIT_TEST_LOG", str(path))

    def read(kind=None):
        if not path.exists():
            return []
        out = [json.loads(line) for line in path.read_text().splitlines()]
        return [r for r in out if kind is None or r["kind"] == kind]
    return read


def run_fake(tmp_path, preset=None, out="run", workers=1, **kw):
    return xrun.run(preset or fake_preset(), out=tmp_path / out, workers=workers, source=FAKE_SOURCE,
                    cache_dir=tmp_path / "cache", progress=False, **kw)


def table(path: Path, q: str) -> list[tuple]:
    con = sqlite3.connect(path)
    try:
        return con.execute(q).fetchall()
    finally:
        con.close()


def comparable(rows: list[dict]) -> list[tuple]:
    """Rows without the run-specific columns, sorted."""
    return sorted(json.dumps({k: v for k, v in r.items() if k not in ("run",)}, sort_keys=True) for r in rows)


# ------------------------------------------------------------------------------------------ presets
def test_shipped_presets_validate():
    assert {"smoke", "default", "full", "audit"} <= set(xrun.shipped())
    smoke = load_preset("smoke")
    assert smoke.name == "smoke" and [c.name for c in smoke.checks] == ["cascading_randomization"]
    assert len(smoke.methods) == 2
    default = load_preset("default")
    assert [c.name for c in default.checks] == ["all", "mislabeled", "trojan_localization", "trojan_rediscovery",
                                                 "ood_shift", "model_anomaly"]
    assert default.methods[0].name == "all"
    assert [w.name for w in default.worlds] == ["shapes", "digits", "spurious"]
    assert default.worlds[2].checks == ("spurious",) and default.worlds[2].models == ("spurious",)
    # default: every method, a few sampling budgets lowered; full: every method at its defaults
    plan = build_plan(default)
    from xaudit import explain
    assert set(plan.methods) == set(explain.names())
    lowered = {c.method: c.method_params for c in plan.cells if c.method_params}
    assert lowered == {"lime": {"samples": 128}, "kernel_shap": {"samples": 128},
                       "shapley_value_sampling": {"samples": 2}, "deep_lift_shap": {"n_baselines": 8},
                       **{m: {"steps": 256} for m in ("fv_pixel", "fv_fourier", "fv_maco", "fv_cppn")},
                       "adversarial_patch": {"steps": 100, "batch_size": 32}}
    # the synthesis methods run in trojan_rediscovery only (caricature in none of the default's checks)
    assert {c.method for c in plan.cells if c.check == "trojan_rediscovery"} == {
        "fv_pixel", "fv_fourier", "fv_maco", "fv_cppn", "adversarial_patch"}
    # the model audit runs the paper's four attribution methods only
    assert {c.method for c in plan.cells if c.check == "model_anomaly"} == {
        "integrated_gradients", "guided_backprop", "guided_grad_cam", "grad_cam"}
    # the retraining-free OOD test with one shift; it and localization join through `all`
    assert {json.dumps(c.params["shifts"]) for c in plan.cells if c.check == "ood_shift"} == {
        json.dumps([{"kind": "shift", "shift_kind": "noise", "severity": 0.2}])}
    assert {c.check for c in plan.cells} >= {"ood_shift", "localization"}
    full = build_plan(load_preset("full"))
    assert set(full.methods) == set(plan.methods) and not any(c.method_params for c in full.cells)
    sanity = ("cascading_randomization", "independent_randomization", "data_randomization", "random_logit")
    # (this module registers fake checks too, which `all` includes here)
    assert {c.params["n_images"] for c in full.cells if c.check in sanity} == {64}
    assert {c.params["n_images"] for c in plan.cells if c.check in sanity} == {24}


@pytest.mark.parametrize("change, field, allowed", [
    ({"colour": 1}, "colour", "allowed fields: name, description, seeds"),
    ({"device": "tpu"}, "device", "cpu, cuda, auto"),
    ({"seeds": [0, 0]}, "seeds", "must not repeat"),
    ({"seeds": "x"}, "seeds", "integers >= 0"),
    ({"workers": 0}, "workers", "positive integer"),
    ({"name": "a b"}, "name", "letters, digits"),
    ({"worlds": []}, "worlds", "non-empty list"),
    ({"worlds": [{"size": 32}]}, "worlds[0].world", "world: NAME"),
    ({"checks": {"fake_score": {"parms": {}}}}, "checks.fake_score.parms", "allowed: params, models"),
    ({"checks": [1]}, "checks[0]", "a name or a one-key mapping"),
    ({"methods": ["saliency", "saliency"]}, "methods", "twice"),
])
def test_bad_preset_names_the_field(change, field, allowed):
    with pytest.raises(ConfigError) as e:
        load_preset(fake_preset(**change))
    assert e.value.field == field
    assert allowed in str(e.value)


@pytest.mark.parametrize("change, field, allowed", [
    ({"worlds": [{"world": "shapes", "size": 31}]}, "worlds[0].size", "32"),
    ({"worlds": [{"world": "nope"}]}, "worlds[0].world", "shapes"),
    ({"checks": {"fake_score": {"params": {"slep": 1}}}}, "checks.fake_score.params.slep", "sleep, stages"),
    ({"methods": {"smooth_grad": {"samples": -1}}}, "methods.smooth_grad.samples", ""),
])
def test_bad_preset_at_plan_time(change, field, allowed):
    with pytest.raises(ConfigError) as e:
        build_plan(load_preset(fake_preset(**change)), source=FAKE_SOURCE)
    assert e.value.field == field and allowed in str(e.value)


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(UnknownName) as e:
        build_plan(load_preset(fake_preset(checks=["fake_score", "nope"])), source=FAKE_SOURCE)
    assert "fake_score" in e.value.valid and "nope" in str(e.value)
    with pytest.raises(UnknownName) as e:
        build_plan(load_preset(fake_preset(methods=["saliency", "nope"])), source=FAKE_SOURCE)
    assert "integrated_gradients" in e.value.valid
    with pytest.raises(ConfigError) as e:
        build_plan(load_preset(fake_preset()), methods="saliency,lime", source=FAKE_SOURCE)
    assert e.value.field == "--methods" and "saliency, grad_cam, blank" in str(e.value)
    with pytest.raises(ConfigError, match="unknown preset 'nope'; shipped presets: .*smoke"):
        load_preset("nope")


def test_preset_file_and_cli_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"name": "bad", "worlds": ["shapes"], "methods": ["saliency"], "speed": 3}))
    r = subprocess.run([sys.executable, "-m", "xaudit.cli", "run", str(bad), "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(TESTS)})
    assert r.returncode == 2
    assert "error: speed: unknown preset field; allowed fields: name, description" in r.stderr


# ------------------------------------------------------------------------------------------ plan
def test_cell_keys_hash_the_full_config():
    p = load_preset(fake_preset())
    plan = build_plan(p, source=FAKE_SOURCE)
    # 3 checks x 1 world x 1 model group x 2 seeds x 3 methods
    assert len(plan.cells) == 18 and len({c.key for c in plan.cells}) == 18
    c = plan.cells[0]
    ref = hashlib.sha256(json.dumps(c.config, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert c.key == ref
    assert c.config["check_version"] == "1" and c.config["params"] == {"sleep": 0.0, "stages": 2}
    assert c.config["world"]["world"] == "shapes" and c.config["world"]["size"] == 32
    # same preset -> same keys; one check's parameter -> only that check's keys change
    again = build_plan(load_preset(fake_preset()), source=FAKE_SOURCE)
    assert [x.key for x in again.cells] == [x.key for x in plan.cells]
    changed = build_plan(load_preset(fake_preset(checks={"fake_score": {"params": {"stages": 3}}, "fake_fail": {},
                                                         "fake_model": {"params": {"partner": "other"}}})),
                         source=FAKE_SOURCE)
    for a, b in zip(plan.cells, changed.cells):
        assert (a.key == b.key) == (a.check != "fake_score")
    # check_defaults reach every check that takes the parameter; a check's own params win
    shared = build_plan(load_preset(fake_preset(check_defaults={"stages": 5, "bad_method": "blank"},
                                                checks={"fake_score": {}, "fake_fail": {"params": {"bad_method": "x"}}})),
                        source=FAKE_SOURCE)
    assert {(x.check, json.dumps(x.params, sort_keys=True)) for x in shared.cells} == {
        ("fake_score", '{"sleep": 0.0, "stages": 5}'), ("fake_fail", '{"bad_method": "x"}')}
    with pytest.raises(ConfigError) as e:
        build_plan(load_preset(fake_preset(check_defaults={"n_imgs": 3})), source=FAKE_SOURCE)
    assert e.value.field == "check_defaults.n_imgs" and "sleep, stages" in str(e.value)
    # the check version is part of the key
    cls = run_fakes.FakeScore
    try:
        cls.version = "2"
        bumped = build_plan(load_preset(fake_preset()), source=FAKE_SOURCE)
    finally:
        cls.version = "1"
    assert [(a.key == b.key) for a, b in zip(plan.cells, bumped.cells)] == [a.check != "fake_score" for a in plan.cells]
    # models: the fake_model cells name both models they use
    fm = [x for x in plan.cells if x.check == "fake_model" and x.seed == 1][0]
    assert fm.models == (("clean", 1, "clean-shapes-1"), ("other", 1, "other-shapes-1"))
    assert set(plan.models) == {"clean-shapes-0", "other-shapes-0", "clean-shapes-1", "other-shapes-1"}


def test_subset_and_all():
    plan = build_plan(load_preset(fake_preset(methods="all")), checks="fake_score", methods="blank,saliency",
                      source=FAKE_SOURCE)
    assert plan.checks == ["fake_score"] and plan.methods == ["saliency", "blank"]
    assert len(plan.cells) == 4
    from xaudit import explain
    full = build_plan(load_preset(fake_preset(methods={"all": None, "smooth_grad": {"samples": 4}})),
                      checks="fake_score", source=FAKE_SOURCE)
    assert full.methods == explain.names()
    sg = [c for c in full.cells if c.method == "smooth_grad"][0]
    assert sg.method_params == {"samples": 4}


# ------------------------------------------------------------------------------------------ execution
def test_inline_run_records_failures_and_not_applicable(tmp_path, log):
    res = run_fake(tmp_path)
    s = res.summary
    assert (s.cells, s.done, s.failed, s.not_applicable) == (18, 14, 2, 2)
    db = res.store
    failed = table(db, "SELECT method, error, traceback, attempts FROM cells WHERE status = 'failed'")
    assert {f[0] for f in failed} == {"grad_cam"} and len(failed) == 2
    assert all("ValueError: planted failure for grad_cam" in f[1] and "raise ValueError" in f[2] and f[3] == 1
               for f in failed)
    na = table(db, "SELECT method, error FROM cells WHERE status = 'not_applicable'")
    assert na == [("blank", "blank does not apply to this fake check")] * 2
    # rows: fake_score 3 per cell (6 cells), fake_fail 1 per done cell (2), fake_model 2 per cell (6)
    rows = Store.open(res.run_dir, readonly=True).rows()
    assert len(rows) == 18 + 2 + 12
    score = [r for r in rows if r["check"] == "fake_score" and r["verdict"] is not None]
    for r in score:
        assert r["ci_low"] == pytest.approx(r["value"] - 0.1) and r["verdict"] == ("pass" if r["value"] > 0.5 else "fail")
        assert r["note"] == {"v": r["value"]} and r["run"] == "fake"
    # every cell ran exactly once
    cells_run = log("cell")
    assert len(cells_run) == 18
    # a rerun computes only the unfinished cells: the 2 failed ones (retried), nothing else
    res2 = run_fake(tmp_path)
    assert res2.summary.ran == 2 and len(log("cell")) == 20
    assert table(db, "SELECT max(attempts) FROM cells WHERE status = 'done'") == [(1,)]
    res3 = run_fake(tmp_path, retry_failed=False)
    assert res3.summary.ran == 0 and len(log("cell")) == 20
    assert len(table(db, "SELECT * FROM run")) == 3


def test_plain_progress_lines_when_not_a_terminal(tmp_path, log):
    """Logs and CI get plain progress lines: a header, every model, and cell counts with failures."""
    import io
    stream = io.StringIO()
    progress = xrun.Progress(None, stream=stream, log_every_s=0.0)
    xrun.run(fake_preset(), out=tmp_path / "run", workers=1, source=FAKE_SOURCE, cache_dir=tmp_path / "cache",
             progress=progress)
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("[xaudit] 18 cells to run (0 already done), ")
    assert sum("model ready:" in line for line in lines) == 4
    cell_lines = [line for line in lines if line.startswith("[xaudit] cells ")]
    assert len(cell_lines) == 18                      # log_every_s=0: a line per cell
    assert cell_lines[-1].startswith("[xaudit] cells 18/18 (2 failed, 2 n/a, 0 left), models 4/4, elapsed ")
    assert "eta" in cell_lines[0] and "eta" not in cell_lines[-1]


def test_processes_prepare_each_model_once_and_match_inline(tmp_path, log):
    inline = run_fake(tmp_path, out="inline", workers=1)
    rows_inline = Store.open(inline.run_dir, readonly=True).rows()
    trained = [r["key"] for r in log("train")]
    assert sorted(trained) == sorted(["clean-shapes-0", "other-shapes-0", "clean-shapes-1", "other-shapes-1"])
    (tmp_path / "cache").rename(tmp_path / "cache_inline")   # cold cache again for the process run
    before = len(log())
    procs = run_fake(tmp_path, out="procs", workers=2)
    rows_procs = Store.open(procs.run_dir, readonly=True).rows()
    assert comparable(rows_procs) == comparable(rows_inline)
    new = log()[before:]
    train = [r["key"] for r in new if r["kind"] == "train"]
    assert sorted(train) == sorted(trained)                   # each model trained once with 2 workers
    loads = [(r["pid"], r["key"]) for r in new if r["kind"] == "load"]
    assert len(loads) == len(set(loads))                      # each worker loaded each model at most once
    assert len({pid for pid, _ in loads}) == 2                # the work was spread over both workers
    assert os.getpid() not in {r["pid"] for r in new}         # nothing ran in the parent
    assert procs.summary.failed == 2 and procs.summary.done == 14


def test_failed_model_fails_its_cells_only(tmp_path, log):
    p = fake_preset(worlds=[{"world": "shapes", "size": 32, "specs": {"other": "broken"}}], seeds=[0])
    res = run_fake(tmp_path, p)
    st = dict(table(res.store, "SELECT method || '/' || check_name, status FROM cells"))
    assert all(st[f"{m}/fake_model"] == "failed" for m in ("saliency", "grad_cam", "blank"))
    assert st["saliency/fake_score"] == "done"
    errs = table(res.store, "SELECT error, attempts FROM cells WHERE check_name = 'fake_model'")
    assert all("could not be prepared: RuntimeError: planted training failure" in e and a == 0 for e, a in errs)
    models = dict(table(res.store, "SELECT key, status FROM models"))
    assert models == {"clean-shapes-0": "ready", "broken-shapes-0": "failed"}
    assert not [r for r in log("cell") if r["check"] == "fake_model"]


def test_check_that_mutates_the_shared_model_fails(tmp_path, log):
    p = fake_preset(checks={"fake_model": {"params": {"mutate": True}}}, seeds=[0], methods=["saliency", "blank"])
    res = run_fake(tmp_path, p)
    errs = table(res.store, "SELECT status, error FROM cells")
    assert len(errs) == 2 and all(s == "failed" and "changed the weights of the shared model" in e for s, e in errs)
    # prepared once; the first cell spoiled it, so the second cell got a freshly loaded copy
    assert [r["key"] for r in log("load")] == ["clean-shapes-0", "clean-shapes-0"]


def test_profile_times_model_passes(tmp_path, log):
    p = fake_preset(checks={"fake_model": {"params": {"passes": 50}}, "fake_score": {}}, seeds=[0],
                    methods=["saliency"], profile=True)
    res = run_fake(tmp_path, p)
    got = dict(table(res.store, "SELECT check_name, model_seconds FROM cells"))
    secs = dict(table(res.store, "SELECT check_name, seconds FROM cells"))
    assert 0 < got["fake_model"] <= secs["fake_model"]
    assert got["fake_score"] == 0.0                           # no model, no passes
    res = run_fake(tmp_path, {**p, "profile": False}, out="noprof")
    assert table(res.store, "SELECT model_seconds FROM cells") == [(None,), (None,)]


def test_changed_config_supersedes_old_cells_and_reverting_reuses_them(tmp_path, log):
    base = fake_preset(checks={"fake_score": {}}, seeds=[0], methods=["saliency"])
    run_fake(tmp_path, base)
    changed = fake_preset(checks={"fake_score": {"params": {"stages": 3}}}, seeds=[0], methods=["saliency"])
    res = run_fake(tmp_path, changed)
    rows = Store.open(res.run_dir, readonly=True).rows()
    assert len(rows) == 4 and sorted(r["stage"] for r in rows if r["stage"]) == ["s0", "s1", "s2"]
    assert table(res.store, "SELECT count(*), sum(active) FROM cells") == [(2, 1)]
    run_fake(tmp_path, base)
    assert len(Store.open(res.run_dir, readonly=True).rows()) == 3
    assert len(log("cell")) == 2                              # the revert recomputed nothing


def test_export_formats(tmp_path, log, capsys):
    res = run_fake(tmp_path, fake_preset(checks={"fake_score": {}}, seeds=[0]))
    rows = Store.open(res.run_dir, readonly=True).rows()
    path = export_results(res.run_dir, "json", tmp_path / "r.json")
    data = json.loads(path.read_text())
    assert [d["value"] for d in data] == [r["value"] for r in rows] and len(data) == 9
    assert set(data[0]) >= {"run", "check", "method", "model", "world", "seed", "metric", "value", "ci_low",
                            "ci_high", "n", "verdict", "stage", "block", "note", "cell"}
    export_results(res.run_dir, "csv")
    import csv
    import io
    got = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(got) == 9 and float(got[0]["value"]) == rows[0]["value"] and got[0]["stage"] == "s0"
    assert got[2]["ci_low"] != "" and got[0]["ci_low"] == ""
    with pytest.raises(ConfigError, match="json, csv, parquet"):
        export_results(res.run_dir, "xlsx")
    with pytest.raises(ConfigError, match="no results store"):
        export_results(tmp_path / "nothing", "json")
    try:
        import pyarrow.parquet as pq
    except ImportError:
        with pytest.raises(Exception, match="pip install 'xaudit\\[parquet\\]'"):
            export_results(res.run_dir, "parquet")
    else:
        t = pq.read_table(export_results(res.run_dir, "parquet", tmp_path / "r.parquet"))
        assert t.num_rows == 9


def test_model_fingerprint_is_exact_and_layout_independent():
    import torch
    from xaudit.run.worker import _fingerprint
    g = torch.Generator().manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8))
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        fp = _fingerprint(m)
        torch.set_num_threads(1)
        m = m.to(memory_format=torch.channels_last)
        assert _fingerprint(m) == fp                          # same values: same digest
        with torch.no_grad():
            m[0].weight[0, 0, 0, 0] = torch.nextafter(m[0].weight[0, 0, 0, 0], torch.tensor(1e9))
        assert _fingerprint(m) != fp                          # one ulp in one weight
        with torch.no_grad():
            m[0].weight[0, 0, 0, 0] = torch.nextafter(m[0].weight[0, 0, 0, 0], torch.tensor(-1e9))
        assert _fingerprint(m) == fp
        m[1].running_mean += 1                                # buffers count too
        assert _fingerprint(m) != fp
    finally:
        torch.set_num_threads(threads)


def test_row_columns_match_the_check_contract():
    from xaudit.checks.base import ROW_COLUMNS
    from xaudit.run.store import ROW_COLUMNS as STORE_COLUMNS
    assert STORE_COLUMNS == ROW_COLUMNS


def test_scheduler_models_first_then_affinity_within_the_thread_budget():
    from xaudit.run.models import ResolvedModel
    ms = {k: ResolvedModel(k, k, k, 0) for k in ("A", "B")}
    models = [ModelTask(k, m) for k, m in ms.items()]

    def cell(i, k):
        return CellTask(f"c{i}", "x", "m", {}, "g", {"world": "w"}, 0, {}, ((k, 0, k),), {k: ms[k]})
    cells = [cell(0, "A"), cell(1, "A"), cell(2, "B"), cell(3, "B")]
    # 2 cores, the source trains with 2 threads: one model at a time, no cell beside it
    s = Scheduler(models, cells, cores=2, workers=2, model_threads=2, cell_threads=1)
    t1 = s.next_task(set(), set())
    assert t1.kind == "model" and t1.key == "A" and t1.threads == 2
    assert s.next_task(set(), set()) is None                 # B would oversubscribe; cells wait for A
    s.model_finished(ModelResult("A", "ok"))
    assert s.next_task(set(), set()).key == "B"
    assert s.next_task({"A"}, set()) is None                 # A's cells may not run beside B's training
    s.model_finished(ModelResult("B", "ok"))
    c1 = s.next_task({"B"}, set())
    assert c1.key == "c2"                                    # a cell of the model this worker holds
    c2 = s.next_task(set(), {"B"})
    assert c2.key == "c0"                                    # a model nobody is on
    assert s.next_task(set(), set()) is None                 # 2 one-thread cells fill 2 cores
    s.cell_finished("c2")
    assert s.next_task({"B"}, set()).key == "c3"
    # 4 cores: two 2-thread trainings at once; a failed model drops its cells
    s = Scheduler(models, cells, cores=4, workers=2, model_threads=2)
    assert [s.next_task(set(), set()).key for _ in range(2)] == ["A", "B"]
    s.model_finished(ModelResult("A", "failed", error="boom"))
    assert [x.key for x in s.waiting] == ["c2", "c3"]


def test_scheduler_keeps_a_method_on_one_worker():
    """A worker goes on with the same model and method (its explanation memo serves them), and a second
    worker starts another method rather than the same one."""
    from xaudit.run.executor import affinity
    from xaudit.run.models import ResolvedModel
    ms = {"A": ResolvedModel("A", "A", "A", 0)}

    def cell(check, method):
        return CellTask(f"{check}/{method}", check, method, {}, "g", {"world": "w"}, 0, {}, (("A", 0, "A"),), ms)
    # plan order: check-major, as build_plan makes it
    cells = [cell(c, m) for c in ("casc", "indep", "data") for m in ("sal", "ig")]
    s = Scheduler([], cells, cores=2, workers=2, cell_threads=1)
    w1 = s.next_task({"A"}, set())
    assert w1.key == "casc/sal"
    w2 = s.next_task({"A"}, {"A"}, None, {affinity(w1)})
    assert w2.key == "casc/ig"                              # not the method worker 1 is on
    s.cell_finished(w1.key)
    nxt = s.next_task({"A"}, {"A"}, affinity(w1), {affinity(w2)})
    assert nxt.key == "indep/sal"                           # worker 1 stays on sal
    assert affinity(nxt) == affinity(w1) != affinity(w2)


# ------------------------------------------------------------------------------------------ kill and resume
def _sigint_as_at_a_terminal() -> None:
    """In the child before exec: SIGINT to its default, so Python installs its KeyboardInterrupt
    handler. An ignored SIGINT is inherited (pytest under nohup, `make test &`, some CI runners) and
    Python then never raises KeyboardInterrupt: a Ctrl-C test would see the run finish with exit 0."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _cli(args, env, cwd):
    return subprocess.Popen([sys.executable, "-m", "xaudit.cli", "run", *args], env=env, cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_sigint_as_at_a_terminal)


def _catches_sigint(pid: int) -> bool:
    """Whether process ``pid`` has a SIGINT handler installed (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signal.SIGINT - 1) & 1)
    return False


def _cell_counts(db: Path) -> dict[str, int]:
    """Cells per status in the store ({} before the store has its tables)."""
    if not db.exists():
        return {}
    try:
        return dict(table(db, "SELECT status, count(*) FROM cells GROUP BY status"))
    except sqlite3.OperationalError:
        return {}


def _wait_for(what: str, cond, proc, timeout=120.0) -> None:
    """Poll until ``cond()`` holds; fail if the run exits first. The timeout only catches a hang."""
    deadline = time.monotonic() + timeout
    while not cond():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (exit {proc.returncode}) before {what}: {proc.communicate()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:   # a zombie is not alive
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_sigint_then_sigkill_then_resume_loses_and_repeats_nothing(tmp_path, log, request):
    # every cell waits at a gate until the test hands out a ticket: at each signal exactly the
    # admitted cells are done, two more are provably running (held at the gate), the rest pending
    gate = tmp_path / "gate"
    gate.mkdir()
    tickets = itertools.count()

    def admit(n: int) -> None:
        for _ in range(n):
            (gate / f"ticket-{next(tickets):03d}").touch()

    preset = fake_preset(checks={"fake_gated": {"params": {"gate": str(gate)}}}, seeds=[0, 1, 2, 3])   # 12 cells
    pfile = tmp_path / "fake.yaml"
    pfile.write_text(yaml.safe_dump(preset))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(REPO)]),
           "XAUDIT_TEST_LOG": os.environ["XAUDIT_TEST_LOG"]}
    out = tmp_path / "killed"
    db = out / "results.sqlite"
    args = [str(pfile), "--out", str(out), "--workers", "2"]
    runs: list[subprocess.Popen] = []

    def start(a: list[str]) -> subprocess.Popen:
        runs.append(_cli(a, env, tmp_path))
        return runs[-1]

    def cleanup() -> None:                                     # on a failure: leave nothing waiting
        (gate / "open").touch()
        for r in runs:
            if r.poll() is None:
                r.kill()
                r.communicate()
    request.addfinalizer(cleanup)

    def held(done: int, dispatched: int):
        """`done` cells done, two running at the gate, `dispatched` gate arrivals in the log so far."""
        return lambda: (_cell_counts(db).get("done") == done and _cell_counts(db).get("running") == 2
                        and len(log("gate")) == dispatched)

    # 1) Ctrl-C (SIGINT to the parent): clean stop within seconds, exit 130, finished cells kept
    p = start(args)
    admit(2)
    _wait_for("2 cells done and 2 held at the gate", held(2, 4), p)
    assert _catches_sigint(p.pid), "the run has no SIGINT handler: a Ctrl-C could not stop it"
    busy = {r["pid"] for r in log("gate")}                  # the two workers, both inside a cell
    t_signal = time.monotonic()
    p.send_signal(signal.SIGINT)
    while any(_alive(w) for w in busy) and time.monotonic() - t_signal < 10:
        time.sleep(0.01)
    workers_s = time.monotonic() - t_signal
    # generous bounds (about 0.1 s and 1.5 s here): the cells stop at once, the process soon after
    # (the interrupted run's report and the interpreter's exit)
    assert workers_s < 2.0, f"the cells ran on for {workers_s:.1f} s after SIGINT"
    _, err = p.communicate(timeout=30)
    exit_s = time.monotonic() - t_signal
    assert p.returncode == 130 and "run the same command again to resume" in err, (p.returncode, err)
    assert exit_s < 15.0, f"the run took {exit_s:.1f} s to exit after SIGINT"
    assert table(db, "SELECT status FROM run") == [("interrupted",)]
    assert _cell_counts(db) == {"done": 2, "pending": 10}                 # the two at the gate: pending again
    done1 = {k for (k,) in table(db, "SELECT key FROM cells WHERE status = 'done'")}

    # 2) kill -9 mid-run: workers die with the parent, finished cells stay
    p = start(args)
    admit(2)
    _wait_for("2 more cells done and 2 held at the gate", held(4, 8), p)
    p.send_signal(signal.SIGKILL)
    p.communicate(timeout=30)
    done2 = {k for (k,) in table(db, "SELECT key FROM cells WHERE status = 'done'")}
    assert done1 < done2 and len(done2) == 4
    attempts2 = dict(table(db, "SELECT key, attempts FROM cells"))
    key_of = {(c["method"], c["seed"]): c["key"] for c in Store.open(out, readonly=True).cells()}

    def runs_of() -> dict[str, int]:
        """How often each cell was started in a worker, from the cells' own log (independent of the store)."""
        n = {k: 0 for k in key_of.values()}
        for r in log("gate"):
            n[key_of[(r["method"], r["seed"])]] += 1
        return n
    workers = {r["pid"] for r in log("gate")}
    deadline = time.monotonic() + 10
    while any(_alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(w) for w in workers), "worker processes outlived the killed run"
    runs2 = runs_of()
    assert all(runs2[k] == 1 for k in done1)                 # done at the SIGINT: never started again

    # 3) the same command again (one worker this time: no process start-up), the gate open: only the
    # unfinished cells run
    (gate / "open").touch()
    p = start(args[:-1] + ["1"])
    stdout, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    assert "report: " in stdout and "fake_gated" in stdout
    assert table(db, "SELECT count(*) FROM cells WHERE status = 'done'") == [(12,)]
    attempts3 = dict(table(db, "SELECT key, attempts FROM cells"))
    runs3 = runs_of()
    assert all(runs3[k] == runs2[k] for k in done2)           # done at the SIGKILL: not started again
    assert all(attempts3[k] == attempts2[k] for k in done2)   # and the store's count agrees
    assert all(attempts3[k] == 1 for k in done1)
    # unfinished cells ran in the last invocation exactly once each
    assert all(runs3[k] == runs2[k] + 1 for k in key_of.values() if k not in done2)

    # the rows equal those of an uninterrupted run
    ref = run_fake(tmp_path, preset, out="reference")
    assert comparable(Store.open(out, readonly=True).rows()) == \
        comparable(Store.open(ref.run_dir, readonly=True).rows())
    assert (out / "report.html").exists()


# ------------------------------------------------------------------------------------------ smoke
def test_smoke_preset_end_to_end(tmp_path):
    from xaudit.checks import CHECKS
    assert "cascading_randomization" in CHECKS, "the smoke preset's check is not registered"
    res = xrun.run("smoke", out=tmp_path / "smoke", progress=False)
    s = res.summary
    assert s.failed == 0 and s.done == s.cells == 2
    rows = Store.open(res.run_dir, readonly=True).rows()
    assert {r["method"] for r in rows} == {"saliency", "grad_cam"}
    assert all(r["check"] == "cascading_randomization" and r["world"] == "shapes@32" for r in rows)
    assert any(r["verdict"] is not None for r in rows)
    html = res.report.read_text()
    assert "cascading_randomization" in html and "data:image/png;base64," in html


# ------------------------------------------------------------------------------- derived checks
def test_derived_check_reads_its_upstream_cells_rows_in_the_driver(tmp_path, log):
    preset = fake_preset(checks={"fake_fail": {}, "fake_derived": {}})
    plan = build_plan(load_preset(preset), source=FAKE_SOURCE)
    up = {(c.method, c.seed): c for c in plan.cells if c.check == "fake_fail"}
    derived = [c for c in plan.cells if c.check == "fake_derived"]
    assert len(derived) == len(up) == 6 and all(c.models == () for c in derived)
    assert all(c.upstream == up[(c.method, c.seed)].key and c.config["upstream"] == c.upstream for c in derived)
    run_fake(tmp_path, preset, workers=2)
    with Store.open(tmp_path / "run", readonly=True) as store:
        st = {(c["check_name"], c["method"], c["seed"]): (c["status"], c["error"]) for c in store.cells()}
        rows = store.rows()
    # saliency: upstream done -> derived done, computed from the stored row; grad_cam failed; blank not applicable
    for seed in (0, 1):
        assert st[("fake_derived", "saliency", seed)][0] == "done"
        status, error = st[("fake_derived", "grad_cam", seed)]
        assert status == "failed" and "fake_fail cell it reads" in error and "planted failure" in error
        status, error = st[("fake_derived", "blank", seed)]
        assert status == "not_applicable" and "blank does not apply" in error
        score = next(r for r in rows if r["check"] == "fake_fail" and r["method"] == "saliency" and r["seed"] == seed)
        twice = next(r for r in rows if r["check"] == "fake_derived" and r["method"] == "saliency" and r["seed"] == seed)
        assert twice["value"] == pytest.approx(2 * score["value"]) and twice["upstream_value"] == score["value"]
    ran = log("derived")
    assert len(ran) == 2 and {r["pid"] for r in ran} == {os.getpid()}      # in the driver, done cells only
    # a rerun computes nothing; another upstream parameter changes the upstream keys and so the derived cells
    run_fake(tmp_path, preset)
    assert len(log("derived")) == 2
    changed = fake_preset(checks={"fake_fail": {"params": {"bad_method": "blank"}}, "fake_derived": {}})
    run_fake(tmp_path, changed)
    assert len(log("derived")) == 2 + 4          # saliency and grad_cam now done upstream, both seeds


def test_derived_check_brings_its_upstream_check_or_says_it_is_missing():
    plan = build_plan(load_preset(fake_preset(checks={"fake_fail": {}, "fake_derived": {}})), source=FAKE_SOURCE,
                      checks="fake_derived")
    assert {c.check for c in plan.cells} == {"fake_fail", "fake_derived"}
    with pytest.raises(ConfigError, match=r"checks.fake_derived: is computed from the rows of 'fake_fail', which "
                                          r"this preset does not run"):
        build_plan(load_preset(fake_preset(checks={"fake_score": {}, "fake_derived": {}})), source=FAKE_SOURCE)


def test_world_entry_can_restrict_its_checks():
    preset = fake_preset(worlds=[{"world": "shapes", "size": 32},
                                 {"world": "digits", "checks": ["fake_score"]}])
    plan = build_plan(load_preset(preset), source=FAKE_SOURCE)
    by_world = {}
    for c in plan.cells:
        by_world.setdefault(c.world["world"], set()).add(c.check)
    assert by_world == {"shapes": {"fake_score", "fake_fail", "fake_model"}, "digits": {"fake_score"}}
    with pytest.raises(ConfigError, match=r"worlds\[1\].checks: unknown check 'nope'"):
        build_plan(load_preset(fake_preset(worlds=[{"world": "shapes"}, {"world": "digits", "checks": ["nope"]}])),
                   source=FAKE_SOURCE)


def test_a_check_entry_can_name_the_methods_it_runs():
    pre = fake_preset(checks={"fake_score": {"methods": ["grad_cam"]}, "fake_fail": {}})
    plan = build_plan(load_preset(pre))
    assert {c.method for c in plan.cells if c.check == "fake_score"} == {"grad_cam"}
    assert {c.method for c in plan.cells if c.check == "fake_fail"} == {"saliency", "grad_cam", "blank"}
    with pytest.raises(ConfigError, match="checks.fake_score.methods.*'lime' is not one of this preset's methods"):
        build_plan(load_preset(fake_preset(checks={"fake_score": {"methods": ["lime"]}})))
