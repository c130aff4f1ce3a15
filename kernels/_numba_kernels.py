"""The Numba kernels behind compiled.py (see there), in a module of their own
so that importing the engine does not import Numba (about 0.5 s).
"""
import numba
import numpy


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
