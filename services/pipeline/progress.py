"""How a command shows pipeline progress: live bars in a terminal, one log line per stage event
anywhere else (CI, log files), where a block of finished bars at the end tells nothing; and how
it shows its outcome (`run_subcommand`), the same for `gflow` and `gflow eval`."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from services.common.errors import GFlowError
from services.common.logs import setup_logging
from services.pipeline.engine import STAGES, PipelineProgress

log = logging.getLogger(__name__)
console = Console(stderr=True)  # what every gflow command prints to


class StageLines:
    """Progress where output is not a terminal (CI, logs): one log line per stage event."""

    def __call__(self, stage: str, done: int, total: int, message: str) -> None:
        log.info("%s %d/%d: %s", stage, done, total, message)


class StageBars:
    """One rich progress bar per stage, fed by the pipeline's progress callback."""

    def __init__(self, progress: Progress):
        self.progress = progress
        self.tasks = {s: progress.add_task(s, total=None) for s in [*STAGES, "report"]}

    def __call__(self, stage: str, done: int, total: int, message: str) -> None:
        task = self.tasks.get(stage)
        if task is not None:
            self.progress.update(
                task, completed=done, total=max(total, 1), description=f"{stage}: {message}"[:60]
            )


@contextmanager
def stage_progress() -> Iterator[PipelineProgress]:
    """Live bars when the console is a terminal; one line per stage event otherwise."""
    if not console.is_terminal:
        yield StageLines()
        return
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
    ) as bars:
        # Log lines go through the live display's redirected stderr (shown above the bars)
        # rather than straight to the terminal, where they would tear the bars.
        streams = [h for h in logging.getLogger().handlers if isinstance(h, logging.StreamHandler)]
        before = [h.setStream(sys.stderr) for h in streams]
        try:
            yield StageBars(bars)
        finally:
            for handler, stream in zip(streams, before, strict=True):
                handler.setStream(stream)


def run_subcommand(command: Any, handlers: dict[type, Callable[[Any], Any]]) -> None:
    """Runs the parsed `command` with its handler as every gflow command line shows it: logging
    at its --log-level, a GFlowError as one red line and exit status 2 (no traceback), a
    returned path as "done: PATH", a returned dict as JSON."""
    setup_logging(getattr(command, "log_level", "INFO"))
    try:
        outcome = handlers[type(command)](command)
    except GFlowError as exc:
        console.print(f"[red]error[/red] ({exc.reason}): {exc}", soft_wrap=True)  # one line
        raise SystemExit(2) from exc
    if isinstance(outcome, Path):
        console.print(f"[green]done[/green]: {outcome}")
    elif outcome is not None:
        console.print(json.dumps(outcome, indent=1) if isinstance(outcome, dict) else outcome)
