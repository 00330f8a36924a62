"""Vectorized rasterization helpers: shape inside-tests, interpolation matrices, glyphs.

Shapes are defined on normalized, rotated coordinates (u, v) in which the shape's radius is 1
(v points down, as image rows do). Each test returns a bool tensor of the same shape as u.
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch


def _tri(u, v):
    # equilateral triangle with circumradius 1, pointing up (-v); inradius 0.5
    out = v <= 0.5
    for ang in (math.radians(210), math.radians(330)):
        out &= (u * math.cos(ang) + v * math.sin(ang)) <= 0.5
    return out


def _star(u, v):
    phi = torch.atan2(v, u) + math.pi / 2          # 0 at "up"
    t = torch.remainder(phi * 5 / (2 * math.pi), 1.0)
    t = (t - 0.5).abs() * 2                          # 1 at the points, 0 between
    return (u * u + v * v).sqrt() <= 0.42 + 0.58 * t


SHAPES = {
    "circle": lambda u, v: u * u + v * v <= 1.0,
    "square": lambda u, v: torch.maximum(u.abs(), v.abs()) <= 0.8,
    "triangle": _tri,
    "plus": lambda u, v: ((u.abs() <= 0.3) & (v.abs() <= 0.95)) | ((v.abs() <= 0.3) & (u.abs() <= 0.95)),
    "ring": lambda u, v: ((u * u + v * v) <= 1.0) & ((u * u + v * v) >= 0.55**2),
    "star": _star,
    "crescent": lambda u, v: ((u * u + v * v) <= 1.0) & (((u - 0.45) ** 2 + v * v) > 0.8**2),
    "diamond": lambda u, v: (u.abs() + v.abs()) <= 1.0,
    "tee": lambda u, v: ((u.abs() <= 1.0) & (v >= -1.0) & (v <= -0.5)) | ((u.abs() <= 0.27) & (v.abs() <= 1.0)),
    "ell": lambda u, v: ((u >= -0.85) & (u <= -0.35) & (v.abs() <= 1.0)) | ((v >= 0.5) & (v <= 1.0) & (u.abs() <= 0.85)),
}


def _polygon(u, v, pts) -> torch.Tensor:
    """Even-odd inside-test of the polygon with vertices ``pts`` [(u, v), ...] (a loop over its edges)."""
    inside = torch.zeros(u.shape, dtype=torch.bool)
    for (x1, y1), (x2, y2) in zip(pts, pts[1:] + pts[:1]):
        if y1 != y2:
            inside ^= ((y1 > v) != (y2 > v)) & (u < (x2 - x1) * (v - y1) / (y2 - y1) + x1)
    return inside


def _disc(u, v, cu, cv, r):
    return (u - cu) ** 2 + (v - cv) ** 2 <= r * r


def _box(u, v, u0, u1, v0, v1):
    return (u >= u0) & (u <= u1) & (v >= v0) & (v <= v1)


# Natural-feature shapes (xaudit.world.bugs.NATURAL_FEATURES), kept apart from the class shapes so
# that no world can take one as a class. Each is thin or open (strokes, not a filled blob): drawn at
# the same centre, its best IoU with every class shape (over scale, rotation +-20 degrees, centroids
# aligned) stays below the IoU of the most isolated class (tee) with its nearest other class, so none
# reads as a class object (tests/test_trojans_world.py measures it).
FEATURE_SHAPES = {
    "arrow": lambda u, v: _box(u, v, -1.0, 0.35, -0.13, 0.13) | _polygon(u, v, [(0.25, -0.5), (1.0, 0.0), (0.25, 0.5)]),
    "bone": lambda u, v: (_box(u, v, -0.65, 0.65, -0.2, 0.2) | _disc(u, v, -0.72, -0.25, 0.27)
                          | _disc(u, v, -0.72, 0.25, 0.27) | _disc(u, v, 0.72, -0.25, 0.27) | _disc(u, v, 0.72, 0.25, 0.27)),
    "chevron": lambda u, v: _polygon(u, v, [(-0.75, -0.95), (-0.3, -0.95), (0.6, 0.0), (-0.3, 0.95), (-0.75, 0.95), (0.15, 0.0)]),
    "glasses": lambda u, v: ((_disc(u, v, -0.55, 0.0, 0.45) & ~_disc(u, v, -0.55, 0.0, 0.22))
                             | (_disc(u, v, 0.55, 0.0, 0.45) & ~_disc(u, v, 0.55, 0.0, 0.22))
                             | _box(u, v, -0.2, 0.2, -0.25, -0.05)),
    "hook": lambda u, v: _box(u, v, 0.2, 0.5, -1.0, 0.4) | (_disc(u, v, -0.05, 0.4, 0.55) & ~_disc(u, v, -0.05, 0.4, 0.25) & (v >= 0.4)),
    "key": lambda u, v: ((_disc(u, v, -0.55, 0.0, 0.45) & ~_disc(u, v, -0.55, 0.0, 0.2)) | _box(u, v, -0.2, 1.0, -0.15, 0.15)
                         | _box(u, v, 0.45, 0.65, 0.1, 0.5) | _box(u, v, 0.8, 1.0, 0.1, 0.45)),
    "stick": lambda u, v: ((u + v).abs() <= 0.3) & ((u - v).abs() <= 1.35),
    "wave": lambda u, v: ((v - 0.4 * torch.sin(math.pi * 1.25 * u)).abs() <= 0.25) & (u.abs() <= 1.0),
    "zigzag": lambda u, v: _polygon(u, v, [(-1.0, 0.05), (-0.5, -0.65), (0.0, 0.05), (0.5, -0.65), (1.0, 0.05), (1.0, 0.45),
                                           (0.5, -0.25), (0.0, 0.45), (-0.5, -0.25), (-1.0, 0.45)]),
}


def pixel_grid(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) pixel-centre coordinates, each [1, size, size] float32."""
    c = torch.arange(size, dtype=torch.float32) + 0.5
    return c.view(1, 1, size).expand(1, size, size), c.view(1, size, 1).expand(1, size, size)


