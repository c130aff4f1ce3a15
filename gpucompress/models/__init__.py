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

A format may also have `defer_values(name, shape, make)`: the values are made
by `make()` only while the model is written, one tensor at a time (a GraphDef
then never holds old and new tensor contents together). `defer_values` here
falls back to `replace_values` for formats without it.

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
- `to_bytes() -> bytes`: the model as `save` would write it (for a SavedModel
  folder: a deterministic tar of the files `save` writes).

The archive stores `format_name` in its header and finds the class again
through FORMATS; a new format registers there and the codec does not change.

Adding a format touches this registry, never the engine. Formats that an
archive can hold also have `to_skeleton(names) -> bytes` (the saved model,
deterministic, the named weights zeroed) and `from_skeleton(data)`.

Formats, by path: a folder with saved_model.pb(txt) is a SavedModel; `.keras`
a Keras zip; `.h5` / `.hdf5` a Keras HDF5 file; a known format we do not read
(UNSUPPORTED: `.tflite`, `.onnx` ...) is refused by name; anything else a
frozen GraphDef.
The Keras and SavedModel modules import h5py and TensorFlow only when used.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import InputError
from .graphdef import GraphDefModel, read_graphdef
from .weights import Weight

__all__ = ["FORMATS", "GraphDefModel", "Weight", "apply_clustered", "default_output", "defer_values", "model_class",
           "model_format", "model_pieces", "read_model", "write_model"]

# format_name -> "module:class" of the model class with from_skeleton (used by
# archives); imported on demand so h5py and TensorFlow load only when needed.
FORMATS = {
    "graphdef": "graphdef:GraphDefModel",
    "keras": "keras:KerasModel",
    "h5": "keras:HDF5Model",
    "savedmodel": "savedmodel:SavedModel",
    "tflite": "tflite:TFLiteModel",
}


