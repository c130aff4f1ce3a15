"""The Numba kernels behind compiled.py (see there), in a module of their own
so that importing the engine does not import Numba (about 0.5 s).
"""
import numba
import numpy


@numba.njit(cache=True, nogil=True, inline="always")
def _best_split(previous, previous_low, sums, counts, low, high, end):
    """Return (first argmax, max) of previous[i - previous_low] + gain(i, end) over i in [low, high]."""
    end_sum = sums[end]
    end_count = counts[end]
    best_value = -numpy.inf
    best_split = low
    for split in range(low, high + 1):
        # An empty cluster has a sum of exactly 0, so its gain is 0 without a
        # branch (a third faster), as in the array version.
        cluster_sum = numpy.float64(end_sum - sums[split])
        value = previous[split - previous_low] + cluster_sum * cluster_sum / max(end_count - counts[split], 1.0)
        # Selects, not a branch: which candidate wins is data-dependent, and a
        # mispredicted branch per window cost 40% of the DP's time.
        better = value > best_value
        best_split = split if better else best_split
        best_value = value if better else best_value
    return best_split, best_value


@numba.njit(cache=True, nogil=True)
def _offset(first_layer):
    # D_1 less its maximum, in place: see optimal._offset.
    largest = first_layer.max()
    for j in range(first_layer.shape[0]):
        first_layer[j] = first_layer[j] - largest


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
    _offset(previous)
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
                table[end], current[end] = _best_split(previous, 0, sums, counts, low, high, end)
        previous, current = current, previous

@numba.njit(cache=True, parallel=True)
def _dp_rows(sums, counts, row_starts, k, strides, stride_starts):
    """Return int64 (R, k + 1) DP borders of R rows of any widths, in parallel over the rows.

    Row r's prefix sums and counts are sums[row_starts[r]:row_starts[r + 1]]
    (B_r + 1 entries), its stride levels strides[stride_starts[r]:stride_starts[r + 1]].
    """
    n_rows = row_starts.shape[0] - 1
    borders = numpy.zeros((n_rows, k + 1), dtype=numpy.int64)
    for row in numba.prange(n_rows):
        first, last = row_starts[row], row_starts[row + 1]
        width = last - first
        splits = numpy.empty((k - 1, width), dtype=numpy.int32)
        _dp_row(sums[first:last], counts[first:last], k, strides[stride_starts[row]:stride_starts[row + 1]], splits)
        borders[row, k] = width - 1
        for c in range(k - 1, 0, -1):
            borders[row, c] = splits[c - 1, borders[row, c + 1]]
    return borders


@numba.njit(cache=True, nogil=True)
def _band_row(sums, counts, k, lows, width, splits, last):
    """Fill splits (k + 1, width + 1) of one row and last (width + 1) with D_k; see optimal.band_bin_borders."""
    previous = numpy.empty(width + 1, dtype=numpy.float64)
    current = numpy.empty(width + 1, dtype=numpy.float64)
    for r in range(width + 1):
        total = numpy.float64(sums[lows[1] + r])
        count = counts[lows[1] + r]
        previous[r] = total * total / max(count, 1.0) if count > 0 else 0.0
    _offset(previous)
    for c in range(2, k + 1):
        floor = lows[c - 1]
        low_c = lows[c]
        table = splits[c]
        stride = 0
        while True:
            first = stride if stride > 0 else 0
            step = 2 * stride if stride > 0 else width
            for relative in range(first, width + 1 if stride == 0 else width, step):
                end = low_c + relative
                if end < floor:
                    table[relative] = floor
                    current[relative] = -numpy.inf
                    continue
                high = min(floor + width, end)
                if stride == 0:
                    low = floor
                else:
                    high = min(table[relative + stride], high)
                    low = table[relative - stride]
                if end - floor <= width:
                    low = max(low, splits[c - 1, end - floor])
                low = min(low, high)
                table[relative], current[relative] = _best_split(previous, floor, sums, counts, low, high, end)
            stride = width // 2 if stride == 0 else stride // 2
            if stride == 0:
                break
        previous, current = current, previous
    last[:] = previous


