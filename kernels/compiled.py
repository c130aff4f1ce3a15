"""Compiled CPU twins of the array kernels whose NumPy form is slow.

Why: two steps are cheap on a GPU as array operations but slow in NumPy. The
DP of optimal.py runs k * log2(B) small array steps per chunk (per-call
overhead dominates), and labelling searches every value in a table of all
segments' midpoints (branchy binary search, cache misses). Here each is one
Numba-compiled loop per segment or per value, parallel over them. The
per-value steps are fused: one pass turns the sorted values into keys and
prefix sums, and one pass labels the input values without building their keys.

The array version stays the reference: it is what runs on CuPy, and it is
what the tests compare these twins with, bit for bit, in CI. A twin therefore
repeats the reference's arithmetic operation for operation (same float64
expressions, no fastmath, so no reassociation or fused multiply-add) and the
same tie rule (first index of the maximum). Labels are pure integer
comparisons, identical by definition.

Numba is optional at run time: `available()` is False without it and callers
fall back to the array version (same results, slower).
"""
from __future__ import annotations

import importlib.util
import os
from functools import lru_cache

import numpy


# Set to 0, the CPU runs the array code instead of the twins: the very code CuPy
# runs, on NumPy (benchmarks/gpu_check.sh's dry run compares it with the twins).
DISABLE_VARIABLE = "GPUCOMPRESS_COMPILED"


@lru_cache(maxsize=None)
def available() -> bool:
    """Return True when the compiled twins can run (Numba is installed) and GPUCOMPRESS_COMPILED is not 0."""
    if os.environ.get(DISABLE_VARIABLE, "").strip() == "0":
        return False
    return importlib.util.find_spec("numba") is not None


def _kernels():
    from . import _numba_kernels  # compiles on first use, then loads from Numba's cache

    return _numba_kernels


def _ragged(tables):
    """Return (flat sums, flat counts, row starts) of a list of (sums (R_g, W_g), counts (R_g, W_g)) groups."""
    sums = numpy.concatenate([numpy.asarray(table[0], dtype=numpy.int64).ravel() for table in tables])
    counts = numpy.concatenate([numpy.asarray(table[1], dtype=numpy.float64).ravel() for table in tables])
    widths = numpy.concatenate([numpy.full(table[0].shape[0], table[0].shape[1], dtype=numpy.int64)
                                for table in tables])
    return sums, counts, numpy.concatenate([[0], numpy.cumsum(widths)]).astype(numpy.int64)


def _split_rows(borders, tables) -> list:
    bounds = numpy.cumsum([0] + [table[0].shape[0] for table in tables])
    return [borders[bounds[g]:bounds[g + 1]] for g in range(len(tables))]


def dp_groups_borders(groups, k: int) -> list:
    """Return the DP borders (R_g, k + 1) of every group of rows in one parallel call.

    groups: [(sums, counts, strides)], sums int64 (R_g, B_g + 1) exact prefix
    sums at the bin edges (first column 0), counts float64 the matching
    counts, strides the stride levels of optimal._strides(B_g). Each row's
    borders are the ones optimal.dp_bin_borders gives it (same values, same
    first-index ties); rows of different widths share the cores.
    """
    if not groups:
        return []
    sums, counts, row_starts = _ragged(groups)
    strides = [numpy.asarray(group[2], dtype=numpy.int64) for group in groups for _ in range(group[0].shape[0])]
    stride_starts = numpy.concatenate([[0], numpy.cumsum([level.size for level in strides])]).astype(numpy.int64)
    borders = _kernels()._dp_rows(sums, counts, row_starts, int(k), numpy.concatenate(strides), stride_starts)
    return _split_rows(borders, groups)


def dp_bin_borders(sums, counts, k: int, strides) -> numpy.ndarray:
    """Return int64 (R, k + 1) bin borders of the exact k-clustering of each row's bins.

    One group of dp_groups_borders: identical to optimal.dp_bin_borders.
    """
    return dp_groups_borders([(sums, counts, strides)], k)[0]


# Bytes of split tables one call of the banded DP kernel may hold.
BAND_TABLE_BYTES = 1 << 25