def model_class(format_name: str):
    """Return the model class of a format name; raises FormatError for an unknown one."""
    import importlib

    from ..errors import FormatError

    if format_name not in FORMATS:
        raise FormatError(f"unknown model format {format_name!r} (known: {', '.join(sorted(FORMATS))})")
    module, name = FORMATS[format_name].split(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


HDF5_SUFFIXES = (".h5", ".hdf5")
SUPPORTED = ("frozen GraphDef (.pb), SavedModel folder, Keras .keras, Keras HDF5 (.h5, .hdf5, .weights.h5), "
             "TensorFlow Lite (.tflite)")
# Formats recognised only to be named in a clear refusal: suffix -> name. A
# format that gains a reader moves from here to FORMATS and model_format.
UNSUPPORTED = {
    ".onnx": "ONNX",
    ".pt": "PyTorch", ".pth": "PyTorch",
    ".safetensors": "safetensors",
    ".mlmodel": "Core ML", ".mlpackage": "Core ML",
}


def unsupported_format(path: Path) -> str | None:
    """Return the name of a known format gpucompress does not read, from the path's suffix, or None."""
    return UNSUPPORTED.get(path.suffix.lower())


TFLITE_SUFFIX = ".tflite"
# A TFLite flatbuffer's file identifier, at bytes 4-8.
TFLITE_IDENTIFIER = b"TFL3"


def is_tflite_file(path: str | os.PathLike) -> bool:
    """Return whether a file starts like a TFLite flatbuffer (its identifier at bytes 4-8).

    Here, not in tflite.py: every model path is sniffed, and a GraphDef need not import the TFLite reader.
    """
    try:
        with open(path, "rb") as stream:
            return stream.read(8)[4:8] == TFLITE_IDENTIFIER
    except OSError:
        return False


def model_format(path: str | os.PathLike) -> str:
    """Return the format name a path holds: "savedmodel", "keras", "h5", "tflite" or "graphdef".

    A `.tflite` file, or any other file with the TFLite identifier at bytes 4-8, is "tflite".

    Raises InputError for a directory that is not a SavedModel, and for a
    known format gpucompress does not read (UNSUPPORTED: .onnx, .pt ...),
    naming it and the formats it does read.
    """
    path = Path(path)
    if path.is_dir():
        from .savedmodel import is_saved_model_dir

        if not is_saved_model_dir(path):
            raise InputError(f"{path}: is a directory without saved_model.pb, expected a SavedModel "
                             "directory or a model file")
        return "savedmodel"
    suffix = path.suffix.lower()
    if suffix == ".keras":
        return "keras"
    if suffix in HDF5_SUFFIXES:
        return "h5"
    if suffix == TFLITE_SUFFIX or is_tflite_file(path):
        return "tflite"
    unsupported = unsupported_format(path)
    if unsupported:
        raise InputError(f"{path}: {unsupported} models are not a supported format (supported: {SUPPORTED})")
    return "graphdef"


def read_model(path: str | os.PathLike):
    """Read a model, its format detected from the path. Raises InputError or FormatError."""
    kind = model_format(path)
    if kind == "savedmodel":
        from .savedmodel import read_saved_model

        return read_saved_model(path)
    if kind == "keras":
        from .keras import read_keras

        return read_keras(path)
    if kind == "h5":
        from .keras import read_hdf5

        return read_hdf5(path)
    if kind == "tflite":
        from .tflite import read_tflite

        return read_tflite(path)
    return read_graphdef(path)


def defer_values(model, name: str, shape: tuple[int, ...], make) -> None:
    """Give a model's weight new values made by make() when the model is written.

    Formats with their own `defer_values` make them one tensor at a time while
    serializing; the others get replace_values({name: make()}) now. Raises
    KeyError for an unknown name, ValueError for a shape that is not the weight's.
    """
    own = getattr(model, "defer_values", None)
    if own is not None:
        own(name, shape, make)
    else:
        model.replace_values({name: make()})


def apply_clustered(model, outcome) -> None:
    """Give a model a clustered tensor's values, from a TensorOutcome (name, shape, codebook, labels).

    Formats with `replace_labels(name, shape, codebook, labels)` write
    codebook[labels] straight into their bytes (no float tensor in between);
    the others, and tensors with non-finite values kept aside, go through
    defer_values(model, name, shape, outcome.values). Same bytes either way.
    """
    own = getattr(model, "replace_labels", None)
    # Per-channel and grouped codebooks are (rows, k), their labels index a row: made as values.
    per_tensor = outcome.codebook.ndim == 1
    if own is not None and per_tensor and (outcome.nonfinite_index is None or not outcome.nonfinite_index.size):
        own(outcome.name, outcome.shape, outcome.codebook, outcome.labels)
    else:
        defer_values(model, outcome.name, outcome.shape, outcome.values)


def model_pieces(model):
    """Return an iterator over `model.to_bytes()` in pieces (one piece for formats that cannot stream)."""
    pieces = getattr(model, "pieces", None)
    return pieces() if pieces is not None else iter([model.to_bytes()])


def write_model(model, path: str | os.PathLike) -> int:
    """Write a model in its own format, atomically; returns the number of bytes written."""
    return model.save(path)


def default_output(path: str | os.PathLike, *, folder: bool | None = None) -> Path:
    """Return the default output path for an input, its format still recognisable.

    `MODEL.pb` -> `MODEL.pb.min` (the seed's name); `model.keras` ->
    `model.min.keras`; `model.h5` -> `model.min.h5`; `model.weights.h5` ->
    `model.min.weights.h5` (Keras wants that ending); `model.tflite` ->
    `model.min.tflite`; a SavedModel folder
    `saved` -> `saved.min`. folder: whether `path` names a SavedModel folder
    (default: whether it is a directory now).
    """
    path = Path(path)
    name = path.name
    lower = name.lower()
    if not (path.is_dir() if folder is None else folder):
        for suffix in (".weights.h5", ".keras", *HDF5_SUFFIXES, TFLITE_SUFFIX):
            if lower.endswith(suffix) and len(name) > len(suffix):
                return path.with_name(f"{name[: -len(suffix)]}.min{name[-len(suffix):]}")
    return path.with_name(name + ".min")
