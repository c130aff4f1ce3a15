"""Entropy coding of index streams, and the entropy bound they are measured against.

Three coders, picked per tensor by measured size and decoding speed: the
fastest whose stream is at most `speed_tolerance` (a fraction, default 1.5 %)
larger than the smallest. The ANS coder is the smallest (within 0.3 % of the
entropy) but decodes at roughly 30-50 ns an index; zstd decodes about 20 times
faster for about 1 % more bytes on clustered weights, so by default a
FaceNet-sized model unpacks in a fraction of a second:

- "packed": the indices bit-packed at ceil(log2 k) bits (bitpack.py);
- "zstd": those packed bytes compressed with Zstandard;
- "ans": an asymmetric numeral system coder (constriction's AnsCoder, 32-bit
  words) with one static categorical model per tensor, built from the index
  counts that the stream carries in front of the coded words (see FORMAT.md).

The model is rebuilt on decoding from the stored integer counts with the same
float64 arithmetic (counts / total) and constriction's `perfect=False`
quantization, whose output its authors keep stable across versions; a
regression test pins a coded stream.
"""
from __future__ import annotations

import struct

import numpy

from ..errors import FormatError
from . import bitpack

CODERS = ("packed", "zstd", "ans")  # in order of decoding speed, fastest first
ZSTD_LEVEL = 9  # level 19 gave no smaller index streams on clustered weights, at 5x the time
SPEED_TOLERANCE = 0.015
MAX_VARINT_BYTES = 5  # counts < 2**35


def entropy_bytes(indices: numpy.ndarray, codebook_size: int) -> float:
    """Return n times the empirical entropy of `indices`, in bytes (the coding bound)."""
    counts = numpy.bincount(numpy.asarray(indices).reshape(-1), minlength=codebook_size)
    counts = counts[counts > 0].astype(numpy.float64)
    if counts.size <= 1:
        return 0.0
    total = counts.sum()
    return float(-(counts * numpy.log2(counts / total)).sum() / 8.0)


def _zstd():
    import zstandard

    return zstandard


def zstd_compress(data: bytes, level: int = ZSTD_LEVEL) -> bytes:
    """Return one Zstandard frame holding `data`, with its content size in the frame header."""
    return _zstd().ZstdCompressor(level=level, write_content_size=True).compress(data)


def zstd_decompress(data: bytes, expected: int) -> bytes:
    """Decompress one Zstandard frame that must hold exactly `expected` bytes.

    Checks the frame's declared size before allocating. Raises FormatError.
    """
    zstandard = _zstd()
    try:
        declared = zstandard.frame_content_size(data)
    except zstandard.ZstdError as error:
        raise FormatError(f"corrupt zstd frame ({error})") from None
    if declared != expected:
        raise FormatError(f"zstd frame declares {declared} bytes, expected {expected}")
    try:
        result = zstandard.ZstdDecompressor().decompress(data, max_output_size=expected)
    except zstandard.ZstdError as error:
        raise FormatError(f"corrupt zstd frame ({error})") from None
    if len(result) != expected:
        raise FormatError(f"zstd frame holds {len(result)} bytes, expected {expected}")
    return result


