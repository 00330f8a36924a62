"""Shared pieces of the measures: the registry with metadata, NaN reasons, input checks."""
from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from xaudit.core.errors import ConfigError
from xaudit.core.registry import Registry

# Every measure is registered with metadata the report reads:
#   kind: "similarity" (two maps), "localization" (map vs mask) or "statistic"
#   higher_is_better: bool | None; range: (lo, hi); reference: citation / reference implementation;
#   nan_reasons: the reasons for which it can return NaN.
MEASURES: Registry[Callable[..., Any]] = Registry("measure")

# Why a measure returned NaN for an image. The checks stage counts NaNs by these codes.
REASONS: dict[str, str] = {
    "nonfinite_input": "a map had a NaN or infinite value",
    "constant_a": "the first map is constant, so the correlation is undefined",
    "constant_b": "the second map is constant, so the correlation is undefined",
    "constant_both": "both maps are constant, so the correlation is undefined",
    "constant_map": "the map is constant, so its correlation with the mask is undefined",
    "zero_relevance": "the map has no positive relevance, so the relevance fraction is undefined",
}
_CODES = ("ok",) + tuple(REASONS)
_CODE_OF = {name: i for i, name in enumerate(_CODES)}


@dataclass(frozen=True)
class MeasureResult:
    """Per-image values with, where a value is NaN, the reason why.

    ``values``: Tensor[N] (float64). ``codes``: int8 Tensor[N], 0 where the value is defined, else the
    index of its reason in :data:`REASON_CODES`. ``reasons`` gives the same as a list of str | None.
    """
    values: torch.Tensor
    codes: torch.Tensor

    @property
    def reasons(self) -> list[str | None]:
        return [None if c == 0 else _CODES[c] for c in self.codes.tolist()]

    def counts(self) -> dict[str, int]:
        """Number of NaN values per reason, e.g. ``{"constant_a": 3}`` (empty when all defined)."""
        return dict(Counter(r for r in self.reasons if r is not None))

    def __len__(self) -> int:
        return int(self.values.shape[0])


REASON_CODES = _CODES


def code(name: str) -> int:
    return _CODE_OF[name]


def finish(values: torch.Tensor, codes: torch.Tensor, return_reasons: bool):
    """Set values to NaN where a reason was found; return a Tensor or a MeasureResult."""
    values = torch.where(codes == 0, values, torch.full_like(values, float("nan")))
    if return_reasons:
        return MeasureResult(values, codes.to(torch.int8))
    return values


def correlation_codes(a_const: torch.Tensor, b_const: torch.Tensor, finite: torch.Tensor) -> torch.Tensor:
    """Reason codes [N] for a correlation of two maps (non-finite beats constant)."""
    codes = torch.zeros(a_const.shape, dtype=torch.int8, device=a_const.device)
    codes = torch.where(a_const, torch.tensor(code("constant_a"), dtype=torch.int8, device=codes.device), codes)
    codes = torch.where(b_const, torch.tensor(code("constant_b"), dtype=torch.int8, device=codes.device), codes)
    codes = torch.where(a_const & b_const, torch.tensor(code("constant_both"), dtype=torch.int8,
                                                        device=codes.device), codes)
    codes = torch.where(~finite, torch.tensor(code("nonfinite_input"), dtype=torch.int8,
                                              device=codes.device), codes)
    return codes


