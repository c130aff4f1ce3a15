"""Model formats behind one small interface: read weights, write clustered weights back.

Each format module exposes a model class with the same verbs:

- `format_name`: a short string ("graphdef", ...);
- `weights() -> list[Weight]`: every weight tensor, read lazily;
- `replace_values(values: dict[name, ndarray]) -> None`: new values for named
  weights (same shape), in the model's own copy;
- `save(path) -> int`: write in the model's own format, atomically
  (a temporary file or folder, then rename), deterministic bytes; returns bytes written;

and a module-level reader. `read_model` picks the format from the path.
Adding a format touches this registry, never the engine.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import InputError
from .graphdef import GraphDefModel, read_graphdef
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
    return model.save(path)


def default_output(path: str | os.PathLike) -> Path:
    """Return the default output path for an input: `MODEL.pb` -> `MODEL.pb.min` (the seed's name)."""
    path = Path(path)
    return path.with_name(path.name + ".min")
