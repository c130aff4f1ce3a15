"""Keras models: `.keras` zip files and HDF5 files (legacy `.h5`, `.hdf5`, `.weights.h5`).

No TensorFlow import: Keras keeps every variable as an HDF5 dataset
(`model.weights.h5` inside the `.keras` zip; `model_weights/...` in a legacy
`.h5`), which h5py reads and rewrites in place. Writing copies the HDF5 bytes
and overwrites only the named datasets' data, so everything else (structure,
non-clustered variables, optimizer state, attributes) stays byte for byte.
Other zip entries (config.json, metadata.json, assets) are copied unchanged;
the zip is rewritten with sorted entries and a fixed timestamp so the same
input and options always give the same bytes.

Weight names are dataset paths without the leading slash:
`layers/dense/vars/0` in a `.keras` file, `model_weights/dense/dense/kernel`
in a legacy `.h5`. Datasets under `optimizer/` or `optimizer_weights/` are
optimizer state. In `whitelisted` a legacy `.h5` weight also answers to its
variable's own path (`sequential/dense/kernel`) and to `dense/kernel`; a
`.keras` one to `dense/vars/0` and, for Keras's own layers, to `dense/kernel` and
`sequential/dense/kernel` (keras_names.py: config.json gives the order).
"""
from __future__ import annotations

import io
import os
import zipfile
import zlib
from pathlib import Path

import numpy

from .. import limits
from ..errors import FormatError
from ..files import read_input_file, write_atomic
from ..hdf5 import CORRUPT_HDF5_ERRORS, HDF5_SIGNATURE, h5py_module, open_hdf5
from .tensor_proto import MAX_TENSOR_VALUES
from .weights import ROLE_OPTIMIZER, ROLE_VARIABLE, Weight, variable_names

WEIGHTS_ENTRY = "model.weights.h5"
CONFIG_ENTRY = "config.json"
# Zip entries are rewritten with this timestamp (the earliest zip allows).
ZIP_DATE = (1980, 1, 1, 0, 0, 0)
# Largest zip entry we inflate into memory (checked before reading it, with the memory budget).
MAX_ENTRY_BYTES = 1 << 36
OPTIMIZER_GROUPS = ("optimizer", "optimizer_weights")


def _h5py():
    return h5py_module()


def check_entry_name(name: str, source: str) -> None:
    """Raise FormatError for a zip entry name that could land outside a folder it is extracted to.

    Refused: an empty name, an absolute path (`/x`, `\\x`, `C:x`), a `..`
    component, a backslash or a NUL character.
    """
    parts = name.split("/")
    if (not name or name.startswith("/") or "\\" in name or "\0" in name or ".." in parts
            or (len(name) > 1 and name[1] == ":")):
        raise FormatError(f"{source}: unsafe zip entry name {name!r} (absolute, '..', or a backslash)")


