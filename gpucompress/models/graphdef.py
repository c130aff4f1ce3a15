"""Frozen TensorFlow GraphDefs (`.pb`): read their Const weights, write clustered ones back.

Uses TensorBoard's vendored TensorFlow protos, so no TensorFlow import (about
40 ms instead of 2 s). Every `Const` node counts, in the main graph and inside
the graph's function library; nothing but the values of clustered tensors
ever changes.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterator

import numpy
from google.protobuf.message import DecodeError

from .. import limits
from ..errors import FormatError, InputError
from ..files import check_input_file, read_input_file, write_atomic
from . import tensor_proto
from .skeleton import frame_skeleton, split_skeleton
from .weights import Weight

# Protocol buffers cannot exceed 2 GiB.
MAX_GRAPHDEF_BYTES = (1 << 31) - 1

_DTYPE_NAMES = {1: "float32", 2: "float64", 14: "bfloat16", 19: "float16", 3: "int32", 4: "uint8",
                5: "int16", 6: "int8", 7: "string", 9: "int64", 10: "bool", 17: "uint16",
                22: "uint32", 23: "uint64", 8: "complex64", 18: "complex128"}

FUNCTION_SEPARATOR = "::"

# Ops whose weight input picks the output-channel axis of per-channel codebooks
# (channels.KIND_AXES): op -> {input index: layer kind}.
_WEIGHT_INPUTS = {
    "Conv2D": {1: "conv"}, "Conv3D": {1: "conv"}, "Conv1D": {1: "conv"},
    "MatMul": {1: "matmul"}, "DepthwiseConv2dNative": {1: "depthwise"},
    "Conv2DBackpropInput": {1: "transpose_conv"}, "Conv3DBackpropInputV2": {1: "transpose_conv"},
    "GatherV2": {0: "embedding"}, "Gather": {0: "embedding"}, "ResourceGather": {0: "embedding"},
}
# Ops a weight may pass through unchanged on its way to the op that uses it.
_PASS_THROUGH = {"Identity", "ReadVariableOp", "Snapshot"}

# A skeleton: magic, u32 length of a JSON list of the removed tensors and their
# storage forms, that JSON, then the GraphDef with those tensors' values cleared.
SKELETON_MAGIC = b"GDSK"


def _graph_pb2():
    from tensorboard.compat.proto import graph_pb2

    return graph_pb2


class GraphDefModel:
    """A frozen GraphDef and its Const weights.

    The model owns its GraphDef message: `from_proto` copies the caller's, and
    `replace_values` edits only this copy. `defer_values` leaves the message
    alone: the new values are made node by node while the model is serialized,
    so a clustered model never holds both the old and the new tensor_content
    (the upb backend keeps a replaced field's old bytes until the message dies).
    """

    format_name = "graphdef"

    def __init__(self, graph_def, *, input_bytes: int | None = None):
        self.graph_def = graph_def
        # What the memory budget is measured against (limits.py): the serialized size by default.
        self._input_bytes = input_bytes
        self._nodes = {}
        # Skeleton tensors waiting for their values: name -> ("content",) or ("values", count).
        self._missing: dict[str, tuple] = {}
        # Weights whose values are made when serialized: name -> (make, skeleton form or None).
        self._deferred: dict[str, tuple[Callable[[], numpy.ndarray], tuple | None]] = {}
        # Weights seen (by weights()) to store tensor_content: their form is known without reading
        # the field again, which copies all of it (upb), when the new values are stored.
        self._content_names: set[str] = set()
        # Deferred weights given as a codebook and labels (replace_labels): name -> (codebook, labels).
        self._labelled: dict[str, tuple[numpy.ndarray, numpy.ndarray]] = {}
        for node in graph_def.node:
            self._add_const(node.name, node)
        for function in graph_def.library.function:
            for node in function.node_def:
                self._add_const(f"{function.signature.name}{FUNCTION_SEPARATOR}{node.name}", node)

    def _add_const(self, name, node):
        if node.op == "Const" and "value" in node.attr:
            self._nodes[name] = node

    def layer_kinds(self) -> dict[str, str]:
        """Return {Const name: layer kind} for the Consts that feed a known op's weight input
        (_WEIGHT_INPUTS; through Identity nodes), the rule of per-channel codebooks' default axis.

        A Const feeding two kinds, or a MatMul with transpose_b, gets none (its last axis is used).
        """
        graphs = [("", self.graph_def.node)] + [(f"{f.signature.name}{FUNCTION_SEPARATOR}", f.node_def)
                                                for f in self.graph_def.library.function]
        kinds: dict[str, str] = {}
        for prefix, nodes in graphs:
            through = {node.name: node.input[0] for node in nodes if node.op in _PASS_THROUGH and node.input}
            for node in nodes:
                for index, kind in _WEIGHT_INPUTS.get(node.op, {}).items():
                    if index >= len(node.input):
                        continue
                    if node.op == "MatMul" and node.attr["transpose_b"].b:
                        kind = "matmul_transposed"
                    source, seen = node.input[index].lstrip("^").split(":")[0], 0
                    while source in through and seen < 16:  # a bounded walk: a cycle never hangs it
                        source, seen = through[source].lstrip("^").split(":")[0], seen + 1
                    name = prefix + source
                    if name in self._nodes:
                        kinds[name] = kind if kinds.get(name, kind) == kind else "ambiguous"
        return {name: kind for name, kind in kinds.items() if kind != "ambiguous"}

    @classmethod
    def from_proto(cls, graph_def) -> "GraphDefModel":
        """Return a model over a copy of a GraphDef message (the caller's stays untouched)."""
        copy = _graph_pb2().GraphDef()
        if type(graph_def) is type(copy):
            copy.CopyFrom(graph_def)
        else:  # a TensorFlow GraphDef: same schema, another generated class
            copy.ParseFromString(graph_def.SerializeToString())
        return cls(copy)

    @classmethod
    def from_bytes(cls, data: bytes, *, source: str = "input") -> "GraphDefModel":
        """Parse a serialized GraphDef; raises FormatError when the bytes are not one."""
        graph_def = _graph_pb2().GraphDef()
        try:
            graph_def.ParseFromString(data)
        except (DecodeError, RuntimeError, ValueError) as error:
            raise FormatError(f"{source}: not a TensorFlow GraphDef ({error})") from None
        return cls._checked(graph_def, source, len(data))

    @classmethod
    def _checked(cls, graph_def, source: str, input_bytes: int) -> "GraphDefModel":
        if len(graph_def.node) == 0 and len(graph_def.library.function) == 0:
            raise FormatError(f"{source}: not a TensorFlow GraphDef (no nodes)")
        if any(not node.op or not node.name for node in graph_def.node):
            raise FormatError(f"{source}: not a TensorFlow GraphDef (a node has no name or op)")
        return cls(graph_def, input_bytes=input_bytes)

    def weights(self) -> list[Weight]:
        """Return every Const tensor as a Weight, in graph order (main graph, then functions)."""
        result, kinds = [], self.layer_kinds()
        for name, node in self._nodes.items():
            tensor = node.attr["value"].tensor
            dtype = tensor_proto.float_numpy_dtype(tensor.dtype)
            floating = dtype is not None
            try:
                shape = tensor_proto.tensor_shape(tensor)
                max_distinct = 0
                if floating:
                    content_bytes = len(tensor.tensor_content)  # one read: each copies the field
                    max_distinct = tensor_proto.stored_value_count(tensor, content_bytes)
                    if content_bytes:
                        self._content_names.add(name)
            except FormatError as error:
                raise FormatError(f"Const {name!r}: {error}") from None
            result.append(
                Weight(
                    name=name,
                    dtype=_DTYPE_NAMES.get(tensor.dtype, f"dtype{tensor.dtype}") if not floating else dtype.name,
                    shape=shape,
                    floating=floating,
                    max_distinct=max_distinct,
                    load=(lambda n=name, t=tensor: self._made(n) if n in self._deferred
                          else self._load(n, t)),
                    layer_kind=kinds.get(name),
                )
            )
        return result

    def _load(self, name: str, tensor) -> numpy.ndarray:
        # A few stored values can fill a huge shape: bound what they expand to before expanding.
        size = int(numpy.prod(tensor_proto.tensor_shape(tensor), dtype=numpy.int64))
        if self._input_bytes is None:
            self._input_bytes = self.graph_def.ByteSize()
        limits.check(size * tensor_proto.float_numpy_dtype(tensor.dtype).itemsize, self._input_bytes,
                     f"Const {name!r}")
        return tensor_proto.to_numpy(tensor)

    def replace_values(self, values: dict[str, numpy.ndarray]) -> None:
        """Write new values for the named weights into this model's GraphDef.

        Each array must have the weight's shape; it is cast to the weight's dtype.
        Raises KeyError for an unknown name.
        """
        for name, array in values.items():
            tensor = self._nodes[name].attr["value"].tensor
            shape = tensor_proto.tensor_shape(tensor)
            if tuple(array.shape) != shape:
                raise ValueError(f"values[{name!r}].shape={array.shape} should be {shape}.")
            deferred = self._deferred.pop(name, None)
            self._labelled.pop(name, None)
            form = self._missing.pop(name, None) or (deferred[1] if deferred else None)
            _store(tensor, array, form)

    def defer_values(self, name: str, shape: tuple[int, ...], make: Callable[[], numpy.ndarray]) -> None:
        """Give a weight new values that are made only when the model is serialized.

        make() returns an array of `shape` (cast to the weight's dtype); it is
        called once per node each time the model is written (save, to_bytes,
        to_skeleton) or the weight loaded, and its array dropped right after,
        so memory holds one tensor's new values at a time. The bytes written
        are those replace_values({name: make()}) gives. Raises KeyError for an
        unknown name, ValueError when shape is not the weight's.
        """
        tensor = self._nodes[name].attr["value"].tensor
        expected = tensor_proto.tensor_shape(tensor)
        if tuple(shape) != expected:
            raise ValueError(f"shape of {name!r}={tuple(shape)} should be {expected}.")
        previous = self._deferred.get(name)
        form = self._missing.pop(name, None) or (previous[1] if previous else None)
        self._deferred[name] = (make, form)
        self._labelled.pop(name, None)

    def replace_labels(self, name: str, shape, codebook: numpy.ndarray, labels: numpy.ndarray) -> None:
        """Give a weight the values codebook[labels], made when the model is serialized (as defer_values).

        codebook: (k,) floats (cast to the weight's dtype); labels: integer
        indices into it, one per value of the weight in C order (shape: the
        weight's). A weight stored as tensor_content gets its bytes gathered
        straight from the codebook (compiled.gather_bytes): no array of its
        values and no copy of them. The bytes are those of
        replace_values({name: codebook[labels].reshape(shape)}). Raises
        KeyError for an unknown name, ValueError for a shape or label count that differs.
        """
        tensor = self._nodes[name].attr["value"].tensor
        expected = tensor_proto.tensor_shape(tensor)
        labels = numpy.asarray(labels).reshape(-1)
        if tuple(shape) != expected or labels.size != int(numpy.prod(expected, dtype=numpy.int64)):
            raise ValueError(f"{name!r}: shape {tuple(shape)} with {labels.size} labels should be {expected}.")
        # Casting the k entries, then picking them, gives the values that casting the picked ones gives.
        codebook = numpy.asarray(codebook).astype(tensor_proto.float_numpy_dtype(tensor.dtype), copy=False)
        self.defer_values(name, expected, lambda: codebook[labels].reshape(expected))
        self._labelled[name] = (codebook, labels)

    def _made(self, name: str) -> numpy.ndarray:
        """Return the deferred values of a weight, checked against its shape (FormatError if not)."""
        tensor = self._nodes[name].attr["value"].tensor
        array = numpy.asarray(self._deferred[name][0]())
        shape = tensor_proto.tensor_shape(tensor)
        if tuple(array.shape) != shape:
            raise FormatError(f"values made for {name!r} have shape {array.shape}, the weight {shape}")
        return array.astype(tensor_proto.float_numpy_dtype(tensor.dtype), copy=False)

    def _store_deferred(self, name: str, tensor) -> None:
        form = self._deferred[name][1]
        if form is None and name in self._content_names:
            # The same bytes as store_numpy finding the old content, without copying it out first.
            form = ("content", 0)
        labelled = self._labelled.get(name)
        if labelled is not None and form is not None and form[0] == "content" and labelled[0].dtype.isnative:
            from ..kernels import compiled

            if compiled.available():
                tensor.tensor_content = compiled.gather_bytes(*labelled)
                return
        _store(tensor, self._made(name), form)

    def to_skeleton(self, names) -> bytes:
        """Return the model serialized deterministically without the values of the named weights.

        names: floating weights (as listed by weights()). The skeleton records
        each removed tensor's storage form (tensor_content, or the number of
        *_val entries), so that `from_skeleton` then `replace_values` with the
        same values gives back `to_bytes()` exactly. Deferred values of the
        other weights are made node by node (no copy of the whole message).
        Raises KeyError for an unknown name, ValueError for a weight that is
        not floating.
        """
        removed, edits = [], {}
        for name in dict.fromkeys(names):
            tensor = self._nodes[name].attr["value"].tensor
            if tensor_proto.float_numpy_dtype(tensor.dtype) is None:
                raise ValueError(f"weight {name!r} is not floating; only floating values can be removed.")
            form = self._deferred[name][1] if name in self._deferred else None
            if form is None:
                form = (("content", 0) if tensor.tensor_content
                        else ("values", len(getattr(tensor, tensor_proto._value_field(tensor.dtype)))))
            removed.append([name, form[0], form[1]])
            edits[name] = _clear
        for name in self._deferred:
            edits.setdefault(name, lambda tensor, n=name: self._store_deferred(n, tensor))
        body = b"".join(self._pieces(edits, check=False, require_values=False))
        return frame_skeleton(SKELETON_MAGIC, removed, body)

    @classmethod
    def from_skeleton(cls, data: bytes, *, source: str = "skeleton") -> "GraphDefModel":
        """Rebuild a model from `to_skeleton` bytes; every removed weight must then get
        its values through replace_values before to_bytes or save.

        Raises FormatError when the bytes are not a valid skeleton.
        """
        removed, body = split_skeleton(data, SKELETON_MAGIC, "GraphDef", source)
        model = cls.from_bytes(body, source=source)
        for entry in removed:
            model._check_removed(entry, source)
        return model

    def _check_removed(self, entry, source) -> None:
        if (not isinstance(entry, list) or len(entry) != 3 or not isinstance(entry[0], str)
                or entry[1] not in ("content", "values") or type(entry[2]) is not int):
            raise FormatError(f"{source}: malformed skeleton entry {str(entry)[:80]}")
        name, form, count = entry
        node = self._nodes.get(name)
        if node is None or name in self._missing:
            raise FormatError(f"{source}: skeleton names an unknown or repeated tensor {name!r}")
        tensor = node.attr["value"].tensor
        if tensor_proto.float_numpy_dtype(tensor.dtype) is None or tensor_proto.stored_value_count(tensor):
            raise FormatError(f"{source}: skeleton tensor {name!r} is not an emptied floating tensor")
        size = int(numpy.prod(tensor_proto.tensor_shape(tensor), dtype=numpy.int64))
        if not 0 <= count <= size or (form == "content" and count):
            raise FormatError(f"{source}: skeleton tensor {name!r} has a bad value count {count}")
        self._missing[name] = (form, count)

    def stored_bytes(self) -> dict[str, int]:
        """Return, per weight name, the bytes its TensorProto takes in the serialized GraphDef."""
        return {name: node.attr["value"].tensor.ByteSize() for name, node in self._nodes.items()}

    def save(self, path: str | os.PathLike) -> int:
        """Write the model to `path` atomically; returns the number of bytes written."""
        return write_graphdef(self, path)

    def to_bytes(self) -> bytes:
        """Return the GraphDef serialized deterministically (same model, same bytes).

        Raises FormatError for a skeleton whose removed weights have no values yet.
        """
        if not self._deferred:
            self._check_complete()
            return self.graph_def.SerializeToString(deterministic=True)
        return b"".join(self.pieces())

    def pieces(self, *, check: bool = False) -> Iterator[bytes]:
        """Yield `to_bytes()` in pieces (per node its frame, then the node; then the rest), deferred values
        made per node.

        check: parse every piece back (FormatError as to_bytes, or when one
        does not parse). Never holds the whole output in memory.
        """
        edits = {name: (lambda tensor, n=name: self._store_deferred(n, tensor)) for name in self._deferred}
        return self._pieces(edits, check=check)

    def _check_complete(self) -> None:
        if self._missing:
            raise FormatError(f"{len(self._missing)} skeleton tensors have no values "
                              f"(first: {next(iter(self._missing))!r})")

    def _pieces(self, edits: dict[str, Callable], *, check: bool, require_values: bool = True) -> Iterator[bytes]:
        """Yield the deterministic serialization, each named weight's tensor edited in a copy of its node.

        Protobuf writes a message's fields in field-number order (unknown fields
        last), so the deterministic GraphDef is its nodes (field 1), each framed
        as tag + length + NodeDef, then the other fields. A GraphDef with
        unknown top-level fields comes in one piece (edited in a whole copy).
        """
        if require_values:
            self._check_complete()
        graph_pb2 = _graph_pb2()
        graph_def = self.graph_def
        if _has_unknown_fields(graph_def):
            copy = graph_pb2.GraphDef()
            copy.CopyFrom(graph_def)
            nodes = GraphDefModel(copy)._nodes
            for name, edit in edits.items():
                edit(nodes[name].attr["value"].tensor)
            data = copy.SerializeToString(deterministic=True)
            del copy, nodes
            if check:
                graph_pb2.GraphDef().ParseFromString(data)
            yield data
            return
        from tensorboard.compat.proto import node_def_pb2

        for node in graph_def.node:
            edit = edits.get(node.name)
            if edit is not None:
                copy = node_def_pb2.NodeDef()
                copy.CopyFrom(node)
                edit(copy.attr["value"].tensor)
                data = copy.SerializeToString(deterministic=True)
                del copy
            else:
                data = node.SerializeToString(deterministic=True)
            if check:
                # A fresh message each time: parsing again into one would grow its arena.
                node_def_pb2.NodeDef().ParseFromString(data)
            # Frame and node apart: joining them would copy the node's bytes once more.
            yield _NODE_TAG + _varint(len(data))
            yield data
            del data
        rest = graph_pb2.GraphDef()
        for field, value in graph_def.ListFields():
            if field.name == "node":
                continue
            if field.message_type is not None:
                getattr(rest, field.name).CopyFrom(value)
            else:
                setattr(rest, field.name, value)
        if any(FUNCTION_SEPARATOR in name for name in edits):
            for function in rest.library.function:
                for node in function.node_def:
                    edit = edits.get(f"{function.signature.name}{FUNCTION_SEPARATOR}{node.name}")
                    if edit is not None and node.op == "Const" and "value" in node.attr:
                        edit(node.attr["value"].tensor)
        data = rest.SerializeToString(deterministic=True)
        if check:
            graph_pb2.GraphDef().ParseFromString(data)
        yield data


def _store(tensor, array: numpy.ndarray, form: tuple | None) -> None:
    """Store array into a tensor; a skeleton tensor (form not None) first gets back its storage form."""
    # store_numpy keeps the form (and the count of *_val entries) it finds.
    if form is not None and form[0] == "content":
        tensor.tensor_content = b"\0"
    elif form is not None:
        getattr(tensor, tensor_proto._value_field(tensor.dtype)).extend([0] * form[1])
    tensor_proto.store_numpy(tensor, array)


def _clear(tensor) -> None:
    """Remove a floating tensor's values (a skeleton's emptied tensor)."""
    if tensor.tensor_content:
        tensor.tensor_content = b""
    else:
        del getattr(tensor, tensor_proto._value_field(tensor.dtype))[:]


def read_graphdef(path: str | os.PathLike) -> GraphDefModel:
    """Read a frozen GraphDef file. Raises InputError (path) or FormatError (contents).

    Parsed node by node as the file is read (`_parse_streamed`), so memory
    holds the parsed message and one node's bytes, never the whole file beside
    it. A file whose framing is not what a well-formed GraphDef has is read
    whole and parsed in one go, which gives protobuf's own error.
    """
    path = check_input_file(path, max_bytes=MAX_GRAPHDEF_BYTES)
    try:
        size = path.stat().st_size
        if size == 0:
            raise FormatError(f"{path}: empty file, not a TensorFlow GraphDef")
        with open(path, "rb") as file:
            graph_def = _parse_streamed(file, size)
    except OSError as error:
        raise InputError(f"{path}: cannot read ({error.strerror})") from None
    if graph_def is None:
        path, data = read_input_file(path, max_bytes=MAX_GRAPHDEF_BYTES)
        return GraphDefModel.from_bytes(data, source=str(path))
    return GraphDefModel._checked(graph_def, str(path), size)


def _read_varint(file) -> tuple[int, bytes] | None:
    """Return (value, its bytes) of the varint at the file's position, or None (end of file or malformed)."""
    raw = bytearray()
    value = 0
    while len(raw) < 10:
        byte = file.read(1)
        if not byte:
            return None
        raw += byte
        value |= (byte[0] & 0x7F) << (7 * (len(raw) - 1))
        if not byte[0] & 0x80:
            return value, bytes(raw)
    return None


def _parse_streamed(file, size: int):
    """Parse a GraphDef field by field from a file: each node (field 1) into graph_def.node as it is
    read, every other top-level field kept as raw bytes and merged at the end.

    Protobuf parses a concatenation as the merge of its parts, and repeated
    fields append in order, so this gives the message that ParseFromString of
    the whole file gives. Returns None when the framing is anything else (a
    group, a length past the end, a node that does not parse): the caller then
    parses the whole file and reports protobuf's error.
    """
    graph_def = _graph_pb2().GraphDef()
    rest, buffer = bytearray(), bytearray()
    position = 0
    while position < size:
        tag = _read_varint(file)
        if tag is None:
            return None
        field, wire = tag[0] >> 3, tag[0] & 7
        if field == 0 or wire not in (0, 1, 2, 5):
            return None
        if wire == 2:
            length = _read_varint(file)
            if length is None or position + len(tag[1]) + len(length[1]) + length[0] > size:
                return None
            if field == 1:
                # One buffer reused for every node: fresh pages per node would cost a page fault each.
                if len(buffer) < length[0]:
                    buffer = bytearray(length[0])
                payload = memoryview(buffer)[: length[0]]
                if file.readinto(payload) != length[0]:
                    return None
            else:
                payload = file.read(length[0])
                if len(payload) != length[0]:
                    return None
            head = tag[1] + length[1]
        elif wire == 0:
            value = _read_varint(file)
            if value is None:
                return None
            head, payload = tag[1], value[1]
        else:
            payload = file.read(8 if wire == 1 else 4)
            if len(payload) != (8 if wire == 1 else 4):
                return None
            head = tag[1]
        position += len(head) + len(payload)
        if field == 1 and wire == 2:
            try:
                graph_def.node.add().ParseFromString(payload)
            except (DecodeError, RuntimeError, ValueError):
                return None
        elif field == 1:
            return None
        else:
            rest += head
            rest += payload
        del payload
    if rest:
        try:
            graph_def.MergeFromString(bytes(rest))
        except (DecodeError, RuntimeError, ValueError):
            return None
    return graph_def


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


# GraphDef.node is field 1, length-delimited: tag (1 << 3) | 2.
_NODE_TAG = b"\x0a"


def _has_unknown_fields(message) -> bool:
    try:
        from google.protobuf import unknown_fields
    except ImportError:  # protobuf < 4.24: assume there may be some
        return True
    return len(unknown_fields.UnknownFieldSet(message)) > 0


def serialized_pieces(model: GraphDefModel):
    """Yield `model.to_bytes()` in pieces, one node at a time, each piece checked to parse.

    Serializing piece by piece never holds the whole output (nor a re-parsed
    copy) in memory; deferred values are made one node at a time. A GraphDef
    with unknown top-level fields comes in one piece. Raises FormatError as
    to_bytes, or when a piece does not parse back.
    """
    return model.pieces(check=True)


def write_graphdef(model: GraphDefModel, path: str | os.PathLike) -> int:
    """Write a model atomically, streamed node by node, each piece checked to parse back;
    returns the bytes written."""
    written = 0

    def counted():
        nonlocal written
        for piece in serialized_pieces(model):
            written += len(piece)
            yield piece

    write_atomic(Path(path), counted())
    return written
