"""Canonical JSON: the one serialization that cell keys, model references and memo keys hash."""
from __future__ import annotations

import hashlib
import json
from typing import Any


def _jsonable(o: Any) -> Any:
    if isinstance(o, (tuple, set, frozenset)):
        return sorted(o) if isinstance(o, (set, frozenset)) else list(o)
    if hasattr(o, "item") and callable(o.item):     # numpy / torch scalars
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"cannot serialize {type(o).__name__} in a configuration")


def canonical_json(obj: Any) -> str:
    """Deterministic JSON: sorted keys, no spaces, no NaN (NaN has no canonical form)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False,
                      default=_jsonable)


def digest(obj: Any) -> str:
    """sha256 hex digest of ``obj``'s canonical JSON."""
    return hashlib.sha256(canonical_json(obj).encode("utf-8")).hexdigest()
