"""Scan progress on stderr, stage by stage: load, fit, influence, detect, store, gate, report.

On a terminal it is a rich progress bar; on a pipe or a file, one line per finished stage.
The in-process path is told each stage as it starts (``run_scan(progress=...)``); the flow
path follows the scan flow's own task-run log records (each Prefect task is named after
its stage; the ``analyse`` task is fit + influence + detect).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from infgate.plugins.cli._common import err
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

__all__ = ["STAGES", "ScanProgress", "scan_progress"]

STAGES = ("load", "fit", "influence", "detect", "store", "gate", "report")
#: A flow task that covers several stages -> (its first stage, its last stage).
_TASK_SPANS = {"analyse": ("fit", "detect")}


class ScanProgress:
    """Where a scan is; every method is safe to call in any order (stages only move on)."""

    def __init__(self) -> None:
        self._done: dict[str, float | None] = {}
        self._current: str | None = None
        self._started = time.perf_counter()
        self._stage_t0 = self._started
        self._bar: Progress | None = None
        self._task: Any = None
        if err.is_terminal:
            self._bar = Progress(
                SpinnerColumn(),
                TextColumn("scan: [bold]{task.description}"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total} stages"),
                TimeElapsedColumn(),
                console=err,
                transient=False,
            )
            self._task = self._bar.add_task("starting", total=len(STAGES))

    def __enter__(self) -> ScanProgress:
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def start(self, stage: str) -> None:
        """``stage`` began (the stages before it are over)."""
        if stage not in STAGES or stage in self._done or stage == self._current:
            return
        for earlier in STAGES[: STAGES.index(stage)]:
            if earlier not in self._done:
                self.finish(earlier)
        self._current, self._stage_t0 = stage, time.perf_counter()
        self._show()

    def finish(self, stage: str, seconds: float | None = None) -> None:
        """``stage`` is over (``seconds``: its time, when known)."""
        if stage not in STAGES or stage in self._done:
            return
        for earlier in STAGES[: STAGES.index(stage)]:
            if earlier not in self._done:
                self.finish(earlier)
        if seconds is None and stage == self._current:
            seconds = time.perf_counter() - self._stage_t0
        self._done[stage] = seconds
        if self._current == stage:
            self._current = None
        took = "" if seconds is None else f" ({seconds:.1f} s)"
        if self._bar is None:
            err.print(f"scan: {stage} done{took}", highlight=False)
        self._show()

    def finish_all(self, timings: Mapping[str, float] | None = None) -> None:
        """Every stage is over; ``timings`` (stage -> seconds) where the scan reported them."""
        timings = timings or {}
        for stage in STAGES:
            self.finish(stage, timings.get(stage))

    def _show(self) -> None:
        if self._bar is None:
            return
        if self._current is not None:
            text = f"{self._current} ..."
        else:
            text = "done" if len(self._done) == len(STAGES) else "working ..."
        self._bar.update(self._task, completed=len(self._done), description=text)


class _TaskRunHandler(logging.Handler):
    """Moves a :class:`ScanProgress` on from Prefect task-run records (``task_name``)."""

    def __init__(self, progress: ScanProgress) -> None:
        super().__init__(level=logging.DEBUG)
        self.progress = progress

    def emit(self, record: logging.LogRecord) -> None:
        name = str(getattr(record, "task_name", ""))
        first, last = _TASK_SPANS.get(name, (name, name))
        if first not in STAGES:
            return
        if record.getMessage().startswith("Finished in state"):
            self.progress.finish(last)
        else:
            self.progress.start(first)


@contextmanager
def scan_progress(*, follow_prefect: bool, quiet_prefect: bool) -> Iterator[ScanProgress]:
    """A :class:`ScanProgress` for one scan.

    Args:
        follow_prefect: listen to the scan flow's task-run records (the flow path).
        quiet_prefect: while it runs, keep Prefect's INFO lines off the terminal (warnings
            and errors still show); ``--verbose`` keeps them.
    """
    progress = ScanProgress()
    task_logger = logging.getLogger("prefect.task_runs")
    handler = _TaskRunHandler(progress)
    muted: list[tuple[logging.Handler, int]] = []
    if follow_prefect:
        task_logger.addHandler(handler)
        if quiet_prefect:
            for h in logging.getLogger().handlers:
                if type(h).__name__ == "PrefectConsoleHandler":
                    muted.append((h, h.level))
                    h.setLevel(max(h.level, logging.WARNING))
    try:
        with progress:
            yield progress
    finally:
        task_logger.removeHandler(handler)
        for h, level in muted:
            h.setLevel(level)
