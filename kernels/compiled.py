"""Compiled CPU twins of the array kernels whose NumPy form is slow.

Why: two steps are cheap on a GPU as array operations but slow in NumPy. The
DP of optimal.py runs k * log2(B) small array steps per chunk (per-call
overhead dominates), and labelling searches every value in a table of all
segments' midpoints (branchy binary search, cache misses). Here each is one
compiled loop per segment or per value, parallel over them (OpenMP). The
per-value steps are fused: one pass turns the sorted values into keys and
prefix sums, and one pass labels the input values without building their keys.

The loops are Cython (_cpu_kernels.pyx, beside this file), compiled once by
`pip install` (setup.py): nothing is compiled at a user's first call.

The array version stays the reference: it is what runs on CuPy, and it is
what the tests compare these twins with, bit for bit, in CI. A twin therefore
repeats the reference's arithmetic operation for operation (same float64
expressions, compiled without fast-math or fused multiply-add, so no
reassociation) and the same tie rule (first index of the maximum). Labels are
pure integer comparisons, identical by definition.

The wrappers here check what the unchecked loops index (offsets, rows,
strides, widths against the arrays' lengths) and raise KernelInputError
before a call that would read out of bounds. `available()` is False when the
extension is not built (a source tree never installed): callers then fall
back to the array version (same results, slower).
"""
from __future__ import annotations

import os
from functools import lru_cache

import numpy

from ..errors import KernelInputError


# Set to 0, the CPU runs the array code instead of the twins: the very code CuPy
# runs, on NumPy (benchmarks/gpu_check.sh's dry run compares it with the twins).
DISABLE_VARIABLE = "GPUCOMPRESS_COMPILED"


@lru_cache(maxsize=None)
def available() -> bool:
    """Return True when the compiled twins can run: the extension is built and GPUCOMPRESS_COMPILED is not 0."""
    if os.environ.get(DISABLE_VARIABLE, "").strip() == "0":
        return False
    try:
        _kernels()
    except ImportError:
        return False
    return True


def _kernels():
    # Idle OpenMP workers sleep instead of spinning (unless the user chose
    # otherwise): between the kernels' parallel loops this process sorts on
    # its own threads, and spinning workers took their cores (on 2 busy cores
    # the FaceNet graph clustered 2x slower). libgomp reads the variable when
    # the extension loads it, just below.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from . import _cpu_kernels

    return _cpu_kernels


def _int64(name: str, array, ndim: int) -> numpy.ndarray:
    """Return array as C-contiguous int64 with ndim dimensions; raise KernelInputError otherwise."""
    array = numpy.asarray(array)
    if array.ndim != ndim or (array.size and array.dtype.kind not in "iu"):
        raise KernelInputError(f"{name} should be a {ndim}-D integer array, got shape {array.shape} "
                               f"of {array.dtype}.")
    return numpy.ascontiguousarray(array, dtype=numpy.int64)


def _check_offsets(offsets, n_values: int, name: str = "offsets") -> numpy.ndarray:
    """Return offsets as int64 after checking 0 = offsets[0] <= ... <= offsets[-1] = n_values."""
    offsets = _int64(name, offsets, 1)
    if offsets.size == 0 or offsets[0] != 0 or offsets[-1] != n_values or (offsets[1:] < offsets[:-1]).any():
        raise KernelInputError(f"{name} should rise from 0 to {n_values} (the number of values).")
    return offsets


def _check_range(name: str, array, low: int, high: int) -> None:
    """Raise KernelInputError unless low <= every entry of array <= high."""
    if array.size and (int(array.min()) < low or int(array.max()) > high):
        raise KernelInputError(f"{name} should lie in [{low}, {high}].")


def _check_vector(name: str, array, dtypes) -> None:
    """Raise KernelInputError unless array is a 1-D NumPy array of one of dtypes."""
    if not isinstance(array, numpy.ndarray) or array.ndim != 1 or array.dtype not in dtypes:
        raise KernelInputError(f"{name} should be a 1-D array of {' or '.join(map(str, dtypes))}.")


