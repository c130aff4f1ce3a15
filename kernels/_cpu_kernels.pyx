# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The compiled CPU kernels behind compiled.py (see there), built at install.

Each kernel repeats its array twin (optimal.py, lloyd.py, fixedpoint.py)
operation for operation; setup.py compiles this file with -O2
-ffp-contract=off -fwrapv and no -ffast-math, so:
- float64 expressions are evaluated as written (no fused multiply-add, no
  reassociation), as NumPy evaluates them;
- signed integer arithmetic wraps modulo 2**64, as NumPy's int64 does;
- floor division and right shifts of negative numbers round toward minus
  infinity, as Python's and NumPy's do (`floor_divide` below; C's `/`
  truncates, and gcc's `>>` of a signed value is arithmetic).
The wrappers in compiled.py check shapes, dtypes and bounds before calling
these: here indexing is unchecked. Loops over rows, segments or blocks of
values run in parallel with OpenMP (serial when the build had no OpenMP),
each iteration on its own data, so the results do not depend on the thread count.
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cython.parallel cimport parallel, prange
from libc.math cimport INFINITY, cbrt, floor, rint
from libc.stdint cimport int8_t, int16_t, int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset

import numpy

ctypedef fused floating:
    float
    double

ctypedef fused codebook_t:
    float
    double

ctypedef fused label_t:
    uint8_t
    uint16_t
    uint32_t
    int32_t
    int64_t

ctypedef fused table_t:
    uint8_t
    uint16_t
    int32_t

cdef extern from *:
    """
    #ifdef _OPENMP
    #define GPUCOMPRESS_OPENMP 1
    #else
    #define GPUCOMPRESS_OPENMP 0
    #endif
    """
    int GPUCOMPRESS_OPENMP

# Whether this build runs its loops on OpenMP threads (False: the compiler had no OpenMP).
OPENMP = bool(GPUCOMPRESS_OPENMP)

# Values per parallel task of value_labels.
LABEL_BLOCK = 1 << 16
cdef int64_t _LABEL_BLOCK = LABEL_BLOCK


cdef inline int64_t floor_divide(int64_t a, int64_t b) noexcept nogil:
    # Python's a // b (b != 0): C's quotient truncates toward zero.
    cdef int64_t quotient = a / b
    if (a % b != 0) and ((a < 0) != (b < 0)):
        quotient -= 1
    return quotient


cdef inline int64_t min64(int64_t a, int64_t b) noexcept nogil:
    return b if b < a else a


cdef inline int64_t max64(int64_t a, int64_t b) noexcept nogil:
    return b if b > a else a


cdef inline double gain_denominator(double count) noexcept nogil:
    # Python's max(count, 1.0).
    return 1.0 if 1.0 > count else count


cdef inline int64_t best_split(const double* previous, int64_t previous_low, const int64_t* sums,
                               const double* counts, int64_t low, int64_t high, int64_t end,
                               double* best_out) noexcept nogil:
    """Return the first argmax of previous[i - previous_low] + gain(i, end) over i in [low, high]; its max in best_out."""
    cdef int64_t end_sum = sums[end]
    cdef double end_count = counts[end]
    cdef double best_value = -INFINITY
    cdef int64_t best = low
    cdef int64_t split
    cdef double cluster_sum, value
    cdef bint better
    for split in range(low, high + 1):
        # An empty cluster has a sum of exactly 0, so its gain is 0 without a
        # branch, as in the array version.
        cluster_sum = <double>(end_sum - sums[split])
        value = previous[split - previous_low] + cluster_sum * cluster_sum / gain_denominator(end_count - counts[split])
        # Selects, not a branch: which candidate wins is data-dependent.
        better = value > best_value
        best = split if better else best
        best_value = value if better else best_value
    best_out[0] = best_value
    return best


cdef inline void first_layer(const int64_t* sums, const double* counts, int64_t width, double* out) noexcept nogil:
    # D_1 of bins 0..width - 1, less its maximum (optimal._offset).
    cdef int64_t j
    cdef double total, largest
    for j in range(width):
        total = <double>sums[j]
        out[j] = total * total / gain_denominator(counts[j]) if counts[j] > 0 else 0.0
    largest = out[0]
    for j in range(1, width):
        if out[j] > largest:
            largest = out[j]
    for j in range(width):
        out[j] = out[j] - largest


cdef void dp_row(const int64_t* sums, const double* counts, int64_t width, int64_t k, const int64_t* strides,
                 int64_t n_strides, int32_t* splits, double* previous, double* current) noexcept nogil:
    # Fill splits (k - 1, width) of one row; see optimal._layer for the recurrence.
    cdef int64_t n_bins = width - 1
    cdef int64_t layer, level, stride, end, low, high
    cdef int32_t* table
    cdef double* swap
    first_layer(sums, counts, width, previous)
    for layer in range(k - 1):
        table = splits + layer * width
        memset(table, 0, width * sizeof(int32_t))
        memset(current, 0, width * sizeof(double))
        for level in range(n_strides):
            stride = strides[level]
            end = stride
            while end <= n_bins:
                low = table[end - stride]
                if layer > 0:
                    low = max64(low, splits[(layer - 1) * width + end])
                high = table[end + stride] if end + stride <= n_bins else end
                high = min64(high, end)
                low = min64(low, high)
                table[end] = <int32_t>best_split(previous, 0, sums, counts, low, high, end, current + end)
                end += 2 * stride
        swap = previous
        previous = current
        current = swap


def dp_rows(const int64_t[::1] sums, const double[::1] counts, const int64_t[::1] row_starts, int64_t k,
            const int64_t[::1] strides, const int64_t[::1] stride_starts):
    """Return int64 (R, k + 1) DP borders of R rows of any widths, in parallel over the rows.

    Row r's prefix sums and counts are sums[row_starts[r]:row_starts[r + 1]]
    (B_r + 1 entries), its stride levels strides[stride_starts[r]:stride_starts[r + 1]].
    Raises MemoryError when a row's tables cannot be allocated.
    """
    cdef Py_ssize_t n_rows = row_starts.shape[0] - 1
    borders_array = numpy.zeros((n_rows, k + 1), dtype=numpy.int64)
    cdef int64_t[:, ::1] borders = borders_array
    cdef Py_ssize_t row
    cdef int64_t first, width, c
    cdef int32_t* splits
    cdef double* previous
    cdef double* current
    cdef int failed = 0
    with nogil, parallel():
        for row in prange(n_rows, schedule="dynamic"):
            first = row_starts[row]
            width = row_starts[row + 1] - first
            splits = <int32_t*>malloc(max64(1, (k - 1) * width) * sizeof(int32_t))
            previous = <double*>malloc(width * sizeof(double))
            current = <double*>malloc(width * sizeof(double))
            if splits == NULL or previous == NULL or current == NULL:
                failed += 1
            else:
                dp_row(&sums[first], &counts[first], width, k, &strides[stride_starts[row]],
                       stride_starts[row + 1] - stride_starts[row], splits, previous, current)
                borders[row, k] = width - 1
                c = k - 1
                while c > 0:
                    borders[row, c] = splits[(c - 1) * width + borders[row, c + 1]]
                    c = c - 1
            free(splits)
            free(previous)
            free(current)
    if failed:
        raise MemoryError("not enough memory for the DP's split tables")
    return borders_array


cdef void band_row(const int64_t* sums, const double* counts, int64_t k, const int64_t* lows, int64_t width,
                   int32_t* splits, double* last, double* previous, double* current) noexcept nogil:
    # Fill splits (k + 1, width + 1) of one row and last (width + 1) with D_k; see optimal.band_bin_borders.
    cdef int64_t span = width + 1
    cdef int64_t c, floor_c, low_c, stride, first, step, stop, relative, end, low, high
    cdef int32_t* table
    cdef double* swap
    first_layer(sums + lows[1], counts + lows[1], span, previous)
    for c in range(2, k + 1):
        floor_c = lows[c - 1]
        low_c = lows[c]
        table = splits + c * span
        stride = 0
        while True:
            first = stride if stride > 0 else 0
            step = 2 * stride if stride > 0 else width
            stop = span if stride == 0 else width
            relative = first
            while relative < stop:
                end = low_c + relative
                if end < floor_c:
                    table[relative] = <int32_t>floor_c
                    current[relative] = -INFINITY
                    relative += step
                    continue
                high = min64(floor_c + width, end)
                if stride == 0:
                    low = floor_c
                else:
                    high = min64(table[relative + stride], high)
                    low = table[relative - stride]
                if end - floor_c <= width:
                    low = max64(low, splits[(c - 1) * span + end - floor_c])
                low = min64(low, high)
                table[relative] = <int32_t>best_split(previous, floor_c, sums, counts, low, high, end,
                                                      current + relative)
                relative += step
            stride = width // 2 if stride == 0 else stride // 2
            if stride == 0:
                break
        swap = previous
        previous = current
        current = swap
    memcpy(last, previous, span * sizeof(double))


def band_rows(const int64_t[::1] sums, const double[::1] counts, const int64_t[::1] row_starts, int64_t k,
              const int64_t[:, ::1] lows, int64_t width):
    """Return int64 (R, k + 1) banded-DP borders of R rows of any widths (layout as dp_rows).

    Each row's two halves (forward, and mirrored: optimal.band_bin_borders)
    run as parallel tasks, so even one row keeps two cores busy. Raises
    MemoryError when the tables cannot be allocated.
    """
    cdef Py_ssize_t n_rows = row_starts.shape[0] - 1
    cdef int64_t k_forward = k // 2
    cdef int64_t k_backward = k - k_forward
    cdef int64_t span = width + 1
    splits_array = numpy.zeros((2 * n_rows, k_backward + 1, span), dtype=numpy.int32)
    last_array = numpy.empty((2 * n_rows, span), dtype=numpy.float64)
    borders_array = numpy.zeros((n_rows, k + 1), dtype=numpy.int64)
    cdef int32_t[:, :, ::1] splits = splits_array
    cdef double[:, ::1] last = last_array
    cdef int64_t[:, ::1] borders = borders_array
    cdef Py_ssize_t half, row
    cdef int64_t first, stop, n_bins, j, c, r, best, mirror_border
    cdef double best_value, value
    cdef double* previous
    cdef double* current
    cdef int64_t* mirror_sums
    cdef double* mirror_counts
    cdef int64_t* mirror_lows
    cdef int failed = 0
    with nogil, parallel():
        for half in prange(2 * n_rows, schedule="dynamic"):
            row = half // 2
            first = row_starts[row]
            stop = row_starts[row + 1]
            n_bins = stop - first - 1
            previous = <double*>malloc(span * sizeof(double))
            current = <double*>malloc(span * sizeof(double))
            mirror_sums = NULL
            mirror_counts = NULL
            mirror_lows = NULL
            if half % 2 == 1:
                mirror_sums = <int64_t*>malloc((n_bins + 1) * sizeof(int64_t))
                mirror_counts = <double*>malloc((n_bins + 1) * sizeof(double))
                mirror_lows = <int64_t*>malloc((k + 1) * sizeof(int64_t))
            if previous == NULL or current == NULL or (half % 2 == 1 and (
                    mirror_sums == NULL or mirror_counts == NULL or mirror_lows == NULL)):
                failed += 1
            elif half % 2 == 0:
                band_row(&sums[first], &counts[first], k_forward, &lows[row, 0], width, &splits[half, 0, 0],
                         &last[half, 0], previous, current)
            else:
                for j in range(n_bins + 1):
                    mirror_sums[j] = sums[stop - 1 - j] - sums[stop - 1]
                    mirror_counts[j] = counts[stop - 1] - counts[stop - 1 - j]
                for c in range(k + 1):
                    mirror_lows[c] = n_bins - width - lows[row, k - c]
                band_row(mirror_sums, mirror_counts, k_backward, mirror_lows, width, &splits[half, 0, 0],
                         &last[half, 0], previous, current)
            free(previous)
            free(current)
            free(mirror_sums)
            free(mirror_counts)
            free(mirror_lows)
    if failed:
        raise MemoryError("not enough memory for the banded DP's tables")
    with nogil:
        for row in prange(n_rows, schedule="static"):
            n_bins = row_starts[row + 1] - row_starts[row] - 1
            best = 0
            best_value = -INFINITY
            for r in range(width + 1):
                value = last[2 * row, r] + last[2 * row + 1, width - r]
                if value > best_value:
                    best = r
                    best_value = value
            borders[row, k] = n_bins
            borders[row, k_forward] = lows[row, k_forward] + best
            c = k_forward
            while c > 1:
                borders[row, c - 1] = splits[2 * row, c, borders[row, c] - lows[row, c]]
                c = c - 1
            mirror_border = n_bins - borders[row, k_forward]
            c = k_backward
            while c > 1:
                mirror_border = splits[2 * row + 1, c, mirror_border - (n_bins - width - lows[row, k - c])]
                borders[row, k - c + 1] = n_bins - mirror_border
                c = c - 1
    return borders_array


def bucket_tables(const int64_t[::1] mid_keys, int64_t n_mids, const int64_t[::1] low_keys,
                  const int64_t[::1] shifts, const int64_t[::1] table_offsets, table_t[::1] tables):
    """Fill each segment's labelling table (see compiled.value_labels).

    Segment s's table is tables[table_offsets[s]:table_offsets[s + 1]]:
    entry b counts its midpoints below the start of bucket b, and a last
    entry, after the last bucket, counts them all.
    """
    cdef Py_ssize_t n_segments = low_keys.shape[0]
    cdef Py_ssize_t segment
    cdef int64_t base, first, below, bucket, start
    with nogil:
        for segment in prange(n_segments, schedule="static"):
            base = segment * n_mids
            first = table_offsets[segment]
            below = 0
            for bucket in range(table_offsets[segment + 1] - first - 1):
                start = low_keys[segment] + (bucket << shifts[segment])
                while below < n_mids and mid_keys[base + below] < start:
                    below = below + 1
                tables[first + bucket] = <table_t>below
            tables[table_offsets[segment + 1] - 1] = <table_t>n_mids


cdef inline int64_t upper_bound(const int64_t* keys, int64_t low, int64_t high, int64_t key) noexcept nogil:
    # The first position in [low, high) whose key is > key (searchsorted, side="right").
    cdef int64_t middle
    while low < high:
        middle = (low + high) >> 1
        if keys[middle] <= key:
            low = middle + 1
        else:
            high = middle
    return low


cdef inline int64_t lower_bound(const int64_t* keys, int64_t low, int64_t high, int64_t key) noexcept nogil:
    # The first position in [low, high) whose key is >= key (searchsorted, side="left").
    cdef int64_t middle
    while low < high:
        middle = (low + high) >> 1
        if keys[middle] < key:
            low = middle + 1
        else:
            high = middle
    return low


cdef inline int64_t lower_bound_from(const int64_t* keys, int64_t low, int64_t high, int64_t key) noexcept nogil:
    # lower_bound(keys, low, high, key) galloping forward from low: ascending
    # queries (equal_width_positions) land a few keys after the previous one,
    # where a binary search over the rest of the segment took ~10 probes each.
    cdef int64_t step = 1
    cdef int64_t bound = low
    while bound < high and keys[bound] < key:
        low = bound + 1
        bound = low + step
        step = step * 2
    return lower_bound(keys, low, min64(bound, high), key)


cdef inline int64_t upper_bound_near(const int64_t* keys, int64_t low, int64_t high, int64_t key,
                                     int64_t hint) noexcept nogil:
    # upper_bound(keys, low, high, key), searching outward from hint
    # (galloping): Lloyd's borders move little between steps, so a few
    # cache-local probes instead of a binary search over the whole segment.
    cdef int64_t found_low, found_high, step
    hint = min64(max64(hint, low), high)
    if hint < high and keys[hint] <= key:  # the answer lies above hint
        found_low = hint + 1
        found_high = high
        step = 1
        while hint + step < high:
            if keys[hint + step] > key:
                found_high = hint + step
                break
            found_low = hint + step + 1
            step *= 2
    else:  # the answer lies at or below hint
        found_low = low
        found_high = hint
        step = 1
        while hint - step >= low:
            if keys[hint - step] <= key:
                found_low = hint - step + 1
                break
            found_high = hint - step
            step *= 2
    return upper_bound(keys, found_low, found_high, key)


cdef void lloyd_segment(const int64_t* keys, const uint64_t* prefix, const int64_t* weight_prefix, int64_t first,
                        int64_t last, int64_t* current, int64_t k, int64_t max_iter, int64_t tag, int64_t key_bias,
                        int64_t* updated, int64_t* borders, char* moved, char* border_moved,
                        int64_t* iterations) noexcept nogil:
    # Only what can change is recomputed: border j (the midpoint search
    # between clusters j and j + 1) when centroid j or j + 1 moved in the last
    # step, and cluster j's mean when one of its borders moved. The rest would
    # come out the same (same query, same search; same range, same mean), so
    # the results are those of recomputing everything.
    cdef int64_t step, j, midpoint, query, low, end, start, count, value, total, steps = 0
    cdef bint changed
    borders[k - 1] = last
    for j in range(k):
        moved[j] = 1
        border_moved[j] = 1
    border_moved[k - 1] = 0
    for step in range(max_iter):
        for j in range(k - 1):
            if step == 0 or moved[j] or moved[j + 1]:
                midpoint = (current[j] + current[j + 1]) >> 1
                query = tag + midpoint + key_bias
                low = borders[j - 1] if j > 0 else first
                if step == 0:
                    end = upper_bound(keys, low, last, query)
                else:
                    end = upper_bound_near(keys, low, last, query, borders[j])
                border_moved[j] = step == 0 or end != borders[j]
                borders[j] = end
            else:
                border_moved[j] = 0
        changed = False
        for j in range(k):
            if step == 0 or border_moved[j] or (j > 0 and border_moved[j - 1]):
                start = borders[j - 1] if j > 0 else first
                end = borders[j]
                # Weighted (weight_prefix not NULL): the cluster's total
                # weight, as lloyd.update_centroids' range_weights.
                count = end - start if weight_prefix == NULL else weight_prefix[end] - weight_prefix[start]
                value = current[j]
                if count > 0:
                    # The uint64 sums wrap; the difference, read as int64, is
                    # exact modulo 2**64, as in fixedpoint.range_sums.
                    total = <int64_t>(prefix[end] - prefix[start])
                    value = floor_divide(2 * total + count, 2 * count)
                moved[j] = value != current[j]
                changed = changed or moved[j]
                updated[j] = value
            else:
                moved[j] = 0
                updated[j] = current[j]
        if not changed:
            break
        memcpy(current, updated, k * sizeof(int64_t))
        steps += 1
    iterations[0] = steps


def lloyd(const int64_t[::1] keys, const uint64_t[::1] prefix, const int64_t[::1] offsets,
          int64_t[:, ::1] centroids, int64_t max_iter, int64_t key_shift, int64_t key_bias,
          int64_t[::1] iterations, const int64_t[::1] weight_prefix):
    """Run Lloyd's algorithm on every segment in place (centroids, iterations): lloyd.lloyd's twin.

    weight_prefix: empty (every weight 1) or int64 (N + 1,) prefix sums of
    the integer weights. Raises MemoryError when the per-segment work arrays
    cannot be allocated.
    """
    cdef Py_ssize_t n_segments = centroids.shape[0]
    cdef int64_t k = centroids.shape[1]
    cdef Py_ssize_t segment
    cdef int64_t* updated
    cdef int64_t* borders
    cdef char* moved
    cdef char* border_moved
    cdef int failed = 0
    cdef const int64_t* weights = NULL
    if n_segments == 0 or k == 0:
        return
    if weight_prefix.shape[0] > 0:
        weights = &weight_prefix[0]
    with nogil, parallel():
        for segment in prange(n_segments, schedule="dynamic"):
            updated = <int64_t*>malloc(k * sizeof(int64_t))
            borders = <int64_t*>malloc(k * sizeof(int64_t))
            moved = <char*>malloc(k)
            border_moved = <char*>malloc(k)
            if updated == NULL or borders == NULL or moved == NULL or border_moved == NULL:
                failed += 1
            else:
                lloyd_segment(&keys[0], &prefix[0], weights, offsets[segment], offsets[segment + 1],
                              &centroids[segment, 0],
                              k, max_iter, (<int64_t>segment) << key_shift, key_bias, updated, borders, moved,
                              border_moved, &iterations[segment])
            free(updated)
            free(borders)
            free(moved)
            free(border_moved)
    if failed:
        raise MemoryError("not enough memory for Lloyd's work arrays")


cdef void equal_width_positions(const int64_t* keys, int64_t start, int64_t end, int64_t tag, int64_t value_mask,
                                int64_t key_bias, int64_t n_cells, int64_t* out) noexcept nogil:
    # out[s - 1] for s in 1..n_cells - 1: optimal.equal_width_positions of one segment.
    cdef int64_t low = (keys[start] & value_mask) - key_bias
    cdef int64_t high = (keys[end - 1] & value_mask) - key_bias
    cdef int64_t position = start
    cdef int64_t step, query
    cdef int64_t span = high - low
    # floor(span * step / n_cells), step after step, without a division each
    # (span >= 0: the keys are sorted): span = whole * n_cells + part.
    cdef int64_t whole = span // n_cells
    cdef int64_t part = span % n_cells
    cdef int64_t quotient = 0
    cdef int64_t remainder = 0
    for step in range(1, n_cells):
        quotient += whole
        remainder += part
        if remainder >= n_cells:
            quotient += 1
            remainder -= n_cells
        if span < 0:  # unsorted keys (never from a SegmentBatch): the formula itself
            quotient = floor_divide(span * step, n_cells)
        query = tag + low + quotient + key_bias
        position = lower_bound_from(keys, position, end, query)  # thresholds ascend
        out[step - 1] = position


cdef inline int64_t integer_cube_root(int64_t x) noexcept nogil:
    cdef int64_t root = <int64_t>floor(cbrt(<double>x))
    if (root + 1) * (root + 1) * (root + 1) <= x:
        root += 1
    if root * root * root > x:
        root -= 1
    return root


cdef int density_positions(const int64_t* keys, int64_t start, int64_t end, int64_t tag, int64_t value_mask,
                           int64_t key_bias, int64_t n_bins, int64_t fine_per_bin, int64_t cube_shift,
                           const int64_t* cube_roots, int64_t n_cube_roots, int64_t* work, int64_t* out) noexcept nogil:
    # out[0..n_bins]: optimal.density_edges of one segment. work: 3 * (fine_per_bin * n_bins + 1) int64.
    # cube_roots[c] = integer_cube_root(c << cube_shift) for c < n_cube_roots (the same integers, looked up).
    cdef int64_t n_cells = fine_per_bin * n_bins
    cdef int64_t cell, edge, total, target, chosen, within, count, position, cell_count
    cdef int64_t* cell_edges = work
    cdef int64_t* weights = work + n_cells + 1
    cdef int64_t* cumulative = work + 2 * (n_cells + 1)
    cell_edges[0] = start
    cell_edges[n_cells] = end
    equal_width_positions(keys, start, end, tag, value_mask, key_bias, n_cells, cell_edges + 1)
    cumulative[0] = 0
    for cell in range(n_cells):
        cell_count = cell_edges[cell + 1] - cell_edges[cell]
        if cell_count < n_cube_roots:
            weights[cell] = cube_roots[cell_count]
        else:
            weights[cell] = integer_cube_root(cell_count << cube_shift)
        cumulative[cell + 1] = cumulative[cell] + weights[cell]
    total = cumulative[n_cells]
    cell = 0
    for edge in range(n_bins + 1):
        target = floor_divide(edge * total, n_bins)
        # The last cell whose cumulative weight is <= target (searchsorted right, less one).
        while cell + 1 <= n_cells and cumulative[cell + 1] <= target:
            cell += 1
        chosen = min64(cell, n_cells - 1)
        within = target - cumulative[chosen]
        count = cell_edges[chosen + 1] - cell_edges[chosen]
        position = cell_edges[chosen] + floor_divide(within * count, max64(weights[chosen], 1))
        out[edge] = min64(position, end)
    out[0] = start
    out[n_bins] = end
    return 0


cdef inline int64_t merge_two(const int64_t* first, int64_t n_first, const int64_t* second, int64_t n_second,
                              int64_t* out) noexcept nogil:
    # out: the ascending merge of two ascending runs (selects, not branches, pick each item); returns its length.
    cdef int64_t i = 0
    cdef int64_t j = 0
    cdef int64_t filled = 0
    cdef int64_t x, y
    cdef bint take_second
    while i < n_first and j < n_second:
        x = first[i]
        y = second[j]
        take_second = y < x
        out[filled] = y if take_second else x
        j += take_second
        i += 1 - take_second
        filled += 1
    while i < n_first:
        out[filled] = first[i]
        i += 1
        filled += 1
    while j < n_second:
        out[filled] = second[j]
        j += 1
        filled += 1
    return filled


def bin_edges(const int64_t[::1] keys, const int64_t[::1] offsets, const int64_t[::1] rows, int64_t n_bins,
              int64_t key_shift, int64_t value_mask, int64_t key_bias, int64_t fine_per_bin, int64_t cube_shift,
              int64_t extremes):
    """Return int64 (R, n_bins + 1): optimal.bin_edges of segments larger than n_bins, bit for bit.

    Raises MemoryError when a thread's work arrays cannot be allocated.
    """
    cdef Py_ssize_t n_rows = rows.shape[0]
    cdef int64_t count_bins = n_bins // 3
    cdef int64_t density_bins = n_bins // 3
    cdef int64_t width_bins = n_bins - count_bins - density_bins - 2 * extremes
    cdef int64_t n_cells = fine_per_bin * density_bins
    edges_array = numpy.empty((n_rows, n_bins + 1), dtype=numpy.int64)
    cdef int64_t[:, ::1] edges = edges_array
    cdef Py_ssize_t index
    cdef int64_t row, start, end, tag, step, rank, filled, c
    # Cell counts are small (a channel's ~640 values over ~170 cells): their
    # cube roots come from a table of the same integers, not libm's cbrt.
    cdef int64_t n_cube_roots = 1024
    cdef int64_t cube_roots[1024]
    cdef int64_t run_starts[6]
    cdef int64_t* work
    cdef int64_t* union
    cdef int64_t* merged
    cdef int failed = 0
    for c in range(n_cube_roots):
        cube_roots[c] = integer_cube_root(c << cube_shift)
    # runs: equal-count edges, the least values, the greatest (ascending), equal-width, density
    run_starts[0] = 0
    run_starts[1] = count_bins + 1
    run_starts[2] = run_starts[1] + extremes
    run_starts[3] = run_starts[2] + extremes
    run_starts[4] = run_starts[3] + width_bins - 1
    run_starts[5] = run_starts[4] + density_bins + 1
    with nogil, parallel():
        # One work area per thread (cells, the runs, two merge buffers), not one per row.
        work = <int64_t*>malloc((3 * (n_cells + 1) + 3 * (n_bins + 1)) * sizeof(int64_t))
        for index in prange(n_rows, schedule="dynamic"):
            if work == NULL:
                failed += 1
                continue
            row = rows[index]
            start = offsets[row]
            end = offsets[row + 1]
            tag = row << key_shift
            union = work + 3 * (n_cells + 1)
            merged = union + n_bins + 1
            # runs in union: equal-count edges, the least values, the greatest (ascending), equal-width, density
            for step in range(count_bins + 1):
                union[step] = start + floor_divide(step * (end - start), count_bins)
            filled = count_bins + 1
            for rank in range(1, extremes + 1):
                union[filled + rank - 1] = start + rank
                union[filled + extremes + rank - 1] = end - (extremes + 1 - rank)
            filled = filled + 2 * extremes
            equal_width_positions(&keys[0], start + extremes, end - extremes, tag, value_mask, key_bias, width_bins,
                                  union + filled)
            density_positions(&keys[0], start + extremes, end - extremes, tag, value_mask, key_bias, density_bins,
                              fine_per_bin, cube_shift, cube_roots, n_cube_roots, work, union + filled + width_bins - 1)
            # Each run ascends, so merging them gives their sorted union (the same
            # integers as sorting it, at a fraction of qsort's calls), smaller runs first.
            filled = merge_two(union + run_starts[1], extremes, union + run_starts[2], extremes, merged)
            filled = merge_two(merged, filled, union + run_starts[3], width_bins - 1, merged + n_bins + 1)
            filled = merge_two(merged + n_bins + 1, filled, union, count_bins + 1, merged)
            merge_two(merged, filled, union + run_starts[4], density_bins + 1, &edges[index, 0])
        free(work)
    if failed:
        raise MemoryError("not enough memory for the bin edges' work arrays")
    return edges_array


def bin_tables(const uint64_t[::1] prefix, const int64_t[::1] weight_prefix, const int64_t[:, ::1] edges):
    """Return (sums int64, counts float64), (R, W): optimal._tables_at's tables at bin edges (R, W), bit for bit.

    sums[r, j]: the sum of q over sorted positions [edges[r, 0], edges[r, j])
    (uint64 differences read as int64, as fixedpoint.range_sums); counts the
    number of positions, or with weight_prefix (N + 1,) not empty, their total
    weight, as float64. One parallel pass instead of four array steps.
    """
    cdef Py_ssize_t n_rows = edges.shape[0]
    cdef Py_ssize_t width = edges.shape[1]
    sums_array = numpy.empty((n_rows, width), dtype=numpy.int64)
    counts_array = numpy.empty((n_rows, width), dtype=numpy.float64)
    cdef int64_t[:, ::1] sums = sums_array
    cdef double[:, ::1] counts = counts_array
    cdef bint weighted = weight_prefix.shape[0] > 0
    cdef Py_ssize_t row, j
    cdef int64_t first, edge
    if n_rows == 0 or width == 0:
        return sums_array, counts_array
    with nogil:
        for row in prange(n_rows, schedule="static"):
            first = edges[row, 0]
            for j in range(width):
                edge = edges[row, j]
                sums[row, j] = <int64_t>(prefix[edge] - prefix[first])
                if weighted:
                    counts[row, j] = <double>(weight_prefix[edge] - weight_prefix[first])
                else:
                    counts[row, j] = <double>(edge - first)
    return sums_array, counts_array


def rows_error_sums(const floating[::1] values, const codebook_t[::1] codebooks, const label_t[::1] labels,
                    const int64_t[::1] offsets, int64_t k):
    """Return float64 (sum of (values - codebooks[s * k + labels])**2, sum of values**2) over the values of
    rows s, in a fixed order (compiled.error_sums: one row; compiled.rows_error_sums)."""
    # Four running sums each, in a fixed order: the adds overlap (a single
    # chain waits on every add) and the result is the same on every run. The
    # row's codebook comes from its offsets: no int64 array of flat labels.
    cdef double errors[4]
    cdef double squares[4]
    cdef Py_ssize_t n_rows = offsets.shape[0] - 1
    cdef Py_ssize_t row, index
    cdef int64_t base
    cdef double value, error
    cdef int lane
    for lane in range(4):
        errors[lane] = 0.0
        squares[lane] = 0.0
    with nogil:
        for row in range(n_rows):
            base = row * k
            for index in range(offsets[row], offsets[row + 1]):
                value = <double>values[index]
                error = value - <double>codebooks[base + <int64_t>labels[index]]
                errors[index & 3] += error * error
                squares[index & 3] += value * value
    return (errors[0] + errors[1]) + (errors[2] + errors[3]), (squares[0] + squares[1]) + (squares[2] + squares[3])


def partition(const floating[::1] values, double pivot, floating[::1] out):
    """Write the values below pivot to the front of out, the others (NaN among them) to the back; return their count."""
    # Each value is written to both free ends and only one end advances: no
    # branch to mispredict on random data.
    cdef Py_ssize_t low = 0
    cdef Py_ssize_t high = values.shape[0] - 1
    cdef Py_ssize_t index
    cdef floating value
    cdef bint is_low
    with nogil:
        for index in range(values.shape[0]):
            value = values[index]
            out[low] = value
            out[high] = value
            is_low = value < pivot
            low += is_low
            high -= not is_low
    return low


def sorted_keys_and_prefix(const floating[::1] sorted_values, const int64_t[::1] offsets, const double[::1] scales,
                           int64_t key_shift, int64_t key_bias, int64_t[::1] keys, uint64_t[::1] prefix):
    """Fill keys (N,) and prefix (N + 1,) of segments whose values are sorted (compiled.sorted_keys_and_prefix)."""
    # One sequential pass: quantize each sorted value (rint(x * 2**e) is
    # monotone, so the keys come out sorted) and accumulate the prefix sums
    # in uint64, which wrap as fixedpoint.prefix_sums does.
    cdef uint64_t total = 0
    cdef Py_ssize_t segment, index
    cdef int64_t tag, q
    cdef double scale
    prefix[0] = total
    with nogil:
        for segment in range(offsets.shape[0] - 1):
            tag = ((<int64_t>segment) << key_shift) + key_bias
            scale = scales[segment]
            for index in range(offsets[segment], offsets[segment + 1]):
                q = <int64_t>rint(<double>sorted_values[index] * scale)
                keys[index] = tag + q
                total += <uint64_t>q
                prefix[index + 1] = total


cdef inline void label_run(const floating* values, int64_t start, int64_t end, double scale, int64_t tag,
                           const int64_t* mids, int64_t low_key, int64_t shift, const table_t* table,
                           int64_t last_bucket, label_t* out) noexcept nogil:
    # The table counts the midpoints below the key's bucket and below the
    # next one. Most buckets hold no midpoint or one: then the label is the
    # count plus one comparison, with no branch (mids holds a greater key
    # after the segment's own, so the comparison is false for an empty
    # bucket). A binary search covers fuller buckets.
    cdef int64_t index, key, bucket, label, size, half
    for index in range(start, end):
        key = tag + <int64_t>rint(<double>values[index] * scale)
        bucket = (key - low_key) >> shift
        # A no-op for the keys of the values the table was made from; a
        # stray key (inconsistent low_keys) stays inside the table.
        bucket = 0 if bucket < 0 else (last_bucket if bucket > last_bucket else bucket)
        label = <int64_t>table[bucket]
        size = <int64_t>table[bucket + 1] - label
        if size > 1:
            while size > 0:
                half = size >> 1
                if mids[label + half] < key:
                    label += half + 1
                    size -= half + 1
                else:
                    size = half
        else:
            label += mids[label] < key
        out[index] = <label_t>label


def value_labels(const floating[::1] values, const int64_t[::1] offsets, const double[::1] scales, int64_t key_shift,
                 int64_t key_bias, const int64_t[::1] mid_keys, int64_t n_mids, const int64_t[::1] low_keys,
                 const int64_t[::1] shifts, const table_t[::1] tables, const int64_t[::1] table_offsets,
                 label_t[::1] out):
    """Write each value's label to out (compiled.value_labels), in parallel over blocks of values."""
    # Each value's key is made on the fly (no input-order key or segment
    # arrays) and its label written straight in out's (final) dtype; within a
    # block, each segment's part runs with that segment's constants at hand.
    cdef int64_t n_values = values.shape[0]
    cdef int64_t n_offsets = offsets.shape[0]
    cdef Py_ssize_t block
    cdef int64_t start, stop, end, segment
    if n_values == 0:
        return
    with nogil:
        for block in prange((n_values + _LABEL_BLOCK - 1) // _LABEL_BLOCK, schedule="static"):
            start = block * _LABEL_BLOCK
            stop = min64(n_values, start + _LABEL_BLOCK)
            segment = upper_bound(&offsets[0], 0, n_offsets, start) - 1
            while start < stop:
                end = min64(stop, offsets[segment + 1])
                label_run(&values[0], start, end, scales[segment], (segment << key_shift) + key_bias,
                          &mid_keys[segment * n_mids], low_keys[segment], shifts[segment],
                          &tables[table_offsets[segment]],
                          table_offsets[segment + 1] - table_offsets[segment] - 2, &out[0])
                start = end
                segment = segment + 1


def pack_weighted(const floating[::1] values, const int64_t[::1] offsets, const double[::1] scales,
                  const int64_t[::1] weights, int64_t key_bias, int64_t weight_shift, int64_t[::1] out):
    """Fill out (N,) with (rint(x * scale) + key_bias) << weight_shift | w per value (segments._weighted_batch)."""
    # In parallel over segments: each value's fixed point, as fixedpoint.quantize
    # (a normal scale makes x * 2**e exact, as ldexp), with its weight below it.
    cdef Py_ssize_t segment
    cdef int64_t index
    cdef double scale
    with nogil:
        for segment in prange(offsets.shape[0] - 1, schedule="dynamic"):
            scale = scales[segment]
            for index in range(offsets[segment], offsets[segment + 1]):
                out[index] = ((<int64_t>rint(<double>values[index] * scale) + key_bias) << weight_shift) | weights[index]


def unpack_weighted(const int64_t[::1] packed, const int64_t[::1] offsets, int64_t key_shift, int64_t key_bias,
                    int64_t weight_shift, int64_t[::1] keys, uint64_t[::1] prefix, int64_t[::1] weight_prefix):
    """Fill keys (N,), prefix (N + 1,) of w * q and weight_prefix (N + 1,) from sorted packed values."""
    # One sequential pass, as segments._weighted_batch's array code: the key is
    # the segment tag plus q + key_bias; the uint64 sums of w * q wrap as
    # fixedpoint.prefix_sums does; the weights' sums never wrap.
    cdef uint64_t total = 0
    cdef int64_t weight_total = 0
    cdef int64_t mask = (1 << weight_shift) - 1
    cdef Py_ssize_t segment
    cdef int64_t index, tag, biased, weight
    prefix[0] = 0
    weight_prefix[0] = 0
    with nogil:
        for segment in range(offsets.shape[0] - 1):
            tag = (<int64_t>segment) << key_shift
            for index in range(offsets[segment], offsets[segment + 1]):
                biased = packed[index] >> weight_shift
                weight = packed[index] & mask
                keys[index] = tag + biased
                total += <uint64_t>((biased - key_bias) * weight)
                weight_total += weight
                prefix[index + 1] = total
                weight_prefix[index + 1] = weight_total


# Integer weights (int8, int16 TFLite buffers): histograms and lookups by level (kernels/histogram.py).

ctypedef fused level_t:
    int8_t
    int16_t

ctypedef fused bits_t:
    uint8_t
    uint16_t
    uint32_t
    uint64_t


def segment_histograms(const level_t[::1] values, const int64_t[::1] offsets, int64_t low, int64_t[:, ::1] out):
    """Add to out[s, v - low] one for each value v of segment s (out (S, L) zeroed by the caller)."""
    cdef Py_ssize_t n_segments = offsets.shape[0] - 1
    cdef Py_ssize_t segment, index, level, lane
    cdef int64_t end
    # Four sub-histograms for int8: trained weights crowd into few levels, and
    # one counter bumped on every value waits on its own previous store.
    cdef int64_t (*lanes)[256]
    with nogil, parallel():
        lanes = NULL
        if level_t is int8_t:
            lanes = <int64_t (*)[256]>malloc(4 * 256 * sizeof(int64_t))
        for segment in prange(n_segments, schedule="dynamic"):
            end = offsets[segment + 1]
            if level_t is int8_t:
                memset(lanes, 0, 4 * 256 * sizeof(int64_t))
                index = offsets[segment]
                while index + 4 <= end:
                    lanes[0][<uint8_t>values[index]] += 1
                    lanes[1][<uint8_t>values[index + 1]] += 1
                    lanes[2][<uint8_t>values[index + 2]] += 1
                    lanes[3][<uint8_t>values[index + 3]] += 1
                    index = index + 4
                while index < end:
                    lanes[0][<uint8_t>values[index]] += 1
                    index = index + 1
                # lane slot b holds the value whose two's-complement byte is b
                for level in range(256):
                    out[segment, level] += (lanes[0][<uint8_t>(level + low)] + lanes[1][<uint8_t>(level + low)]
                                            + lanes[2][<uint8_t>(level + low)] + lanes[3][<uint8_t>(level + low)])
            else:
                for index in range(offsets[segment], end):
                    out[segment, values[index] - low] += 1
        free(lanes)


cdef inline Py_ssize_t _segment_at(const int64_t[::1] offsets, Py_ssize_t index) noexcept nogil:
    """Return the segment s with offsets[s] <= index < offsets[s + 1] (the last such when some are empty)."""
    cdef Py_ssize_t low = 0
    cdef Py_ssize_t high = offsets.shape[0] - 1
    cdef Py_ssize_t middle
    while high - low > 1:
        middle = (low + high) // 2
        if offsets[middle] <= index:
            low = middle
        else:
            high = middle
    return low


def segment_lookup(const level_t[::1] values, const int64_t[::1] offsets, int64_t low, const label_t[:, ::1] table,
                   label_t[::1] out):
    """Write out[i] = table[s, values[i] - low] for each value i of segment s."""
    cdef Py_ssize_t n_values = values.shape[0]
    cdef Py_ssize_t block, index, end, stop, segment
    cdef const label_t *row
    with nogil:
        # Blocks of values, not segments, run in parallel: one large segment (a per-tensor
        # codebook) uses every core too.
        for block in prange((n_values + _LABEL_BLOCK - 1) // _LABEL_BLOCK, schedule="static"):
            index = block * _LABEL_BLOCK
            end = min(index + _LABEL_BLOCK, n_values)
            segment = _segment_at(offsets, index)
            while index < end:
                stop = min(<Py_ssize_t>offsets[segment + 1], end)
                row = &table[segment, 0] - low
                while index < stop:
                    out[index] = row[values[index]]
                    index = index + 1
                segment = segment + 1


def segment_error_sums(const level_t[::1] values, const int64_t[::1] offsets, int64_t low,
                       const double[:, ::1] errors):
    """Return float64 (sum of errors[s, v - low]**2, sum of v**2) over the values v of segments s, in order.

    error_sums' four lanes and order: with errors[s, j] = (low + j) - codebook[label of that level], the
    same adds of the same numbers as error_sums on the values as floats and their labels.
    """
    cdef double lane_errors[4]
    cdef double squares[4]
    cdef Py_ssize_t n_segments = offsets.shape[0] - 1
    cdef Py_ssize_t segment, index
    cdef double value, error
    cdef const double *row
    cdef int lane
    for lane in range(4):
        lane_errors[lane] = 0.0
        squares[lane] = 0.0
    with nogil:
        for segment in range(n_segments):
            if offsets[segment + 1] == offsets[segment]:
                continue
            row = &errors[segment, 0] - low
            for index in range(offsets[segment], offsets[segment + 1]):
                value = <double>values[index]
                error = row[values[index]]
                lane_errors[index & 3] += error * error
                squares[index & 3] += value * value
    return ((lane_errors[0] + lane_errors[1]) + (lane_errors[2] + lane_errors[3]),
            (squares[0] + squares[1]) + (squares[2] + squares[3]))


cdef void _gather_into(const label_t[::1] indices, const bits_t[::1] table, bits_t *out) noexcept nogil:
    """Write out[i] = table[indices[i]], indices clipped to the table, in parallel over blocks."""
    cdef Py_ssize_t n_values = indices.shape[0]
    cdef Py_ssize_t last = table.shape[0] - 1
    cdef Py_ssize_t block, index, end, position
    for block in prange((n_values + _LABEL_BLOCK - 1) // _LABEL_BLOCK, schedule="static"):
        end = min((block + 1) * _LABEL_BLOCK, n_values)
        for index in range(block * _LABEL_BLOCK, end):
            # numpy.take(mode="clip"): an index out of range takes the nearest end
            position = <Py_ssize_t>indices[index]
            position = 0 if position < 0 else (last if position > last else position)
            out[index] = table[position]


def gather(const label_t[::1] indices, const bits_t[::1] table, bits_t[::1] out):
    """Write out[i] = table[indices[i]], indices clipped to the table (the bits of any dtype of that width)."""
    if indices.shape[0] == 0:
        return
    with nogil:
        _gather_into(indices, table, &out[0])


def gather_bytes(const bits_t[::1] codebook, const label_t[::1] labels):
    """Return a new bytes object holding codebook[labels] item after item (compiled.gather_bytes)."""
    # Written straight into the bytes object before anything else sees it:
    # no array of the values, no tobytes copy.
    cdef Py_ssize_t n_values = labels.shape[0]
    result = PyBytes_FromStringAndSize(NULL, n_values * <Py_ssize_t>sizeof(bits_t))
    cdef bits_t* out = <bits_t*>PyBytes_AS_STRING(result)
    if n_values == 0:
        return result
    with nogil:
        _gather_into(labels, codebook, out)
    return result
