"""TensorFlow SavedModel directories: cluster the variables stored in their checkpoint.

A SavedModel is `saved_model.pb` (graphs, signatures, object graph),
`variables/variables.index` + `variables.data-*` (a TensorFlow checkpoint
holding every variable) and optional `assets/` and `fingerprint.pb`. Writing
copies the directory and rewrites the checkpoint with every key it held, same
names, dtypes and shapes (the object-graph key included), so
`tf.saved_model.load` restores it and the signatures are untouched. TensorFlow's
checkpoint writer puts the same tensors into the same bytes, so the same input
and options give identical files. `fingerprint.pb` is recomputed for the new
checkpoint.

Weight names are checkpoint keys without `/.ATTRIBUTES/VARIABLE_VALUE`
(`variables/1`, `_operations/3/_kernel`); each also answers to the variable's
own name (`sequential/dense/kernel`), that name without its model prefix
(`dense/kernel`, for paths of three parts or more) and its key with the last
part's leading underscores dropped (`d1/kernel`) in
`whitelisted`. Which keys are optimizer state the checkpoint's object graph
says (object_graph.py); without one, keys under `optimizer/` and optimizer slots.

TensorFlow is imported here only, inside the functions that need it.
"""
from __future__ import annotations

import io
import logging
import os
import shutil
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

import numpy

from .. import limits
from ..errors import FormatError, InputError
from ..files import check_tree, fix_modes, replace_directory, temporary_directory
from .tensor_proto import MAX_TENSOR_VALUES
from .weights import ROLE_OPTIMIZER, ROLE_VARIABLE, Weight

log = logging.getLogger(__name__)

SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")
CHECKPOINT_PREFIX = ("variables", "variables")
VALUE_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
FINGERPRINT_FILE = "fingerprint.pb"


def _tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow

    return tensorflow


def is_saved_model_dir(path: str | os.PathLike) -> bool:
    """Return whether `path` is a directory holding saved_model.pb or saved_model.pbtxt."""
    path = Path(path)
    return path.is_dir() and any((path / name).is_file() for name in SAVED_MODEL_FILES)


def _is_checkpoint_file(name: str) -> bool:
    return name == "variables.index" or name.startswith("variables.data-")


def _is_optimizer_key(key: str) -> bool:
    return key.startswith("optimizer/") or "/.OPTIMIZER_SLOT/" in key