class _HDF5Weights:
    """The datasets of one HDF5 file held as bytes, and how to rewrite them.

    data: the file's bytes. label: how error messages name it.
    """

    def __init__(self, data: bytes, label: str):
        if not data.startswith(HDF5_SIGNATURE):  # a user block, or not HDF5 at all: open_hdf5 says which
            open_hdf5(io.BytesIO(data), label).close()
        self.data = data
        self.label = label
        self._file = None
        self._shapes = None

    def _open(self):
        if self._file is None:
            self._file = open_hdf5(io.BytesIO(self.data), self.label)
        return self._file

    def datasets(self) -> dict[str, tuple[tuple[int, ...], numpy.dtype]]:
        """Return {path: (shape, dtype)} of every dataset stored in the file, in path order."""
        if self._shapes is None:
            h5py = _h5py()
            found = {}

            def visit(name, item):
                if isinstance(item, h5py.Dataset) and item.shape is not None:
                    found[name] = (tuple(int(size) for size in item.shape), item.dtype)

            try:
                self._open().visititems(visit)
            except CORRUPT_HDF5_ERRORS as error:
                raise FormatError(f"{self.label}: corrupt HDF5 file ({error})") from None
            self._shapes = dict(sorted(found.items()))
        return self._shapes

    def weights(self) -> list[Weight]:
        """Return every dataset as a Weight (floating when its dtype is a float)."""
        result = []
        for name, (shape, dtype) in self.datasets().items():
            floating = dtype.kind == "f"
            size = int(numpy.prod(shape, dtype=numpy.int64))
            if floating and size > MAX_TENSOR_VALUES:
                raise FormatError(f"{self.label}: dataset {name} of {size} values exceeds the limit "
                                  f"of {MAX_TENSOR_VALUES}")
            if floating:  # a chunked, compressed dataset can inflate far beyond the file
                limits.check(size * dtype.itemsize, len(self.data), f"{self.label}: dataset {name}")
            parts = name.split("/", 2)
            role = ROLE_OPTIMIZER if parts[0] in OPTIMIZER_GROUPS else ROLE_VARIABLE
            aliases = _aliases(name)
            result.append(Weight(
                name=name, dtype=dtype.name if dtype.kind in "fiub" else dtype.str, shape=shape,
                floating=floating, max_distinct=size if floating else 0,
                load=(lambda name=name: self._load(name)), role=role, aliases=aliases,
            ))
        return result

    def _load(self, name: str) -> numpy.ndarray:
        try:
            return numpy.asarray(self._open()[name][()])
        except CORRUPT_HDF5_ERRORS as error:
            raise FormatError(f"{self.label}: cannot read dataset {name} ({error})") from None

    def check_values(self, values: dict[str, numpy.ndarray]) -> None:
        """Raise KeyError for an unknown name, ValueError for a wrong shape."""
        shapes = self.datasets()
        for name, array in values.items():
            shape = shapes[name][0]
            if tuple(array.shape) != shape:
                raise ValueError(f"values[{name!r}].shape={array.shape} should be {shape}.")

    def rewritten(self, values: dict[str, numpy.ndarray]) -> bytes:
        """Return the file's bytes with the named datasets' data overwritten in place.

        Writing into a copy of the bytes leaves every other byte as it was, and
        the same values always give the same bytes (no timestamps change).
        """
        if not values:
            return self.data
        buffer = io.BytesIO(self.data)
        with open_hdf5(buffer, self.label, "r+") as handle:
            for name in sorted(values):
                dataset = handle[name]
                dataset[...] = numpy.asarray(values[name], dtype=dataset.dtype)
        data = buffer.getvalue()
        check = _HDF5Weights(data, self.label)
        if check.datasets().keys() != self.datasets().keys():
            raise FormatError(f"{self.label}: rewritten HDF5 file does not read back")
        return data


def _aliases(name: str) -> tuple[str, ...]:
    """Return the other names a dataset answers to in `whitelisted`.

    Legacy `.h5`: `model_weights/dense/sequential/dense/kernel` answers to the
    variable's own path `sequential/dense/kernel` and to `dense/kernel`.
    `.keras` and `.weights.h5` store no variable names, only their order:
    `layers/dense/vars/0` answers to `dense/vars/0`.
    """
    parts = name.split("/", 2)
    if parts[0] == "model_weights" and len(parts) == 3:
        return variable_names(parts[2])
    if parts[0] == "layers" and len(parts) == 3:
        return (f"{parts[1]}/{parts[2]}",)
    return ()


def _zero_values(weights: list[Weight], names) -> dict[str, numpy.ndarray]:
    by_name = {weight.name: weight for weight in weights}
    zeros = {}
    for name in names:
        weight = by_name[name]
        zeros[name] = numpy.zeros(weight.shape, dtype=numpy.dtype(weight.dtype))
    return zeros


class _HDF5Backed:
    """The verbs shared by the two formats whose weights live in one HDF5 file.

    A subclass sets `_hdf5` (an _HDF5Weights) and `_values` ({} at first) in
    its __init__, and defines `_serialized(values)`: the whole file with those
    datasets overwritten.
    """

    def weights(self) -> list[Weight]:
        """Return every weight dataset as a Weight, in path order."""
        return self._hdf5.weights()

    def replace_values(self, values: dict[str, numpy.ndarray]) -> None:
        """Record new values for named datasets (same shape; cast to the dataset's dtype).

        Raises KeyError for an unknown name, ValueError for a wrong shape.
        """
        self._hdf5.check_values(values)
        self._values.update({name: numpy.array(array) for name, array in values.items()})

    def to_bytes(self) -> bytes:
        """Return the file as it would be saved (deterministic bytes)."""
        return self._serialized(self._values)

    def save(self, path: str | os.PathLike) -> int:
        """Write the model to `path` atomically; returns the number of bytes written."""
        data = self.to_bytes()
        write_atomic(Path(path), data)
        return len(data)

    def to_skeleton(self, names) -> bytes:
        """Return the saved bytes with the named datasets set to zero (for an archive)."""
        zeros = _zero_values(self.weights(), names)
        return self._serialized({**self._values, **zeros})

    @classmethod
    def from_skeleton(cls, data: bytes):
        """Return the model a skeleton holds; replace_values then save restores the file."""
        return cls(bytes(data), source="skeleton")


