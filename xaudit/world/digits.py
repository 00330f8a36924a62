"""The ``digits`` world: scikit-learn's shipped 8x8 digits, upsampled to 28x28, one channel.

The background is exactly zero (as in MNIST), which reproduces the tie artifact of
docs/protocols.md#18-similarities: x * grad is zero wherever x is.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from xaudit.core import rng
from xaudit.world.base import WORLDS, World
from xaudit.world.raster import interp_matrix

_INNER = 24       # the digit is upsampled to 24x24 and placed with a random shift of up to 2 px
_SHIFT = 2
TEST_FRACTION = 0.2


@lru_cache(maxsize=1)
def _pools() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    from sklearn.datasets import load_digits  # ships inside the scikit-learn wheel: no download

    d = load_digits()
    imgs = torch.from_numpy(d.images.astype(np.float32) / 16.0)          # [1797, 8, 8]
    a = interp_matrix(_INNER, 8)
    up = (a @ imgs @ a.T).clamp_(0, 1)                                    # [1797, 24, 24]
    up[up < 1e-6] = 0.0                                                   # exact zeros stay exact
    labels = torch.from_numpy(d.target.astype(np.int64))
    order = np.argsort(rng.hash_u64(0, "digits/split", np.arange(len(labels)), 1)[:, 0], kind="stable")
    n_test = int(round(TEST_FRACTION * len(labels)))
    test, train = torch.from_numpy(order[:n_test]), torch.from_numpy(order[n_test:])
    return {"train": (up[train], labels[train]), "test": (up[test], labels[test])}


@WORLDS.register("digits")
class DigitsWorld(World):
    """Handwritten digits 0-9 (1,797 originals, 80/20 train/test pools), 28x28, one channel, zero background.

    Sample i of a split is pool image (hash(i) mod pool size) shifted by up to +-2 px.
    """

    name = "digits"
    allowed_sizes = (28,)
    channels = 1
    num_classes = 10
    class_names = tuple(str(i) for i in range(10))

    def _pick(self, idx, split_seed, split):
        pool_imgs, pool_labels = _pools()[split]
        return rng.randint(split_seed, "digits/pick", idx, len(pool_labels))[:, 0]

    def _labels(self, idx, split_seed, split):
        return _pools()[split][1][self._pick(idx, split_seed, split)]

    def _render(self, idx, labels, split_seed, split):
        pool_imgs, pool_labels = _pools()[split]
        pick = self._pick(idx, split_seed, split)
        # labels may differ from the picked image's (MissingClass redraws a class): re-pick within the class
        wrong = (pool_labels[pick] != labels).nonzero().flatten()
        if wrong.numel():
            r = rng.randint(split_seed, "digits/repick", idx[wrong], 1 << 30)[:, 0]
            for k in labels[wrong].unique().tolist():
                cand = (pool_labels == k).nonzero().flatten()
                sel = (labels[wrong] == k).nonzero().flatten()
                pick[wrong[sel]] = cand[r[sel] % len(cand)]
        n, s = len(idx), self.size
        pad = (s - _INNER) // 2
        canvas = torch.zeros(n, s + 2 * _SHIFT, s + 2 * _SHIFT)
        canvas[:, pad + _SHIFT: pad + _SHIFT + _INNER, pad + _SHIFT: pad + _SHIFT + _INNER] = pool_imgs[pick]
        off = rng.randint(split_seed, "digits/shift", idx, 2 * _SHIFT + 1, k=2)
        rows = off[:, 0:1] + torch.arange(s).view(1, s)
        cols = off[:, 1:2] + torch.arange(s).view(1, s)
        img = canvas[torch.arange(n).view(n, 1, 1), rows.view(n, s, 1), cols.view(n, 1, s)]
        return img.unsqueeze(1).contiguous(), img > 0.1