class SavedModel:
    """A SavedModel directory and the variables of its checkpoint.

    directory: the SavedModel. source: how messages name it. keep: an object
    kept alive with the model (the temporary folder of a skeleton).
    The checkpoint is read lazily, one tensor at a time.
    """

    format_name = "savedmodel"

    def __init__(self, directory: Path, *, source: str | None = None, keep=None):
        self.directory = Path(directory)
        self.source = source or str(directory)
        self._keep = keep
        self._values: dict[str, numpy.ndarray] = {}
        # Symlinks, hard links, devices and FIFOs are refused before anything is read.
        self._input_bytes = check_tree(self.directory, self.source)
        _check_graph(self.directory, self.source)
        self._reader = None
        self._keys: dict[str, str] = {}  # weight name -> checkpoint key
        prefix = self.directory.joinpath(*CHECKPOINT_PREFIX)
        if prefix.with_name("variables.index").is_file():
            tf = _tf()
            try:
                self._reader = tf.train.load_checkpoint(str(prefix))
                shapes = self._reader.get_variable_to_shape_map()
                self._dtypes = self._reader.get_variable_to_dtype_map()
            except (tf.errors.OpError, ValueError, RuntimeError) as error:
                message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                raise FormatError(f"{self.source}: corrupt SavedModel variables ({message})") from None
            self._shapes = {key: tuple(int(size) for size in shape) for key, shape in shapes.items()}
            for key in sorted(shapes):
                name = key[: -len(VALUE_SUFFIX)] if key.endswith(VALUE_SUFFIX) else key
                if name in shapes or name in self._keys:
                    name = key
                self._keys[name] = key

    def _roles(self):
        """Return the KeyRoles of the checkpoint's object graph, or None when it has none or it is unreadable."""
        if self._reader is None or OBJECT_GRAPH_KEY not in self._shapes:
            return None
        from tensorflow.core.protobuf import trackable_object_graph_pb2

        from .object_graph import key_roles

        graph = trackable_object_graph_pb2.TrackableObjectGraph()
        try:
            graph.ParseFromString(self._reader.get_tensor(OBJECT_GRAPH_KEY))
        except Exception:  # noqa: BLE001 - then the key rule decides; the keys still work
            log.warning("%s: unreadable object graph: optimizer state told by key names only", self.source)
            return None
        return key_roles(graph)

    def weights(self) -> list[Weight]:
        """Return every checkpoint entry as a Weight, in key order.

        Optimizer state is what the object graph says it is (object_graph);
        without one, keys under `optimizer/` and optimizer slots.
        """
        roles = self._roles()
        result = []
        for name, key in self._keys.items():
            dtype = self._dtypes[key]
            shape = self._shapes[key]
            size = int(numpy.prod(shape, dtype=numpy.int64))
            floating = bool(dtype.is_floating)
            if floating and size > MAX_TENSOR_VALUES:
                raise FormatError(f"{self.source}: variable {name} of {size} values exceeds the limit "
                                  f"of {MAX_TENSOR_VALUES}")
            if floating:
                limits.check(size * dtype.size, self._input_bytes, f"{self.source}: variable {name}")
            optimizer = _is_optimizer_key(key) if roles is None else key in roles.optimizer
            own = roles.names.get(key, ()) if roles is not None else ()
            # d1/_kernel also answers to d1/kernel (Keras keeps kernels as _kernel)
            head, _, last = name.rpartition("/")
            path = f"{head}/{last.lstrip('_') or last}" if head else name
            aliases = tuple(alias for alias in dict.fromkeys((*own, path)) if alias != name)
            result.append(Weight(
                name=name, dtype=dtype.name, shape=shape, floating=floating,
                max_distinct=size if floating else 0, load=(lambda key=key: self._load(key)),
                role=ROLE_OPTIMIZER if optimizer else ROLE_VARIABLE, aliases=aliases,
            ))
        return result

    def _load(self, key: str) -> numpy.ndarray:
        tf = _tf()
        try:
            return numpy.array(self._reader.get_tensor(key))
        except (tf.errors.OpError, ValueError) as error:
            raise FormatError(f"{self.source}: cannot read variable {key} ({error})") from None

    def replace_values(self, values: dict[str, numpy.ndarray]) -> None:
        """Record new values for named variables (same shape; cast to the variable's dtype).

        Raises KeyError for an unknown name, ValueError for a wrong shape.
        """
        for name, array in values.items():
            shape = self._shapes[self._keys[name]]
            if tuple(array.shape) != shape:
                raise ValueError(f"values[{name!r}].shape={array.shape} should be {shape}.")
        self._values.update({name: numpy.array(array) for name, array in values.items()})

    def _write_directory(self, target: Path, values: dict[str, numpy.ndarray]) -> int:
        """Write the SavedModel into the existing empty folder `target`; returns bytes written."""
        def ignore(folder, names):
            if Path(folder) == self.directory / "variables":
                return [name for name in names if _is_checkpoint_file(name)]
            return []

        shutil.copytree(self.directory, target, ignore=ignore, dirs_exist_ok=True)
        if self._keys:
            tf = _tf()
            keys, tensors = [], []
            for name, key in self._keys.items():
                dtype = self._dtypes[key]
                if name in values:
                    tensor = tf.constant(numpy.asarray(values[name], dtype=dtype.as_numpy_dtype), dtype=dtype)
                else:
                    tensor = tf.constant(self._reader.get_tensor(key), dtype=dtype)
                keys.append(key)
                tensors.append(tensor)
            prefix = target.joinpath(*CHECKPOINT_PREFIX)
            prefix.parent.mkdir(exist_ok=True)
            tf.raw_ops.SaveV2(prefix=str(prefix), tensor_names=keys, shape_and_slices=[""] * len(keys),
                              tensors=tensors)
            check = tf.train.load_checkpoint(str(prefix)).get_variable_to_shape_map()
            if {k: tuple(s) for k, s in check.items()} != self._shapes:
                raise FormatError(f"{target}: rewritten checkpoint does not read back")
            _update_fingerprint(target)
        fix_modes(target)
        return sum(path.stat().st_size for path in target.rglob("*") if path.is_file())

    def save(self, path: str | os.PathLike) -> int:
        """Write the SavedModel to the folder `path` atomically; returns the bytes written.

        Writes a temporary folder next to `path`, then renames it; an existing
        `path` (the caller checked it may be replaced) is swapped out and removed.
        """
        path = Path(path)
        temporary = temporary_directory(path)
        try:
            written = self._write_directory(temporary, self._values)
            replace_directory(temporary, path)
        except BaseException:
            shutil.rmtree(temporary, ignore_errors=True)
            raise
        return written

    def to_bytes(self) -> bytes:
        """Return the SavedModel that `save` writes as a deterministic tar of its files.

        Two models give equal bytes exactly when `save` would write the same
        file names with the same contents (tar metadata is fixed).
        """
        with tempfile.TemporaryDirectory(prefix="gpucompress-savedmodel-") as folder:
            target = Path(folder) / "model"
            target.mkdir()
            self._write_directory(target, self._values)
            return _tar_directory(target)

    def to_skeleton(self, names) -> bytes:
        """Return the saved SavedModel as a deterministic tar, the named variables set to zero."""
        zeros = {}
        for name in names:
            key = self._keys[name]
            zeros[name] = numpy.zeros(self._shapes[key], dtype=self._dtypes[key].as_numpy_dtype)
        with tempfile.TemporaryDirectory(prefix="gpucompress-skeleton-") as folder:
            target = Path(folder) / "model"
            target.mkdir()
            self._write_directory(target, {**self._values, **zeros})
            return _tar_directory(target)

    @classmethod
    def from_skeleton(cls, data: bytes) -> "SavedModel":
        """Return the model a skeleton holds (unpacked into a temporary folder it keeps)."""
        keep = tempfile.TemporaryDirectory(prefix="gpucompress-skeleton-")
        target = Path(keep.name) / "model"
        _untar_directory(data, target)
        if not is_saved_model_dir(target):
            keep.cleanup()
            raise FormatError("skeleton: not a SavedModel (no saved_model.pb)")
        return cls(target, source="skeleton", keep=keep)


