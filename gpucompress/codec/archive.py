"""Write and read `.gpcz` archives: a model skeleton plus codebooks and entropy-coded indices.

The byte layout, the limits and the checksums are specified in FORMAT.md next
to this module. Archives are untrusted input: the reader checks every length
and count against the file size and the limits below before it allocates,
checks a CRC-32 over every byte of the file, and never unpickles or evaluates
anything (the manifest is strict JSON, validated field by field).
"""
from __future__ import annotations

import functools
import json
import re
import struct
import zlib
from dataclasses import dataclass, field
from typing import Callable

import numpy

from .. import limits
from ..channels import Layout
from ..errors import FormatError
from . import bitpack, codebooks as codebook_sections, entropy

MAGIC = b"GPCZ\r\n\x1a\n"
# Version 2: codebooks of several rows (per-channel and grouped codebooks). Version 3: codebook sections
# raw or delta-coded (codebooks.py). Versions 1 and 2 still read.
VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
HEADER = struct.Struct("<8sHH16sQQII")  # magic, version, flags, format, manifest stored/raw, CRCs

# Limits on what a reader accepts (FORMAT.md, "Limits").
MAX_MANIFEST_BYTES = 1 << 26
MAX_TENSORS = 1 << 20
MAX_RANK = 32
MAX_NAME_CHARS = 4096
MAX_CODEBOOK = 1 << bitpack.MAX_BITS
MAX_CODEBOOK_ROWS = 1 << 22
MAX_TENSOR_VALUES = 1 << 31
MAX_DECODED_BYTES = 1 << 32
SKELETON_ZSTD_LEVEL = 19

DTYPES = ("float16", "bfloat16", "float32", "float64")
_FORMAT_NAME = re.compile(r"[a-z0-9_]{1,16}")


def numpy_dtype(name: str) -> numpy.dtype:
    """Return the little-endian NumPy dtype of a codebook dtype name (one of DTYPES)."""
    if name == "bfloat16":
        import ml_dtypes

        return numpy.dtype(ml_dtypes.bfloat16)
    return numpy.dtype(name).newbyteorder("<")


@dataclass(frozen=True)
class CodedTensor:
    """One weight as a codebook and indices, plus the positions and values of its non-finite entries.

    dtype: one of DTYPES; codebook: (k,) in that dtype, 1 <= k <= 65536, or
    (rows, k) with channel_axis set: row r serves channels [r * group_size,
    (r + 1) * group_size) along channel_axis (channels.Layout);
    indices: (n,) integers < k in C order (any value at non-finite positions);
    nonfinite_index: sorted int64 positions, nonfinite_values: their values in
    the dtype (NaN payloads kept), both empty when there are none.
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    codebook: numpy.ndarray
    indices: numpy.ndarray
    nonfinite_index: numpy.ndarray = field(default_factory=lambda: numpy.zeros(0, numpy.int64))
    nonfinite_values: numpy.ndarray | None = None
    channel_axis: int | None = None
    group_size: int | None = None

    @property
    def size(self) -> int:
        """Return the number of values (the product of the shape)."""
        return int(numpy.prod(self.shape, dtype=numpy.int64))

    def values(self) -> numpy.ndarray:
        """Return the tensor: codebook[indices] with the non-finite values put back, in its shape."""
        if self.channel_axis is None:
            flat = self.codebook[self.indices]
        else:
            flat = Layout(tuple(self.shape), self.channel_axis, self.group_size).expand(
                self.codebook, self.indices).reshape(-1)
        if self.nonfinite_index.size:
            flat[self.nonfinite_index] = self.nonfinite_values
        return flat.reshape(self.shape)


@dataclass
class Archive:
    """An archive's contents: the model format, its skeleton, the coded tensors, free-form info,
    and (when written by write_archive) the coder chosen per tensor name and the bytes of the
    skeleton's zstd section."""

    format_name: str
    skeleton: bytes
    tensors: list[CodedTensor]
    info: dict = field(default_factory=dict)
    coders: dict[str, str] = field(default_factory=dict)
    skeleton_section_bytes: int | None = None