@numba.njit(cache=True, parallel=True)
def _band_rows(sums, counts, row_starts, k, lows, width):
    """Return int64 (R, k + 1) banded-DP borders of R rows of any widths (layout as _dp_rows).

    Each row's two halves (forward, and mirrored: optimal.band_bin_borders)
    run as parallel tasks, so even one row keeps two cores busy.
    """
    n_rows = row_starts.shape[0] - 1
    k_forward = k // 2
    k_backward = k - k_forward
    splits = numpy.zeros((2 * n_rows, k_backward + 1, width + 1), dtype=numpy.int32)
    last = numpy.empty((2 * n_rows, width + 1), dtype=numpy.float64)
    for half in numba.prange(2 * n_rows):
        row = half // 2
        first, stop = row_starts[row], row_starts[row + 1]
        if half % 2 == 0:
            _band_row(sums[first:stop], counts[first:stop], k_forward, lows[row], width, splits[half], last[half])
        else:
            n_bins = stop - first - 1
            mirror_sums = numpy.empty(n_bins + 1, dtype=numpy.int64)
            mirror_counts = numpy.empty(n_bins + 1, dtype=numpy.float64)
            for j in range(n_bins + 1):
                mirror_sums[j] = sums[stop - 1 - j] - sums[stop - 1]
                mirror_counts[j] = counts[stop - 1] - counts[stop - 1 - j]
            mirror_lows = numpy.empty(k + 1, dtype=numpy.int64)
            for c in range(k + 1):
                mirror_lows[c] = n_bins - width - lows[row, k - c]
            _band_row(mirror_sums, mirror_counts, k_backward, mirror_lows, width, splits[half], last[half])
    borders = numpy.zeros((n_rows, k + 1), dtype=numpy.int64)
    for row in numba.prange(n_rows):
        n_bins = row_starts[row + 1] - row_starts[row] - 1
        best, best_value = 0, -numpy.inf
        for r in range(width + 1):
            value = last[2 * row, r] + last[2 * row + 1, width - r]
            if value > best_value:
                best, best_value = r, value
        borders[row, k] = n_bins
        borders[row, k_forward] = lows[row, k_forward] + best
        for c in range(k_forward, 1, -1):
            borders[row, c - 1] = splits[2 * row, c, borders[row, c] - lows[row, c]]
        mirror_border = n_bins - borders[row, k_forward]
        for c in range(k_backward, 1, -1):
            mirror_border = splits[2 * row + 1, c, mirror_border - (n_bins - width - lows[row, k - c])]
            borders[row, k - c + 1] = n_bins - mirror_border
    return borders


@numba.njit(cache=True, parallel=True)
def _bucket_tables(mid_keys, n_mids, low_keys, shifts, table_offsets, tables):
    # Segment s's table is tables[table_offsets[s]:table_offsets[s + 1]]:
    # entry b counts its midpoints below the start of bucket b, and a last
    # entry, after the last bucket, counts them all.
    n_segments = low_keys.shape[0]
    for segment in numba.prange(n_segments):
        base = segment * n_mids
        first = table_offsets[segment]
        below = 0
        for bucket in range(table_offsets[segment + 1] - first - 1):
            start = low_keys[segment] + (numpy.int64(bucket) << shifts[segment])
            while below < n_mids and mid_keys[base + below] < start:
                below += 1
            tables[first + bucket] = below
        tables[table_offsets[segment + 1] - 1] = n_mids


@numba.njit(cache=True, nogil=True)
def _upper_bound(keys, low, high, key):
    while low < high:
        middle = (low + high) >> 1
        if keys[middle] <= key:
            low = middle + 1
        else:
            high = middle
    return low


