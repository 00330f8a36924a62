"""``xaudit world show``: a labeled grid of images with the object mask and bug footprints outlined."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from xaudit.world.base import get
from xaudit.world.bugs import Bug, parse_bug

# outline colours: object mask, then one per bug
_OUTLINES = ["#00e5ff", "#ff1744", "#2979ff", "#76ff03", "#d500f9", "#ff9100"]


def _outline(mask: np.ndarray) -> np.ndarray:
    """bool [H,W]: the mask's boundary pixels (mask pixels with a 4-neighbour outside it)."""
    pad = np.pad(mask, 1)
    inner = pad[:-2, 1:-1] & pad[2:, 1:-1] & pad[1:-1, :-2] & pad[1:-1, 2:]
    return mask & ~inner


def show(world_name: str, bugs: Sequence[str | Bug] = (), n: int = 16, size: int | None = None,
         split: str = "train", seed: int = 0, force: bool = False, out: str | Path = "grid.png",
         cols: int | None = None) -> Path:
    """Render ``n`` samples of a world (with bugs) to a PNG grid. Returns the path written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_rgb

    if n < 1:
        from xaudit.core.errors import ConfigError

        raise ConfigError("n", f"must be >= 1, got {n}")
    kw = {"seed": seed}
    if size is not None:
        kw["size"] = size
    world = get(world_name, **kw)
    bug_objs = [parse_bug(b) if isinstance(b, str) else b for b in bugs]
    batch = world.sample(range(n), split=split, bugs=bug_objs, force=force)
    cols = cols or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    scale = max(1, 96 // world.size)                 # enlarge so outlines are visible
    fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols, 2.1 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        img = batch.images[i].permute(1, 2, 0).numpy()
        if img.shape[2] == 1:
            img = np.repeat(img, 3, axis=2)
        img = np.kron(img, np.ones((scale, scale, 1)))
        layers = [("object", batch.object_mask[i])] + [(b.name, batch.footprints[b.name][i]) for b in bug_objs]
        for j, (_, m) in enumerate(layers):
            m = np.kron(m.numpy(), np.ones((scale, scale), dtype=bool))
            if m.any() and not m.all():
                img[_outline(m)] = to_rgb(_OUTLINES[j % len(_OUTLINES)])
        ax = axes.flat[i]
        ax.imshow(np.clip(img, 0, 1), interpolation="nearest")
        lab, true = int(batch.labels[i]), int(batch.true_labels[i])
        name = world.class_names[true] if world.class_names else str(true)
        title = f"#{int(batch.indices[i])} {name}"
        if lab != true:
            title += f"\n-> {world.class_names[lab] if world.class_names else lab}"
        hit = [f"b{j + 1}" for j, b in enumerate(bug_objs) if bool(batch.touched[b.name][i])]
        if hit:
            title += " [" + ",".join(hit) + "]"
        ax.set_title(title, fontsize=7)
    legend = "outlines: " + ", ".join(
        [f"object ({_OUTLINES[0]})"] + [f"b{j + 1}={b.name} ({_OUTLINES[(j + 1) % len(_OUTLINES)]})"
                                        for j, b in enumerate(bug_objs)])
    fig.suptitle(f"{world_name} {world.size}px split={split}\n{legend}", fontsize=8)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
