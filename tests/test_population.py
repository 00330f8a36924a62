"""Population-audit statistics (xaudit/metrics/population.py): the leave-one-out ratio worked by hand on a
3 + 1 population, detection, batched pairwise distances against a double loop, the refusal of a
population with too few normal models, and a model identical to a normal one scoring like the normals."""
import pytest
import torch

from xaudit.core.errors import ConfigError
from xaudit.metrics import population as P


def hand_population():
    # models 0, 1, 2 normal; 3 anomalous
    d = torch.zeros(4, 4, dtype=torch.float64)
    for (a, b), v in {(0, 1): 1, (0, 2): 2, (1, 2): 3, (3, 0): 4, (3, 1): 5, (3, 2): 9}.items():
        d[a, b] = d[b, a] = v
    return d, torch.tensor([True, True, True, False])


def test_leave_one_out_ratio_worked_by_hand():
    d, normal = hand_population()
    s = P.loo_scores(d, normal)
    # model 3: mean to normals (4+5+9)/3 = 6 over the normal pairs' mean (1+2+3)/3 = 2
    # model 0: (1+2)/2 = 1.5 over d12 = 3; model 1: (1+3)/2 over d02 = 2; model 2: (2+3)/2 over d01 = 1
    assert s.tolist() == pytest.approx([0.5, 1.0, 2.5, 3.0])
    # batched over inputs: two inputs, the second with every distance doubled (ratios unchanged)
    s2 = P.loo_scores(torch.stack([d, 2 * d]), normal)
    assert s2.shape == (2, 4) and torch.allclose(s2[0], s2[1])
    assert P.flagged(s, normal).tolist() == [False, False, True, True]   # model 2 is a false positive


def test_too_few_normal_models_are_refused_with_the_minimum():
    d, _ = hand_population()
    with pytest.raises(ConfigError, match="at least 3"):
        P.loo_scores(d, torch.tensor([True, True, False, False]))
    with pytest.raises(ConfigError, match=r"\[4\]"):
        P.loo_scores(d, torch.tensor([True, True, True]))


def test_a_copy_of_a_normal_model_scores_like_the_normals_and_a_noise_model_is_flagged():
    g = torch.Generator().manual_seed(0)
    base = torch.rand(1, 20, 8, 8, generator=g)
    normals = base + 0.1 * torch.rand(6, 20, 8, 8, generator=g)          # 6 normal models, 20 inputs
    copy = normals[2:3].clone()                                            # same weights, another label
    noise = torch.rand(1, 20, 8, 8, generator=g)
    maps = torch.cat([normals, copy, noise])
    dist = P.pairwise(maps, lambda a, b: (a - b).flatten(1).norm(dim=1))
    normal = torch.tensor([True] * 6 + [False, False])
    s = P.loo_scores(dist, normal).mean(0)
    f = P.flagged(s, normal)
    assert f[7] and not f[6]
    assert s[6] <= s[:6].max() and s[7] > 2 * s[:6].max()


def test_pairwise_equals_a_double_loop():
    g = torch.Generator().manual_seed(1)
    maps = torch.rand(5, 3, 4, 4, generator=g)
    fn = lambda a, b: (a - b).abs().flatten(1).mean(1)      # noqa: E731
    d = P.pairwise(maps, fn, chunk=7)
    for i in range(3):
        for a in range(5):
            for b in range(5):
                assert float(d[i, a, b]) == pytest.approx(float((maps[a, i] - maps[b, i]).abs().mean()))


def test_pairwise_sqeuclidean_equals_pairwise_with_a_squared_distance():
    g = torch.Generator().manual_seed(2)
    emb = torch.randn(4, 3, 5, generator=g)
    fn = lambda a, b: (a - b).pow(2).sum(1)     # noqa: E731
    assert torch.allclose(P.pairwise_sqeuclidean(emb), P.pairwise(emb, fn), atol=1e-9)


def test_auroc_bootstrap_against_sklearn_and_a_stratified_resample():
    import math

    from sklearn.metrics import roc_auc_score

    from xaudit import metrics

    g = torch.Generator().manual_seed(4)
    pos, neg = torch.rand(6, generator=g) + 0.3, torch.rand(9, generator=g)
    ci = metrics.auroc_bootstrap(pos, neg, n_boot=400, generator=0)
    ref = roc_auc_score([1] * 6 + [0] * 9, torch.cat([pos, neg]).numpy())
    assert float(ci.estimate) == pytest.approx(ref) and int(ci.n) == 15
    assert float(ci.low) <= ref <= float(ci.high) and float(ci.high) <= 1.0
    # every replicate keeps 6 positives and 9 negatives, so a perfect separation has a zero-width interval
    perfect = metrics.auroc_bootstrap(pos + 10, neg, n_boot=50, generator=0)
    assert float(perfect.low) == float(perfect.high) == 1.0
    empty = metrics.auroc_bootstrap(torch.tensor([math.nan]), neg, n_boot=50)
    assert math.isnan(float(empty.estimate)) and int(empty.n) == 9