def write_archive(archive: Archive, speed_tolerance: float = entropy.SPEED_TOLERANCE) -> bytes:
    """Return the bytes of an archive; fills archive.coders with the coder picked per tensor.

    speed_tolerance: how much larger (a fraction) a faster-decoding index
    stream may be than the smallest and still be picked (entropy.encode_indices).
    Raises ValueError for contents outside the format's limits.
    """
    if not _FORMAT_NAME.fullmatch(archive.format_name):
        raise ValueError(f"format_name={archive.format_name!r} should match {_FORMAT_NAME.pattern}.")
    sections: list[bytes] = []

    def add(data: bytes) -> int:
        sections.append(data)
        return len(sections) - 1

    skeleton = {"section": add(entropy.zstd_compress(archive.skeleton, SKELETON_ZSTD_LEVEL)),
                "bytes": len(archive.skeleton)}
    archive.skeleton_section_bytes = len(sections[skeleton["section"]])
    codebooks, codebook_ids, tensors = [], {}, []
    for tensor in archive.tensors:
        codebook = numpy.ascontiguousarray(tensor.codebook, dtype=numpy_dtype(tensor.dtype))
        rows, k = (1, codebook.size) if tensor.channel_axis is None else codebook.shape
        if not 1 <= k <= MAX_CODEBOOK:
            raise ValueError(f"codebook of {tensor.name!r} has {k} entries, should be 1..{MAX_CODEBOOK}.")
        channels = None
        if tensor.channel_axis is not None:
            layout = Layout(tuple(tensor.shape), tensor.channel_axis, tensor.group_size)
            if codebook.ndim != 2 or rows != layout.rows:
                raise ValueError(f"codebook of {tensor.name!r} has shape {codebook.shape}, its channels need "
                                 f"{layout.rows} rows.")
            channels = {"axis": int(tensor.channel_axis), "group_size": int(tensor.group_size)}
        key = (tensor.dtype, rows, codebook.tobytes())
        if key not in codebook_ids:  # identical codebooks (global mode) are stored once
            codebook_ids[key] = len(codebooks)
            coding, data = codebook_sections.encode_codebook(codebook)
            codebooks.append({"dtype": tensor.dtype, "size": int(k), "rows": int(rows), "coding": coding,
                              "section": add(data)})
        coder, stream = entropy.encode_indices(tensor.indices.reshape(-1), k, speed_tolerance)
        archive.coders[tensor.name] = coder
        entry = {"name": tensor.name, "dtype": tensor.dtype, "shape": [int(d) for d in tensor.shape],
                 "codebook": codebook_ids[key], "coder": coder, "section": add(stream),
                 "nonfinite": int(tensor.nonfinite_index.size), "nonfinite_section": None, "channels": channels}
        if tensor.nonfinite_index.size:
            values = numpy.ascontiguousarray(tensor.nonfinite_values, dtype=numpy_dtype(tensor.dtype))
            entry["nonfinite_section"] = add(tensor.nonfinite_index.astype("<u8").tobytes() + values.tobytes())
        tensors.append(entry)
    manifest = {"info": archive.info, "skeleton": skeleton, "codebooks": codebooks, "tensors": tensors,
                "sections": [[len(s), zlib.crc32(s)] for s in sections]}
    raw = json.dumps(manifest, sort_keys=True, separators=(",", ":"), allow_nan=False).encode("utf-8")
    stored = entropy.zstd_compress(raw, SKELETON_ZSTD_LEVEL)
    header = HEADER.pack(MAGIC, VERSION, 0, archive.format_name.encode("ascii"), len(stored), len(raw),
                         zlib.crc32(stored), 0)
    header = header[:-4] + struct.pack("<I", zlib.crc32(header[:-4]))
    return b"".join([header, stored, *sections])


@dataclass(frozen=True)
class DeferredTensor:
    """A tensor of a lazily read archive: its index stream is decoded each time values() is called
    and dropped after, so a reader holds one tensor's indices at a time. values() raises
    FormatError (naming the source) for a stream that does not decode."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    decode: Callable[[], CodedTensor]
    source: str

    def values(self) -> numpy.ndarray:
        """Return the tensor's values, as CodedTensor.values() does."""
        try:
            return self.decode().values()
        except FormatError as error:
            raise FormatError(_named(error, self.source)) from None


def _named(error: FormatError, source: str) -> str:
    message = str(error)
    return message if message.startswith(source) else f"{source}: {message}"