def encode_varints(values: numpy.ndarray) -> bytes:
    """Return non-negative integers (< 2**35) as LEB128 varints (7 bits a byte, low bits first)."""
    values = numpy.asarray(values, dtype=numpy.uint64).reshape(-1)
    lengths = numpy.maximum(1, -(-_bit_length(values) // 7)).astype(numpy.int64)
    owner = numpy.repeat(numpy.arange(values.size), lengths)
    position = numpy.arange(owner.size) - numpy.repeat(numpy.cumsum(lengths) - lengths, lengths)
    groups = (values[owner] >> (7 * position).astype(numpy.uint64)) & numpy.uint64(0x7F)
    more = position < lengths[owner] - 1
    return (groups | (more.astype(numpy.uint64) << numpy.uint64(7))).astype(numpy.uint8).tobytes()


def _bit_length(values: numpy.ndarray) -> numpy.ndarray:
    lengths = numpy.zeros(values.shape, dtype=numpy.int64)
    remaining = values.copy()
    while remaining.any():
        lengths += remaining > 0
        remaining >>= numpy.uint64(1)
    return lengths


def decode_varints(data: bytes, count: int) -> tuple[numpy.ndarray, int]:
    """Return (the first `count` LEB128 varints of `data` as uint64, the bytes they took).

    Raises FormatError when the data ends early or a varint is longer than
    MAX_VARINT_BYTES.
    """
    raw = numpy.frombuffer(data[: count * MAX_VARINT_BYTES], dtype=numpy.uint8)
    ends = numpy.flatnonzero(raw < 0x80)
    if ends.size < count:
        raise FormatError(f"count table ends early ({ends.size} of {count} counts)")
    ends = ends[:count]
    starts = numpy.concatenate([[0], ends[:-1] + 1]) if count else ends
    lengths = ends - starts + 1
    if count and lengths.max() > MAX_VARINT_BYTES:
        raise FormatError("count table holds an over-long varint")
    used = int(ends[-1]) + 1 if count else 0
    owner = numpy.repeat(numpy.arange(count), lengths)
    position = numpy.arange(used) - numpy.repeat(starts, lengths)
    parts = (raw[:used].astype(numpy.uint64) & numpy.uint64(0x7F)) << (7 * position).astype(numpy.uint64)
    values = numpy.zeros(count, dtype=numpy.uint64)
    numpy.add.at(values, owner, parts)
    return values, used


def _ans_model(counts: numpy.ndarray):
    import constriction

    probabilities = counts.astype(numpy.float64) / float(counts.sum())
    return constriction.stream.model.Categorical(probabilities, perfect=False)


def ans_encode(indices: numpy.ndarray, codebook_size: int) -> bytes:
    """Return an "ans" stream: u32 table length, the count table (varints), the coded 32-bit words."""
    import constriction

    indices = numpy.asarray(indices).reshape(-1)
    counts = numpy.bincount(indices, minlength=codebook_size)
    table = encode_varints(counts)
    words = b""
    if numpy.count_nonzero(counts) > 1:  # one symbol (or none) needs no words at all
        coder = constriction.stream.stack.AnsCoder()
        coder.encode_reverse(indices.astype(numpy.int32), _ans_model(counts))
        words = coder.get_compressed().astype("<u4").tobytes()
    return struct.pack("<I", len(table)) + table + words


def ans_decode(data: bytes, n: int, codebook_size: int) -> numpy.ndarray:
    """Decode an "ans" stream of n indices; returns uint8 (k <= 256) or uint16. Raises FormatError."""
    import constriction

    dtype = numpy.uint8 if codebook_size <= 256 else numpy.uint16
    if len(data) < 4:
        raise FormatError("ans stream shorter than its header")
    (table_bytes,) = struct.unpack_from("<I", data)
    if table_bytes > len(data) - 4:
        raise FormatError(f"ans count table of {table_bytes} bytes exceeds its stream")
    counts, used = decode_varints(data[4 : 4 + table_bytes], codebook_size)
    if used != table_bytes:
        raise FormatError(f"ans count table holds {used} bytes of counts, header says {table_bytes}")
    if int(counts.sum()) != n:
        raise FormatError(f"ans counts sum to {int(counts.sum())}, the tensor has {n} values")
    body = data[4 + table_bytes :]
    if len(body) % 4:
        raise FormatError("ans stream is not a whole number of 32-bit words")
    if codebook_size == 1 or n == 0 or numpy.count_nonzero(counts) == 1:
        if body:
            raise FormatError("ans stream of a single symbol should hold no words")
        return numpy.full(n, int(numpy.argmax(counts)) if n else 0, dtype=dtype)
    words = numpy.frombuffer(body, dtype="<u4").astype(numpy.uint32)
    try:
        coder = constriction.stream.stack.AnsCoder(words)
        indices = coder.decode(_ans_model(counts), n)
    except Exception as error:  # constriction raises plain exceptions on malformed words
        raise FormatError(f"corrupt ans stream ({error})") from None
    if not coder.is_empty():
        raise FormatError("ans stream holds words beyond its indices")
    return indices.astype(dtype)


def encode_indices(indices: numpy.ndarray, codebook_size: int,
                   speed_tolerance: float = SPEED_TOLERANCE) -> tuple[str, bytes]:
    """Encode indices with every coder; return (coder name, stream) of the fastest-decoding one
    whose stream is at most `speed_tolerance` (a fraction >= 0) larger than the smallest.

    indices: 1-D integers in [0, codebook_size). speed_tolerance=0: the smallest
    stream, ties going to the faster decoder.
    """
    bits = bitpack.bits_for(codebook_size)
    packed = bitpack.pack_indices(indices, bits)
    candidates = [("packed", packed)]
    if packed:
        candidates.append(("zstd", zstd_compress(packed)))
        candidates.append(("ans", ans_encode(indices, codebook_size)))
    smallest = min(len(stream) for _, stream in candidates)
    acceptable = [item for item in candidates if len(item[1]) <= smallest * (1.0 + speed_tolerance)]
    return min(acceptable, key=lambda item: CODERS.index(item[0]))


def decode_indices(coder: str, data: bytes, n: int, codebook_size: int) -> numpy.ndarray:
    """Decode n indices written by `coder`; every index is checked to be < codebook_size.

    Returns uint8 (codebook_size <= 256) or uint16. Raises FormatError.
    """
    bits = bitpack.bits_for(codebook_size)
    if coder == "ans":
        return ans_decode(data, n, codebook_size)
    if coder == "zstd":
        data = zstd_decompress(data, bitpack.packed_size(n, bits))
    elif coder != "packed":
        raise FormatError(f"unknown index coder {coder!r} (known: {', '.join(CODERS)})")
    indices = bitpack.unpack_indices(data, n, bits)
    if indices.size and codebook_size < 1 << bits and int(indices.max()) >= codebook_size:
        raise FormatError(f"an index is outside the codebook of {codebook_size} entries")
    return indices