class HDF5Model(_HDF5Backed):
    """A Keras HDF5 file (legacy `model.save("m.h5")`, or `save_weights("m.weights.h5")`).

    Holds the file's bytes; replace_values records new values and save writes
    a copy of the bytes with those datasets overwritten.
    """

    format_name = "h5"

    def __init__(self, data: bytes, *, source: str = "input"):
        self.source = source
        self._hdf5 = _HDF5Weights(data, source)
        self._hdf5.datasets()
        self._values: dict[str, numpy.ndarray] = {}

    def _serialized(self, values) -> bytes:
        return self._hdf5.rewritten(values)

    def holds_model_config(self) -> bool:
        """Return whether the file holds a whole model (a `model_config` attribute), not weights only."""
        return "model_config" in self._hdf5._open().attrs


class KerasModel(_HDF5Backed):
    """A Keras 3 `.keras` zip: config.json, metadata.json, model.weights.h5, assets.

    Holds the zip's bytes; only model.weights.h5 is ever rewritten.
    """

    format_name = "keras"

    def __init__(self, data: bytes, *, source: str = "input"):
        self.source = source
        self._entries = _read_zip(data, source)
        if CONFIG_ENTRY not in self._entries or WEIGHTS_ENTRY not in self._entries:
            raise FormatError(f"{source}: not a Keras model (the zip lacks {CONFIG_ENTRY} or {WEIGHTS_ENTRY})")
        self._hdf5 = _HDF5Weights(self._entries[WEIGHTS_ENTRY][1], f"{source}:{WEIGHTS_ENTRY}")
        self._hdf5.datasets()
        self._values: dict[str, numpy.ndarray] = {}

    def weights(self) -> list[Weight]:
        """Return every weight dataset as a Weight, in path order; Keras's own layers' variables also
        answer to their names (`dense/kernel`, `sequential/dense/kernel`; models.keras_names)."""
        from dataclasses import replace

        from .keras_names import variable_names as named

        weights = self._hdf5.weights()
        names = named(self._entries[CONFIG_ENTRY][1], [w.name for w in weights])
        return [replace(w, aliases=tuple(dict.fromkeys((*w.aliases, *names[w.name])))) if w.name in names else w
                for w in weights]

    def _serialized(self, values) -> bytes:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            for name in sorted(self._entries):
                compress_type, data = self._entries[name]
                check_entry_name(name, self.source)
                if name == WEIGHTS_ENTRY:
                    data = self._hdf5.rewritten(values)
                info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
                info.compress_type = compress_type
                info.create_system = 3
                info.external_attr = (0o40755 << 16) | 0x10 if name.endswith("/") else 0o644 << 16
                archive.writestr(info, data)
        data = buffer.getvalue()
        if set(_read_zip(data, self.source)) != set(self._entries):
            raise FormatError(f"{self.source}: rewritten zip does not read back")
        return data


def _read_zip(data: bytes, source: str) -> dict[str, tuple[int, bytes]]:
    """Return {entry name: (compress_type, bytes)} of a zip; raises FormatError when corrupt."""
    entries = {}
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            budget = limits.budget(len(data))
            inflated = 0
            for info in archive.infolist():
                check_entry_name(info.filename, source)
                if info.filename in entries:
                    raise FormatError(f"{source}: corrupt zip (entry {info.filename} appears twice)")
                if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                    raise FormatError(f"{source}: zip entry {info.filename} uses an unsupported compression")
                if info.file_size > MAX_ENTRY_BYTES:
                    raise FormatError(f"{source}: zip entry {info.filename} of {info.file_size} bytes "
                                      f"exceeds the limit of {MAX_ENTRY_BYTES}")
                inflated += info.file_size
                if inflated > budget:  # a zip bomb: checked before inflating anything more
                    limits.check(inflated, len(data), f"{source}: zip entries up to {info.filename}")
                entries[info.filename] = (info.compress_type, archive.read(info))
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, NotImplementedError) as error:
        raise FormatError(f"{source}: not a Keras model (corrupt zip: {error})") from None
    return entries


def _read_bytes(path: str | os.PathLike) -> tuple[Path, bytes]:
    path, data = read_input_file(path)
    if not data:
        raise FormatError(f"{path}: empty file")
    return path, data


def read_keras(path: str | os.PathLike) -> KerasModel:
    """Read a `.keras` file. Raises InputError (path) or FormatError (contents)."""
    path, data = _read_bytes(path)
    return KerasModel(data, source=str(path))


def read_hdf5(path: str | os.PathLike) -> HDF5Model:
    """Read a Keras HDF5 file (`.h5`, `.hdf5`). Raises InputError (path) or FormatError (contents)."""
    path, data = _read_bytes(path)
    return HDF5Model(data, source=str(path))
