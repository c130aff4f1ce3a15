"""Progress bars for the CLI: on a terminal only, never with --quiet, never in library code."""
from __future__ import annotations

import contextlib
import sys
from typing import Callable, Iterator


def progress_wanted(quiet: bool) -> bool:
    """Return whether to draw a progress bar: not quiet, and both stdout and stderr are terminals."""
    return not quiet and sys.stdout.isatty() and sys.stderr.isatty()


@contextlib.contextmanager
def progress_bar(enabled: bool, description: str, unit: str = "tensors",
                 total: int | None = None) -> Iterator[Callable[[int], None]]:
    """Yield a callback advancing a tqdm bar on stderr by n (an `on_batch`); a no-op when disabled.

    The bar appears only after half a second, so quick runs print nothing.
    """
    if not enabled:
        yield lambda finished: None
        return
    from tqdm import tqdm

    with tqdm(total=total, desc=description, unit=f" {unit}", file=sys.stderr, leave=False,
              delay=0.5, dynamic_ncols=True) as bar:
        yield bar.update
