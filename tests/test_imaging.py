"""Tests of xaudit.core.imaging (tiles, mosaic, montage, png) and the synthesis montage."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from xaudit.core.errors import ConfigError
from xaudit.core.imaging import PAD, montage, mosaic, png, to_rgb
from xaudit.explain.base import Synthesis
from xaudit.explain.synthesis.montage import synthesis_montage, synthesis_tiles


def test_to_rgb_handles_images_maps_and_tensors():
    rgb = torch.rand(3, 4, 5, generator=torch.Generator().manual_seed(0))
    out = to_rgb(rgb)
    assert out.shape == (4, 5, 3) and out.dtype == np.float32
    assert np.array_equal(out[1, 2], rgb[:, 1, 2].numpy())           # channel-last, same values
    grey = to_rgb(np.array([[0.0, 2.0], [-1.0, 0.25]]))                # a map: clipped, repeated
    assert np.array_equal(grey[..., 0], [[0, 1], [0, 0.25]]) and np.array_equal(grey[..., 0], grey[..., 2])
    assert np.array_equal(to_rgb(np.full((1, 2, 2), 0.5)), np.full((2, 2, 3), 0.5))
    with pytest.raises(ValueError, match="C = 1 or 3"):
        to_rgb(np.zeros((2, 4, 4)))


def test_mosaic_places_each_tile_at_its_grid_position():
    a, b, c = (np.full((3, 4, 3), v, dtype=np.float32) for v in (0.1, 0.2, 0.3))
    m = mosaic([[a, None], [b, c]], pad=2)
    assert m.shape == (2 * (3 + 2) + 2, 2 * (4 + 2) + 2, 3)
    assert np.all(m[2:5, 2:6] == a) and np.all(m[7:10, 2:6] == b) and np.all(m[7:10, 8:12] == c)
    assert np.all(m[2:5, 8:12] == 1)                                     # None stays white
    assert np.all(m[:2] == 1) and np.all(m[:, 6:8] == 1)                # the padding is white
    with pytest.raises(ValueError, match="one size"):
        mosaic([[a, np.zeros((2, 2, 3))]])
    with pytest.raises(ValueError, match="at least one"):
        mosaic([[None]])


def test_montage_renders_every_tile_with_outlines_and_captions():
    g = torch.Generator().manual_seed(1)
    tiles = [[torch.rand(3, 8, 8, generator=g) for _ in range(4)] for _ in range(2)]
    fig = montage(tiles, ["a", "b"], ["c0", "c1", "c2", "c3"], title="t", outlines={(1, 2): "#ff0000"},
                  captions={(0, 0): "1.5"})
    ax = fig.axes[0]
    (im,) = ax.get_images()
    shown = np.asarray(im.get_array())
    # the tile at row 1, column 2 is exactly the image given for it
    y, x = PAD + 1 * (8 + PAD), PAD + 2 * (8 + PAD)
    assert np.allclose(shown[y:y + 8, x:x + 8], tiles[1][2].permute(1, 2, 0).numpy())
    texts = [t.get_text() for t in ax.texts]
    assert {"a", "b", "c0", "c3", "1.5"} <= set(texts)
    assert len(ax.patches) == 1 and ax.patches[0].get_edgecolor()[:3] == (1.0, 0.0, 0.0)
    data = png(fig)
    img = Image.open(io.BytesIO(data))
    assert img.format == "PNG" and img.size[0] > 100 and img.size[1] > 50


def test_synthesis_montage_rows_are_methods_and_columns_objective_restarts():
    g = torch.Generator().manual_seed(2)
    x = torch.rand(6, 3, 8, 8, generator=g)
    res = Synthesis(x, torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, float("nan")]), {})
    tiles, captions = synthesis_tiles({"fv_a": res, "fv_b": x.flip(0)}, n_objectives=3, restarts=2)
    assert len(tiles) == 2 and torch.equal(tiles[0][3], x[3]) and torch.equal(tiles[1][0], x[5])
    assert captions == {(0, 0): "1", (0, 1): "2", (0, 2): "3", (0, 3): "4", (0, 4): "5"}   # NaN: none
    fig = synthesis_montage({"fv_a": res, "fv_b": x}, ["class 0", "class 1", "class 2"], restarts=2)
    labels = {t.get_text() for t in fig.axes[0].texts}
    assert {"fv_a", "fv_b", "class 0 #0", "class 2 #1"} <= labels
    with pytest.raises(ConfigError, match=r"fv_b.*3 x 2 = 6"):
        synthesis_tiles({"fv_b": x[:5]}, 3, 2)
