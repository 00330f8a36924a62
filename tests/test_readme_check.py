"""The README's "Writing a check" example, run exactly as printed there (its Python module and its
preset), and its number recomputed independently (autograd saliency, scipy's Spearman)."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import torch
import yaml

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks() -> tuple[str, str]:
    text = README.read_text()
    section = text[text.index("### Writing a check"):]
    section = section[:section.index("\n### ", 5)]
    (code,) = re.findall(r"```python\n(.*?)```", section, re.S)
    (preset,) = re.findall(r"```yaml\n(.*?)```", section, re.S)
    return code, preset


@pytest.fixture
def readme_check(tmp_path, monkeypatch):
    code, preset = _blocks()
    (tmp_path / "my_checks.py").write_text(code)
    (tmp_path / "noise.yaml").write_text(preset)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("my_checks", None)
    from xaudit.checks import CHECKS
    CHECKS._items.pop("noise_stability", None)
    CHECKS._meta.pop("noise_stability", None)


def test_readme_check_runs_as_printed(readme_check):
    import xaudit
    from xaudit import world
    from xaudit.core import maps
    from xaudit.core.rng import stream_seed
    from xaudit.run import Store

    assert len(_blocks()[0].splitlines()) <= 45          # "a check in about 40 lines"
    res = xaudit.run(str(readme_check / "noise.yaml"), out=readme_check / "run", workers=1, progress=False)
    assert res.summary.failed == 0 and res.summary.done == 3
    rows = Store.open(res.run_dir, readonly=True).rows()
    assert {r["method"] for r in rows} == {"saliency", "grad_cam", "random"}
    assert all(r["verdict"] in ("pass", "fail", "inconclusive") and r["world"] == "shapes@32" for r in rows)
    assert "noise_stability" in res.report.read_text()

    # saliency's value, recomputed without xaudit's explainers or measures
    (r,) = [r for r in rows if r["method"] == "saliency"]
    import my_checks  # noqa: F401  (registered; its model comes from the zoo cache the run filled)
    from xaudit import zoo
    spec = yaml.safe_load((readme_check / "noise.yaml").read_text())["worlds"][0]["specs"]["clean"]
    model = zoo.load_or_train(spec, seed=0).model.eval()
    x = world.get("shapes", size=32).sample(range(16), split="test").images
    g = torch.Generator().manual_seed(stream_seed(0, "noise_stability/noise"))
    noisy = (x + 0.02 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    target = model(x).argmax(1)

    def grad(inp):
        inp = inp.clone().requires_grad_(True)
        model(inp).gather(1, target[:, None]).sum().backward()
        return maps.abs_map(inp.grad).flatten(1).numpy()
    a, b = grad(x), grad(noisy)
    rho = np.mean([scipy.stats.spearmanr(a[i], b[i])[0] for i in range(16)])
    assert r["value"] == pytest.approx(rho, abs=1e-5)
    assert r["ci_low"] <= r["value"] <= r["ci_high"]
