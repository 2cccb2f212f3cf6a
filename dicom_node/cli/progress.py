"""Progress for long commands (`x2x edit`, `x2x model build-demo`, `x2x train`): shown on a terminal
(stderr), silent when stderr is not one (pipes, logs, CI), so scripts read only the result line.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


def interactive() -> bool:
    """stderr is a terminal a person watches (not a pipe, not TERM=dumb)."""
    return sys.stderr.isatty() and os.environ.get("TERM", "") != "dumb"


class Steps:
    """A named stage at a time, and a bar for a stage with a known number of steps."""

    def __init__(self, progress: Any) -> None:
        self._progress = progress
        self._task: Any = None

    def stage(self, text: str, total: int | None = None) -> None:
        if self._progress is None:
            return
        if self._task is not None:
            self._progress.update(self._task, visible=False)
        self._task = self._progress.add_task(text, total=total)
        self._progress.refresh()  # drawn now: a stage shorter than rich's refresh period is shown too

    def step(self, _index: int = 0) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.advance(self._task)
            self._progress.refresh()

    @property
    def callback(self) -> Callable[[int], None] | None:
        """For `step_callback=`: None when nothing is shown, so the caller skips the calls entirely."""
        return self.step if self._progress is not None else None


@contextmanager
def steps(enabled: bool | None = None) -> Iterator[Steps]:
    """`with steps() as s: s.stage("loading model"); s.stage("denoise", total=100); ... s.step()`."""
    if not (interactive() if enabled is None else enabled):
        yield Steps(None)
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=Console(stderr=True), transient=True)
    with progress:
        yield Steps(progress)
