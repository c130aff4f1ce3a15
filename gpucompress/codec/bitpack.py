"""Pack codebook indices at b bits each, and unpack them: vectorized NumPy, no per-value loop.

Layout: index i occupies bits [i*b, (i+1)*b) of the stream, least significant
bit first, and stream bit j is bit (j % 8) of byte j // 8 (little-endian bit
order). The last byte is padded with zero bits. b = 0 stores nothing (a
one-entry codebook).
"""
from __future__ import annotations

import numpy

from ..errors import FormatError

MAX_BITS = 16


def bits_for(codebook_size: int) -> int:
    """Return the index width in bits for a codebook of `codebook_size` entries (1 -> 0, 2 -> 1, 256 -> 8)."""
    if not 1 <= codebook_size <= 1 << MAX_BITS:
        raise ValueError(f"codebook_size={codebook_size} should be in 1..{1 << MAX_BITS}.")
    return int(codebook_size - 1).bit_length()


def packed_size(n: int, bits: int) -> int:
    """Return the number of bytes that n indices of `bits` bits take once packed."""
    return (n * bits + 7) // 8


def pack_indices(indices: numpy.ndarray, bits: int) -> bytes:
    """Pack a 1-D array of non-negative integers < 2**bits into bytes (see the module layout).

    indices: any unsigned or signed integer dtype, values in [0, 2**bits).
    bits: 0..16. Returns packed_size(n, bits) bytes. Raises ValueError for a
    value out of range.
    """
    if not 0 <= bits <= MAX_BITS:
        raise ValueError(f"bits={bits} should be in 0..{MAX_BITS}.")
    indices = numpy.asarray(indices).reshape(-1)
    if indices.size and (int(indices.min()) < 0 or int(indices.max()) >= 1 << bits):
        raise ValueError(f"indices should lie in [0, {1 << bits}) to pack at bits={bits}.")
    if bits == 0 or indices.size == 0:
        return b""
    if bits == 8:
        return indices.astype(numpy.uint8).tobytes()
    if bits == 16:
        return indices.astype("<u2").tobytes()
    if bits in (1, 2, 4):
        # Several indices per byte: pad to a whole byte, shift each into place, sum.
        per_byte = 8 // bits
        padded = numpy.zeros(-(-indices.size // per_byte) * per_byte, dtype=numpy.uint8)
        padded[: indices.size] = indices
        shifts = (numpy.arange(per_byte, dtype=numpy.uint8) * bits)
        return (padded.reshape(-1, per_byte) << shifts).sum(axis=1, dtype=numpy.uint8).tobytes()
    # Any other width: one bit per byte, then numpy packs the bits.
    values = indices.astype(numpy.uint32)
    bit_matrix = ((values[:, None] >> numpy.arange(bits, dtype=numpy.uint32)) & 1).astype(numpy.uint8)
    return numpy.packbits(bit_matrix.reshape(-1), bitorder="little").tobytes()


def unpack_indices(data: bytes, n: int, bits: int) -> numpy.ndarray:
    """Return the n indices packed in `data` at `bits` bits, as uint8 (bits <= 8) or uint16.

    Raises FormatError when `data` is not exactly packed_size(n, bits) bytes or
    the padding bits are not zero.
    """
    if not 0 <= bits <= MAX_BITS:
        raise FormatError(f"index width {bits} bits is outside 0..{MAX_BITS}")
    expected = packed_size(n, bits)
    if len(data) != expected:
        raise FormatError(f"packed indices hold {len(data)} bytes, {n} indices at {bits} bits need {expected}")
    dtype = numpy.uint8 if bits <= 8 else numpy.dtype("<u2")
    if bits == 0:
        return numpy.zeros(n, dtype=dtype)
    raw = numpy.frombuffer(data, dtype=numpy.uint8)
    if bits == 8:
        return raw.copy()
    if bits == 16:
        return raw.view("<u2").astype(numpy.uint16)
    if bits in (1, 2, 4):
        per_byte = 8 // bits
        shifts = numpy.arange(per_byte, dtype=numpy.uint8) * bits
        values = ((raw[:, None] >> shifts) & ((1 << bits) - 1)).reshape(-1)
        if numpy.any(values[n:]):
            raise FormatError("packed indices have non-zero padding bits")
        return values[:n].astype(dtype)
    stream = numpy.unpackbits(raw, bitorder="little")
    if numpy.any(stream[n * bits:]):
        raise FormatError("packed indices have non-zero padding bits")
    weights = (1 << numpy.arange(bits, dtype=numpy.uint32)).astype(numpy.uint32)
    return (stream[: n * bits].reshape(n, bits).astype(numpy.uint32) @ weights).astype(dtype)