FLOATS = (numpy.dtype(numpy.float32), numpy.dtype(numpy.float64))
LABELS = tuple(numpy.dtype(t) for t in (numpy.uint8, numpy.uint16, numpy.uint32, numpy.int32, numpy.int64))


def _check_tables(tables, k: int) -> None:
    """Check the (sums, counts, ...) tables' shapes: (R, W) int64-like and float64, W >= 1, and k >= 1."""
    if k < 1:
        raise KernelInputError(f"k={k} should be >= 1.")
    for table in tables:
        sums, counts = numpy.asarray(table[0]), numpy.asarray(table[1])
        if sums.ndim != 2 or sums.shape != counts.shape or sums.shape[1] < 1:
            raise KernelInputError(f"sums {sums.shape} and counts {counts.shape} should be one (R, W) shape, W >= 1.")


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
    _check_tables(groups, k)
    for sums, _, strides in groups:
        _check_range("strides", _int64("strides", strides, 1), 1, max(1, sums.shape[1] - 1))
    sums, counts, row_starts = _ragged(groups)
    # Every row of a group repeats its group's levels: one tile per group, not
    # one array per row (tens of thousands of rows per call per channel).
    levels = [numpy.asarray(group[2], dtype=numpy.int64) for group in groups]
    strides = numpy.concatenate([numpy.tile(level, group[0].shape[0]) for level, group in zip(levels, groups)])
    per_row = numpy.concatenate([numpy.full(group[0].shape[0], level.size, dtype=numpy.int64)
                                 for level, group in zip(levels, groups)])
    stride_starts = numpy.concatenate([[0], numpy.cumsum(per_row)]).astype(numpy.int64)
    borders = _kernels().dp_rows(sums, counts, row_starts, int(k), strides, stride_starts)
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
    _check_tables(groups, k)
    if width < 1:
        raise KernelInputError(f"width={width} should be >= 1.")
    for sums, _, lows in groups:
        lows = _int64("lows", lows, 2)
        if lows.shape != (sums.shape[0], k + 1):
            raise KernelInputError(f"lows {lows.shape} should have shape {(sums.shape[0], k + 1)}.")
        _check_range("lows", lows, 0, sums.shape[1] - 1 - width)
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
        borders.append(_kernels().band_rows(sums[starts[0] : starts[-1]], counts[starts[0] : starts[-1]],
                                             starts - starts[0], int(k), lows[first:last], int(width)))
    return _split_rows(numpy.concatenate(borders), groups)


def band_bin_borders(sums, counts, k: int, lows, width: int) -> numpy.ndarray:
    """Return int64 (R, k + 1) bin borders of the banded DP: optimal.band_bin_borders' twin, bit for bit."""
    return band_groups_borders([(sums, counts, lows)], k, width)[0]


