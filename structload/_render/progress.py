"""The ``progress`` option: a rich progress bar on stderr for big loads."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

#: Loads above this many bytes show a bar when ``progress=None`` and stderr is a terminal.
AUTO_THRESHOLD = 1 << 30


def wants_progress(progress: bool | None, total_bytes: int) -> bool:
    """Whether to draw a bar: always for ``True``, never for ``False``, big loads on a terminal for ``None``."""
    return could_show(progress) and (progress is not None or total_bytes > AUTO_THRESHOLD)


def could_show(progress: bool | None) -> bool:
    """Whether a bar might be drawn, before knowing the load's size (sizes cost a pass over the plan)."""
    return bool(progress) or (progress is None and sys.stderr.isatty())


@contextlib.contextmanager
def progress_bar(enabled: bool, total_bytes: int, description: str) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(nbytes)``; draws on stderr only when `enabled`."""
    if not enabled:
        yield lambda nbytes: None
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=total_bytes)
        yield lambda nbytes: bar.advance(task, nbytes)
