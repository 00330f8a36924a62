"""The check contract, one toy check per capability (tests/contract_fakes.py): a model on another
world, a population from parameters, synthesis methods crossed only with synthesis checks, several
verdicts per metric, two configs of one world, artifacts of active cells only; and the worker's
exact model bookkeeping."""
from __future__ import annotations

import json

import pytest

import contract_fakes
import xaudit.run as xrun
from xaudit import explain
from xaudit.report import scorecard
from xaudit.run import Store
from xaudit.run.plan import build_plan
from xaudit.run.preset import load_preset
from xaudit.run.worker import CellTask, ModelTask, WorkerConfig, WorkerState

SOURCE = "contract_fakes:ContractSource"


@pytest.fixture(scope="module", autouse=True)
def _unregister_toys():
    """The toy checks and method leave the registries with this module: other modules plan
    ``checks: all`` and count the registered methods."""
    yield
    from xaudit.checks import CHECKS

    if "toy_synth" in explain.names():
        explain.unregister("toy_synth")
    for name in [n for n in CHECKS.names() if n.startswith("toy_")]:
        del CHECKS._items[name]
        CHECKS._meta.pop(name, None)


def preset(**kw):
    p = {"name": "contract", "plugins": ["contract_fakes"], "seeds": [0],
         "worlds": [{"world": "shapes", "size": 32}], "checks": ["toy_artifact"], "methods": ["saliency"]}
    p.update(kw)
    return p


def run(tmp_path, p, out="run", **kw):
    return xrun.run(p, out=tmp_path / out, workers=1, source=SOURCE, cache_dir=tmp_path / "cache",
                    progress=False, **kw)


def rows_of(res, **match):
    with Store.open(res.run_dir, readonly=True) as st:
        return [r for r in st.rows() if all(r.get(k) == v for k, v in match.items())]


def test_a_model_trained_on_another_world(tmp_path):
    plan = build_plan(load_preset(preset(checks=["toy_other_world"])), source=SOURCE)
    (cell,) = plan.cells
    own, other = (plan.models[k] for _, _, k in cell.models)
    assert own.spec["world"]["world"] == "shapes" and own.spec["world"]["size"] == 32
    # resolved on its own world: the digits world's full config (its size 28, seed 0), not the cell's
    from xaudit import world
    assert other.spec["world"] == world.get("digits").config()
    res = run(tmp_path, preset(checks=["toy_other_world"]))
    assert res.summary.done == 1
    (r_own,) = rows_of(res, metric="own_world")
    (r_other,) = rows_of(res, metric="other_world")
    assert (r_own["own_world"], r_own["own_size"]) == ("shapes", 32)
    assert (r_other["other_world"], r_other["other_size"]) == ("digits", 28)
    assert r_own["world"] == r_other["world"] == "shapes@32"     # the cell's world


def test_another_world_is_validated_at_plan_time():
    from xaudit.core.errors import ConfigError

    p = preset(checks={"toy_other_world": {"params": {"other_world": {"world": "shapes", "size": 33}}}})
    with pytest.raises(ConfigError, match=r"checks\.toy_other_world\.models.*size"):
        build_plan(load_preset(p), source=SOURCE)


def test_a_population_of_ten_models_from_parameters(tmp_path):
    p = preset(checks=["toy_population"], methods=["saliency", "grad_cam"])
    plan = build_plan(load_preset(p), source=SOURCE)
    assert len(plan.cells) == 2 and all(len(c.models) == 10 for c in plan.cells)
    assert len(plan.models) == 10
    variants = [m for m in plan.models.values() if isinstance(m.spec["spec"], dict)]
    assert sorted(m.spec["spec"]["poison_rate"] for m in variants) == [0.01, 0.05, 0.1, 0.3, 0.5]
    contract_fakes.LOADS.clear()
    res = run(tmp_path, p)
    assert res.summary.done == 2
    # the worker keeps all ten models of the largest cell: the second cell loads none again
    assert sorted(contract_fakes.LOADS) == sorted(plan.models)
    rows = rows_of(res, check="toy_population")
    assert len(rows) == 20 and len({r["spec_key"] for r in rows}) == 10


def test_synthesis_methods_cross_only_synthesis_checks(tmp_path):
    p = preset(checks=["toy_synthesis", "toy_artifact"], methods="all")
    plan = build_plan(load_preset(p), source=SOURCE)
    by_check = {}
    for c in plan.cells:
        by_check.setdefault(c.check, set()).add(c.method)
    assert by_check["toy_synthesis"] == set(explain.names(kind="synthesis")) and "toy_synth" in by_check["toy_synthesis"]
    assert by_check["toy_artifact"] == set(explain.names(kind="attribution"))
    assert not by_check["toy_artifact"] & set(explain.names(kind="synthesis"))
    res = run(tmp_path, p, checks="toy_synthesis", methods="toy_synth")   # the toy check feeds no real objective
    assert res.summary.done == 1 and res.summary.not_applicable == 0 and res.summary.failed == 0
    (r,) = rows_of(res, check="toy_synthesis")
    assert r["method_kind"] == "synthesis" and r["shape"] == [2, 3, 8, 8] and 0 < r["value"] < 1


