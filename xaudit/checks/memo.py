"""A per-process memo of explanations, so that no explanation is computed twice.

The four sanity checks of one method on one model all explain the trained model and its retrain
reference on the same images, and cascading stage 1 re-initializes the same block with the same draws
as independent stage 1: without the memo a (method, model) pair explained 18 times what 11 explanations
determine. The memo is keyed by content, never by names: the method (its registration: a method
registered again under the same name is another method) and its parameters, a digest of the model's
weights (:func:`xaudit.core.model.fingerprint`), the images' and targets' bytes, and the seed of the
method's random draws. A hit is therefore the explanation a recomputation would return
(explanations are deterministic given those), so results never depend on which cells shared a worker.

Entries are cloned in and out (callers may modify what they get) and evicted least-recently-used
beyond ``XAUDIT_EXPLAIN_MEMO_MB`` megabytes (default 512; 0 disables the memo).
"""
from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from typing import Callable

import torch

from xaudit.core.model import fingerprint

Value = tuple[torch.Tensor, list]       # (raw maps [N, C, H, W], per-image failure reason or None)


def _default_budget() -> int:
    try:
        return max(0, int(float(os.environ.get("XAUDIT_EXPLAIN_MEMO_MB", "512")) * 2**20))
    except ValueError:
        return 512 * 2**20


def _tensor_digest(h, t: torch.Tensor) -> None:
    t = t.detach().cpu().contiguous()
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update((t.float() if t.dtype == torch.bfloat16 else t).numpy().tobytes())


class ExplanationMemo:
    def __init__(self, max_bytes: int | None = None):
        self.max_bytes = _default_budget() if max_bytes is None else int(max_bytes)
        self._items: OrderedDict[str, Value] = OrderedDict()
        self._bytes = 0
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(explainer, model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, seed: int) -> str:
        """``explainer``: an :class:`xaudit.explain.Explainer` (its method, registration and parameters)."""
        h = hashlib.blake2b(digest_size=20)
        h.update(json.dumps([explainer.config(), explainer.info.registration, int(seed)], sort_keys=True,
                            default=repr).encode())
        h.update(fingerprint(model).encode())
        h.update(type(model).__qualname__.encode())
        _tensor_digest(h, x)
        _tensor_digest(h, target)
        return h.hexdigest()

    def get_or_compute(self, key: str, compute: Callable[[], Value]) -> Value:
        if self.max_bytes <= 0:
            return compute()
        if key in self._items:
            self._items.move_to_end(key)
            self.hits += 1
            raw, failed = self._items[key]
            return raw.clone(), list(failed)
        self.misses += 1
        raw, failed = compute()
        size = raw.numel() * raw.element_size()
        if size <= self.max_bytes:
            self._items[key] = (raw.detach().clone(), list(failed))
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, (old, _) = self._items.popitem(last=False)
                self._bytes -= old.numel() * old.element_size()
        return raw, failed

    def clear(self) -> None:
        self._items.clear()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._items)


EXPLANATIONS = ExplanationMemo()
