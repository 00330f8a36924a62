"""Pictures of image tensors, shared by every stage that draws them: tiles as RGB arrays (images as
they are, attribution maps through one perceptually uniform colour map), a mosaic of tiles, a labelled
montage drawn at a whole multiple of its data's pixel size, and a matplotlib figure's PNG bytes
(Agg canvas, no pyplot state; palette-quantized by default)::

    fig = montage([[img_a, map_b], [img_c, None]], row_labels=["fv_pixel", "fv_fourier"],
                  col_labels=["class 0", "class 1"], title="...", outlines={(0, 1): "#d62828"})
    data = png(fig)

Colour: an attribution map (a [H, W] array in [0, 1]) is drawn with :func:`colorize`, ``cividis`` by
default: its CIELAB lightness rises monotonically and almost linearly from dark blue to light yellow,
and it reads the same to the common colour-vision deficiencies (grey tiles hid the small differences a
map grid is meant to show; jet-like maps invent edges). Images ([C, H, W], C = 1 or 3) are drawn as
they are (:func:`to_rgb`). The report's grids draw a map with :data:`MAP_LEVELS` (16) colours: the
maps' pixel noise is most of a grid's PNG bytes, and 16 lightness steps of ~5 L* still show what a
grid compares (a smooth map shows faint contours).

Size: :func:`png` renders the figure once on the Agg canvas and writes an 8-bit palette PNG (Pillow's
fast octree quantizer, no dithering): figures are flat colours, lines and text, so 256 colours lose
nothing visible and the file is 3-4x smaller than the RGBA PNG matplotlib writes. :func:`montage`
sizes its figure in pixels so that every data pixel becomes an exact ``scale`` x ``scale`` block (no
resampling blur, which PNG compresses far worse) at about :data:`TILE_PX` pixels a tile, e.g. 2x for
the 32 x 32 maps of the built-in worlds; maps larger than :data:`MAX_TILE_PX` are block-averaged down.
The montage is one ``imshow`` of one mosaic with text labels (one axes: a 10 x 40 grid renders in
well under a second), so the report, the synthesis methods and the checks can draw large grids.
"""
from __future__ import annotations

import functools
import io
import math
import textwrap
from typing import Any, Mapping, Sequence

import numpy as np

PAD = 2              # pixels of white between tiles (data pixels: scaled with the mosaic)
TILE_INCHES = 0.62   # the tile side figures drawn at a fixed size use (kept for callers)
LABEL_INCHES = 1.4   # room for the row labels on the left, in those figures
DPI = 100            # every figure here: 1 inch = 100 px
TILE_PX = 64         # a montage's tile side on screen, about: a data pixel becomes round(TILE_PX / side) px
MAX_TILE_PX = 96     # tiles larger than this are block-averaged down to at most this before drawing
MAP_CMAP = "cividis"  # the colour map of attribution maps (perceptually uniform, colour-blind safe)
MAP_LEVELS = 16      # a map's colours in the report's grids (steps of ~5 L*): 14% fewer PNG bytes than 32
PALETTE_COLOURS = 256
PNG_COMPRESS_LEVEL = 7   # zlib: 8 was 3% smaller and 1.6x slower, 9 4% smaller and 2.7x slower, over a report's figures


# ------------------------------------------------------------------------------------------- PNG
def png(fig, palette: bool = True, colours: int = PALETTE_COLOURS) -> bytes:
    """PNG bytes of a matplotlib Figure (Agg; at the figure's own dpi; no "tight" box, which costs a
    second render). ``palette`` (default): an 8-bit palette PNG of at most ``colours`` colours (see
    :func:`encode`); otherwise the RGBA PNG matplotlib writes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    if not palette:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=fig.dpi)
        return buf.getvalue()
    canvas.draw()
    return encode(np.asarray(canvas.buffer_rgba()), palette=True, colours=colours)


def render(fig) -> np.ndarray:
    """The figure drawn on the Agg canvas: uint8 [H, W, 3] on white (what :func:`png` encodes)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return _opaque(np.asarray(canvas.buffer_rgba()))