def test_synthesis_verb_contract():
    from xaudit.core.errors import ConfigError
    import torch

    m = explain.get("toy_synth", n=3)
    a = m.synthesize(torch.nn.Identity(), None, generator=torch.Generator().manual_seed(1))
    b = m.synthesize(torch.nn.Identity(), None, generator=torch.Generator().manual_seed(1))
    assert a.shape == (3, 3, 8, 8) and torch.equal(a, b)          # drawn from the generator only
    with pytest.raises(ConfigError, match="synthesis method"):
        m(torch.nn.Identity(), torch.zeros(1, 3, 8, 8), torch.zeros(1, dtype=torch.long))
    with pytest.raises(ConfigError, match="attribution method"):
        explain.get("saliency").synthesize(torch.nn.Identity(), None)
    with pytest.raises(explain.ExplanationFailed, match=r"\[0, 1\]"):
        m.synthesize(torch.nn.Identity(), None, init=torch.full((1, 3, 8, 8), 2.0))
    assert {d["name"]: d["kind"] for d in explain.describe()}["toy_synth"] == "synthesis"
    # a bare tensor comes back as a Synthesis with the explainer's config as its settings
    m.synthesize(torch.nn.Identity(), None)
    res = m.last_synthesis
    assert res.values is None and res.settings == {"method": "toy_synth", "n": 3, "size": 8, "seed": 0}
    assert torch.equal(res.images, m.synthesize(torch.nn.Identity(), None))


def test_synthesis_result_values_and_settings_come_back():
    import torch
    from xaudit.explain.base import Synthesis

    def fn(model, objective, *, generator, init=None, k=2, bad=False):
        x = torch.rand(k, 1, 4, 4, generator=generator)
        v = x.flatten(1).mean(1)
        return Synthesis(x, v[:1] if bad else v, {"objective": objective, "k": k})

    explain.register("toy_synth_result", kind="synthesis", family="synthesis")(fn)
    try:
        m = explain.get("toy_synth_result", k=3)
        x = m.synthesize(torch.nn.Identity(), "mine", generator=torch.Generator().manual_seed(4))
        res = m.last_synthesis
        assert torch.equal(res.values, x.flatten(1).mean(1))
        assert res.settings == {"method": "toy_synth_result", "k": 3, "bad": False, "seed": "generator",
                                "objective": "mine"}
        with pytest.raises(explain.ExplanationFailed, match=r"values: must be a tensor \[N\] = \[3\]"):
            explain.get("toy_synth_result", k=3, bad=True).synthesize(torch.nn.Identity(), None)
    finally:
        explain.unregister("toy_synth_result")


def test_every_verdict_of_a_per_trojan_check_reaches_scorecard_and_html(tmp_path):
    res = run(tmp_path, preset(checks=["toy_per_trojan"], methods=["saliency", "grad_cam"]))
    vrows = [r for r in rows_of(res, check="toy_per_trojan") if r["verdict"] is not None]
    assert len(vrows) == 12
    with Store.open(res.run_dir, readonly=True) as st:
        sc = scorecard(st)
    for method in ("saliency", "grad_cam"):
        ((_, e),) = sc.lines(method, "toy_per_trojan")
        # the headline metric's three verdicts, one per trojan, each labelled by its key
        assert e.metrics() == ["l1 / patch_a", "l1 / style_b", "l1 / natural_c"]
        assert e.codes() == "PF?" and e.verdict == "mixed"
    html = (res.run_dir / "report.html").read_text()
    # a header per metric over one column per trojan
    assert '<th colspan="3" class="metric">l1</th><th colspan="3" class="metric">pearson</th></tr><tr>' \
        '<th>patch_a</th><th>style_b</th><th>natural_c</th><th>patch_a</th><th>style_b</th><th>natural_c</th>' in html
    # each method's row of the verdict table has all six verdicts
    table = html[html.index('<h2 id="check-toy_per_trojan">'):]
    assert table.count('<td class="reveals" title="pass">') == 4 and table.count('<td class="not" title="fail">') == 4
    assert any("order l1 / patch_a, l1 / style_b, l1 / natural_c" in line for line in sc.legend())


def test_two_configs_of_one_world_both_survive(tmp_path):
    p = preset(worlds=[{"world": "shapes", "size": 32}, {"world": "shapes", "size": 64}],
               checks=["toy_artifact"], methods=["saliency", "grad_cam"])
    res = run(tmp_path, p)
    assert res.summary.done == 4
    with Store.open(res.run_dir, readonly=True) as st:
        cells = st.cells(active_only=True)
        sc = scorecard(st)
        rows = st.rows()
    assert sorted(c["world"] for c in cells) == ["shapes@32", "shapes@32", "shapes@64", "shapes@64"]
    assert sorted(r["world"] for r in rows) == ["shapes@32", "shapes@32", "shapes@64", "shapes@64"]
    assert sorted(label for label, _ in sc.lines("saliency", "toy_artifact")) == ["shapes@32", "shapes@64"]
    assert len({p.name for p in (res.run_dir / "artifacts").iterdir()}) == 4
    # running it again resumes: nothing recomputed, nothing deactivated
    again = run(tmp_path, p)
    assert again.summary.ran == 0 and again.summary.done == 4