@numba.njit(cache=True, nogil=True)
def _upper_bound_near(keys, low, high, key, hint):
    """Return _upper_bound(keys, low, high, key), searching outward from hint (galloping).

    Lloyd's borders move little between steps, so the answer is usually a few
    positions from the last one: a few cache-local probes instead of a binary
    search over the whole segment (20 scattered loads on a million values).
    """
    hint = min(max(hint, low), high)
    if hint < high and keys[hint] <= key:  # the answer lies above hint
        found_low, found_high, step = hint + 1, high, 1
        while hint + step < high:
            if keys[hint + step] > key:
                found_high = hint + step
                break
            found_low = hint + step + 1
            step *= 2
    else:  # the answer lies at or below hint
        found_low, found_high, step = low, hint, 1
        while hint - step >= low:
            if keys[hint - step] <= key:
                found_low = hint - step + 1
                break
            found_high = hint - step
            step *= 2
    return _upper_bound(keys, found_low, found_high, key)


@numba.njit(cache=True, parallel=True)
def _lloyd(keys, prefix, offsets, centroids, max_iter, key_shift, key_bias, iterations):
    # Only what can change is recomputed: border j (the midpoint search
    # between clusters j and j + 1) when centroid j or j + 1 moved in the last
    # step, and cluster j's mean when one of its borders moved. The rest would
    # come out the same (same query, same search; same range, same mean), so
    # the results are those of recomputing everything; late steps, where a
    # few centroids still move, cost a few searches instead of k.
    n_segments, k = centroids.shape
    for segment in numba.prange(n_segments):
        current = centroids[segment]
        updated = numpy.empty(k, dtype=numpy.int64)
        tag = numpy.int64(segment) << key_shift
        first = offsets[segment]
        last = offsets[segment + 1]
        borders = numpy.empty(k, dtype=numpy.int64)  # cluster j ends at borders[j]
        borders[k - 1] = last
        moved = numpy.ones(k, dtype=numpy.bool_)
        border_moved = numpy.ones(k, dtype=numpy.bool_)
        border_moved[k - 1] = False
        steps = 0
        for step in range(max_iter):
            for j in range(k - 1):
                if step == 0 or moved[j] or moved[j + 1]:
                    midpoint = (current[j] + current[j + 1]) >> 1
                    query = tag + midpoint + key_bias
                    low = borders[j - 1] if j > 0 else first
                    if step == 0:
                        end = _upper_bound(keys, low, last, query)
                    else:
                        end = _upper_bound_near(keys, low, last, query, borders[j])
                    border_moved[j] = step == 0 or end != borders[j]
                    borders[j] = end
                else:
                    border_moved[j] = False
            changed = False
            for j in range(k):
                if step == 0 or border_moved[j] or (j > 0 and border_moved[j - 1]):
                    start = borders[j - 1] if j > 0 else first
                    end = borders[j]
                    count = end - start
                    value = current[j]
                    if count > 0:
                        # Same-width casts reinterpret and int64 subtraction wraps:
                        # the sum comes out modulo 2**64, exact as in range_sums.
                        total = numpy.int64(prefix[end]) - numpy.int64(prefix[start])
                        value = (2 * total + count) // (2 * count)
                    moved[j] = value != current[j]
                    changed = changed or moved[j]
                    updated[j] = value
                else:
                    moved[j] = False
                    updated[j] = current[j]
            if not changed:
                break
            current[:] = updated
            steps += 1
        iterations[segment] = steps


@numba.njit(cache=True, nogil=True)
def _lower_bound(keys, low, high, key):
    # The first position in [low, high) whose key is >= key (searchsorted, side="left").
    while low < high:
        middle = (low + high) >> 1
        if keys[middle] < key:
            low = middle + 1
        else:
            high = middle
    return low


@numba.njit(cache=True, nogil=True)
def _equal_width_positions(keys, start, end, tag, value_mask, key_bias, n_cells, out):
    # out[s - 1] for s in 1..n_cells - 1: optimal.equal_width_positions of one segment.
    low = (keys[start] & value_mask) - key_bias
    high = (keys[end - 1] & value_mask) - key_bias
    position = start
    for step in range(1, n_cells):
        query = tag + low + ((high - low) * step) // n_cells + key_bias
        position = _lower_bound(keys, position, end, query)  # thresholds ascend
        out[step - 1] = position