def as_map_batch(x: torch.Tensor, name: str) -> torch.Tensor:
    """Accept ``[N, 1, H, W]`` or ``[N, H, W]`` floating maps; return ``[N, H, W]`` (a view)."""
    if not isinstance(x, torch.Tensor):
        raise ConfigError(name, f"must be a torch.Tensor of shape [N, 1, H, W] or [N, H, W], "
                                f"got {type(x).__name__}")
    if x.dim() == 4:
        if x.shape[1] != 1:
            raise ConfigError(name, f"must have one channel ([N, 1, H, W]); got shape {tuple(x.shape)}; "
                                    "reduce channels first (xaudit.core.maps)")
        x = x[:, 0]
    elif x.dim() != 3:
        raise ConfigError(name, f"must have shape [N, 1, H, W] or [N, H, W], got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ConfigError(name, f"must be a floating-point tensor, got dtype {x.dtype}")
    return x


def as_pair(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two map batches of the same shape and device, as ``[N, H, W]``."""
    a = as_map_batch(a, "a")
    b = as_map_batch(b, "b")
    if a.shape != b.shape:
        raise ConfigError("b", f"must have the same shape as a; got a {tuple(a.shape)} and b {tuple(b.shape)}")
    if a.device != b.device:
        raise ConfigError("b", f"must be on the same device as a; got a on {a.device}, b on {b.device}")
    return a, b


def is_constant(flat: torch.Tensor) -> torch.Tensor:
    """[N] bool: every value of the row equal (exactly; as scipy's ConstantInputWarning test)."""
    return flat.amax(dim=-1) == flat.amin(dim=-1)


def row_flags(flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(finite, constant): [N] bool each for the rows of ``flat [N, P]``, computed in row blocks."""
    n, p = flat.shape
    finite = torch.empty(n, dtype=torch.bool, device=flat.device)
    constant = torch.empty(n, dtype=torch.bool, device=flat.device)

    if flat.device.type == "cpu":                           # numpy's row max/min are ~10x faster here
        x = flat.detach().numpy() if flat.dtype not in (torch.float16, torch.bfloat16) else flat.float().numpy()
        hi_np, lo_np = np.empty(n, dtype=x.dtype), np.empty(n, dtype=x.dtype)

        def block_np(sl: slice) -> None:
            np.max(x[sl], axis=1, out=hi_np[sl])            # NaN propagates
            np.min(x[sl], axis=1, out=lo_np[sl])

        run_blocks(block_np, n, max(1, (1 << 16) // max(1, p)))
        hi, lo = torch.from_numpy(hi_np), torch.from_numpy(lo_np)
        return torch.isfinite(hi) & torch.isfinite(lo), hi == lo

    def block(sl: slice) -> None:
        lo, hi = torch.aminmax(flat[sl], dim=1)              # NaN propagates into both
        finite[sl] = torch.isfinite(hi) & torch.isfinite(lo)
        constant[sl] = hi == lo

    for_blocks(block, n, p, flat.device)
    return finite, constant


def for_blocks(fn: Callable[[slice], None], n: int, per_row: int, device: torch.device,
               cpu_budget: int = 1 << 16, device_budget: int = 1 << 22) -> None:
    """Call ``fn(rows)`` for row blocks covering ``range(n)``. On the CPU, blocks of about ``cpu_budget``
    elements (cache-sized, below torch's parallel grain so each op runs single-threaded) go to a thread
    pool (:func:`run_blocks`); elsewhere, sequential blocks of about ``device_budget`` elements."""
    if torch.device(device).type == "cpu":
        run_blocks(fn, n, max(1, cpu_budget // max(1, per_row)))
    else:
        step = max(1, device_budget // max(1, per_row))
        for i in range(0, n, step):
            fn(slice(i, min(n, i + step)))


def run_blocks(fn: Callable[[slice], None], n: int, rows: int, workers: int | None = None) -> None:
    """Call ``fn(block)`` for row blocks of ``rows`` rows covering ``range(n)``, on up to ``workers``
    threads (default: torch's intra-op thread count). The CPU kernels are numpy on small blocks that stay
    in cache; numpy releases the GIL in them, and many small tasks keep both cores busy even when other
    processes compete for them (no barrier waits, unlike one big multi-threaded op)."""
    blocks = [slice(i, min(n, i + rows)) for i in range(0, n, max(1, rows))]
    workers = min(len(blocks), workers or torch.get_num_threads())
    if workers <= 1:
        for blk in blocks:
            fn(blk)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in pool.map(fn, blocks):
            pass
