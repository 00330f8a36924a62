"""The montage of synthesized images: one row per method, one column per objective x restart, each
tile captioned with its final objective value; the report and the trojan and audit checks draw theirs
with it (or with :func:`xaudit.core.imaging.montage` directly when they add their own columns)::

    from xaudit import explain
    from xaudit.explain.synthesis.montage import synthesis_montage
    ex = explain.get("fv_fourier", steps=256, restarts=2)
    ex.synthesize(model, [0, 1, 2], generator=g)
    fig = synthesis_montage({"fv_fourier": ex.last_synthesis}, ["class 0", "class 1", "class 2"], restarts=2)
    png_bytes = xaudit.core.imaging.png(fig)
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch

from xaudit.core.errors import ConfigError
from xaudit.core.imaging import montage
from xaudit.explain.base import Synthesis


def synthesis_tiles(results: Mapping[str, "Synthesis | torch.Tensor"], n_objectives: int, restarts: int = 1
                    ) -> tuple[list[list[torch.Tensor]], dict[tuple[int, int], str]]:
    """The tiles (row m: method m's images in batch order, image k * R + r in column k * R + r) and the
    captions (each tile's objective value to 3 significant digits, where the result has values).
    ConfigError when a method's batch is not K x R images."""
    rows, captions = [], {}
    n = n_objectives * restarts
    for m, (name, res) in enumerate(results.items()):
        images = res.images if isinstance(res, Synthesis) else res
        values = res.values if isinstance(res, Synthesis) else None
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[0] != n:
            got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ConfigError(name, f"must hold K x R = {n_objectives} x {restarts} = {n} images [N, C, H, W]; "
                              f"got {got}")
        rows.append(list(images))
        if values is not None:
            for i, v in enumerate(values.tolist()):
                if math.isfinite(v):
                    captions[(m, i)] = f"{v:.3g}"
    return rows, captions


def synthesis_montage(results: Mapping[str, "Synthesis | torch.Tensor"], objectives: Sequence[str],
                      restarts: int = 1, title: str = "synthesized images per method x objective"):
    """A matplotlib Figure of ``results`` ({method: Synthesis or images [K * R, C, S, S]}) for the K
    ``objectives`` (column labels; with R > 1 restarts each label is followed by ``#r``)."""
    tiles, captions = synthesis_tiles(results, len(objectives), restarts)
    cols = [str(o) if restarts == 1 else f"{o} #{r}" for o in objectives for r in range(restarts)]
    return montage(tiles, row_labels=list(results), col_labels=cols, title=title, captions=captions)


__all__ = ["synthesis_montage", "synthesis_tiles"]