def _check_graph(directory: Path, source: str) -> None:
    """Raise FormatError unless saved_model.pb (or .pbtxt) parses and holds a MetaGraph."""
    from google.protobuf import text_format
    from google.protobuf.message import DecodeError
    _tf()
    from tensorflow.core.protobuf import saved_model_pb2

    message = saved_model_pb2.SavedModel()
    binary = directory / SAVED_MODEL_FILES[0]
    try:
        if binary.is_file():
            message.ParseFromString(binary.read_bytes())
        else:
            text_format.Parse((directory / SAVED_MODEL_FILES[1]).read_text(encoding="utf-8"), message)
    except (DecodeError, text_format.ParseError, UnicodeDecodeError, RuntimeError, ValueError) as error:
        raise FormatError(f"{source}: corrupt saved_model.pb ({error})") from None
    except OSError as error:
        raise InputError(f"{source}: cannot read ({error.strerror})") from None
    if not message.meta_graphs:
        raise FormatError(f"{source}: not a SavedModel (saved_model.pb holds no MetaGraph)")


def _update_fingerprint(directory: Path) -> None:
    """Recompute fingerprint.pb (it hashes the checkpoint) when the SavedModel has one.

    TensorFlow draws a random uuid for a new fingerprint; keeping the input's
    uuid makes the file deterministic.
    """
    fingerprint = directory / FINGERPRINT_FILE
    if not fingerprint.is_file():
        return
    try:
        from tensorflow.core.protobuf import fingerprint_pb2
        from tensorflow.python.saved_model.pywrap_saved_model import fingerprinting

        old = fingerprint_pb2.FingerprintDef()
        old.ParseFromString(fingerprint.read_bytes())
        new = fingerprint_pb2.FingerprintDef()
        new.ParseFromString(fingerprinting.CreateFingerprintDef(str(directory)))
        new.uuid = old.uuid
    except Exception as error:  # noqa: BLE001 - TensorFlow's private API; loading never needs it
        log.warning("%s: fingerprint not updated (%s)", directory, error)
        return
    fingerprint.write_bytes(new.SerializeToString(deterministic=True))


def _tar_directory(folder: Path) -> bytes:
    """Return a tar of a folder's files with fixed metadata: same files, same bytes."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for path in sorted(folder.rglob("*"), key=lambda p: p.relative_to(folder).as_posix()):
            info = tarfile.TarInfo(path.relative_to(folder).as_posix())
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            if path.is_dir():
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                archive.addfile(info)
            else:
                data = path.read_bytes()
                info.size, info.mode = len(data), 0o644
                archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _untar_directory(data: bytes, target: Path) -> None:
    """Unpack a skeleton tar into `target`: plain files and folders with relative names only."""
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
            members = archive.getmembers()
            for member in members:
                parts = PurePosixPath(member.name).parts
                if not (member.isfile() or member.isdir()) or member.name.startswith("/") or ".." in parts:
                    raise FormatError(f"skeleton: unsafe tar entry {member.name!r}")
            target.mkdir()
            archive.extractall(target, members=members, filter="data")
            fix_modes(target)  # no exec bits (nor other modes) from the archive
    except (tarfile.TarError, EOFError) as error:
        raise FormatError(f"skeleton: corrupt tar ({error})") from None


def read_saved_model(path: str | os.PathLike) -> SavedModel:
    """Read a SavedModel directory. Raises InputError (path) or FormatError (contents)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or directory")
    if not is_saved_model_dir(path):
        raise InputError(f"{path}: is a directory without saved_model.pb, expected a SavedModel")
    return SavedModel(path)
