"""Reading inputs safely and writing outputs atomically."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import InputError

# The files that make a folder a SavedModel (an output folder we may replace).
SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")


def check_input_file(path: str | os.PathLike, *, max_bytes: int | None = None) -> Path:
    """Return `path` as a Path after checking it is an existing, readable regular file.

    Raises InputError with one line naming the problem.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected a file")
    if not os.access(path, os.R_OK):
        raise InputError(f"{path}: not readable")
    if max_bytes is not None and path.stat().st_size > max_bytes:
        raise InputError(f"{path}: {path.stat().st_size} bytes exceeds the limit of {max_bytes}")
    return path


def check_output_path(output: str | os.PathLike, inputs: list[Path], *, overwrite: bool,
                      directory: bool = False) -> Path:
    """Return `output` as a Path after checking it may be written.

    Never the same file as an input; an existing file only with overwrite=True;
    its folder must exist. directory=True: the output is a folder (a
    SavedModel); an existing one is replaced only with overwrite=True and only
    when it is a SavedModel itself, and it may not lie inside an input folder
    or hold one. Raises InputError otherwise.
    """
    output = Path(output)
    for source in inputs:
        if output.exists() and source.exists() and os.path.samefile(output, source):
            raise InputError(f"{output}: refusing to overwrite the input")
        if output.resolve() == source.resolve():
            raise InputError(f"{output}: refusing to overwrite the input")
        if directory or source.is_dir():
            if source.resolve() in output.resolve().parents or output.resolve() in source.resolve().parents:
                raise InputError(f"{output}: refusing to write inside the input or around it")
    if directory:
        if output.exists() and not output.is_dir():
            raise InputError(f"{output}: is a file, expected a folder name for the SavedModel")
        if output.is_dir() and not overwrite:
            raise InputError(f"{output}: already exists (pass --overwrite to replace it)")
        if output.is_dir() and not any((output / name).is_file() for name in SAVED_MODEL_FILES):
            raise InputError(f"{output}: is a folder that is not a SavedModel, refusing to replace it")
    if output.is_dir() and not directory:
        raise InputError(f"{output}: is a directory, expected a file name")
    if output.exists() and not overwrite:
        raise InputError(f"{output}: already exists (pass --overwrite to replace it)")
    if not output.parent.exists():
        raise InputError(f"{output.parent}: output folder does not exist")
    return output


def write_atomic(path: str | os.PathLike, data) -> None:
    """Write bytes to `path` atomically: a temporary file in the same folder, then rename.

    data: bytes, or an iterable of bytes pieces written one after the other
    (a large output need never exist whole in memory). A crash or error,
    raised by the pieces too, leaves either the old file or the new one,
    never a partial file.
    """
    if isinstance(data, (bytes, bytearray, memoryview)):
        data = [data]
    path = Path(path)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates files 0600; give the output the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(handle, 0o666 & ~umask)
        with os.fdopen(handle, "wb") as stream:
            for piece in data:
                stream.write(piece)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise
