"""TFLite / LiteRT flatbuffers (`.tflite`): read the operators' constant weights, write clustered ones back.

No TensorFlow: the file is read with the bounds-checked reader of
models.flatbuffer (every offset checked against the file size), following the
TFLite schema (schema.fbs, version 3); the operator and tensor-type numbers
come from the schema's generated Python code of LiteRT (`ai-edge-litert`,
`ai_edge_litert.schema_py_generated`; the `tflite` extra), or TensorFlow's
copy of it when LiteRT is not installed.

Weights are the constant buffers feeding the weight inputs of the operators in
WEIGHT_INPUTS (a float16 buffer through its DEQUANTIZE too). A buffer shared by
several tensors is one weight (the other tensors' names are its aliases).
Writing patches the buffers' bytes in place in a copy of the file: clustered
values keep their dtype and so their length, and every other byte (operators,
tensors, quantization parameters, metadata, signatures) stays identical.

Quantized integer weights (int8, int16) are clustered in their integer domain:
the engine sees their integers as float32 (exact; Weight.load_integers gives
the stored integers, which clustering.py histograms instead, with the same
results), and the clustered values are
rounded back to integers, so a tensor holds at most k distinct integers and its
scales and zero points are unchanged. The objective is the dequantized error:
the squared error in integers, weighed, with per-channel scales that differ,
by each channel's scale squared (Weight.channel_scales).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy

from ..errors import FormatError, InputError
from ..files import check_input_file, write_atomic
from ..kernels import compiled
from . import TFLITE_IDENTIFIER as FILE_IDENTIFIER  # the registry sniffs files by it
from . import tflite_quantization
from .flatbuffer import Reader
from .skeleton import frame_skeleton, split_skeleton
from .weights import Weight

# Flatbuffers address with uint32 offsets; a buffer stored after the flatbuffer
# (Buffer.offset / size, models over 2 GiB) is within the file too.
MAX_TFLITE_BYTES = 1 << 34
SCHEMA_VERSION = 3

# A skeleton: magic, u32 length of a JSON list of the removed weights, that
# JSON, then the file with those weights' buffers zeroed. Under QUANTIZED_MAGIC
# the file's quantization vectors are also rewritten for zstd (tflite_quantization);
# a file without any (a float model) keeps SKELETON_MAGIC and its plain bytes.
SKELETON_MAGIC = b"TFSK"
QUANTIZED_MAGIC = b"TFSQ"


def schema():
    """Return the TFLite schema's generated Python module (LiteRT's, else TensorFlow's).

    Raises InputError when neither is installed.
    """
    import importlib

    try:
        from ai_edge_litert import schema_py_generated
    except ImportError:
        try:
            # by module path: `from tensorflow.lite.python import ...` meets TensorFlow's API alias of lite
            schema_py_generated = importlib.import_module("tensorflow.lite.python.schema_py_generated")
        except ImportError:
            raise InputError("reading .tflite needs the TFLite schema: pip install 'gpucompress[tflite]' "
                             "(ai-edge-litert)") from None
    return schema_py_generated


def weight_inputs() -> dict[int, tuple[int, ...]]:
    """Return {builtin operator code: indices of its inputs that are weights} (from the schema's enum)."""
    op = schema().BuiltinOperator
    return {op.FULLY_CONNECTED: (1,), op.CONV_2D: (1,), op.DEPTHWISE_CONV_2D: (1,), op.TRANSPOSE_CONV: (1,),
            op.BATCH_MATMUL: (0, 1), op.EMBEDDING_LOOKUP: (1,), op.GATHER: (0,)}


def _numpy_types() -> dict[int, numpy.dtype]:
    t = schema().TensorType
    return {t.FLOAT32: numpy.dtype("<f4"), t.FLOAT16: numpy.dtype("<f2"), t.FLOAT64: numpy.dtype("<f8"),
            t.INT8: numpy.dtype("<i1"), t.INT16: numpy.dtype("<i2"), t.INT32: numpy.dtype("<i4"),
            t.INT64: numpy.dtype("<i8"), t.UINT8: numpy.dtype("<u1"), t.UINT16: numpy.dtype("<u2"),
            t.UINT32: numpy.dtype("<u4"), t.UINT64: numpy.dtype("<u8"), t.BOOL: numpy.dtype("u1"),
            t.COMPLEX64: numpy.dtype("<c8"), t.COMPLEX128: numpy.dtype("<c16")}


FLOAT_TYPES = ("float32", "float16")
INTEGER_TYPES = ("int8", "int16")


@dataclass
class Tensor:
    """One tensor of a subgraph as the file states it."""

    subgraph: int
    index: int
    name: str
    type: int
    shape: tuple[int, ...]
    buffer: int
    sparse: bool
    scales: numpy.ndarray
    zero_points: numpy.ndarray
    quantized_dimension: int


@dataclass
class Operator:
    """One operator: its builtin code (or -1 for a custom one), input and output tensor indices."""

    code: int
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]


