"""A bounds-checked flatbuffer reader: every offset is checked against the data before it is read.

The Python flatbuffers runtime (and the TFLite schema code generated for it)
trusts the offsets it finds: a corrupt file makes it read past the end, wrap
around through negative positions, or loop over a four-billion-entry vector.
This reader follows the same binary layout (flatbuffers' "internals": a table
starts with an int32 back to its vtable; the vtable holds uint16 sizes and
field offsets; references are uint32 forward offsets; a vector is a uint32
length followed by its elements), and raises FormatError at the first offset,
length or size that does not fit.
"""
from __future__ import annotations

import struct

import numpy

from ..errors import FormatError

_U8 = struct.Struct("<B")
_I8 = struct.Struct("<b")
_U16 = struct.Struct("<H")
_I32 = struct.Struct("<i")
_U32 = struct.Struct("<I")
_I64 = struct.Struct("<q")
_U64 = struct.Struct("<Q")

SCALARS = {"u8": _U8, "i8": _I8, "u16": _U16, "i32": _I32, "u32": _U32, "i64": _I64, "u64": _U64}


class Reader:
    """Checked reads from flatbuffer bytes; `source` names the data in error messages."""

    def __init__(self, data, source: str = "input"):
        self.data = memoryview(data).cast("B") if not isinstance(data, bytes) else data
        self.size = len(data)
        self.source = source

    def fail(self, what: str) -> FormatError:
        """Return the FormatError for a check that failed (the caller raises it)."""
        return FormatError(f"{self.source}: corrupt flatbuffer ({what})")

    def check(self, position: int, length: int, what: str) -> None:
        """Raise FormatError unless bytes [position, position + length) lie inside the data."""
        if position < 0 or length < 0 or position + length > self.size:
            raise self.fail(f"{what} at byte {position}, {length} bytes, past the end of {self.size}")

    def scalar(self, kind: str, position: int, what: str = "scalar") -> int:
        """Return the scalar of kind ("u8", "i32", "u64" ...) at a position, checked."""
        packer = SCALARS[kind]
        self.check(position, packer.size, what)
        return packer.unpack_from(self.data, position)[0]

    def follow(self, position: int, what: str) -> int:
        """Return the target of the uint32 forward reference stored at a position, checked to lie inside."""
        target = position + self.scalar("u32", position, what)
        self.check(target, 4, what)
        return target

    def table(self, position: int, what: str = "table") -> "Table":
        """Return the Table that starts at a position (its vtable checked)."""
        vtable = position - self.scalar("i32", position, what)
        vtable_size = self.scalar("u16", vtable, f"{what} vtable")
        table_size = self.scalar("u16", vtable + 2, f"{what} vtable")
        if vtable_size < 4 or vtable_size % 2:
            raise self.fail(f"{what} vtable of {vtable_size} bytes")
        self.check(vtable, vtable_size, f"{what} vtable")
        if table_size < 4:
            raise self.fail(f"{what} of {table_size} bytes")
        self.check(position, table_size, what)
        return Table(self, position, vtable, vtable_size, table_size, what)

    def root(self) -> "Table":
        """Return the root table (the uint32 at byte 0 points to it)."""
        return self.table(self.follow(0, "root offset"), "root table")


class Table:
    """One flatbuffer table; fields are read by slot number (the schema's field order)."""

    def __init__(self, reader: Reader, position: int, vtable: int, vtable_size: int, table_size: int,
                 what: str):
        self.reader, self.position, self.what = reader, position, what
        self._vtable, self._vtable_size, self._table_size = vtable, vtable_size, table_size

    def field(self, slot: int, width: int) -> int | None:
        """Return the byte position of a field `width` bytes wide, or None when it is absent."""
        entry = 4 + 2 * slot
        if entry + 2 > self._vtable_size:
            return None
        offset = self.reader.scalar("u16", self._vtable + entry, f"{self.what} vtable")
        if offset == 0:
            return None
        if offset + width > self._table_size:
            raise self.reader.fail(f"{self.what} field {slot} at {offset} outside its {self._table_size}-byte table")
        return self.position + offset

    def scalar(self, slot: int, kind: str, default: int = 0) -> int:
        """Return a scalar field (kind as Reader.scalar), or the default when absent."""
        position = self.field(slot, SCALARS[kind].size)
        return default if position is None else self.reader.scalar(kind, position, f"{self.what} field {slot}")

    def table(self, slot: int, what: str) -> "Table | None":
        """Return a sub-table field, or None when absent."""
        position = self.field(slot, 4)
        if position is None:
            return None
        return self.reader.table(self.reader.follow(position, what), what)

    def vector(self, slot: int, item_size: int, what: str) -> tuple[int, int]:
        """Return (position of the first element, count) of a vector field, checked; (0, 0) when absent."""
        position = self.field(slot, 4)
        if position is None:
            return 0, 0
        start = self.reader.follow(position, what)
        count = self.reader.scalar("u32", start, what)
        self.reader.check(start + 4, count * item_size, what)
        return start + 4, count

    def array(self, slot: int, dtype: str, what: str) -> numpy.ndarray:
        """Return a scalar vector field as a read-only NumPy array (little-endian dtype, e.g. "<i4")."""
        dtype = numpy.dtype(dtype)
        start, count = self.vector(slot, dtype.itemsize, what)
        return numpy.frombuffer(self.reader.data, dtype=dtype, count=count, offset=start) if count else \
            numpy.zeros(0, dtype)

    def string(self, slot: int, what: str) -> str | None:
        """Return a string field (UTF-8), or None when absent."""
        position = self.field(slot, 4)
        if position is None:
            return None
        start, count = self.vector(slot, 1, what)
        try:
            return bytes(self.reader.data[start : start + count]).decode("utf-8")
        except UnicodeDecodeError:
            raise self.reader.fail(f"{what} is not UTF-8") from None

    def tables(self, slot: int, what: str) -> list["Table"]:
        """Return a vector-of-tables field as Tables (each checked), [] when absent."""
        start, count = self.vector(slot, 4, what)
        return [self.reader.table(self.reader.follow(start + 4 * index, what), what) for index in range(count)]
