"""Compiled CPU twins of the array kernels whose NumPy form is slow.

Why: two steps are cheap on a GPU as array operations but slow in NumPy. The
DP of optimal.py runs k * log2(B) small array steps per chunk (per-call
overhead dominates), and labelling searches every value in a table of all
segments' midpoints (branchy binary search, cache misses). Here each is one
Numba-compiled loop per segment or per value, parallel over them.

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

import numpy

try:
    import numba
except ImportError:  # the array kernels cover every case, only slower
    numba = None


def available() -> bool:
    """Return True when the compiled twins can run (Numba is importable)."""
    return numba is not None


if numba is not None:

    @numba.njit(cache=True, nogil=True)
    def _dp_row(sums, counts, k, strides, splits):
        """Fill splits (k - 1, B + 1) of one row; see optimal._layer for the recurrence."""
        width = sums.shape[0]
        n_bins = width - 1
        previous = numpy.empty(width, dtype=numpy.float64)
        current = numpy.empty(width, dtype=numpy.float64)
        for j in range(width):
            total = numpy.float64(sums[j])
            previous[j] = total * total / max(counts[j], 1.0) if counts[j] > 0 else 0.0
        for layer in range(k - 1):
            table = splits[layer]
            table[:] = 0
            current[:] = 0.0
            for stride in strides:
                for end in range(stride, n_bins + 1, 2 * stride):
                    low = table[end - stride]
                    if layer > 0:
                        low = max(low, splits[layer - 1, end])
                    high = table[end + stride] if end + stride <= n_bins else end
                    high = min(high, end)
                    low = min(low, high)
                    end_sum = sums[end]
                    end_count = counts[end]
                    best_value = 0.0
                    best_split = low
                    for split in range(low, high + 1):
                        cluster_sum = numpy.float64(end_sum - sums[split])
                        cluster_count = end_count - counts[split]
                        gain = cluster_sum * cluster_sum / max(cluster_count, 1.0) if cluster_count > 0 else 0.0
                        value = previous[split] + gain
                        if split == low or value > best_value:
                            best_value = value
                            best_split = split
                    table[end] = best_split
                    current[end] = best_value
            previous, current = current, previous

    @numba.njit(cache=True, parallel=True)
    def _dp_rows(sums, counts, k, strides):
        n_rows, width = sums.shape
        borders = numpy.zeros((n_rows, k + 1), dtype=numpy.int64)
        for row in numba.prange(n_rows):
            splits = numpy.empty((k - 1, width), dtype=numpy.int32)
            _dp_row(sums[row], counts[row], k, strides, splits)
            borders[row, k] = width - 1
            for c in range(k - 1, 0, -1):
                borders[row, c] = splits[c - 1, borders[row, c + 1]]
        return borders

    @numba.njit(cache=True, parallel=True)
    def _labels(input_keys, segment_of_value, mid_keys, n_mids, out):
        for index in numba.prange(input_keys.shape[0]):
            key = input_keys[index]
            base = segment_of_value[index] * n_mids
            # Branch-free lower bound: the count of midpoints < key.
            size = n_mids
            while size > 1:
                half = size >> 1
                if mid_keys[base + half] < key:
                    base += half
                size -= half
            if mid_keys[base] < key:
                base += 1
            out[index] = base - segment_of_value[index] * n_mids


    @numba.njit(cache=True, parallel=True)
    def _quantized_keys(values, segment_of_value, scales, key_shift, key_bias, out):
        for index in numba.prange(values.shape[0]):
            segment = segment_of_value[index]
            q = numpy.int64(numpy.rint(values[index] * scales[segment]))
            out[index] = (segment << key_shift) + (q + key_bias)


def quantized_keys(values, segment_of_value, exponents, key_shift: int, key_bias: int) -> numpy.ndarray:
    """Return int64 keys (segment << key_shift) + (rint(values * 2**exponent) + key_bias), one pass.

    values: float (N,); segment_of_value: int64 (N,); exponents: int64 (S,).
    The same numbers as fixedpoint.make_keys(fixedpoint.quantize(...)): ldexp
    and rint are exact, correctly rounded operations.
    """
    exponents = numpy.asarray(exponents, dtype=numpy.int64)
    if exponents.size and (exponents.min() < -1022 or exponents.max() > 1023):
        # 2**e is no normal double: only ldexp scales exactly (never for real weights).
        from .fixedpoint import make_keys, quantize

        return make_keys(quantize(values, exponents[segment_of_value]), segment_of_value)
    # Multiplying by a normal power of two rounds exactly as ldexp does: one
    # correctly rounded operation on the same exact product.
    scales = numpy.ldexp(numpy.ones(exponents.size), exponents.astype(numpy.int32))
    out = numpy.empty(values.shape[0], dtype=numpy.int64)
    _quantized_keys(values, segment_of_value, scales, int(key_shift), int(key_bias), out)
    return out


def dp_bin_borders(sums, counts, k: int, strides) -> numpy.ndarray:
    """Return int64 (R, k + 1) bin borders of the exact k-clustering of each row's bins.

    sums: int64 (R, B + 1) exact prefix sums at the bin edges (first column 0);
    counts: float64 (R, B + 1) prefix counts; strides: the stride levels of
    optimal._strides(B). Identical to the borders optimal.dp_centroids
    backtracks from its array DP (same values, same first-index ties).
    """
    return _dp_rows(numpy.ascontiguousarray(sums, dtype=numpy.int64),
                    numpy.ascontiguousarray(counts, dtype=numpy.float64),
                    int(k), numpy.asarray(strides, dtype=numpy.int64))


def segment_labels(input_keys, segment_of_value, mid_keys, n_mids: int) -> numpy.ndarray:
    """Return int64 labels: for each value, how many of its segment's midpoint keys are below its key.

    input_keys, segment_of_value: int64 (N,); mid_keys: int64 (S * n_mids,),
    sorted within each segment's block of n_mids. The same numbers as
    `searchsorted(mid_keys, input_keys, side="left") - segment * n_mids`.
    """
    out = numpy.empty(input_keys.shape[0], dtype=numpy.int64)
    _labels(input_keys, segment_of_value, mid_keys, int(n_mids), out)
    return out