@dataclass
class _Entry:
    """One weight: a constant buffer, the tensors that use it (first one names it)."""

    name: str
    buffer: int
    dtype: numpy.dtype
    shape: tuple[int, ...]
    tensors: list[Tensor] = field(default_factory=list)
    kinds: set = field(default_factory=set)  # layer kinds of the operators that use it (channels.KIND_AXES)


@dataclass
class Structure:
    """What the reader found: buffers as (start, length) in the file, subgraphs' tensors and operators."""

    buffers: list[tuple[int, int]]
    tensors: list[list[Tensor]]
    operators: list[list[Operator]]


def parse_structure(data: bytes, source: str = "input") -> Structure:
    """Read and check a .tflite file's buffers, tensors and operators.

    Every offset is checked against the size of `data`; every tensor with a
    constant buffer of a fixed-size type must hold exactly shape x item size
    bytes. Raises FormatError (truncated or corrupt flatbuffer, offsets past
    the end, an unknown schema version, a shape that disagrees with its buffer).
    """
    if len(data) < 8:
        raise FormatError(f"{source}: {len(data)} bytes, too short for a TFLite flatbuffer")
    if data[4:8] != FILE_IDENTIFIER:
        raise FormatError(f"{source}: not a TFLite flatbuffer (no {FILE_IDENTIFIER.decode()} identifier)")
    reader = Reader(data, source)
    model = reader.root()
    version = model.scalar(0, "u32")
    if version != SCHEMA_VERSION:
        raise FormatError(f"{source}: TFLite schema version {version}, only version {SCHEMA_VERSION} is known")
    codes = []
    for code in model.tables(1, "operator code"):
        custom = code.field(1, 4) is not None
        codes.append(-1 if custom else max(code.scalar(0, "i8"), code.scalar(3, "i32")))
    buffers = []
    for index, buffer in enumerate(model.tables(4, "buffer")):
        start, length = buffer.vector(0, 1, f"buffer {index} data")
        offset, size = buffer.scalar(1, "u64"), buffer.scalar(2, "u64")
        if offset > 1:  # data stored after the flatbuffer (1 marks "none" in the converter)
            reader.check(offset, size, f"buffer {index} data")
            start, length = offset, size
        buffers.append((start, length))
    types = _numpy_types()
    subgraph_tensors, subgraph_operators = [], []
    for number, subgraph in enumerate(model.tables(2, "subgraph")):
        tensors = []
        for index, table in enumerate(subgraph.tables(0, "tensor")):
            what = f"subgraph {number} tensor {index}"
            shape = tuple(int(x) for x in table.array(0, "<i4", f"{what} shape"))
            quantization = table.table(4, f"{what} quantization")
            scales = quantization.array(2, "<f4", f"{what} scales") if quantization else numpy.zeros(0, "<f4")
            zeros = quantization.array(3, "<i8", f"{what} zero points") if quantization else numpy.zeros(0, "<i8")
            tensor = Tensor(number, index, table.string(3, f"{what} name") or f"tensor{index}",
                            table.scalar(1, "i8"), shape, table.scalar(2, "u32"), table.field(6, 4) is not None,
                            scales, zeros, quantization.scalar(6, "i32") if quantization else 0)
            if tensor.buffer >= max(len(buffers), 1):
                raise FormatError(f"{source}: {what} names buffer {tensor.buffer} of {len(buffers)}")
            _check_size(tensor, buffers, types, source)
            tensors.append(tensor)
        operators = []
        for index, table in enumerate(subgraph.tables(3, "operator")):
            what = f"subgraph {number} operator {index}"
            opcode = table.scalar(0, "u32")
            if opcode >= len(codes):
                raise FormatError(f"{source}: {what} has operator code {opcode} of {len(codes)}")
            inputs = tuple(int(x) for x in table.array(1, "<i4", f"{what} inputs"))
            outputs = tuple(int(x) for x in table.array(2, "<i4", f"{what} outputs"))
            if any(not -1 <= x < len(tensors) for x in inputs + outputs):
                raise FormatError(f"{source}: {what} names a tensor outside the {len(tensors)} of its subgraph")
            operators.append(Operator(codes[opcode], inputs, outputs))
        subgraph_tensors.append(tensors)
        subgraph_operators.append(operators)
    if not subgraph_tensors:
        raise FormatError(f"{source}: TFLite model without subgraphs")
    return Structure(buffers, subgraph_tensors, subgraph_operators)


