"""Model formats behind one small interface: read weights, write clustered weights back.

Each format module exposes a model class with `weights()`, `replace_values()`
and a writer; `read_model` picks the format from the path. Adding a format
touches this registry, never the engine.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import InputError
from .graphdef import GraphDefModel, read_graphdef, write_graphdef
from .weights import Weight

__all__ = ["GraphDefModel", "Weight", "default_output", "read_model", "write_model"]


def read_model(path: str | os.PathLike):
    """Read a model file, its format detected from the path. Raises InputError or FormatError."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected a frozen GraphDef (.pb) file")
    return read_graphdef(path)


def write_model(model, path: str | os.PathLike) -> int:
    """Write a model in its own format, atomically; returns the number of bytes written."""
    return write_graphdef(model, path)


def default_output(path: str | os.PathLike) -> Path:
    """Return the default output path for an input: `MODEL.pb` -> `MODEL.pb.min` (the seed's name)."""
    path = Path(path)
    return path.with_name(path.name + ".min")