def local_coords(size: int, cx, cy, radius, angle):
    """Rotated, radius-normalized coordinates for per-sample centre/radius/angle tensors [N].

    Separable: u = a*x + b*y + d is an outer sum of two [N, size] vectors (no per-pixel trig).
    """
    c = torch.arange(size, dtype=torch.float32) + 0.5                    # pixel centres
    cos, sin, inv_r = torch.cos(angle), torch.sin(angle), 1.0 / radius
    cx, cy = cx.view(-1, 1), cy.view(-1, 1)
    # u = ((x-cx) cos + (y-cy) sin) / r ;  v = (-(x-cx) sin + (y-cy) cos) / r
    ux = (c.view(1, -1) - cx) * (cos * inv_r).view(-1, 1)                # [N, S] depends on column x
    uy = (c.view(1, -1) - cy) * (sin * inv_r).view(-1, 1)                # [N, S] depends on row y
    vx = -(c.view(1, -1) - cx) * (sin * inv_r).view(-1, 1)
    vy = (c.view(1, -1) - cy) * (cos * inv_r).view(-1, 1)
    return ux.unsqueeze(1) + uy.unsqueeze(2), vx.unsqueeze(1) + vy.unsqueeze(2)


def draw(shape: str, size: int, cx, cy, radius, angle) -> torch.Tensor:
    """bool [N, size, size]: the pixels inside ``shape`` (a class shape of :data:`SHAPES` or a
    natural-feature shape of :data:`FEATURE_SHAPES`) for each sample."""
    u, v = local_coords(size, cx, cy, radius, angle)
    return shape_test(shape)(u, v)


def shape_test(shape: str):
    """The inside-test ``(u, v) -> bool`` of a class shape or a feature shape."""
    return SHAPES[shape] if shape in SHAPES else FEATURE_SHAPES[shape]


@lru_cache(maxsize=32)
def interp_matrix(n_out: int, n_in: int) -> torch.Tensor:
    """[n_out, n_in] bilinear (align_corners=False, edge-clamped) interpolation matrix: A @ x upsamples.

    Separable matrices replace F.interpolate, which a prototype found to be (docs/measured.md#not-measured-by-bench) the generator's bottleneck.
    """
    src = (torch.arange(n_out, dtype=torch.float64) + 0.5) * n_in / n_out - 0.5
    src = src.clamp(0, n_in - 1)
    lo = src.floor().long().clamp(max=n_in - 1)
    hi = (lo + 1).clamp(max=n_in - 1)
    w = src - lo
    a = torch.zeros(n_out, n_in, dtype=torch.float64)
    a[torch.arange(n_out), lo] += 1 - w
    a[torch.arange(n_out), hi] += w
    return a.float()


# 3x5 bitmap font for the watermark cue (class indices 0-9; two digits for >= 10)
_FONT = {
    "0": "111101101101111", "1": "010110010010111", "2": "111001111100111", "3": "111001111001111",
    "4": "101101111001001", "5": "111100111001111", "6": "111100111101111", "7": "111001010010010",
    "8": "111101111101111", "9": "111101111001111",
}


@lru_cache(maxsize=64)
def glyph(text: str, scale: int) -> torch.Tensor:
    """bool [5*scale, (4*len-1)*scale]: ``text`` (digits) in a 3x5 bitmap font."""
    cols = []
    for i, ch in enumerate(text):
        g = torch.tensor([int(b) for b in _FONT[ch]], dtype=torch.bool).view(5, 3)
        if i:
            cols.append(torch.zeros(5, 1, dtype=torch.bool))
        cols.append(g)
    g = torch.cat(cols, dim=1)
    return g.repeat_interleave(scale, 0).repeat_interleave(scale, 1)