def _opaque(rgba: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3]: an RGB(A) array (uint8, or float in [0, 1]) composited on white."""
    a = np.asarray(rgba)
    if a.dtype != np.uint8:
        a = (np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8)
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    if a.shape[2] == 4:
        alpha = a[:, :, 3:4]
        if alpha.min() == 255:
            a = a[:, :, :3]
        else:
            w = alpha.astype(np.float32) / 255
            a = (a[:, :, :3].astype(np.float32) * w + 255 * (1 - w) + 0.5).astype(np.uint8)
    return np.ascontiguousarray(a)


def encode(rgb: np.ndarray, palette: bool = True, colours: int = PALETTE_COLOURS) -> bytes:
    """PNG bytes of an RGB(A) array (uint8, or float in [0, 1]; alpha composited on white).
    ``palette``: quantized to at most ``colours`` colours with Pillow's fast octree (no dithering:
    flat areas stay flat and compress) and written as an 8-bit palette PNG."""
    from PIL import Image

    a = np.asarray(rgb)
    if a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 4 and a[:, :, 3].min() == 255:
        im = Image.fromarray(a, "RGBA").convert("RGB")         # opaque (a figure): drop alpha in C, no copy here
    else:
        im = Image.fromarray(_opaque(a), "RGB")
    if palette:
        im = im.quantize(int(colours), method=Image.Quantize.FASTOCTREE)
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


# ------------------------------------------------------------------------------------------ tiles
def _array(a: Any) -> np.ndarray:
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    return np.asarray(a, dtype=np.float32)


def to_rgb(a: Any) -> np.ndarray:
    """An image [C, H, W] (C = 1 or 3) or a map [H, W] / [1, H, W] with values in [0, 1] (a numpy array
    or a tensor) as float32 [H, W, 3], clipped to [0, 1]; grey for one channel. (Maps drawn for people
    go through :func:`colorize`; this is the image as it is.)"""
    a = np.clip(_array(a), 0, 1)
    if a.ndim == 3:
        if a.shape[0] not in (1, 3):
            raise ValueError(f"an image must be [C, H, W] with C = 1 or 3; got {a.shape}")
        a = a.transpose(1, 2, 0) if a.shape[0] == 3 else a[0]
    if a.ndim != 2 and not (a.ndim == 3 and a.shape[2] == 3):
        raise ValueError(f"must be [C, H, W] or [H, W]; got {a.shape}")
    return a if a.ndim == 3 else np.repeat(a[:, :, None], 3, axis=2)


@functools.lru_cache(maxsize=16)
def colour_table(cmap: str = MAP_CMAP, levels: int = 256) -> np.ndarray:
    """float32 [levels, 3]: the colour map sampled at ``levels`` evenly spaced values in [0, 1]."""
    import matplotlib

    if levels < 2:
        raise ValueError(f"levels must be >= 2; got {levels}")
    table = matplotlib.colormaps[cmap](np.linspace(0.0, 1.0, int(levels)))[:, :3].astype(np.float32)
    table.setflags(write=False)
    return table


def colorize(a: Any, cmap: str = MAP_CMAP, levels: int | None = None, vmin: float = 0.0,
             vmax: float = 1.0) -> np.ndarray:
    """An attribution map [H, W] / [1, H, W] (numpy or torch) as float32 [H, W, 3] through the colour
    map ``cmap`` (perceptually uniform by default: lightness grows linearly with the value); values
    are scaled from [vmin, vmax] and clipped, NaN drawn as vmin. ``levels``: that many distinct
    colours (None: 256)."""
    a = _array(a)
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2:
        raise ValueError(f"a map must be [H, W] or [1, H, W]; got {a.shape}")
    span = float(vmax) - float(vmin)
    x = np.nan_to_num((a - float(vmin)) / (span if span > 0 else 1.0), nan=0.0, posinf=1.0, neginf=0.0)
    n = int(levels or 256)
    idx = np.rint(np.clip(x, 0.0, 1.0) * (n - 1)).astype(np.intp)
    return colour_table(cmap, n)[idx]


def _rendered(a: Any) -> bool:
    """A tile already drawn: float [H, W, 3] (channel last; an image is [C, H, W] with C = 1 or 3)."""
    return isinstance(a, np.ndarray) and a.ndim == 3 and a.shape[2] == 3 and a.shape[0] not in (1, 3)


def tile(a: Any, cmap: str | None = MAP_CMAP, levels: int | None = MAP_LEVELS) -> np.ndarray:
    """One montage tile as float32 [H, W, 3]: an image [C, H, W] as it is (:func:`to_rgb`), a map
    [H, W] through ``cmap`` (:func:`colorize`; None: grey), an already drawn [H, W, 3] tile unchanged."""
    if _rendered(a):
        return np.clip(a.astype(np.float32, copy=False), 0, 1)
    arr = _array(a)
    if arr.ndim == 2 and cmap is not None:
        return colorize(arr, cmap, levels)
    return to_rgb(arr)


def shrink(t: np.ndarray, max_px: int = MAX_TILE_PX) -> np.ndarray:
    """A tile [H, W, 3] block-averaged by the smallest whole factor that brings its sides to at most
    ``max_px`` (unchanged when they already are)."""
    f = math.ceil(max(t.shape[:2]) / max_px)
    if f <= 1:
        return t
    h, w = (t.shape[0] // f) * f, (t.shape[1] // f) * f
    return t[:h, :w].reshape(h // f, f, w // f, f, t.shape[2]).mean(axis=(1, 3))


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


def tile_scale(side: int) -> int:
    """Screen pixels per data pixel for tiles of ``side`` data pixels: about TILE_PX a tile, at least 1."""
    return max(1, int(round(TILE_PX / max(1, side))))


def _text_px(text: str, fontsize: float) -> float:
    """Rough width in pixels of one line of text at ``fontsize`` points (DejaVu Sans averages ~0.6 em)."""
    return 0.6 * fontsize * DPI / 72 * max((len(s) for s in str(text).split("\n")), default=0)


def montage(tiles: Sequence[Sequence[Any]], row_labels: Sequence[str] = (), col_labels: Sequence[str] = (),
            title: str = "", outlines: Mapping[tuple[int, int], str] | None = None,
            captions: Mapping[tuple[int, int], str] | None = None, cmap: str | None = MAP_CMAP,
            levels: int | None = MAP_LEVELS, scale: int | None = None):
    """A matplotlib Figure: the tiles (images [C, H, W] in [0, 1] drawn as they are, maps [H, W] in
    [0, 1] through ``cmap`` with ``levels`` colours (None: grey), tiles already drawn as [H, W, 3], numpy
    or torch, or None) as one mosaic, a label left of each row and above each column, the title on top,
    a coloured frame round each tile named in ``outlines`` ({(row, col): colour}) and a small caption
    under each tile named in ``captions``.

    The figure is sized in pixels: every data pixel of the mosaic is an exact ``scale`` x ``scale``
    block (default :func:`tile_scale`: about TILE_PX a tile), the margins fit the labels."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    rgb = [[None if t is None else shrink(tile(t, cmap, levels)) for t in row] for row in tiles]
    image = mosaic(rgb)
    th, tw = next(t for row in rgb for t in row if t is not None).shape[:2]
    k = int(scale or tile_scale(max(th, tw)))
    ih, iw = image.shape[0] * k, image.shape[1] * k                    # the mosaic on screen, px
    fs, fs_col = 7, 7
    left = (max((_text_px(t, fs) for t in row_labels), default=0) + 10) if row_labels else 6
    col_w = max((_text_px(t, fs_col) for t in col_labels), default=0)
    # column labels rotated 35 degrees: height sin(35) of their length, and they lean right
    top = (col_w * 0.574 + 14) if col_labels else 6
    right = max(6, col_w * 0.82 - (tw + PAD) * k * 0.5) if col_labels else 6
    if title:    # wrapped to the mosaic's width (a long title no longer widens the figure)
        chars = max(40, int((left + iw + right - 12) / _text_px("x", 8)))
        title = "\n".join(textwrap.fill(line, chars) for line in title.split("\n"))
    n_title = title.count("\n") + 1 if title else 0
    top += n_title * 13 + (6 if title else 0)
    bottom = 6
    width = math.ceil(max(left + iw + right, _text_px(title, 8) + 12 if title else 0))
    height = math.ceil(top + ih + bottom)
    left, bottom = round(left), round(bottom)
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    ax = fig.add_axes((left / width, bottom / height, iw / width, ih / height))
    ax.imshow(image, interpolation="nearest")
    ax.set_axis_off()

    def x0(c):
        return PAD + c * (tw + PAD)

    def y0(r):
        return PAD + r * (th + PAD)

    for c, text in enumerate(col_labels):
        ax.text(x0(c) + tw / 2, -PAD, str(text), fontsize=fs_col, rotation=35, ha="left", va="bottom")
    for r, text in enumerate(row_labels):
        ax.text(-PAD, y0(r) + th / 2, str(text), fontsize=fs, ha="right", va="center")
    for (r, c), colour in (outlines or {}).items():
        ax.add_patch(Rectangle((x0(c) - 1.5, y0(r) - 1.5), tw + 2, th + 2, fill=False, edgecolor=colour,
                               linewidth=1.8))
    for (r, c), text in (captions or {}).items():
        ax.text(x0(c) + tw / 2, y0(r) + th - 1, str(text), fontsize=5, color="white", ha="center", va="bottom",
                bbox={"facecolor": "black", "alpha": 0.5, "pad": 0.5, "linewidth": 0})
    if title:
        fig.suptitle(title, fontsize=8, y=1 - 4 / height, va="top")
    return fig


__all__ = ["MAP_CMAP", "MAP_LEVELS", "colorize", "colour_table", "encode", "montage", "mosaic", "png", "render",
           "shrink", "tile", "tile_scale", "to_rgb"]