@numba.njit(cache=True, nogil=True)
def _integer_cube_root(x):
    root = numpy.int64(numpy.floor(numpy.cbrt(numpy.float64(x))))
    if (root + 1) ** 3 <= x:
        root += 1
    if root**3 > x:
        root -= 1
    return root


@numba.njit(cache=True, nogil=True)
def _density_positions(keys, start, end, tag, value_mask, key_bias, n_bins, fine_per_bin, cube_shift, out):
    # out[0..n_bins]: optimal.density_edges of one segment.
    n_cells = fine_per_bin * n_bins
    cell_edges = numpy.empty(n_cells + 1, dtype=numpy.int64)
    cell_edges[0] = start
    cell_edges[n_cells] = end
    _equal_width_positions(keys, start, end, tag, value_mask, key_bias, n_cells, cell_edges[1:n_cells])
    weights = numpy.empty(n_cells, dtype=numpy.int64)
    cumulative = numpy.empty(n_cells + 1, dtype=numpy.int64)
    cumulative[0] = 0
    for cell in range(n_cells):
        weights[cell] = _integer_cube_root((cell_edges[cell + 1] - cell_edges[cell]) << cube_shift)
        cumulative[cell + 1] = cumulative[cell] + weights[cell]
    total = cumulative[n_cells]
    cell = 0
    for edge in range(n_bins + 1):
        target = (edge * total) // n_bins
        # The last cell whose cumulative weight is <= target (searchsorted right, less one).
        while cell + 1 <= n_cells and cumulative[cell + 1] <= target:
            cell += 1
        chosen = min(cell, n_cells - 1)
        within = target - cumulative[chosen]
        count = cell_edges[chosen + 1] - cell_edges[chosen]
        position = cell_edges[chosen] + (within * count) // max(weights[chosen], 1)
        out[edge] = min(position, end)
    out[0] = start
    out[n_bins] = end


@numba.njit(cache=True, parallel=True)
def _bin_edges(keys, offsets, rows, n_bins, key_shift, value_mask, key_bias, fine_per_bin, cube_shift, extremes):
    """Return int64 (R, n_bins + 1): optimal.bin_edges of segments larger than n_bins, bit for bit."""
    n_rows = rows.shape[0]
    count_bins = n_bins // 3
    density_bins = n_bins // 3
    width_bins = n_bins - count_bins - density_bins - 2 * extremes
    edges = numpy.empty((n_rows, n_bins + 1), dtype=numpy.int64)
    for index in numba.prange(n_rows):
        row = rows[index]
        start, end = offsets[row], offsets[row + 1]
        tag = numpy.int64(row) << key_shift
        union = edges[index]
        for step in range(count_bins + 1):
            union[step] = start + (step * (end - start)) // count_bins
        filled = count_bins + 1
        for rank in range(1, extremes + 1):
            union[filled] = start + rank
            union[filled + 1] = end - rank
            filled += 2
        _equal_width_positions(keys, start + extremes, end - extremes, tag, value_mask, key_bias, width_bins,
                               union[filled : filled + width_bins - 1])
        _density_positions(keys, start + extremes, end - extremes, tag, value_mask, key_bias, density_bins,
                           fine_per_bin, cube_shift, union[filled + width_bins - 1 :])
        union.sort()
    return edges


@numba.njit(cache=True, nogil=True)
def _error_sums(values, codebook, labels):
    # Four running sums each, in a fixed order: the adds overlap (a single
    # chain waits on every add) and the result is the same on every run.
    errors = numpy.zeros(4, dtype=numpy.float64)
    squares = numpy.zeros(4, dtype=numpy.float64)
    n_values = values.shape[0]
    for index in range(n_values):
        value = numpy.float64(values[index])
        error = value - numpy.float64(codebook[labels[index]])
        errors[index & 3] += error * error
        squares[index & 3] += value * value
    return (errors[0] + errors[1]) + (errors[2] + errors[3]), (squares[0] + squares[1]) + (squares[2] + squares[3])