def read_archive(data: bytes, *, source: str = "archive", lazy: bool = False) -> Archive:
    """Parse and check archive bytes; returns its Archive (tensors decoded, coders filled).

    lazy: the tensors are DeferredTensors, decoded one at a time when their
    values are asked for (data must then stay unchanged); everything else,
    the checksums included, is checked now.
    Raises FormatError with one line naming `source` for anything that is not a
    valid archive: wrong magic or version, a checksum mismatch, a length or
    count that does not fit the file or the limits, a malformed manifest.
    """
    view = memoryview(data)
    try:
        return _read(view, source, lazy)
    except FormatError as error:
        raise FormatError(_named(error, source)) from None


def _read(view: memoryview, source: str, lazy: bool = False) -> Archive:
    if len(view) == 0:
        raise FormatError("empty file, not a gpucompress archive")
    if len(view) < HEADER.size or bytes(view[:8]) != MAGIC:
        if bytes(view[:8]) != MAGIC[: min(8, len(view))]:
            raise FormatError("not a gpucompress archive (bad magic)")
        raise FormatError(f"truncated archive ({len(view)} bytes, the header alone takes {HEADER.size})")
    magic, version, flags, format_name, stored_bytes, raw_bytes, manifest_crc, header_crc = \
        HEADER.unpack_from(view)
    if zlib.crc32(view[: HEADER.size - 4]) != header_crc:
        raise FormatError("header checksum mismatch (corrupt archive)")
    if version not in READABLE_VERSIONS:
        raise FormatError(f"archive format version {version} is not supported (this reader: "
                          f"{', '.join(map(str, READABLE_VERSIONS))})")
    if flags:
        raise FormatError(f"unknown header flags {flags:#x}")
    format_name = format_name.rstrip(b"\0").decode("ascii", "replace")
    if not _FORMAT_NAME.fullmatch(format_name):
        raise FormatError(f"bad model format name {format_name!r}")
    if stored_bytes > len(view) - HEADER.size:
        raise FormatError(f"truncated archive (manifest of {stored_bytes} bytes, "
                          f"{len(view) - HEADER.size} bytes follow the header)")
    if raw_bytes > MAX_MANIFEST_BYTES:
        raise FormatError(f"manifest of {raw_bytes} bytes exceeds the limit of {MAX_MANIFEST_BYTES}")
    limits.check(raw_bytes, len(view), "the manifest")
    stored = view[HEADER.size : HEADER.size + stored_bytes]
    if zlib.crc32(stored) != manifest_crc:
        raise FormatError("manifest checksum mismatch (corrupt archive)")
    manifest = _parse_manifest(entropy.zstd_decompress(stored, raw_bytes), version)
    # Checked before any section is decoded: what the skeleton, the indices and the values will take.
    limits.check(decoding_bytes(manifest), len(view), "decoding the archive")
    offset = HEADER.size + stored_bytes
    lengths = [length for length, _ in manifest["sections"]]
    if offset + sum(lengths) != len(view):
        raise FormatError(f"sections hold {sum(lengths)} bytes, the file has {len(view) - offset} after the "
                          f"manifest (truncated or extended archive)")
    sections = []
    for index, (length, crc) in enumerate(manifest["sections"]):
        section = view[offset : offset + length]
        if zlib.crc32(section) != crc:
            raise FormatError(f"section {index} checksum mismatch (corrupt archive)")
        sections.append(section)
        offset += length
    return _decode(format_name, manifest, sections, source if lazy else None)


def _decode(format_name: str, manifest: dict, sections: list[memoryview], lazy_source: str | None) -> Archive:
    codebooks = []
    for entry in manifest["codebooks"]:
        values = codebook_sections.decode_codebook(entry["coding"], sections[entry["section"]],
                                                   numpy_dtype(entry["dtype"]), entry["rows"], entry["size"])
        codebooks.append(values.reshape(entry["rows"], entry["size"]) if entry["rows"] > 1 else values)
    skeleton = entropy.zstd_decompress(sections[manifest["skeleton"]["section"]], manifest["skeleton"]["bytes"])
    tensors, coders = [], {}
    for entry in manifest["tensors"]:
        codebook = codebooks[entry["codebook"]]
        if manifest["codebooks"][entry["codebook"]]["dtype"] != entry["dtype"]:
            raise FormatError(f"tensor {entry['name']!r} ({entry['dtype']}) uses a codebook of another dtype")
        decode = functools.partial(_coded_tensor, entry, codebook, sections)
        tensors.append(decode() if lazy_source is None
                       else DeferredTensor(entry["name"], entry["dtype"], tuple(entry["shape"]), decode, lazy_source))
        coders[entry["name"]] = entry["coder"]
    return Archive(format_name, skeleton, tensors, manifest["info"], coders)


