"""Progress display (rich) on stderr: models prepared, cells done / failed / remaining, ETA.
Silent when stderr is not a terminal (logs, CI, tests)."""
from __future__ import annotations

import sys


class Progress:
    def __init__(self, enabled: bool | None = None):
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._p = None
        self.failed = 0
        self.not_applicable = 0
        self.done = 0

    def start(self, n_models: int, n_cells: int, already_done: int, workers: int) -> None:
        if not self.enabled:
            return
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress as RichProgress, SpinnerColumn,
                                   TextColumn, TimeElapsedColumn, TimeRemainingColumn)

        self._p = RichProgress(SpinnerColumn(), TextColumn("{task.description:<7}"), BarColumn(),
                               MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                               TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                               console=Console(stderr=True, highlight=False), refresh_per_second=4)
        self._p.start()
        self._p.console.print(f"[bold]{n_cells}[/] cells to run ({already_done} already done), "
                              f"{n_models} models to prepare, {workers} worker(s)")
        self._models = self._p.add_task("models", total=max(n_models, 0), info="") if n_models else None
        self._cells = self._p.add_task("cells", total=n_cells, info=self._info(n_cells))
        self._n_cells = n_cells

    def _info(self, left: int) -> str:
        s = f"failed {self.failed}  left {left}"
        return s + (f"  n/a {self.not_applicable}" if self.not_applicable else "")

    def model_finished(self, label: str, ok: bool) -> None:
        if self._p is not None and self._models is not None:
            self._p.update(self._models, advance=1, info=("" if ok else f"[red]failed: {label}[/]"))

    def cell_finished(self, status: str) -> None:
        if status == "failed":
            self.failed += 1
        elif status == "not_applicable":
            self.not_applicable += 1
        self.done += 1
        if self._p is not None:
            self._p.update(self._cells, advance=1, info=self._info(self._n_cells - self.done))

    def stop(self) -> None:
        if self._p is not None:
            self._p.stop()
            self._p = None