@numba.njit(cache=True, nogil=True)
def _partition(values, pivot, out):
    # Values below pivot to the front of out, the others to the back (NaN
    # among them). Each value is written to both free ends and only one end
    # advances: no branch to mispredict on random data. (Sorting two halves
    # and merging them instead was 4x slower here: a merge mispredicts half
    # its branches.)
    low = 0
    high = values.shape[0] - 1
    for index in range(values.shape[0]):
        value = values[index]
        out[low] = value
        out[high] = value
        is_low = value < pivot
        low += is_low
        high -= not is_low
    return low


@numba.njit(cache=True, nogil=True)
def _sorted_keys_and_prefix(sorted_values, offsets, scales, key_shift, key_bias, keys, prefix):
    # One sequential pass: quantize each sorted value (rint(x * 2**e) is
    # monotone, so the keys come out sorted) and accumulate the prefix sums
    # in uint64, which wrap as fixedpoint.prefix_sums does (unsigned: the wrap
    # is defined behaviour).
    total = numpy.uint64(0)
    prefix[0] = total
    for segment in range(offsets.shape[0] - 1):
        tag = (numpy.int64(segment) << key_shift) + key_bias
        scale = scales[segment]
        for index in range(offsets[segment], offsets[segment + 1]):
            q = numpy.int64(numpy.rint(numpy.float64(sorted_values[index]) * scale))
            keys[index] = tag + q
            total += numpy.uint64(q)
            prefix[index + 1] = total


@numba.njit(cache=True, nogil=True)
def _segment_of(offsets, position):
    # The segment holding `position`: the last offset at or below it.
    return _upper_bound(offsets, 0, offsets.shape[0], position) - 1


# Values per parallel task of _value_labels.
LABEL_BLOCK = 1 << 16


@numba.njit(cache=True, parallel=True)
def _value_labels(values, offsets, scales, key_shift, key_bias, mid_keys, n_mids, low_keys, shifts, tables,
                  table_offsets, out):
    # Each value's key is made on the fly (no input-order key or segment
    # arrays) and its label written straight in out's (final) dtype. Blocks
    # of values run in parallel; within a block, each segment's part runs
    # with that segment's constants held in registers.
    n_values = values.shape[0]
    for block in numba.prange((n_values + LABEL_BLOCK - 1) // LABEL_BLOCK):
        start = block * LABEL_BLOCK
        stop = min(n_values, start + LABEL_BLOCK)
        segment = _segment_of(offsets, start)
        while start < stop:
            end = min(stop, offsets[segment + 1])
            _label_run(values, start, end, scales[segment], (numpy.int64(segment) << key_shift) + key_bias,
                       mid_keys[segment * n_mids : (segment + 1) * n_mids + 1], low_keys[segment], shifts[segment],
                       tables[table_offsets[segment] : table_offsets[segment + 1]], out)
            start = end
            segment += 1


@numba.njit(cache=True, nogil=True, inline="always")
def _label_run(values, start, end, scale, tag, mids, low_key, shift, table, out):
    # The table counts the midpoints below the key's bucket and below the
    # next one. Most buckets hold no midpoint or one: then the label is the
    # count plus one comparison, with no branch (mids holds a greater key
    # after the segment's own, so the comparison is false for an empty
    # bucket, and a mispredicted branch per value cost a third of the time).
    # A binary search covers fuller buckets (all midpoints in one bucket at worst).
    for index in range(start, end):
        key = tag + numpy.int64(numpy.rint(numpy.float64(values[index]) * scale))
        bucket = (key - low_key) >> shift
        label = numpy.int64(table[bucket])
        size = numpy.int64(table[bucket + 1]) - label
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
        out[index] = label