def _coded_tensor(entry: dict, codebook: numpy.ndarray, sections: list[memoryview]) -> CodedTensor:
    n = int(numpy.prod(entry["shape"], dtype=numpy.int64))
    channels = entry["channels"]
    if channels is not None and codebook.ndim == 1:
        codebook = codebook[None, :]  # a per-channel tensor of one channel group
    indices = entropy.decode_indices(entry["coder"], sections[entry["section"]], n, codebook.shape[-1])
    nonfinite_index, nonfinite_values = numpy.zeros(0, numpy.int64), None
    if entry["nonfinite"]:
        nonfinite_index, nonfinite_values = _nonfinite(sections[entry["nonfinite_section"]],
                                                       entry["nonfinite"], n, codebook.dtype)
    return CodedTensor(entry["name"], entry["dtype"], tuple(entry["shape"]), codebook, indices,
                       nonfinite_index, nonfinite_values,
                       None if channels is None else channels["axis"],
                       None if channels is None else channels["group_size"])


def _nonfinite(data: memoryview, count: int, n: int, dtype: numpy.dtype):
    if len(data) != count * (8 + dtype.itemsize):
        raise FormatError(f"non-finite section holds {len(data)} bytes, {count} entries need "
                          f"{count * (8 + dtype.itemsize)}")
    positions = numpy.frombuffer(data[: 8 * count], dtype="<u8")
    if positions[-1] >= n or numpy.any(numpy.diff(positions.astype(numpy.int64)) <= 0) or positions[0] >= n:
        raise FormatError("non-finite positions are not increasing within the tensor")
    return positions.astype(numpy.int64), numpy.frombuffer(data[8 * count :], dtype=dtype).copy()


def decoding_bytes(manifest: dict) -> int:
    """Return the bytes that decoding a (parsed) manifest's archive allocates: the skeleton, the
    codebooks, and per tensor its indices (1 or 2 bytes a value) and its values (the dtype's size
    a value; per-channel codebooks also take a row of codebook per channel while expanding)."""
    total = manifest["skeleton"]["bytes"]
    for entry in manifest["codebooks"]:
        total += entry["size"] * entry["rows"] * numpy_dtype(entry["dtype"]).itemsize
    for entry in manifest["tensors"]:
        n = 1
        for d in entry["shape"]:
            n *= d
        codebook = manifest["codebooks"][entry["codebook"]]
        index_bytes = 1 if codebook["size"] <= 256 else 2
        total += n * (index_bytes + numpy_dtype(entry["dtype"]).itemsize)
        if entry["channels"] is not None:
            channel_count = entry["shape"][entry["channels"]["axis"]]
            total += n * 8 + channel_count * codebook["size"] * numpy_dtype(entry["dtype"]).itemsize
    return total


def _reject_constant(name):
    raise ValueError(f"non-standard JSON constant {name}")


def _unique_keys(pairs):
    result = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _is_int(value, low, high) -> bool:
    return type(value) is int and low <= value <= high


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise FormatError(f"malformed manifest: {message}")


def _keys(entry, keys: set, what: str) -> None:
    _require(isinstance(entry, dict) and set(entry) == keys, f"{what} should be an object with keys {sorted(keys)}")