def _check_size(tensor: Tensor, buffers, types, source: str) -> None:
    length = buffers[tensor.buffer][1] if buffers else 0
    if not length or tensor.sparse or tensor.type not in types:
        return
    if any(d < 0 for d in tensor.shape):
        raise FormatError(f"{source}: constant tensor {tensor.name!r} has shape {list(tensor.shape)}")
    expected = int(numpy.prod(tensor.shape, dtype=object)) * types[tensor.type].itemsize
    if expected != length:
        raise FormatError(f"{source}: tensor {tensor.name!r} of shape {list(tensor.shape)} needs {expected} "
                          f"bytes, its buffer {tensor.buffer} holds {length}")


class TFLiteModel:
    """A .tflite file's bytes and the weight buffers its operators use.

    replace_values edits this model's own copy of the bytes (a bytearray).
    """

    format_name = "tflite"

    def __init__(self, data: bytes, *, source: str = "input"):
        self._adopt(bytearray(data), source)

    @classmethod
    def _owning(cls, data: bytearray, source: str) -> "TFLiteModel":
        """Return a model that takes `data` as its own bytes (no copy; the caller lets go of it)."""
        model = cls.__new__(cls)
        model._adopt(data, source)
        return model

    def _adopt(self, data: bytearray, source: str) -> None:
        self.source = source
        self.structure = parse_structure(data, source)
        self._data = data
        self._entries = self._find_weights()
        self._missing: set[str] = set()

    def _find_weights(self) -> dict[str, _Entry]:
        types, wanted = _numpy_types(), weight_inputs()
        op_codes = schema().BuiltinOperator
        dequantize = op_codes.DEQUANTIZE
        # TFLite's weight layouts: filters [out, h, w, in], FULLY_CONNECTED [out, in],
        # DEPTHWISE_CONV_2D [1, h, w, out], embeddings [vocabulary, dim].
        layer_kinds = {op_codes.CONV_2D: "tflite_conv", op_codes.FULLY_CONNECTED: "tflite_fully_connected",
                       op_codes.TRANSPOSE_CONV: "tflite_transpose_conv", op_codes.DEPTHWISE_CONV_2D: "tflite_depthwise",
                       op_codes.EMBEDDING_LOOKUP: "embedding", op_codes.GATHER: "embedding"}
        by_buffer: dict[int, _Entry] = {}
        for tensors, operators in zip(self.structure.tensors, self.structure.operators):
            producer = {out: op for op in operators for out in op.outputs}
            for op in operators:
                for position in wanted.get(op.code, ()):
                    if position >= len(op.inputs) or op.inputs[position] < 0:
                        continue
                    tensor = tensors[op.inputs[position]]
                    source_op = producer.get(tensor.index)
                    # float16 weights reach the operator through a DEQUANTIZE to float32
                    if (source_op is not None and source_op.code == dequantize and source_op.inputs
                            and source_op.inputs[0] >= 0):
                        tensor = tensors[source_op.inputs[0]]
                    if (tensor.sparse or tensor.type not in types or tensor.buffer == 0
                            or not self.structure.buffers[tensor.buffer][1]):
                        continue
                    entry = by_buffer.get(tensor.buffer)
                    if entry is None:
                        entry = by_buffer[tensor.buffer] = _Entry("", tensor.buffer, types[tensor.type],
                                                                  tensor.shape)
                    if all(t is not tensor for t in entry.tensors):
                        entry.tensors.append(tensor)
                    entry.kinds.add(layer_kinds.get(op.code))
        entries, used = {}, set()
        for entry in by_buffer.values():
            name = entry.tensors[0].name
            entry.name = name if name not in used else f"{name}#buffer{entry.buffer}"
            used.add(entry.name)
            entries[entry.name] = entry
        return entries

    def _kind(self, entry: _Entry) -> str:
        """Return "float", "integer" or "other": how an entry's values are clustered."""
        if any(t.type != entry.tensors[0].type for t in entry.tensors):
            return "other"  # one buffer read as two types: leave it
        if entry.dtype.name in FLOAT_TYPES:
            return "float"
        return "integer" if entry.dtype.name in INTEGER_TYPES else "other"

    def _values(self, entry: _Entry) -> numpy.ndarray:
        start, length = self.structure.buffers[entry.buffer]
        return numpy.frombuffer(self._data, dtype=entry.dtype, count=length // entry.dtype.itemsize,
                                offset=start).reshape(entry.shape)

    def weights(self) -> list[Weight]:
        """Return each weight buffer as a Weight, in operator order.

        float32/float16 buffers come as they are; int8/int16 ones as their
        integers in float32 (dtype "float32"; the engine clusters floats).
        Other types are listed as not floating.
        """
        result = []
        for name, entry in self._entries.items():
            kind = self._kind(entry)
            size = int(numpy.prod(entry.shape, dtype=numpy.int64))
            # max_distinct is the number of values stored (Weight's meaning; pack reads fewer than
            # the size as a fill), not the dtype's bound: an int8 tensor stores all its values.
            integers = scales = None
            if kind == "integer":
                scales = _channel_scales(entry)
                dtype = "float32"
                load = (lambda e=entry: self._values(e).astype(numpy.float32))
                integers = (lambda e=entry: self._values(e).copy())
            else:
                dtype = entry.dtype.name
                load = (lambda e=entry: self._values(e).copy())
            result.append(Weight(name=name, dtype=dtype, shape=entry.shape, floating=kind != "other",
                                 max_distinct=size if kind != "other" else 0, load=load,
                                 aliases=tuple(dict.fromkeys(t.name for t in entry.tensors[1:])),
                                 # one kind of user only: a buffer two kinds read has no one channel axis
                                 layer_kind=next(iter(entry.kinds)) if len(entry.kinds) == 1 else None,
                                 integer_levels=1 << (8 * entry.dtype.itemsize) if kind == "integer" else None,
                                 load_integers=integers, channel_scales=scales))
        return result

    def integer_weights(self) -> dict[str, dict]:
        """Return, per int8/int16 weight, its quantization: {"dtype", "scales", "zero_points", "axis"}."""
        return {name: {"dtype": e.dtype.name, "scales": e.tensors[0].scales, "zero_points": e.tensors[0].zero_points,
                       "axis": e.tensors[0].quantized_dimension}
                for name, e in self._entries.items() if self._kind(e) == "integer"}

    def tensor_locations(self, name: str) -> list[tuple[int, int]]:
        """Return the (subgraph, tensor index) pairs that use a weight's buffer."""
        return [(t.subgraph, t.index) for t in self._entries[name].tensors]

    def replace_values(self, values: dict[str, numpy.ndarray]) -> None:
        """Write new values for the named weights into this model's bytes, in place.

        Each array must have the weight's shape. Floating weights are cast to
        their dtype; integer weights rounded to the nearest integer and clipped
        to their dtype's range. Raises KeyError for an unknown name, ValueError
        for a shape that differs.
        """
        for name, array in values.items():
            entry = self._entries[name]
            if tuple(array.shape) != entry.shape:
                raise ValueError(f"values[{name!r}].shape={array.shape} should be {entry.shape}.")
            # Written straight into the file's bytes (a view of the buffer): no temporary copies.
            target = self._values(entry)
            if self._kind(entry) == "integer":
                limits = numpy.iinfo(entry.dtype)
                rounded = numpy.rint(array)
                numpy.clip(rounded, limits.min, limits.max, out=rounded)
                numpy.copyto(target, rounded, casting="unsafe")
            else:
                numpy.copyto(target, numpy.asarray(array), casting="unsafe")
            self._missing.discard(name)

    def replace_labels(self, name: str, shape, codebook: numpy.ndarray, labels: numpy.ndarray) -> None:
        """Write codebook[labels] as the named weight's values, in place: replace_values' bytes, made faster.

        codebook: (k,) floats; labels: integer indices into it, one per value
        of the weight (shape: the weight's). For an integer weight the
        codebook is rounded and clipped first (k values, not one per weight
        value: the same elementwise rint and clip, so the same integers), then
        gathered straight into the buffer. Raises KeyError for an unknown
        name, ValueError for a shape or label count that differs.
        """
        entry = self._entries[name]
        if tuple(shape) != entry.shape or labels.size != int(numpy.prod(entry.shape, dtype=numpy.int64)):
            raise ValueError(f"{name!r}: shape {tuple(shape)} with {labels.size} labels should be {entry.shape}.")
        codebook = numpy.asarray(codebook)
        if self._kind(entry) == "integer":
            limits = numpy.iinfo(entry.dtype)
            codebook = numpy.clip(numpy.rint(codebook), limits.min, limits.max)
        # numpy.take(mode="raise") buffers `out`; labels index the codebook by construction (k entries),
        # so "clip" only skips that copy. The compiled gather is the same take in one pass (numpy's
        # widens every label to an intp first: 3x slower on a 2 M-value int8 buffer).
        table, flat, target = codebook.astype(entry.dtype), labels.reshape(-1), self._values(entry).reshape(-1)
        if compiled.available() and flat.dtype in compiled.LABELS and table.dtype.itemsize in (1, 2, 4, 8):
            compiled.gather(table, flat, target)
        else:
            numpy.take(table, flat, out=target, mode="clip")
        self._missing.discard(name)

    def to_skeleton(self, names) -> bytes:
        """Return the file with the named weights' buffers zeroed, behind a header naming them.

        `from_skeleton` then `replace_values` with the same values gives back
        `to_bytes()` exactly (the buffers keep their place and length). A file
        with quantization vectors has them rewritten for zstd (QUANTIZED_MAGIC,
        tflite_quantization; undone by from_skeleton). Raises KeyError for an
        unknown name, ValueError for a weight that is not clustered.
        """
        copy = bytearray(self._data)
        names = list(dict.fromkeys(names))
        for name in names:
            entry = self._entries[name]
            if self._kind(entry) == "other":
                raise ValueError(f"weight {name!r} is not floating or integer; it cannot be removed.")
            start, length = self.structure.buffers[entry.buffer]
            copy[start : start + length] = bytes(length)
        magic = QUANTIZED_MAGIC if tflite_quantization.encode(copy, self.source) else SKELETON_MAGIC
        return frame_skeleton(magic, names, bytes(copy))

    @classmethod
    def from_skeleton(cls, data: bytes, *, source: str = "skeleton") -> "TFLiteModel":
        """Rebuild a model from `to_skeleton` bytes; its removed weights need replace_values
        before to_bytes or save. Raises FormatError when the bytes are not a valid skeleton."""
        quantized = data[:4] == QUANTIZED_MAGIC
        names, body = split_skeleton(data, QUANTIZED_MAGIC if quantized else SKELETON_MAGIC, "TFLite", source)
        if quantized:
            body = bytearray(body)
            tflite_quantization.decode(body, source)
        model = cls(body, source=source)
        if not all(isinstance(n, str) for n in names):
            raise FormatError(f"{source}: skeleton header should be a list of names")
        for name in names:
            entry = model._entries.get(name)
            if entry is None or name in model._missing or model._kind(entry) == "other":
                raise FormatError(f"{source}: skeleton names an unknown or repeated weight {name!r}")
            if model._values(entry).any():
                raise FormatError(f"{source}: skeleton weight {name!r} is not zeroed")
            model._missing.add(name)
        return model

    def stored_bytes(self) -> dict[str, int]:
        """Return, per weight name, the bytes of its buffer."""
        return {name: self.structure.buffers[e.buffer][1] for name, e in self._entries.items()}

    def to_bytes(self) -> bytes:
        """Return the file's bytes as `save` writes them. Raises FormatError for a skeleton still missing values."""
        self._check_complete()
        return bytes(self._data)

    def _check_complete(self) -> None:
        if self._missing:
            raise FormatError(f"{len(self._missing)} skeleton weights have no values (first: {min(self._missing)!r})")

    def save(self, path: str | os.PathLike) -> int:
        """Write the model to `path` atomically, after checking it reads back; returns the bytes written."""
        self._check_complete()
        # The model's own bytes, checked and written as they are: no copy of the whole file.
        parse_structure(self._data, str(path))
        write_atomic(Path(path), memoryview(self._data))
        return len(self._data)


