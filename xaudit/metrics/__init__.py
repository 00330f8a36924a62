"""Measures: batched similarity and localization measures and the statistics behind every verdict.

All measures are torch-native and batched: tensors in, one value per image out (``Tensor[N]``,
float64, on the inputs' device), cross-checked against scipy / scikit-image / scikit-learn in the tests.
A value that is undefined (a constant map has no ranking) is NaN with a reason:
pass ``return_reasons=True`` to get a :class:`MeasureResult` (``values``, ``reasons``, ``counts()``).

Every measure is registered in :data:`MEASURES` with metadata
(``MEASURES.meta("spearman") -> {"kind", "higher_is_better", "range", "reference", "nan_reasons"}``).
"""
from xaudit.core.maps import abs_map, percentile, signed_map, zero_one_map
from xaudit.metrics._base import MEASURES, REASONS, MeasureResult
from xaudit.metrics.localization import (blank_distance, mask_pearson, mass_accuracy, pixel_auroc,
                                         pointing_game, rank_accuracy, reduce_channels, trigger_distance)
from xaudit.metrics.ranks import rankdata
from xaudit.metrics.similarity import (hog, hog_pixels_per_cell, hog_similarity, mean_abs_diff, pearson,
                                       spearman, ssim, top_k_intersection, top_k_membership)
from xaudit.metrics.stats import Interval, auroc, auroc_bootstrap, bootstrap_ci, paired_bootstrap, two_sample_bootstrap


def get(name: str):
    """The measure registered as ``name`` (raises UnknownName listing the valid names)."""
    return MEASURES.get(name)


def describe() -> list[dict]:
    """One dict per registered measure: name plus its metadata (for the report and ``xaudit methods``)."""
    return [{"name": n, **MEASURES.meta(n)} for n in MEASURES.names()]


__all__ = [
    "MEASURES", "REASONS", "MeasureResult", "Interval", "get", "describe",
    "abs_map", "signed_map", "zero_one_map", "percentile",
    "spearman", "pearson", "ssim", "hog", "hog_similarity", "hog_pixels_per_cell",
    "top_k_intersection", "top_k_membership", "mean_abs_diff", "rankdata",
    "trigger_distance", "blank_distance", "mask_pearson", "pointing_game", "mass_accuracy",
    "rank_accuracy", "pixel_auroc", "reduce_channels",
    "bootstrap_ci", "paired_bootstrap", "two_sample_bootstrap", "auroc", "auroc_bootstrap",
]
