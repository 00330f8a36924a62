"""Progress on stderr: models prepared, cells done / failed / remaining, ETA.

On a terminal a live rich display; otherwise (a log file, CI) a plain line at the start, at every
10% of the cells and at least every ``log_every_s`` seconds. ``enabled=False`` is silent (tests)."""
from __future__ import annotations

import sys
import time


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}h{s // 60 % 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class Progress:
    def __init__(self, enabled: bool | None = None, *, log_every_s: float = 30.0, stream=None):
        self.stream = stream or sys.stderr
        tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.enabled = True if enabled is None else bool(enabled)
        self.live = self.enabled and tty            # rich display; else plain lines
        self.log_every_s = log_every_s
        self._p = None
        self.failed = 0
        self.not_applicable = 0
        self.done = 0
        self.models_done = 0
        self._n_models = self._n_cells = 0

    def start(self, n_models: int, n_cells: int, already_done: int, workers: int) -> None:
        self._n_models, self._n_cells = n_models, n_cells
        self._t0 = self._last_log = self._t_cells = time.monotonic()
        self._next_tenth = 1
        if not self.enabled:
            return
        head = (f"{n_cells} cells to run ({already_done} already done), {n_models} models to prepare, "
                f"{workers} worker(s)")
        if not self.live:
            self._line(head)
            return
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress as RichProgress, SpinnerColumn,
                                   TextColumn, TimeElapsedColumn, TimeRemainingColumn)

        self._p = RichProgress(SpinnerColumn(), TextColumn("{task.description:<7}"), BarColumn(),
                               MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                               TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                               console=Console(file=self.stream, highlight=False), refresh_per_second=4)
        self._p.start()
        self._p.console.print(head, markup=False)
        self._models = self._p.add_task("models", total=max(n_models, 0), info="") if n_models else None
        self._cells = self._p.add_task("cells", total=n_cells, info=self._info(n_cells))

    def _info(self, left: int) -> str:
        s = f"failed {self.failed}  left {left}"
        return s + (f"  n/a {self.not_applicable}" if self.not_applicable else "")

    def _line(self, text: str) -> None:
        print(f"[xaudit] {text}", file=self.stream, flush=True)

    def status_line(self) -> str:
        """cells done/total, failures, models, elapsed and an ETA from the cells' mean rate since the
        models were ready (cells wait for their models, so training time says nothing of their rate)."""
        now = time.monotonic()
        elapsed = now - self._t0
        left = self._n_cells - self.done
        eta = (f", eta {_clock((now - self._t_cells) / self.done * left)}"
               if self.done and left and now > self._t_cells else "")
        models = f", models {self.models_done}/{self._n_models}" if self._n_models else ""
        na = f", {self.not_applicable} n/a" if self.not_applicable else ""
        return (f"cells {self.done}/{self._n_cells} ({self.failed} failed{na}, {left} left){models}, "
                f"elapsed {_clock(elapsed)}{eta}")

    def _maybe_log(self, force: bool = False) -> None:
        if not self.enabled or self.live:
            return
        now = time.monotonic()
        tenth = self.done * 10 // max(1, self._n_cells)
        if force or tenth >= self._next_tenth or now - self._last_log >= self.log_every_s:
            self._next_tenth = tenth + 1
            self._last_log = now
            self._line(self.status_line())

    def model_finished(self, label: str, ok: bool) -> None:
        self.models_done += 1
        self._t_cells = time.monotonic()      # the cells' clock starts when the last model is ready
        if self._p is not None and self._models is not None:
            self._p.update(self._models, advance=1, info=("" if ok else f"[red]failed: {label}[/]"))
        elif self.enabled and not self.live:
            self._line(f"model {'ready' if ok else 'FAILED'}: {label} ({self.models_done}/{self._n_models})")

    def cell_finished(self, status: str) -> None:
        if status == "failed":
            self.failed += 1
        elif status == "not_applicable":
            self.not_applicable += 1
        self.done += 1
        if self._p is not None:
            self._p.update(self._cells, advance=1, info=self._info(self._n_cells - self.done))
        else:
            self._maybe_log()

    def stop(self) -> None:
        if self._p is not None:
            self._p.stop()
            self._p = None
