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

Archives (gpucompress.codec) need two more verbs, and only these:

- `to_skeleton(names) -> bytes`: the model serialized deterministically with
  the values of the named floating weights removed; it must remember whatever
  the format needs to store those values back in their original form (for a
  GraphDef: tensor_content or the number of *_val entries);
- classmethod `from_skeleton(data) -> model`: the model back from those bytes,
  validated as untrusted input (FormatError). The removed weights then get
  their values through `replace_values`; only after that may `to_bytes()` /
  `save()` be called, and `to_bytes()` must then equal what the original model
  gives after `replace_values` with the same arrays, byte for byte;
- `to_bytes() -> bytes`: the model as `save` would write it (a single-file format).

The archive stores `format_name` in its header and finds the class again
through FORMATS; a new format registers there and the codec does not change.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import InputError
from .graphdef import GraphDefModel, read_graphdef
from .weights import Weight

__all__ = ["FORMATS", "GraphDefModel", "Weight", "default_output", "model_class", "read_model", "write_model"]

# format_name -> model class with from_skeleton (used by archives).
FORMATS = {GraphDefModel.format_name: GraphDefModel}


def model_class(format_name: str):
    """Return the model class of a format name; raises FormatError for an unknown one."""
    from ..errors import FormatError

    if format_name not in FORMATS:
        raise FormatError(f"unknown model format {format_name!r} (known: {', '.join(sorted(FORMATS))})")
    return FORMATS[format_name]


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