def band_groups_borders(groups, k: int, width: int) -> list:
    """Return the banded-DP borders (R_g, k + 1) of every group of rows in one parallel call.

    groups: [(sums, counts, lows)], lows int64 (R_g, k + 1) from
    optimal.band_lows; width: the band width. Each row's borders are the ones
    optimal.band_bin_borders gives it, bit for bit.
    """
    if not groups:
        return []
    sums, counts, row_starts = _ragged(groups)
    lows = numpy.ascontiguousarray(numpy.concatenate([group[2] for group in groups]), dtype=numpy.int64)
    # The kernel keeps every row's split tables until the halves meet: bound
    # them by calling it on runs of rows.
    per_call = max(1, BAND_TABLE_BYTES // (2 * 4 * (k - k // 2 + 1) * (width + 1)))
    n_rows = row_starts.shape[0] - 1
    borders = []
    for first in range(0, n_rows, per_call):
        last = min(n_rows, first + per_call)
        starts = row_starts[first : last + 1]
        borders.append(_kernels()._band_rows(sums[starts[0] : starts[-1]], counts[starts[0] : starts[-1]],
                                             starts - starts[0], int(k), lows[first:last], int(width)))
    return _split_rows(numpy.concatenate(borders), groups)


def band_bin_borders(sums, counts, k: int, lows, width: int) -> numpy.ndarray:
    """Return int64 (R, k + 1) bin borders of the banded DP: optimal.band_bin_borders' twin, bit for bit."""
    return band_groups_borders([(sums, counts, lows)], k, width)[0]


def lloyd(keys, prefix, offsets, centroids, max_iter: int, key_shift: int, key_bias: int):
    """Return (centroids, iterations) of Lloyd's algorithm on every segment: lloyd.lloyd's twin.

    keys: int64 (N,) sorted; prefix: uint64 (N + 1,); offsets: int64 (S + 1,);
    centroids: int64 (S, k) sorted starts (not modified). One compiled loop
    per segment instead of one array step per iteration: the same integer
    midpoints, borders, sums and round-half-up means, so the same numbers.
    """
    out = numpy.array(centroids, dtype=numpy.int64, order="C", copy=True)
    iterations = numpy.zeros(out.shape[0], dtype=numpy.int64)
    _kernels()._lloyd(keys, prefix, offsets, out, int(max_iter), int(key_shift), int(key_bias), iterations)
    return out, iterations


def _array_keys(values, offsets, exponents):
    """Return (keys, segment of each value) int64 (N,) by the array code, for scales no normal double holds."""
    from .fixedpoint import make_keys, quantize

    sizes = offsets[1:] - offsets[:-1]
    segment = numpy.repeat(numpy.arange(sizes.size, dtype=numpy.int64), sizes)
    keys = make_keys(quantize(numpy.asarray(values, dtype=numpy.float64),
                              numpy.asarray(exponents, dtype=numpy.int64)[segment]), segment)
    return keys, segment


def _normal_scales(exponents):
    """Return float64 2**exponents, or None when one is no normal double (only ldexp scales those exactly)."""
    exponents = numpy.asarray(exponents, dtype=numpy.int64)
    if exponents.size and (exponents.min() < -1022 or exponents.max() > 1023):
        return None
    return numpy.ldexp(numpy.ones(exponents.size), exponents.astype(numpy.int32))


def bin_edges(keys, offsets, rows, n_bins: int, key_shift: int, value_mask: int, key_bias: int,
              fine_per_bin: int, cube_shift: int, extremes: int) -> numpy.ndarray:
    """Return int64 (R, n_bins + 1) DP bin edges of segments `rows`, each larger than n_bins: optimal.bin_edges' twin.

    keys: int64 (N,) sorted; offsets: int64 (S + 1,); rows: int64 (R,). The
    same integer thresholds, searches, cube roots and union, one compiled
    loop per segment in parallel instead of some forty array steps.
    """
    return _kernels()._bin_edges(keys, numpy.ascontiguousarray(offsets, dtype=numpy.int64),
                                 numpy.ascontiguousarray(rows, dtype=numpy.int64), int(n_bins), int(key_shift),
                                 int(value_mask), int(key_bias), int(fine_per_bin), int(cube_shift), int(extremes))


def error_sums(values, codebook, labels):
    """Return float64 (sum of (values - codebook[labels])**2, sum of values**2), one pass, no temporaries.

    values: float32 or float64 (n,); codebook: (k,) of the same dtype;
    labels: (n,) integer indices into it. Sums run in a fixed order, so the
    same inputs give the same bits on every run.
    """
    return tuple(float(total) for total in _kernels()._error_sums(values, codebook, labels))


def partition(values, pivot, out) -> int:
    """Write the values below pivot to the front of out and the others to the back; return their count.

    values, out: NumPy arrays (n,) of one dtype; pivot: a scalar. NaN go to
    the back. Each part keeps no particular order.
    """
    return int(_kernels()._partition(values, pivot, out))


def sorted_keys_and_prefix(sorted_values, offsets, exponents, key_shift: int, key_bias: int):
    """Return (keys int64 (N,), prefix uint64 (N + 1,)) of segments whose values are sorted.

    sorted_values: float32 or float64 (N,), finite, ascending within each
    segment [offsets[s], offsets[s + 1]); exponents: int64 (S,). keys is
    fixedpoint.make_keys(fixedpoint.quantize(...)) of the values (sorted
    too: quantizing is monotone) and prefix is fixedpoint.prefix_sums of
    their q: one pass instead of a quantize, a key_values and a cumsum.
    """
    offsets = numpy.ascontiguousarray(offsets, dtype=numpy.int64)
    scales = _normal_scales(exponents)
    if scales is None:  # never for real weights (|x| < 1e-290): the array code
        from .fixedpoint import key_values, prefix_sums

        keys, _ = _array_keys(sorted_values, offsets, exponents)
        return keys, prefix_sums(key_values(keys))
    keys = numpy.empty(sorted_values.shape[0], dtype=numpy.int64)
    prefix = numpy.empty(sorted_values.shape[0] + 1, dtype=numpy.uint64)
    _kernels()._sorted_keys_and_prefix(sorted_values, offsets, scales, int(key_shift), int(key_bias), keys, prefix)
    return keys, prefix


# Buckets of a segment's labelling table (_table_dtype each): a power of two near
# its number of values, within these bounds. Fine buckets keep the few
# midpoints per bucket that make the lookup fast (heavy tails squeeze the
# core, where most midpoints lie, into few buckets: 4096 buckets labelled a
# 2 M-value segment at k = 256 2x slower than 65536); sized by the segment,
# the tables take at most 4 bytes per value (1 at k <= 256) beside the minimum.
MIN_LABEL_BUCKETS = 1 << 6
MAX_LABEL_BUCKETS = 1 << 16


def _bucket_layout(sizes, low_keys, high_keys):
    """Return (shifts int64 (S,), table_offsets int64 (S + 1,)) of the segments' labelling tables.

    Segment s gets a power-of-two number of buckets and the least shift that
    maps its key span [low_keys[s], high_keys[s]] into them.
    """
    sizes = numpy.asarray(sizes, dtype=numpy.int64)
    wanted = numpy.clip(sizes, MIN_LABEL_BUCKETS, MAX_LABEL_BUCKETS)
    bucket_bits = [(int(n) - 1).bit_length() for n in wanted.tolist()]
    buckets = numpy.left_shift(1, numpy.array(bucket_bits, dtype=numpy.int64))
    spans = (numpy.asarray(high_keys, dtype=numpy.int64) - low_keys).tolist()
    # span >> shift < 2**bits exactly when span < 2**(bits + shift).
    shifts = numpy.array([max(0, int(span).bit_length() - bits) for span, bits in zip(spans, bucket_bits)],
                         dtype=numpy.int64)
    table_offsets = numpy.zeros(sizes.shape[0] + 1, dtype=numpy.int64)
    numpy.cumsum(buckets + 1, out=table_offsets[1:])  # each table ends with its total
    return shifts, table_offsets


def _table_dtype(n_mids: int):
    # The narrowest type that holds 0..n_mids: at k <= 256 a byte per bucket,
    # so a 65,536-bucket table stays in the core's cache.
    for dtype in (numpy.uint8, numpy.uint16):
        if n_mids <= numpy.iinfo(dtype).max:
            return dtype
    return numpy.int32


def value_labels(values, offsets, exponents, mid_keys, n_mids: int, low_keys, high_keys, key_shift: int,
                 key_bias: int, dtype) -> numpy.ndarray:
    """Return labels in `dtype`: for each value, how many of its segment's midpoint keys are below its key.

    values: float32 or float64 (N,) in input order, segment s at
    [offsets[s], offsets[s + 1]); exponents: int64 (S,); mid_keys: int64
    (S * n_mids,), sorted within each segment's block of n_mids; low_keys,
    high_keys: int64 (S,) the least and greatest key of each segment. The
    same numbers as `searchsorted(mid_keys, input_keys, side="left") -
    segment * n_mids` on the keys of fixedpoint.make_keys(fixedpoint.quantize(...)),
    found without building those keys or a per-value segment array, through
    a per-segment table of equal-width buckets (a binary search is a chain of
    dependent loads: 3x slower).
    """
    offsets = numpy.ascontiguousarray(offsets, dtype=numpy.int64)
    scales = _normal_scales(exponents)
    if scales is None:  # never for real weights: the array code
        keys, segment = _array_keys(values, offsets, exponents)
        return (numpy.searchsorted(mid_keys, keys, side="left") - segment * n_mids).astype(dtype)
    low_keys = numpy.ascontiguousarray(low_keys, dtype=numpy.int64)
    shifts, table_offsets = _bucket_layout(offsets[1:] - offsets[:-1], low_keys, high_keys)
    kernels = _kernels()
    tables = numpy.empty(int(table_offsets[-1]), dtype=_table_dtype(n_mids))
    kernels._bucket_tables(mid_keys, int(n_mids), low_keys, shifts, table_offsets, tables)
    # A key above every other after the last segment's midpoints: the lookup
    # compares with the entry after a segment's own without a bounds check.
    mid_keys = numpy.append(numpy.asarray(mid_keys, dtype=numpy.int64), numpy.iinfo(numpy.int64).max)
    out = numpy.empty(values.shape[0], dtype=dtype)
    kernels._value_labels(values, offsets, scales, int(key_shift), int(key_bias), mid_keys, int(n_mids),
                          low_keys, shifts, tables, table_offsets, out)
    return out