def _channel_scales(entry: _Entry):
    """Return Weight.channel_scales of an integer entry: a callable giving (axis, float64 scales), or None
    for one scale (or all equal), scales that do not match the shape, or tensors of the buffer that
    disagree on them (their dequantized errors differ: the integers' own error is then the objective)."""
    first = entry.tensors[0]
    scales, axis = first.scales, first.quantized_dimension
    if scales.size < 2 or any(t.quantized_dimension != axis or not numpy.array_equal(t.scales, scales)
                              for t in entry.tensors[1:]):
        return None
    if not 0 <= axis < len(entry.shape) or entry.shape[axis] != scales.size:
        return None
    widened = scales.astype(numpy.float64)
    if not (numpy.isfinite(widened).all() and (widened > 0).all()) or (widened == widened[0]).all():
        return None
    return lambda: (axis, widened.copy())


def read_tflite(path: str | os.PathLike) -> TFLiteModel:
    """Read a .tflite file. Raises InputError (path) or FormatError (contents)."""
    path = check_input_file(path, max_bytes=MAX_TFLITE_BYTES)
    try:
        # Read into the bytearray the model edits: one copy of the file in memory, not two.
        data = bytearray(path.stat().st_size)
        with open(path, "rb") as stream:
            if stream.readinto(data) != len(data):
                raise FormatError(f"{path}: the file changed size while being read")
    except OSError as error:
        raise InputError(f"{path}: cannot read ({error.strerror})") from None
    return TFLiteModel._owning(data, str(path))
