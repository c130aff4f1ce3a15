"""Codebook sections of an archive: stored raw, or as zstd of their sorted centroids' steps (version 3).

Per-channel codebooks are tens of thousands of rows of k sorted floats (the
FaceNet-shaped graph of benchmarks/granularity.py at k=16: 35,764 rows, 2.3 MB
of a 12 MB archive), which zstd alone barely shrinks: their mantissas look
random. Within a row, though,
consecutive centroids are close in their bit patterns once floats are mapped
to integers that sort as the floats do. The "delta" coding stores, row by row,
the first centroid's rank and then each step to the next, zigzagged (small
steps, small integers), split into byte planes (all low bytes, then the next
...) and compressed by zstd. Every bit pattern maps
to exactly one rank and back, so any codebook (NaN, -0.0, infinities) comes
back bit for bit. The writer keeps whichever of raw and delta is smaller.
"""
from __future__ import annotations

import numpy

from ..errors import FormatError
from . import entropy

RAW = "raw"
DELTA = "delta"
CODINGS = (RAW, DELTA)
# Level 9: within 2% of level 19's bytes on channel codebooks at a tenth of its time (3 ms per 4,000 rows
# of 16, against 29: pack encodes every codebook twice, for its size bound and for the archive).
ZSTD_LEVEL = 9
# Smaller codebooks stay raw without a try: a frame's header and tables cost more than they save.
MIN_DELTA_VALUES = 64


def _unsigned(itemsize: int) -> numpy.dtype:
    return numpy.dtype(f"<u{itemsize}")


def encode_codebook(codebook: numpy.ndarray) -> tuple[str, bytes]:
    """Return (coding, section bytes) of a codebook: (rows, k) or (k,) values of a little-endian float
    dtype of 2, 4 or 8 bytes, C-contiguous. The smaller of RAW (its bytes) and DELTA; RAW on a tie and
    below MIN_DELTA_VALUES values."""
    raw = codebook.tobytes()
    if codebook.size < MIN_DELTA_VALUES:
        return RAW, raw
    coded = entropy.zstd_compress(_delta_planes(codebook), ZSTD_LEVEL)
    return (DELTA, coded) if len(coded) < len(raw) else (RAW, raw)


def coded_size(codebook: numpy.ndarray) -> int:
    """Return the bytes a codebook's section takes in an archive (encode_codebook's, in the codebook's
    native little-endian dtype): what pack's size bound and a budget's predictions count for it."""
    return len(encode_codebook(numpy.ascontiguousarray(codebook))[1])


def decode_codebook(coding: str, data, dtype: numpy.dtype, rows: int, k: int) -> numpy.ndarray:
    """Return the (rows * k,) values of dtype that a codebook section holds (a new array).

    data: the section's bytes; the section must hold exactly rows * k values
    (RAW) or one zstd frame of exactly that many bytes (DELTA). Raises
    FormatError otherwise.
    """
    count = rows * k
    expected = count * dtype.itemsize
    if coding == RAW:
        if len(data) != expected:
            raise FormatError(f"codebook section holds {len(data)} bytes, {count} {dtype} values need {expected}")
        return numpy.frombuffer(data, dtype=dtype).copy()
    planes = entropy.zstd_decompress(data, expected)
    unsigned = _unsigned(dtype.itemsize)
    width = 8 * dtype.itemsize
    zigzag = numpy.frombuffer(planes, dtype=numpy.uint8).reshape(dtype.itemsize, count).T.copy().view(unsigned)
    steps = (zigzag >> unsigned.type(1)) ^ (numpy.zeros_like(zigzag) - (zigzag & unsigned.type(1)))
    # Modular sums undo the modular steps (unsigned arithmetic wraps around).
    ranks = numpy.cumsum(steps.reshape(rows, k), axis=1, dtype=unsigned).reshape(-1)
    top = unsigned.type(1 << (width - 1))
    sortable = ranks + top
    bits = numpy.where(sortable & top, sortable ^ top, ~sortable).astype(unsigned)
    return bits.view(dtype)


def _delta_planes(codebook: numpy.ndarray) -> bytes:
    """Return the byte planes of the zigzagged rank steps of a codebook (see the module docstring)."""
    itemsize = codebook.dtype.itemsize
    unsigned = _unsigned(itemsize)
    width = 8 * itemsize
    rows = 1 if codebook.ndim == 1 else codebook.shape[0]
    bits = numpy.ascontiguousarray(codebook).view(unsigned).reshape(rows, -1)
    top = unsigned.type(1 << (width - 1))
    # Sortable: negative floats flip every bit, the others their sign bit; minus top centres 0.0 on 0.
    sortable = numpy.where(bits & top, ~bits, bits ^ top).astype(unsigned)
    ranks = sortable - top
    steps = numpy.diff(ranks, axis=1, prepend=unsigned.type(0))
    # Zigzag of the steps read as signed integers: -1 -> 1, 1 -> 2, ...
    signed = steps.view(f"<i{itemsize}")
    zigzag = ((steps << unsigned.type(1)) ^ (signed >> (width - 1)).view(unsigned)).reshape(-1)
    return numpy.ascontiguousarray(zigzag.view(numpy.uint8).reshape(-1, itemsize).T).tobytes()
