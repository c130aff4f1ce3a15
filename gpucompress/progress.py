"""Progress for the CLI: on a terminal only, never with --quiet, never in library code.

The bar counts tensors, one at a time, and names the tensor in work (or the
phase: reading, writing). It appears after DEFAULT_DELAY seconds, so quick runs
print nothing, and a thread redraws it while a step runs long without news
(a large tensor, a slow read), so anything longer than about a second shows.
"""
from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from typing import Iterator

DEFAULT_DELAY = 0.5
# Seconds before the bar shows; GPUCOMPRESS_PROGRESS_DELAY overrides it (0: at once and at every
# update, as the tests use).
DELAY_VARIABLE = "GPUCOMPRESS_PROGRESS_DELAY"
REDRAW_SECONDS = 0.25
NAME_CHARS = 40


def progress_wanted(quiet: bool) -> bool:
    """Return whether to draw a progress bar: not quiet, and both stdout and stderr are terminals."""
    return not quiet and sys.stdout.isatty() and sys.stderr.isatty()


def _delay() -> float:
    try:
        return max(float(os.environ.get(DELAY_VARIABLE, DEFAULT_DELAY)), 0.0)
    except ValueError:
        return DEFAULT_DELAY


def _short(name: str) -> str:
    return name if len(name) <= NAME_CHARS else "..." + name[-(NAME_CHARS - 3):]


class TensorProgress:
    """An `on_progress(finished, total, what)` callback drawing a tqdm bar on stderr.

    finished: tensors done of total; what: the tensor in work or the phase.
    """

    def __init__(self, bar):
        self._bar = bar

    def __call__(self, finished: int, total: int, what: str) -> None:
        bar = self._bar
        if total and bar.total != total:
            bar.total = total
        bar.set_postfix_str(_short(what), refresh=False)
        bar.update(max(finished - bar.n, 0))


class _Silent:
    def __call__(self, finished: int, total: int, what: str) -> None:
        pass


def _redraw(bar, stop: threading.Event, delay: float) -> None:
    started = time.monotonic()
    while not stop.wait(REDRAW_SECONDS):
        if time.monotonic() - started >= delay:
            bar.refresh()
            # What tqdm's close reads to know there is a line to clear.
            bar.last_print_t = time.time()


@contextlib.contextmanager
def progress_bar(enabled: bool, description: str, unit: str = "tensors",
                 total: int | None = None) -> Iterator[TensorProgress]:
    """Yield an on_progress callback (see TensorProgress) drawing a bar on stderr; a no-op when disabled.

    The bar appears only after the delay (DEFAULT_DELAY s, or $GPUCOMPRESS_PROGRESS_DELAY)
    and disappears when the block ends.
    """
    if not enabled:
        yield _Silent()
        return
    from tqdm import tqdm

    delay = _delay()
    stop = threading.Event()
    # A delay of 0 asks for the bar at once: then every update draws too (tqdm
    # otherwise skips updates within 0.1 s of the last draw, which is all of a
    # small model's run now that the kernels are compiled ahead of time).
    with tqdm(total=total, desc=description, unit=f" {unit}", file=sys.stderr, leave=False,
              delay=delay, dynamic_ncols=True, mininterval=0.1 if delay else 0) as bar:
        redraw = threading.Thread(target=_redraw, args=(bar, stop, delay), daemon=True)
        redraw.start()
        try:
            yield TensorProgress(bar)
        finally:
            stop.set()
            redraw.join()