def lloyd(keys, prefix, offsets, centroids, max_iter: int, key_shift: int, key_bias: int, weight_prefix=None):
    """Return (centroids, iterations) of Lloyd's algorithm on every segment: lloyd.lloyd's twin.

    keys: int64 (N,) sorted; prefix: uint64 (N + 1,); offsets: int64 (S + 1,);
    centroids: int64 (S, k) sorted starts (not modified); weight_prefix: None
    or int64 (N + 1,) prefix sums of integer weights (prefix then sums w * q).
    One compiled loop per segment instead of one array step per iteration:
    the same integer midpoints, borders, sums and round-half-up means, so the
    same numbers.
    """
    keys = _int64("keys", keys, 1)
    prefix = numpy.ascontiguousarray(prefix, dtype=numpy.uint64)
    offsets = _check_offsets(offsets, keys.shape[0])
    if prefix.shape != (keys.shape[0] + 1,):
        raise KernelInputError(f"prefix {prefix.shape} should have shape {(keys.shape[0] + 1,)}.")
    out = numpy.array(centroids, dtype=numpy.int64, order="C", copy=True)
    if out.ndim != 2 or out.shape[0] != offsets.shape[0] - 1:
        raise KernelInputError(f"centroids {out.shape} should have one row per segment ({offsets.shape[0] - 1}).")
    weight_prefix = _weight_prefix(weight_prefix, prefix)
    iterations = numpy.zeros(out.shape[0], dtype=numpy.int64)
    _kernels().lloyd(keys, prefix, offsets, out, int(max_iter), int(key_shift), int(key_bias), iterations,
                     weight_prefix)
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
    keys = _int64("keys", keys, 1)
    offsets = _check_offsets(offsets, keys.shape[0])
    rows = _int64("rows", rows, 1)
    _check_range("rows", rows, 0, offsets.shape[0] - 2)
    n_bins, extremes = int(n_bins), int(extremes)
    if extremes < 0 or fine_per_bin < 1 or not 0 <= cube_shift < 32 or n_bins - 2 * (n_bins // 3) - 2 * extremes < 1:
        raise KernelInputError(f"n_bins={n_bins}, extremes={extremes}, fine_per_bin={fine_per_bin} and "
                               f"cube_shift={cube_shift} leave no equal-width bins or break their bounds.")
    if rows.size and int((offsets[rows + 1] - offsets[rows]).min()) <= n_bins:
        raise KernelInputError(f"every segment in rows should hold more than n_bins={n_bins} values.")
    return _kernels().bin_edges(keys, offsets, rows, n_bins, int(key_shift),
                                 int(value_mask), int(key_bias), int(fine_per_bin), int(cube_shift), int(extremes))


def bin_tables(prefix, weight_prefix, edges):
    """Return (sums int64, counts float64) (R, W) at bin edges: optimal._tables_at's twin, one parallel pass.

    prefix: uint64 (N + 1,) prefix sums of q (or of w * q); weight_prefix: None or int64 (N + 1,) of the
    integer weights; edges: int64 (R, W) sorted positions in [0, N], each row's first its start.
    """
    prefix = numpy.ascontiguousarray(prefix, dtype=numpy.uint64)
    edges = _int64("edges", edges, 2)
    _check_range("edges", edges, 0, prefix.shape[0] - 1)
    weight_prefix = _weight_prefix(weight_prefix, prefix)
    return _kernels().bin_tables(prefix, weight_prefix, edges)


def _weight_prefix(weight_prefix, prefix) -> numpy.ndarray:
    """Return int64 weight prefix sums checked against prefix's shape, or the kernels' empty "every weight is 1"."""
    if weight_prefix is None:
        return numpy.zeros(0, dtype=numpy.int64)
    weight_prefix = _int64("weight_prefix", weight_prefix, 1)
    if weight_prefix.shape != prefix.shape:
        raise KernelInputError(f"weight_prefix {weight_prefix.shape} should have shape {prefix.shape}.")
    return weight_prefix


def error_sums(values, codebook, labels):
    """Return float64 (sum of (values - codebook[labels])**2, sum of values**2), one pass, no temporaries.

    values: float32 or float64 (n,); codebook: (k,) of the same dtype;
    labels: (n,) integer indices into it. Sums run in a fixed order, so the
    same inputs give the same bits on every run.
    """
    _check_vector("values", values, FLOATS)
    _check_vector("codebook", codebook, FLOATS)
    _check_vector("labels", labels, LABELS)
    if labels.shape != values.shape:
        raise KernelInputError(f"labels {labels.shape} should have the shape of values {values.shape}.")
    _check_range("labels", labels, 0, codebook.shape[0] - 1)
    values, codebook, labels = (numpy.ascontiguousarray(a) for a in (values, codebook, labels))
    one_row = numpy.array([0, values.shape[0]], dtype=numpy.int64)
    return tuple(float(total) for total in _kernels().rows_error_sums(values, codebook, labels, one_row, 0))


def rows_error_sums(values, codebooks, labels, sizes):
    """Return error_sums(values, codebooks.reshape(-1), s * k + labels) for rows of codebooks, one pass.

    values: float32 or float64 (n,), row s's values at [offsets[s], offsets[s + 1]) of sizes (S,);
    codebooks: (S, k) of values' dtype; labels: (n,) of LABELS, each < k. The same sums in the same
    order as error_sums on the flat labels, without building them.
    """
    _check_vector("values", values, FLOATS)
    _check_vector("labels", labels, LABELS)
    codebooks = numpy.ascontiguousarray(codebooks)
    if codebooks.ndim != 2 or codebooks.dtype not in FLOATS or codebooks.shape[1] < 1:
        raise KernelInputError("codebooks should be a 2-D float32 or float64 array (rows, k), k >= 1.")
    if labels.shape != values.shape:
        raise KernelInputError(f"labels {labels.shape} should have the shape of values {values.shape}.")
    offsets = numpy.concatenate([[0], numpy.cumsum(_int64("sizes", sizes, 1))]).astype(numpy.int64)
    offsets = _check_offsets(offsets, values.shape[0], "sizes' offsets")
    if offsets.shape[0] - 1 != codebooks.shape[0]:
        raise KernelInputError(f"sizes ({offsets.shape[0] - 1}) should hold one size per codebook row "
                               f"({codebooks.shape[0]}).")
    _check_range("labels", labels, 0, codebooks.shape[1] - 1)
    values, labels = numpy.ascontiguousarray(values), numpy.ascontiguousarray(labels)
    return tuple(float(total) for total in
                 _kernels().rows_error_sums(values, codebooks.reshape(-1), labels, offsets, int(codebooks.shape[1])))


def partition(values, pivot, out) -> int:
    """Write the values below pivot to the front of out and the others to the back; return their count.

    values, out: NumPy arrays (n,) of one dtype; pivot: a scalar. NaN go to
    the back. Each part keeps no particular order.
    """
    _check_vector("values", values, FLOATS)
    if not isinstance(out, numpy.ndarray) or out.shape != values.shape or out.dtype != values.dtype:
        raise KernelInputError("out should be an array of the values' shape and dtype.")
    return int(_kernels().partition(numpy.ascontiguousarray(values), float(pivot), out))


def sorted_keys_and_prefix(sorted_values, offsets, exponents, key_shift: int, key_bias: int):
    """Return (keys int64 (N,), prefix uint64 (N + 1,)) of segments whose values are sorted.

    sorted_values: float32 or float64 (N,), finite, ascending within each
    segment [offsets[s], offsets[s + 1]); exponents: int64 (S,). keys is
    fixedpoint.make_keys(fixedpoint.quantize(...)) of the values (sorted
    too: quantizing is monotone) and prefix is fixedpoint.prefix_sums of
    their q: one pass instead of a quantize, a key_values and a cumsum.
    """
    _check_vector("sorted_values", sorted_values, FLOATS)
    offsets = _check_offsets(offsets, sorted_values.shape[0])
    exponents = _int64("exponents", exponents, 1)
    if exponents.shape[0] != offsets.shape[0] - 1:
        raise KernelInputError(f"exponents ({exponents.shape[0]}) should have one per segment.")
    scales = _normal_scales(exponents)
    if scales is None:  # never for real weights (|x| < 1e-290): the array code
        from .fixedpoint import key_values, prefix_sums

        keys, _ = _array_keys(sorted_values, offsets, exponents)
        return keys, prefix_sums(key_values(keys))
    keys = numpy.empty(sorted_values.shape[0], dtype=numpy.int64)
    prefix = numpy.empty(sorted_values.shape[0] + 1, dtype=numpy.uint64)
    _kernels().sorted_keys_and_prefix(numpy.ascontiguousarray(sorted_values), offsets, scales, int(key_shift), int(key_bias), keys, prefix)
    return keys, prefix


# Buckets of a segment's labelling table (_table_dtype each): a power of two near
# its number of values, within these bounds. Fine buckets keep the few
# midpoints per bucket that make the lookup fast (heavy tails squeeze the
# core, where most midpoints lie, into few buckets: 4096 buckets labelled a
# 2 M-value segment at k = 256 2x slower than 65536); sized by the segment,
# the tables take at most 4 bytes per value (1 at k <= 256) beside the minimum.
MIN_LABEL_BUCKETS = 1 << 6
MAX_LABEL_BUCKETS = 1 << 16


_POWERS_OF_TWO = numpy.left_shift(1, numpy.arange(63, dtype=numpy.int64))


def _bit_lengths(values) -> numpy.ndarray:
    """Return int64 int(v).bit_length() of each int64 v >= 0 (S,), as one array step.

    The powers of two at or below v, counted by a search: exact, where a
    float log2 could round (a per-channel run has tens of thousands of
    segments, and one Python call each cost 60 ms).
    """
    values = numpy.asarray(values, dtype=numpy.int64)
    return numpy.searchsorted(_POWERS_OF_TWO, values, side="right").astype(numpy.int64)


def _bucket_layout(sizes, low_keys, high_keys):
    """Return (shifts int64 (S,), table_offsets int64 (S + 1,)) of the segments' labelling tables.

    Segment s gets a power-of-two number of buckets and the least shift that
    maps its key span [low_keys[s], high_keys[s]] into them.
    """
    sizes = numpy.asarray(sizes, dtype=numpy.int64)
    wanted = numpy.clip(sizes, MIN_LABEL_BUCKETS, MAX_LABEL_BUCKETS)
    bucket_bits = _bit_lengths(wanted - 1)
    buckets = numpy.left_shift(1, bucket_bits)
    spans = numpy.asarray(high_keys, dtype=numpy.int64) - numpy.asarray(low_keys, dtype=numpy.int64)
    # span >> shift < 2**bits exactly when span < 2**(bits + shift).
    shifts = numpy.maximum(0, _bit_lengths(spans) - bucket_bits)
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
    _check_vector("values", values, FLOATS)
    offsets = _check_offsets(offsets, values.shape[0])
    n_segments = offsets.shape[0] - 1
    exponents = _int64("exponents", exponents, 1)
    mid_keys = _int64("mid_keys", mid_keys, 1)
    if exponents.shape[0] != n_segments or mid_keys.shape[0] != n_segments * n_mids or n_mids < 0:
        raise KernelInputError(f"exponents ({exponents.shape[0]}) and mid_keys ({mid_keys.shape[0]}) should hold "
                               f"1 and n_mids={n_mids} entries per segment ({n_segments}).")
    if numpy.dtype(dtype) not in LABELS:
        raise KernelInputError(f"dtype={dtype} should be one of {', '.join(map(str, LABELS))}.")
    scales = _normal_scales(exponents)
    if scales is None:  # never for real weights: the array code
        keys, segment = _array_keys(values, offsets, exponents)
        return (numpy.searchsorted(mid_keys, keys, side="left") - segment * n_mids).astype(dtype)
    low_keys, high_keys = _int64("low_keys", low_keys, 1), _int64("high_keys", high_keys, 1)
    if low_keys.shape[0] != n_segments or high_keys.shape[0] != n_segments or (high_keys < low_keys).any():
        raise KernelInputError("low_keys and high_keys should hold one key per segment, low <= high.")
    shifts, table_offsets = _bucket_layout(offsets[1:] - offsets[:-1], low_keys, high_keys)
    kernels = _kernels()
    tables = numpy.empty(int(table_offsets[-1]), dtype=_table_dtype(n_mids))
    kernels.bucket_tables(mid_keys, int(n_mids), low_keys, shifts, table_offsets, tables)
    # A key above every other after the last segment's midpoints: the lookup
    # compares with the entry after a segment's own without a bounds check.
    mid_keys = numpy.append(numpy.asarray(mid_keys, dtype=numpy.int64), numpy.iinfo(numpy.int64).max)
    out = numpy.empty(values.shape[0], dtype=dtype)
    kernels.value_labels(numpy.ascontiguousarray(values), offsets, scales, int(key_shift), int(key_bias), mid_keys, int(n_mids),
                          low_keys, shifts, tables, table_offsets, out)
    return out


def pack_weighted(values, offsets, exponents, weights, key_bias: int, weight_shift: int):
    """Return int64 (N,) (q + key_bias) << weight_shift | w of every value, or None when a scale is no normal double.

    values: float32 or float64 (N,) finite, in input order; offsets: int64
    (S + 1,); exponents: int64 (S,); weights: int64 (N,) in [0, 2**weight_shift).
    q is fixedpoint.quantize of each value with its segment's exponent.
    """
    _check_vector("values", values, FLOATS)
    offsets = _check_offsets(offsets, values.shape[0])
    exponents = _int64("exponents", exponents, 1)
    weights = _int64("weights", weights, 1)
    if exponents.shape[0] != offsets.shape[0] - 1 or weights.shape != values.shape:
        raise KernelInputError("exponents should hold one entry per segment and weights one per value.")
    _check_range("weights", weights, 0, (1 << weight_shift) - 1)
    scales = _normal_scales(exponents)
    if scales is None:
        return None
    out = numpy.empty(values.shape[0], dtype=numpy.int64)
    _kernels().pack_weighted(numpy.ascontiguousarray(values), offsets, scales, weights, int(key_bias),
                             int(weight_shift), out)
    return out


def unpack_weighted(packed, offsets, key_shift: int, key_bias: int, weight_shift: int):
    """Return (keys int64 (N,), prefix uint64 (N + 1,), weight_prefix int64 (N + 1,)) of per-segment sorted packed values.

    The twin of segments._weighted_batch's array code after its sort: keys
    with segment tags, prefix sums of w * q (wrapping) and of w.
    """
    packed = _int64("packed", packed, 1)
    offsets = _check_offsets(offsets, packed.shape[0])
    keys = numpy.empty(packed.shape[0], dtype=numpy.int64)
    prefix = numpy.empty(packed.shape[0] + 1, dtype=numpy.uint64)
    weight_prefix = numpy.empty(packed.shape[0] + 1, dtype=numpy.int64)
    _kernels().unpack_weighted(packed, offsets, int(key_shift), int(key_bias), int(weight_shift), keys, prefix,
                               weight_prefix)
    return keys, prefix, weight_prefix


LEVELS = (numpy.dtype(numpy.int8), numpy.dtype(numpy.int16))


def _check_levels(values, offsets, low: int, n_levels: int) -> numpy.ndarray:
    """Check int8/int16 values and their offsets, and that [low, low + n_levels) covers the dtype; return offsets."""
    _check_vector("values", values, LEVELS)
    offsets = _check_offsets(offsets, values.shape[0])
    limits = numpy.iinfo(values.dtype)
    if low > limits.min or low + n_levels - 1 < limits.max:
        raise KernelInputError(f"levels [{low}, {low + n_levels}) should cover {values.dtype}'s range "
                               f"[{limits.min}, {limits.max}].")
    return offsets


def segment_histograms(values, offsets, low: int, n_levels: int) -> numpy.ndarray:
    """Return int64 (S, n_levels): count[s, j] of the values low + j in segment s (histogram.segment_histograms)."""
    offsets = _check_levels(values, offsets, low, n_levels)
    out = numpy.zeros((offsets.shape[0] - 1, n_levels), dtype=numpy.int64)
    _kernels().segment_histograms(numpy.ascontiguousarray(values), offsets, int(low), out)
    return out


def segment_lookup(values, offsets, low: int, table) -> numpy.ndarray:
    """Return table[s, v - low] for each value v of segment s, in table's dtype (histogram.segment_lookup)."""
    table = numpy.ascontiguousarray(table)
    if table.ndim != 2 or table.dtype not in LABELS:
        raise KernelInputError(f"table should be a 2-D array of {' or '.join(map(str, LABELS))}.")
    offsets = _check_levels(values, offsets, low, table.shape[1])
    if table.shape[0] != offsets.shape[0] - 1:
        raise KernelInputError(f"table holds {table.shape[0]} rows, one per segment ({offsets.shape[0] - 1}).")
    out = numpy.empty(values.shape[0], dtype=table.dtype)
    _kernels().segment_lookup(numpy.ascontiguousarray(values), offsets, int(low), table, out)
    return out


def segment_error_sums(values, offsets, low: int, errors) -> tuple[float, float]:
    """Return float64 (sum of errors[s, v - low]**2, sum of v**2) in error_sums' order (histogram.segment_error_sums)."""
    errors = numpy.ascontiguousarray(errors, dtype=numpy.float64)
    if errors.ndim != 2:
        raise KernelInputError("errors should be a 2-D float64 array (segments, levels).")
    offsets = _check_levels(values, offsets, low, errors.shape[1])
    if errors.shape[0] != offsets.shape[0] - 1:
        raise KernelInputError(f"errors holds {errors.shape[0]} rows, one per segment ({offsets.shape[0] - 1}).")
    return tuple(float(total) for total in
                 _kernels().segment_error_sums(numpy.ascontiguousarray(values), offsets, int(low), errors))


_BITS = {1: numpy.uint8, 2: numpy.uint16, 4: numpy.uint32, 8: numpy.uint64}


def gather(table, indices, out) -> None:
    """Write numpy.take(table, indices, mode="clip") into out (1-D, table's dtype), one parallel pass.

    table: 1-D, any dtype of 1, 2, 4 or 8 bytes (its bits are copied); indices: 1-D of LABELS, out's length.
    """
    _check_vector("indices", indices, LABELS)
    if (not isinstance(table, numpy.ndarray) or table.ndim != 1 or table.size == 0
            or table.dtype.itemsize not in _BITS):
        raise KernelInputError("table should be a non-empty 1-D array of 1, 2, 4 or 8-byte items.")
    if (not isinstance(out, numpy.ndarray) or out.shape != indices.shape or out.dtype != table.dtype
            or not out.flags.c_contiguous or not out.flags.writeable):
        raise KernelInputError("out should be a writable contiguous array of table's dtype and indices' shape.")
    bits = _BITS[table.dtype.itemsize]
    _kernels().gather(numpy.ascontiguousarray(indices), numpy.ascontiguousarray(table).view(bits), out.view(bits))


def gather_bytes(codebook, labels) -> bytes:
    """Return codebook[labels].tobytes(): the codebook's items picked by labels, one after another.

    codebook: a 1-D NumPy array (k,) of 1-, 2-, 4- or 8-byte items in native byte
    order (float16, bfloat16, float32, float64); labels: (n,) unsigned or
    int32/int64 indices in [0, k). One parallel pass into the new bytes object
    (the array version makes the values, then copies them into bytes).
    Raises KernelInputError for other dtypes or a label out of range.
    """
    if (not isinstance(codebook, numpy.ndarray) or codebook.ndim != 1 or codebook.dtype.itemsize not in _BITS
            or not codebook.dtype.isnative):
        raise KernelInputError("codebook should be a 1-D array of 1-, 2-, 4- or 8-byte items in native byte order.")
    _check_vector("labels", labels, LABELS)
    if labels.size and codebook.size == 0:
        raise KernelInputError("labels index an empty codebook.")
    _check_range("labels", labels, 0, codebook.shape[0] - 1)
    items = numpy.ascontiguousarray(codebook).view(_BITS[codebook.dtype.itemsize])
    return _kernels().gather_bytes(items, numpy.ascontiguousarray(labels))
