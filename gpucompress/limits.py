"""The memory budget: how much one input may make us allocate, decided before allocating.

Every size read from an untrusted input that drives an allocation (a zstd
frame's declared size, a decoded index stream, the values a codebook or a
constant fill expands to, a zip entry's inflated size, a dataset or variable
read whole) is checked against

    budget = min(FIXED_CAP, max(FLOOR, FACTOR x the input's size in bytes))

before the allocation is made. FACTOR covers what real models reach with
room to spare (benchmarks/pack.py's FaceNet-sized graph decodes to 4.2x its
archive at k = 256, 9.1x at k = 16; model files store their values, and
weights deflate by a few percent in a zip); FLOOR keeps
small models from tripping over it; FIXED_CAP bounds any one input. Someone
with a genuinely larger model raises it with `--max-memory` (CLI) or
`with max_memory(n_bytes):` (Python API), which replaces the budget outright.
Going over raises MemoryBudgetError (an InputError: one line, exit 1).
"""
from __future__ import annotations

import contextlib
import contextvars
import re

from .errors import InputError

FACTOR = 64
FLOOR = 1 << 26  # 64 MiB
FIXED_CAP = 1 << 34  # 16 GiB

_override: contextvars.ContextVar[int | None] = contextvars.ContextVar("gpucompress_max_memory", default=None)
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


class MemoryBudgetError(InputError):
    """An input declares a size that would allocate more than the memory budget allows."""


def parse_size(text: str) -> int:
    """Return the bytes of a size such as "512M", "8G", "1.5GiB" or "1000000" (binary units).

    Raises ValueError for anything else (argparse turns it into a usage error).
    """
    match = _SIZE.fullmatch(str(text).strip())
    if not match or int(float(match.group(1)) * _UNITS[match.group(2).lower()]) < 1:
        raise ValueError(f"{text!r} is not a size (examples: 512M, 8G, 1.5GiB)")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def budget(input_bytes: int) -> int:
    """Return the bytes an input of `input_bytes` bytes may make us allocate at once.

    min(FIXED_CAP, max(FLOOR, FACTOR * input_bytes)), or the max_memory override.
    """
    override = _override.get()
    if override is not None:
        return override
    return min(FIXED_CAP, max(FLOOR, FACTOR * int(input_bytes)))


def check(needed: int, input_bytes: int, what: str) -> None:
    """Raise MemoryBudgetError when `needed` bytes exceed the budget of an input of `input_bytes`.

    what: names the allocation for the message ("archive.gpcz: tensor 'w' (4294967296 bytes)").
    """
    allowed = budget(input_bytes)
    if needed > allowed:
        raise MemoryBudgetError(
            f"{what} needs {needed:,} bytes, over the memory budget of {allowed:,} bytes for an input of "
            f"{int(input_bytes):,} bytes (pass --max-memory to raise it)")


@contextlib.contextmanager
def max_memory(n_bytes: int | None):
    """Within the block, the budget of every input is `n_bytes` (None: the default rule)."""
    if n_bytes is not None and (isinstance(n_bytes, bool) or not isinstance(n_bytes, int) or n_bytes < 1):
        from .errors import OptionsError

        raise OptionsError(f"max_memory={n_bytes!r} should be a positive number of bytes.")
    token = _override.set(n_bytes)
    try:
        yield
    finally:
        _override.reset(token)