def _check_channels(entry: dict, rows: int) -> None:
    """Check a tensor's "channels" (null, or {"axis", "group_size"}) against its shape and codebook rows."""
    name, channels = entry["name"], entry["channels"]
    if channels is None:
        _require(rows == 1, f"{name!r} has one codebook but it has {rows} rows")
        return
    _keys(channels, {"axis", "group_size"}, f"channels of {name!r}")
    shape = entry["shape"]
    _require(_is_int(channels["axis"], 0, len(shape) - 1), f"channel axis of {name!r} out of range")
    count = shape[channels["axis"]]
    _require(_is_int(channels["group_size"], 1, max(count, 1)), f"group size of {name!r} out of range")
    _require(rows == -(-count // channels["group_size"]),
             f"{name!r} has {count} channels in groups of {channels['group_size']}, its codebook {rows} rows")


def _parse_manifest(raw: bytes, version: int = VERSION) -> dict:
    try:
        manifest = json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_keys, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise FormatError(f"malformed manifest ({error})") from None
    _keys(manifest, {"info", "skeleton", "codebooks", "tensors", "sections"}, "the manifest")
    _require(isinstance(manifest["info"], dict), "info should be an object")
    sections = manifest["sections"]
    _require(isinstance(sections, list) and len(sections) <= 3 * MAX_TENSORS + 2, "too many sections")
    for section in sections:
        _require(isinstance(section, list) and len(section) == 2 and _is_int(section[0], 0, 1 << 62)
                 and _is_int(section[1], 0, 0xFFFFFFFF), "a section should be [length, crc32]")
    used = []
    _keys(manifest["skeleton"], {"section", "bytes"}, "skeleton")
    _require(_is_int(manifest["skeleton"]["bytes"], 0, MAX_DECODED_BYTES), "skeleton size out of range")
    used.append(manifest["skeleton"]["section"])
    codebooks = manifest["codebooks"]
    _require(isinstance(codebooks, list) and len(codebooks) <= MAX_TENSORS, "codebooks should be a list")
    for entry in codebooks:
        if version == 1:  # version 1: one row per codebook, no "rows" key
            _keys(entry, {"dtype", "size", "section"}, "a codebook")
            entry["rows"] = 1
        if version <= 2:  # versions 1 and 2: raw codebook sections, no "coding" key
            _keys(entry, {"dtype", "size", "rows", "section"}, "a codebook")
            entry["coding"] = codebook_sections.RAW
        _keys(entry, {"dtype", "size", "rows", "section", "coding"}, "a codebook")
        _require(entry["coding"] in codebook_sections.CODINGS,
                 f"codebook coding should be one of {', '.join(codebook_sections.CODINGS)}")
        _require(_is_int(entry["rows"], 1, MAX_CODEBOOK_ROWS), f"codebook rows should be 1..{MAX_CODEBOOK_ROWS}")
        _require(entry["dtype"] in DTYPES, f"codebook dtype should be one of {', '.join(DTYPES)}")
        _require(_is_int(entry["size"], 1, MAX_CODEBOOK), f"codebook size should be 1..{MAX_CODEBOOK}")
        used.append(entry["section"])
    tensors = manifest["tensors"]
    _require(isinstance(tensors, list) and len(tensors) <= MAX_TENSORS, f"at most {MAX_TENSORS} tensors")
    names, decoded = set(), manifest["skeleton"]["bytes"]
    for entry in tensors:
        tensor_keys = {"name", "dtype", "shape", "codebook", "coder", "section", "nonfinite", "nonfinite_section"}
        if version == 1:  # version 1: per-tensor codebooks only, no "channels" key
            _keys(entry, tensor_keys, "a tensor")
            entry["channels"] = None
        _keys(entry, tensor_keys | {"channels"}, "a tensor")
        name = entry["name"]
        _require(isinstance(name, str) and 0 < len(name) <= MAX_NAME_CHARS and name not in names,
                 "tensor names should be unique non-empty strings")
        names.add(name)
        _require(entry["dtype"] in DTYPES, f"tensor dtype should be one of {', '.join(DTYPES)}")
        shape = entry["shape"]
        _require(isinstance(shape, list) and len(shape) <= MAX_RANK
                 and all(_is_int(d, 0, MAX_TENSOR_VALUES) for d in shape), f"bad shape of {name!r}")
        n = 1
        for d in shape:
            n = min(n * d, MAX_TENSOR_VALUES + 1)
        _require(n <= MAX_TENSOR_VALUES, f"{name!r} has more than {MAX_TENSOR_VALUES} values")
        decoded += n * numpy_dtype(entry["dtype"]).itemsize
        _require(decoded <= MAX_DECODED_BYTES, f"decoded contents exceed {MAX_DECODED_BYTES} bytes")
        _require(_is_int(entry["codebook"], 0, len(codebooks) - 1), f"bad codebook of {name!r}")
        _check_channels(entry, codebooks[entry["codebook"]]["rows"])
        _require(entry["coder"] in entropy.CODERS, f"coder should be one of {', '.join(entropy.CODERS)}")
        _require(_is_int(entry["nonfinite"], 0, n), f"bad non-finite count of {name!r}")
        used.append(entry["section"])
        if entry["nonfinite"]:
            used.append(entry["nonfinite_section"])
        else:
            _require(entry["nonfinite_section"] is None, f"{name!r} has no non-finite values but a section")
    _require(all(type(s) is int for s in used) and sorted(used) == list(range(len(sections))),
             "every section should be used exactly once")
    return manifest
