"""Read a NumPy .npz file of plain arrays from an untrusted source: never unpickled, bounded first.

Used for every .npz the tool reads (importances, calibration and verify
inputs). Before any array is read, each member's .npy header is parsed on
its own and the arrays it declares (shape times item size) are checked
against the memory budget (limits.py): numpy allocates an array from its
header's shape before reading its data, so a small file could otherwise
declare terabytes.
"""
from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy
from numpy.lib import format as npy_format

from . import limits
from .errors import FormatError
from .files import check_input_file

# What numpy.load and the header parser raise on a damaged or hostile file.
_BAD_FILE = (ValueError, OSError, zipfile.BadZipFile, EOFError, KeyError, SyntaxError, TypeError)


def _reason(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def declared_bytes(path: Path) -> int:
    """Return the bytes the arrays of an .npz file declare in their .npy headers (read, not trusted).

    Raises FormatError for a member that is not a .npy array or holds objects (pickles).
    """
    total = 0
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                with archive.open(info) as member:
                    version = npy_format.read_magic(member)
                    # 3.0 only adds UTF-8 field names (structured dtypes), which are not plain numbers.
                    readers = {(1, 0): npy_format.read_array_header_1_0, (2, 0): npy_format.read_array_header_2_0}
                    if version not in readers:
                        raise FormatError(f"{path}: not a NumPy .npz file of plain arrays ({info.filename} has "
                                          f".npy version {version}, not 1.0 or 2.0)")
                    shape, _, dtype = readers[version](member)
                if dtype.hasobject:
                    raise FormatError(f"{path}: not a NumPy .npz file of plain arrays ({info.filename} holds "
                                      "Python objects; pickles are not loaded)")
                total += int(numpy.prod(shape, dtype=object)) * dtype.itemsize
    except FormatError:
        raise
    except _BAD_FILE as error:
        raise FormatError(f"{path}: not a NumPy .npz file of plain arrays ({_reason(error)})") from None
    return total


def load_npz(path: str | os.PathLike, what: str) -> tuple[Path, dict[str, numpy.ndarray]]:
    """Return (path, {key: array}) of a plain .npz file, its declared sizes checked against the budget.

    what: names the arrays in messages ("importance arrays", "inputs").
    Raises InputError for a missing file, MemoryBudgetError (an InputError)
    for arrays over the budget, FormatError for a file that is not an .npz of
    plain arrays (object arrays and pickles are refused, not loaded).
    """
    path = check_input_file(path)
    declared = declared_bytes(path)
    limits.check(declared, path.stat().st_size, f"{path}: {what} ({declared:,} bytes)")
    try:
        with numpy.load(path, allow_pickle=False) as archive:
            return path, {key: archive[key] for key in archive.files}
    except _BAD_FILE as error:
        raise FormatError(f"{path}: not a NumPy .npz file of plain arrays ({_reason(error)})") from None