def test_figures_read_only_the_active_cells_artifacts(tmp_path):
    first = run(tmp_path, preset(checks={"toy_artifact": {"params": {"tag": "old"}}}, methods=["saliency", "grad_cam"]))
    old_dirs = sorted((first.run_dir / "artifacts").iterdir())
    second = run(tmp_path, preset(checks={"toy_artifact": {"params": {"tag": "new"}}}, methods=["saliency", "grad_cam"]))
    assert second.summary.ran == 2
    given = contract_fakes.FIGURE_CALLS["toy_artifact"]
    assert len(given) == 2 and not set(given) & set(old_dirs)
    assert all(d.is_dir() for d in old_dirs)               # the stale folders exist, but were not given
    assert sorted((d / "tag.txt").read_text() for d in given) == ["new", "new"]


# ---------------------------------------------------------------------------- worker bookkeeping
def _state(tmp_path, max_models):
    return WorkerState(WorkerConfig(source=SOURCE, cache_dir=str(tmp_path), plugins=("contract_fakes",),
                                    max_models=max_models))


def test_worker_reports_exactly_what_it_holds(tmp_path):
    plan = build_plan(load_preset(preset(checks=["toy_population"])), source=SOURCE)
    state = _state(tmp_path, 3)
    models = list(plan.models.values())
    held = [state.prepare_model(ModelTask(m.key, m)).held for m in models[:5]]
    assert held[0] == (models[0].key,)
    assert held[4] == tuple(m.key for m in models[2:5])          # LRU: the last three, not all five


def test_mutating_a_model_evicted_during_the_cell_is_still_caught(tmp_path):
    plan = build_plan(load_preset(preset(checks=["toy_mutator"])), source=SOURCE)
    (c,) = plan.cells
    task = CellTask(key=c.key, check=c.check, method=c.method, method_params={}, model_group=c.model_group,
                    world=c.world, seed=c.seed, params=c.params, models=c.models,
                    resolved={k: plan.models[k] for _, _, k in c.models}, world_label=c.world_label)
    res = _state(tmp_path, 1).run_cell(task)      # the second load evicts the first model
    assert res.status == "failed" and "changed the weights of the shared model" in res.error
    assert res.held == (c.models[1][2],)


def test_check_metadata_is_recorded_for_the_report(tmp_path):
    res = run(tmp_path, preset(checks=["toy_per_trojan"]))
    with Store.open(res.run_dir, readonly=True) as st:
        (snap,) = [c for c in st.runs()[-1]["checks"] if c["name"] == "toy_per_trojan"]
    assert snap["verdict_key"] == ["metric", "trojan"] and snap["scorecard_metric"] == "l1"
    assert snap["method_kinds"] == ["attribution"]
    json.dumps(snap)


def test_the_zoo_resolves_other_worlds_architectures_and_parameter_variants():
    """With the real zoo source (planning only, nothing is trained): each reference becomes the zoo
    spec it names, on its own world."""
    from xaudit import world
    from xaudit.zoo.spec import load_spec

    p = preset(checks={"toy_variants": {"params": {"poison_rate": 0.01}}})
    plan = build_plan(load_preset(p))
    (cell,) = plan.cells
    own, other, arch, poisoned = (plan.models[k] for _, _, k in cell.models)
    spec = {m.key: load_spec(m.spec, seed=m.seed) if not isinstance(m.spec, str) else load_spec(m.spec, seed=m.seed)
            for m in (own, other, arch, poisoned)}
    assert spec[own.key].world_config == world.get("shapes", size=32).config()
    assert spec[other.key].world_config == world.get("digits").config()
    assert spec[other.key].arch["name"] == spec[own.key].arch["name"] == "cnn"
    assert spec[arch.key].arch["name"] == "vgg" and spec[arch.key].world_config == spec[own.key].world_config
    (bug,) = spec[poisoned.key].bugs
    assert bug["poison_rate"] == 0.01 and bug["location"] == "fixed"
    assert len({own.key, other.key, arch.key, poisoned.key}) == 4
    # another poison rate is another model, and so another cell
    p2 = preset(checks={"toy_variants": {"params": {"poison_rate": 0.3}}})
    (cell2,) = build_plan(load_preset(p2)).cells
    assert cell2.models[3][2] != poisoned.key and cell2.models[:3] == cell.models[:3] and cell2.key != cell.key


def test_a_bad_variant_is_refused_at_plan_time_naming_the_check():
    from xaudit.core.errors import ConfigError

    p = preset(checks={"toy_variants": {"params": {"poison_rate": 1.5}}})
    with pytest.raises(ConfigError, match=r"^checks\.toy_variants\.models\[.*poison_rate"):
        build_plan(load_preset(p))
