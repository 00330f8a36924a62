"""Pictures of image tensors, shared by every stage that draws them: tiles as RGB arrays, a mosaic of
tiles, a labelled montage, and a matplotlib figure's PNG bytes (Agg canvas, no pyplot state)::

    fig = montage([[img_a, img_b], [img_c, None]], row_labels=["fv_pixel", "fv_fourier"],
                  col_labels=["class 0", "class 1"], title="...", outlines={(0, 1): "#d62828"})
    data = png(fig)

The montage is one ``imshow`` of one mosaic with text labels (one axes: a 10 x 40 grid renders in
well under a second), so the report, the synthesis methods and the checks can draw large grids.
"""
from __future__ import annotations

import io
from typing import Any, Mapping, Sequence

import numpy as np

PAD = 2              # pixels of white between tiles
TILE_INCHES = 0.62   # each tile's side in the figure
LABEL_INCHES = 1.4   # room for the row labels on the left


def png(fig) -> bytes:
    """PNG bytes of a matplotlib Figure (Agg; at the figure's own dpi; no "tight" box, which costs a
    second render)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi)
    return buf.getvalue()


def to_rgb(a: Any) -> np.ndarray:
    """An image [C, H, W] (C = 1 or 3) or a map [H, W] / [1, H, W] with values in [0, 1] (a numpy array
    or a tensor) as float32 [H, W, 3], clipped to [0, 1]; grey for one channel."""
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    a = np.clip(np.asarray(a, dtype=np.float32), 0, 1)
    if a.ndim == 3:
        if a.shape[0] not in (1, 3):
            raise ValueError(f"an image must be [C, H, W] with C = 1 or 3; got {a.shape}")
        a = a.transpose(1, 2, 0) if a.shape[0] == 3 else a[0]
    if a.ndim != 2 and not (a.ndim == 3 and a.shape[2] == 3):
        raise ValueError(f"must be [C, H, W] or [H, W]; got {a.shape}")
    return a if a.ndim == 3 else np.repeat(a[:, :, None], 3, axis=2)


def mosaic(tiles: Sequence[Sequence[np.ndarray | None]], pad: int = PAD) -> np.ndarray:
    """One RGB image [H', W', 3] of equally sized tiles ([h, w, 3] in [0, 1], or None: left white), row
    by row, ``pad`` white pixels around each."""
    present = [t for row in tiles for t in row if t is not None]
    if not present:
        raise ValueError("a mosaic needs at least one tile")
    h, w = present[0].shape[:2]
    if any(t.shape[:2] != (h, w) for t in present):
        raise ValueError(f"tiles must share one size; got {sorted({t.shape[:2] for t in present})}")
    n_rows, n_cols = len(tiles), max(len(row) for row in tiles)
    out = np.ones((n_rows * (h + pad) + pad, n_cols * (w + pad) + pad, 3), dtype=np.float32)
    for r, row in enumerate(tiles):
        for c, t in enumerate(row):
            if t is not None:
                y, x = pad + r * (h + pad), pad + c * (w + pad)
                out[y:y + h, x:x + w] = t
    return out


def montage(tiles: Sequence[Sequence[Any]], row_labels: Sequence[str] = (), col_labels: Sequence[str] = (),
            title: str = "", outlines: Mapping[tuple[int, int], str] | None = None,
            captions: Mapping[tuple[int, int], str] | None = None):
    """A matplotlib Figure: the tiles (images [C, H, W] / maps [H, W] in [0, 1], numpy or torch, or
    None) as one mosaic, a label left of each row and above each column, the title on top, a coloured
    frame round each tile named in ``outlines`` ({(row, col): colour}) and a small caption under each
    tile named in ``captions``."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    rgb = [[None if t is None else to_rgb(t) for t in row] for row in tiles]
    image = mosaic(rgb)
    th, tw = next(t for row in rgb for t in row if t is not None).shape[:2]
    n_rows, n_cols = len(rgb), max(len(row) for row in rgb)
    left = LABEL_INCHES if row_labels else 0.1
    top = (0.75 if col_labels else 0.1) + (0.16 * (title.count("\n") + 1) + 0.14 if title else 0.0)
    width, height = left + TILE_INCHES * n_cols + 0.1, top + TILE_INCHES * n_rows + 0.2
    fig = Figure(figsize=(width, height), dpi=100)
    ax = fig.add_axes((left / width, 0.2 / height, TILE_INCHES * n_cols / width, TILE_INCHES * n_rows / height))
    ax.imshow(image, interpolation="nearest")
    ax.set_axis_off()

    def x0(c):
        return PAD + c * (tw + PAD)

    def y0(r):
        return PAD + r * (th + PAD)

    for c, text in enumerate(col_labels):
        ax.text(x0(c) + tw / 2, -PAD, str(text), fontsize=7, rotation=35, ha="left", va="bottom")
    for r, text in enumerate(row_labels):
        ax.text(-PAD, y0(r) + th / 2, str(text), fontsize=7, ha="right", va="center")
    for (r, c), colour in (outlines or {}).items():
        ax.add_patch(Rectangle((x0(c) - 1.5, y0(r) - 1.5), tw + 2, th + 2, fill=False, edgecolor=colour,
                               linewidth=1.8))
    for (r, c), text in (captions or {}).items():
        ax.text(x0(c) + tw / 2, y0(r) + th - 1, str(text), fontsize=5, color="white", ha="center", va="bottom",
                bbox={"facecolor": "black", "alpha": 0.5, "pad": 0.5, "linewidth": 0})
    if title:
        fig.suptitle(title, fontsize=9, y=1 - 0.05 / height, va="top")
    return fig


__all__ = ["montage", "mosaic", "png", "to_rgb"]
