"""Near-optimal 1-D k-means: an exact DP over fine bins, then Lloyd on the full data.

Why: Lloyd's algorithm lands far from the optimum on heavy-tailed weights, and
the exact solvers need O(k n) memory. Here each sorted segment is compressed
into B bins, contiguous runs of sorted values with exact integer counts and
sums (prefix-sum differences). Bin edges are the union of equal-count,
equal-width and cube-root-density edges, and single bins for the most
extreme values (see bin_edges). An exact dynamic
program over the bins then picks the best k groups of bins, and Lloyd's
algorithm (lloyd.py) refines that on the full data.

The DP maximizes sum_c S_c**2 / n_c, which is the same as minimizing the SSE
(SSE = sum q**2 - sum_c S_c**2 / n_c). Layer c holds D_c[j], the best value for
the first j bins in c clusters (empty clusters allowed, so D_c[j] >= D_{c-1}[j]):

    D_c[j] = max_{i <= j} D_{c-1}[i] + (P_j - P_i)**2 / (C_j - C_i)

The best split i is monotone in j (the cost is a Monge matrix), so each layer
is solved by divide and conquer over strides: the splits at odd multiples of a
stride lie between the splits already found at the even multiples, and no
lower than the previous layer's split at the same j. Every position of a
stride level, in every segment, is one rectangular array operation, identical
on NumPy and CuPy. On the CPU, compiled.dp_bin_borders runs the same windows
and arithmetic as one compiled loop per segment (bit for bit the same).

Large DPs (k >= 128) run in bands: the bins merged four to one make a coarse
DP, whose borders say roughly where each optimal border lies; the DP on all
bins then keeps layer c only on the BAND_WIDTH + 1 bins around the coarse
border c (band_bin_borders). The coarse DP itself is exact but skips the
positions no clustering of nonempty clusters uses (feasible_band), half of
them at k=256. Banded DPs meet in the middle: the first half of the clusters
is solved forward and the second on the mirrored bins, as two rows, so one
tensor's DP runs on two cores.
Measured by benchmarks/band.py on the tensors of benchmarks/optimal.py, the
SSE after Lloyd equals the full DP's on every banded tensor at k=128 and 256;
a band of 64 bins is up to 0.5% worse, one of 32 bins up to 3%. It is a
restriction, not a proof: an optimum whose border leaves its band is not found.

Device independence: sums and counts are exact integers; the DP values are
float64 built from elementwise +, -, *, / (correctly rounded IEEE on both array
libraries) and max/argmax with the first index winning ties. No float sum
whose order could differ between devices decides anything.

Memory: the split tables take k * (B + 1) int32 per segment with B at most
max(LARGE_BINS, BINS_PER_CLUSTER * k) (bin_count, bounded independently of n), and the DP runs on chunks of segments, so the working memory is
O(n) plus a bound independent of n.
"""
from __future__ import annotations

import numpy

from . import compiled
from .fixedpoint import KEY_BIAS, KEY_SHIFT, KEY_VALUE_MASK, array_namespace, key_values, range_sums, rounded_mean
from .lloyd import lloyd, segment_tags
from .segments import SegmentBatch

# Bins per cluster, the least number of bins (segments with at most that many
# values get one bin per value, which makes the DP exact on them), and the
# bins of segments with many values per bin: MAX(MIN_BINS, VALUES / ...) below.
BINS_PER_CLUSTER = 8
MIN_BINS = 128
LARGE_BINS = 256
VALUES_PER_BIN = 8
# Equal-width cells per bin that measure the value density, and the shift
# that keeps the cube roots of cell counts fine-grained (counts < 2**42).
FINE_PER_BIN = 4
CUBE_SHIFT = 18
# One bin in this many, and at least this many at each end, go to the extreme
# values, one value each (bin_edges).
EXTREME_DIVISOR = 64
MIN_EXTREMES = 8


def extreme_bins(n_bins: int) -> int:
    """Return how many of the least (and of the greatest) values get a bin each, of a segment with n_bins bins."""
    return max(MIN_EXTREMES, n_bins // EXTREME_DIVISOR)
# Large DPs run in bands (band_bin_borders): a DP on bins merged BAND_COARSENING
# to one finds each border roughly, and the DP on all bins then looks for border
# c only within BAND_WIDTH bins around it.
BAND_COARSENING = 4
BAND_WIDTH = 128
BAND_MIN_BINS = 1024
# Candidate splits per rectangular piece of a ragged window.
PIECE = 32
# Bytes of split tables per chunk of segments.
TABLE_BYTES = 1 << 26


def bin_count(n: int, k: int, bins_per_cluster: int = BINS_PER_CLUSTER) -> int:
    """Return the number of DP bins of a segment of n values clustered into k.

    max(MIN_BINS, bins_per_cluster * k, min(LARGE_BINS, ceil(n / VALUES_PER_BIN))),
    at most n: a function of (n, k) alone, so a segment's bins never depend on
    its batch. Segments with no more values than that get one bin per value.
    Why the size term: LARGE_BINS bins for every segment made a per-channel
    run (35,764 channels of ~640 values, k = 16) spend most of its time in
    DPs as large as a whole tensor's, for channels of two or three values a
    bin; from 2,048 values on (at k = 16), and at every size from k = 32 on,
    the count is the earlier max(256, 8 k). Whole arrays of at most
    LARGE_BINS values keep their exact optimum through the DP on distinct
    values (engine._exact_candidates). On the FaceNet-shaped graph at
    k = 16 (benchmarks/granularity.py; results/2026-12-02-granularity-issue17c.md)
    the per-channel total SSE rose 0.17% (1171.09 to 1173.11), the per-tensor
    one stayed 5046.45 (to 6 digits); tests/test_optimal.py checks
    channel-sized segments against the exact optimum.
    """
    by_size = min(LARGE_BINS, -(-int(n) // VALUES_PER_BIN))
    return min(int(n), max(MIN_BINS, bins_per_cluster * k, by_size))


def bin_counts(sizes, k: int, bins_per_cluster: int = BINS_PER_CLUSTER) -> numpy.ndarray:
    """Return int64 (S,) bin_count(n, k) of every segment size n in host int sizes (S,), as one array step.

    A per-channel run has tens of thousands of segments: one Python call
    each was a few percent of its time.
    """
    sizes = numpy.asarray(sizes, dtype=numpy.int64)
    by_size = numpy.minimum(LARGE_BINS, -(-sizes // VALUES_PER_BIN))
    return numpy.minimum(sizes, numpy.maximum(max(MIN_BINS, bins_per_cluster * k), by_size))


def integer_cube_root(x):
    """Return floor(cbrt(x)) for int64 x in [0, 2**60], exactly (float guess, integer fix-up)."""
    xp = array_namespace(x)
    # cbrt is libm's on NumPy and CUDA's (1 ulp) on CuPy: the guesses may differ
    # by one, and the fix-up makes both exact. Cubes are products, not `**`, so
    # no integer-power implementation is relied on.
    root = xp.floor(xp.cbrt(x.astype(xp.float64))).astype(xp.int64)
    above = root + 1
    root = xp.where(above * above * above <= x, above, root)
    return xp.where(root * root * root > x, root - 1, root)


def _span(batch: SegmentBatch, rows, span):
    """Return (first, stop) int64 (R,) sorted positions: span, or each segment's whole range."""
    if span is not None:
        return span
    return batch.offsets[rows], batch.offsets[rows + 1]


def equal_width_positions(batch: SegmentBatch, rows, n_cells: int, span=None):
    """Return int64 (R, n_cells - 1) sorted positions of the inner edges of n_cells equal-width cells.

    The cells split the value range of each row's sorted positions [first,
    stop) (span; default the whole segment) evenly, by integer thresholds in
    its fixed point; a position is the first value at or above its threshold
    (and at or after first), found by one searchsorted for every row.
    """
    xp = array_namespace(batch.keys)
    first, stop = _span(batch, rows, span)
    low = key_values(batch.keys[first])
    high = key_values(batch.keys[stop - 1])
    steps = xp.arange(1, n_cells, dtype=xp.int64)
    thresholds = low[:, None] + ((high - low)[:, None] * steps[None, :]) // n_cells
    queries = segment_tags(rows)[:, None] + thresholds + KEY_BIAS
    positions = xp.searchsorted(batch.keys, queries.ravel(), side="left").reshape(thresholds.shape)
    # Values equal to the span's first may precede it: positions stay in the span.
    return xp.maximum(positions.astype(xp.int64), first[:, None])


def density_edges(batch: SegmentBatch, rows, n_bins: int, span=None):
    """Return sorted global positions (R, n_bins + 1) of bin edges spread by the cube root of the density.

    Over each row's sorted positions [first, stop) (span; default the whole
    segment): every row's first edge is first and its last edge stop;
    the bins are spread with density proportional to p**(1/3), p the density of
    the values: the point density of optimal quantizers (Panter and Dite), so
    each optimal cluster spans about the same number of bins, in the dense
    core and in the sparse tails alike. p comes from FINE_PER_BIN * n_bins
    equal-width cells; its cube root and every position are exact integers, so
    the edges are the same on every device. Repeated positions are empty bins,
    which the DP handles. Meant for segments larger than n_bins (bin_edges).
    """
    xp = array_namespace(batch.keys)
    starts, ends = _span(batch, rows, span)
    n_rows = int(rows.shape[0])
    n_cells = FINE_PER_BIN * n_bins
    inner = equal_width_positions(batch, rows, n_cells, (starts, ends))
    cell_edges = xp.concatenate([starts[:, None], inner, ends[:, None]], axis=1)
    cell_counts = cell_edges[:, 1:] - cell_edges[:, :-1]
    weights = integer_cube_root(cell_counts << CUBE_SHIFT)
    cumulative = xp.concatenate([xp.zeros((n_rows, 1), dtype=xp.int64), xp.cumsum(weights, axis=1)], axis=1)
    total = cumulative[:, -1]
    targets = (xp.arange(n_bins + 1, dtype=xp.int64)[None, :] * total[:, None]) // n_bins
    # One searchsorted for every row: offset each row's cumulative weights
    # above the previous row's (they are nondecreasing within a row).
    row_index = xp.arange(n_rows, dtype=xp.int64)[:, None]
    shift = row_index * (int(total.max()) + 1)
    cell = xp.searchsorted((cumulative + shift).ravel(), (targets + shift).ravel(), side="right")
    cell = xp.minimum(cell.reshape(targets.shape) - 1 - row_index * (n_cells + 1), n_cells - 1)
    within = targets - cumulative[row_index, cell]
    cell_weight = xp.maximum(weights[row_index, cell], 1)
    edges = cell_edges[row_index, cell] + (within * cell_counts[row_index, cell]) // cell_weight
    edges = xp.minimum(edges, ends[:, None])
    edges[:, 0] = starts
    edges[:, -1] = ends
    return edges


def bin_edges(batch: SegmentBatch, rows, n_bins: int, binned=None):
    """Return sorted global positions (R, n_bins + 1) of the bin edges of segments `rows`.

    binned(batch, rows, n_bins) makes the edges of the rows larger than
    n_bins (default: the array version; _bin_tables passes the compiled twin).

    Every row's first edge is its segment's start and its last edge its end.
    Segments of exactly n_bins values get one bin per value. Larger segments
    get the sorted union of three edge sets of about a third of the bins each:
    equal-count edges resolve the dense core, equal-width edges the sparse
    tails (where the outliers that dominate the SSE live), and density edges
    (density_edges) everything in between. With 8 bins per cluster the union
    lands within 0.5% of the optimum (median; benchmarks/optimal.py), where
    the union of the first two alone was at 1.1% at k=256. Repeated positions
    are empty bins, which the DP handles.

    The extreme_bins(n_bins) least and greatest values get a bin each,
    and the equal-width and density edges span the values between them: one
    outlier far out (400x the rest of the range) otherwise stretched those
    grids over empty space and left the core only its equal-count bins
    (benchmarks/outliers.py measures the cases).
    """
    xp = array_namespace(batch.keys)
    starts = batch.offsets[rows]
    ends = batch.offsets[rows + 1]
    sizes = ends - starts
    # Rows of n_bins values get one bin per value, whatever else is in the
    # group (bin_count gives n_bins to every larger segment too): a segment's
    # bins never depend on its batch.
    edges = starts[:, None] + xp.arange(n_bins + 1, dtype=xp.int64)[None, :]
    larger = sizes > n_bins
    if bool(larger.any()):
        edges[larger] = (binned or _binned_edges)(batch, rows[larger], n_bins)
    return edges


def _binned_edges(batch: SegmentBatch, rows, n_bins: int):
    """Return bin_edges of segments `rows`, each larger than n_bins."""
    xp = array_namespace(batch.keys)
    starts = batch.offsets[rows]
    ends = batch.offsets[rows + 1]
    sizes = ends - starts
    extremes = extreme_bins(n_bins)
    count_bins = n_bins // 3
    density_bins = n_bins // 3
    # (count + 1) + 2 extremes + (width - 1) + (density + 1) edges
    width_bins = n_bins - count_bins - density_bins - 2 * extremes
    steps = xp.arange(count_bins + 1, dtype=xp.int64)
    by_count = starts[:, None] + (steps[None, :] * sizes[:, None]) // count_bins
    ranks = xp.arange(1, extremes + 1, dtype=xp.int64)[None, :]
    singles = xp.concatenate([starts[:, None] + ranks, ends[:, None] - ranks], axis=1)
    inner = (starts + extremes, ends - extremes)
    by_width = equal_width_positions(batch, rows, width_bins, inner)
    by_density = density_edges(batch, rows, density_bins, inner)
    return xp.sort(xp.concatenate([by_count, singles, by_width, by_density], axis=1), axis=1)


def _strides(n_bins: int) -> list[int]:
    stride = 1
    while stride * 2 <= n_bins:
        stride *= 2
    strides = []
    while stride >= 1:
        strides.append(stride)
        stride //= 2
    return strides


def _window_argmax(lo_hi, ends, bases, flat):
    """Return (first argmax, max) of previous[i] + gain(i, j) over i in [lo, hi] for each (row, j).

    lo_hi: int64 (R, J) window bounds; ends: int64 (R, J) the j's, all as bin
    positions. bases: int64 (R, 1) pairs (sum_base, previous_base): the flat
    index of row r's bin i is sum_base[r] + i in flat_sums and flat_counts and
    previous_base[r] + i in flat_previous (whose rows may cover a band only).
    Windows are ragged (a split can jump far), so they are cut into pieces of
    PIECE candidates: one rectangular argmax per piece, then one over each
    window's pieces. The first piece holding the maximum wins, and within it
    the first index: the overall first index, as a single argmax would give.
    """
    low, high = lo_hi
    sum_base, previous_base = bases
    flat_previous, flat_sums, flat_counts = flat
    xp = array_namespace(low)
    n_rows, n_ends = low.shape
    pieces = (high - low) // PIECE + 1  # (R, J), every window has >= 1 candidate
    first_piece = xp.cumsum(pieces.ravel()) - pieces.ravel()  # exact integer cumsum
    n_pieces = int(first_piece[-1] + pieces.ravel()[-1])
    window = xp.searchsorted(first_piece, xp.arange(n_pieces, dtype=xp.int64), side="right") - 1
    rank = xp.arange(n_pieces, dtype=xp.int64) - first_piece[window]
    window_low, window_high = low.ravel()[window], high.ravel()[window]
    row = window // n_ends
    end_flat = sum_base.ravel()[row] + ends.ravel()[window]
    candidates = xp.minimum(
        (window_low + rank * PIECE)[:, None] + xp.arange(PIECE, dtype=xp.int64)[None, :], window_high[:, None]
    )
    flat_candidates = sum_base.ravel()[row][:, None] + candidates
    cluster_sums = (flat_sums[end_flat][:, None] - flat_sums[flat_candidates]).astype(xp.float64)
    cluster_counts = flat_counts[end_flat][:, None] - flat_counts[flat_candidates]
    # An empty cluster (count 0) has a sum of exactly 0: its gain is 0 with no mask.
    gains = cluster_sums * cluster_sums / xp.maximum(cluster_counts, 1.0)
    values = flat_previous[previous_base.ravel()[row][:, None] + candidates] + gains
    best = xp.argmax(values, axis=1)
    piece_rows = xp.arange(n_pieces, dtype=xp.int64)
    piece_value = values[piece_rows, best]
    piece_split = candidates[piece_rows, best]
    most = int(pieces.max())
    table = xp.full((n_rows * n_ends, most), -xp.inf, dtype=xp.float64)
    table[window, rank] = piece_value
    choice = xp.argmax(table, axis=1)
    chosen_piece = first_piece + choice
    return (piece_split[chosen_piece].reshape(n_rows, n_ends),
            table[xp.arange(n_rows * n_ends), choice].reshape(n_rows, n_ends))


def _layer(previous, previous_splits, sums, counts, n_bins: int, strides):
    """Return (D_c, splits) of one DP layer from D_{c-1} for every row.

    previous: float64 (R, B + 1); previous_splits: int64 (R, B + 1), layer
    c - 1's splits (zeros for c = 2); sums: int64 (R, B + 1) exact prefix sums
    at the bin edges; counts: float64 (R, B + 1). splits[r, j] is the first i
    that maximizes previous[r, i] + gain(i, j) within the monotone window.
    """
    xp = array_namespace(previous)
    n_rows = previous.shape[0]
    width = n_bins + 1
    current = xp.zeros_like(previous)
    splits = xp.zeros(previous.shape, dtype=xp.int64)
    base = (xp.arange(n_rows, dtype=xp.int64) * width)[:, None]
    flat = (previous.ravel(), sums.ravel(), counts.ravel())
    for stride in strides:
        ends = xp.arange(stride, n_bins + 1, 2 * stride, dtype=xp.int64)
        # The last cluster of a best split starts no earlier with one cluster
        # more (opt_{c-1}(j) <= opt_c(j)): the window shrinks from below too.
        low = xp.maximum(splits[:, ends - stride], previous_splits[:, ends])
        above = ends + stride
        high = xp.where(above <= n_bins, splits[:, xp.minimum(above, n_bins)], ends[None, :])
        high = xp.minimum(high, ends[None, :])
        low = xp.minimum(low, high)  # rounding could break the order: never an empty window
        best_split, best_value = _window_argmax((low, high), xp.broadcast_to(ends[None, :], low.shape),
                                                (base, base), flat)
        splits[:, ends] = best_split
        current[:, ends] = best_value
    return current, splits


def _offset(first_layer):
    """Return D_1 (R, W) less its row maximum: the same splits, and values that keep their precision.

    An extreme value at the DP's start (an outlier 10**7 times the weights'
    scale) makes every D_c hold its huge S**2 / n, and the gains of the other
    clusters vanish in its rounding: borders came out at random and clusters
    empty. Less that constant (exact: it is D_1 of the outlier alone), the
    values stay on the scale of the gains. A maximum is exact on any device.
    """
    xp = array_namespace(first_layer)
    return first_layer - xp.max(first_layer, axis=1, keepdims=True)


def dp_bin_borders(sums, counts, k: int, n_bins: int):
    """Return int64 (R, k + 1) bin borders of the exact k-clustering of each row's bins (array version).

    sums: int64 (R, B + 1) exact sums from each row's start to its bin edges;
    counts: float64 (R, B + 1) the matching counts. Cluster c of row r holds
    bins [borders[r, c], borders[r, c + 1]). compiled.dp_bin_borders is its
    CPU twin, bit for bit.
    """
    xp = array_namespace(sums)
    sums_float = sums.astype(xp.float64)
    layer = _offset(xp.where(counts > 0, sums_float * sums_float / xp.maximum(counts, 1.0), 0.0))
    strides = _strides(n_bins)
    tables = []
    splits = xp.zeros(sums.shape, dtype=xp.int64)
    for _ in range(1, k):
        layer, splits = _layer(layer, splits, sums, counts, n_bins, strides)
        tables.append(splits.astype(xp.int32))
    n_rows = sums.shape[0]
    row_index = xp.arange(n_rows, dtype=xp.int64)
    borders = xp.zeros((n_rows, k + 1), dtype=xp.int64)
    borders[:, k] = n_bins
    for c in range(k - 1, 0, -1):
        borders[:, c] = tables[c - 1][row_index, borders[:, c + 1]]
    return borders


def banded(n_bins: int, k: int) -> bool:
    """Return True when the DP of n_bins bins into k clusters runs in bands (band_bin_borders).

    Only large DPs (k * B dominates the time from k = 128 on) whose coarse
    problem keeps at least two bins per cluster.
    """
    return n_bins >= BAND_MIN_BINS and n_bins % BAND_COARSENING == 0 and n_bins // BAND_COARSENING >= 2 * k


def band_lows(coarse_borders, n_bins: int):
    """Return int64 (R, k + 1) first bin positions of each layer's band, from the coarse borders.

    coarse_borders: int64 (R, k + 1) borders of the coarse DP (in coarse bins).
    Layer c's band, BAND_WIDTH + 1 positions, is centred on the coarse solution's
    c-th border and kept inside [0, B]; the last layer's band ends at B.
    """
    xp = array_namespace(coarse_borders)
    fine = xp.asarray(coarse_columns(n_bins))[coarse_borders]
    lows = xp.clip(fine - BAND_WIDTH // 2, 0, n_bins - BAND_WIDTH)
    lows[:, -1] = n_bins - BAND_WIDTH
    return lows


def _band_levels(width: int):
    """Return [(relative ends, stride)] of the banded D&C: both band ends first, then halving strides."""
    levels = [(numpy.array([0, width], dtype=numpy.int64), 0)]
    stride = width // 2
    while stride >= 1:
        levels.append((numpy.arange(stride, width, 2 * stride, dtype=numpy.int64), stride))
        stride //= 2
    return levels


def _band_layer(previous, previous_splits, previous_low, low_c, sums, counts):
    """Return (D_c, splits) on layer c's band from D_{c-1} on layer c - 1's band, for every row.

    previous: float64 (R, W + 1), D_{c-1} at bins previous_low + r, and
    previous_splits int64 (R, W + 1) its splits (zeros for c = 2); low_c:
    int64 (R,) the first bin of layer c's band. A j below previous_low has no
    split in band (value -inf, split previous_low). Splits are absolute bins.
    As in _layer, a split is no lower than layer c - 1's split at the same j
    where the previous band holds j.
    """
    xp = array_namespace(previous)
    n_rows, band = previous.shape
    width = band - 1
    current = xp.empty_like(previous)
    splits = xp.empty(previous.shape, dtype=xp.int64)
    rows = xp.arange(n_rows, dtype=xp.int64)[:, None]
    bases = (rows * sums.shape[1], rows * band - previous_low[:, None])
    flat = (previous.ravel(), sums.ravel(), counts.ravel())
    floor = xp.broadcast_to(previous_low[:, None], (n_rows, 1))
    for relative, stride in _band_levels(width):
        relative = xp.asarray(relative)
        ends = low_c[:, None] + relative[None, :]
        ceiling = xp.minimum(floor + width, ends)
        if stride == 0:
            low, high = xp.broadcast_to(floor, ends.shape), ceiling
        else:
            high = xp.minimum(splits[:, relative + stride], ceiling)
            low = splits[:, relative - stride]
        in_previous = ends - floor <= width
        below = previous_splits[rows, xp.clip(ends - floor, 0, width)]
        low = xp.minimum(xp.where(in_previous, xp.maximum(low, below), low), high)
        valid = ends >= floor
        low = xp.where(valid, low, floor)
        high = xp.where(valid, high, floor)
        best_split, best_value = _window_argmax((low, high), ends, bases, flat)
        splits[:, relative] = best_split
        current[:, relative] = xp.where(valid, best_value, -xp.inf)
    return current, splits


def mirrored(sums, counts):
    """Return (sums, counts) (R, B + 1) of each row's bins in reverse order, values negated.

    Bin j of the mirror is bin B - 1 - j; its sums are sums[B - j] - sums[B]
    (exact integers). A cluster's mirrored sum is the negated sum and its
    count the same, so its gain S**2 / n is bit for bit the same.
    """
    return sums[:, ::-1] - sums[:, -1:], counts[:, -1:] - counts[:, ::-1]


def band_bin_borders(sums, counts, k: int, lows, width: int = BAND_WIDTH):
    """Return int64 (R, k + 1) bin borders of the best k-clustering whose c-th border lies in band c.

    sums, counts: as dp_bin_borders; lows: int64 (R, k + 1) from band_lows
    or feasible_band; width: a power of two. Layer c keeps D_c only on bins
    [lows[c], lows[c] + width] and takes its splits from layer c - 1's band;
    each layer is the same divide and conquer as _layer, over the band.

    The DP meets in the middle: the first k // 2 clusters run forward, the
    last k - k // 2 as the same DP on the mirrored bins (mirrored), both as
    rows of one DP (on the CPU, on two cores), and border k // 2 is the
    first position of its band that maximizes the sum of the two halves.
    compiled.band_bin_borders is its CPU twin, bit for bit.
    """
    xp = array_namespace(sums)
    n_rows, n_edges = sums.shape
    n_bins = n_edges - 1
    k_forward, k_backward = k // 2, k - k // 2
    mirror_sums, mirror_counts = mirrored(sums, counts)
    # Mirrored border c is border k - c: its band is band k - c, reversed.
    mirror_lows = n_bins - width - lows[:, ::-1]
    all_sums = xp.ascontiguousarray(xp.concatenate([sums, mirror_sums]))
    all_counts = xp.ascontiguousarray(xp.concatenate([counts, mirror_counts]))
    all_lows = xp.concatenate([lows, mirror_lows])
    relative = xp.arange(width + 1, dtype=xp.int64)
    rows = xp.arange(2 * n_rows, dtype=xp.int64)
    first = all_sums[rows[:, None], all_lows[:, 1:2] + relative[None, :]].astype(xp.float64)
    first_counts = all_counts[rows[:, None], all_lows[:, 1:2] + relative[None, :]]
    layer = _offset(xp.where(first_counts > 0, first * first / xp.maximum(first_counts, 1.0), 0.0))
    tables = {1: xp.zeros((2 * n_rows, width + 1), dtype=xp.int64)}
    forward = layer[:n_rows]
    for c in range(2, k_backward + 1):  # forward rows run one layer too many for odd k: unused
        layer, tables[c] = _band_layer(layer, tables[c - 1], all_lows[:, c - 1], all_lows[:, c], all_sums,
                                       all_counts)
        if c == k_forward:
            forward = layer[:n_rows]
    # Border k // 2 at lows[k // 2] + r is mirrored border k - k // 2 at its band's position width - r.
    meet = lows[:, k_forward] + xp.argmax(forward + layer[n_rows:, ::-1], axis=1)
    borders = xp.zeros((n_rows, k + 1), dtype=xp.int64)
    borders[:, k] = n_bins
    borders[:, k_forward] = meet
    row_index = rows[:n_rows]
    for c in range(k_forward, 1, -1):
        borders[:, c - 1] = tables[c][row_index, borders[:, c] - lows[:, c]]
    mirror_border = n_bins - meet
    for c in range(k_backward, 1, -1):
        mirror_border = tables[c][row_index + n_rows, mirror_border - mirror_lows[:, c]]
        borders[:, k - c + 1] = n_bins - mirror_border
    return borders


def feasible_band(n_bins: int, k: int):
    """Return (width, lows int64 (k + 1,)) of the bands that hold every clustering into k clusters of >= 1 bin.

    Border c of such a clustering lies in [c, n_bins - k + c]; the bands are
    the least power of two wide that covers that. Splitting off a bin never
    lowers sum_c S_c**2 / n_c (Cauchy-Schwarz), so when n_bins >= k the best
    clustering in these bands is as good as the best one with empty clusters
    allowed: band_bin_borders on them is exact, with fewer positions per layer
    (half at the coarse pass of k=256: 257 of 513). Returns None where the
    bands would not be narrower than the bins.
    """
    if n_bins < k:
        return None
    width = 1 << max(int(n_bins - k), 1).bit_length() - 1
    width = width if width >= n_bins - k else 2 * width
    if width >= n_bins:
        return None
    lows = numpy.minimum(numpy.arange(k + 1, dtype=numpy.int64), n_bins - width)
    return width, lows


def coarse_columns(n_bins: int) -> numpy.ndarray:
    """Return int64 the edges (of B + 1) that the coarse DP keeps: every BAND_COARSENING-th, and all at the ends.

    bin_edges gives the most extreme values a bin each; merged four to one
    they would force the coarse clustering to give each extreme cluster four
    bins, and its borders would land outside the bands where the fine
    optimum puts them. So the extremes' edges stay single.
    """
    extremes = extreme_bins(n_bins)
    middle = numpy.arange(extremes, n_bins - extremes, BAND_COARSENING, dtype=numpy.int64)
    return numpy.concatenate([numpy.arange(extremes, dtype=numpy.int64), middle,
                              numpy.arange(n_bins - extremes, n_bins + 1, dtype=numpy.int64)])


def coarse_table(table, n_bins: int):
    """Return the columns of a (R, B + 1) sums or counts table at the coarse_columns(B) edges, contiguous."""
    xp = array_namespace(table)
    return xp.ascontiguousarray(table[:, xp.asarray(coarse_columns(n_bins))])


def coarse_bins(n_bins: int) -> int:
    """Return the number of bins of the coarse DP of n_bins bins."""
    return int(coarse_columns(n_bins).shape[0]) - 1


def _full_borders(sums, counts, k: int, n_bins: int):
    """Return dp_bin_borders, through band_bin_borders on feasible_band's bands where those are narrower."""
    xp = array_namespace(sums)
    band = feasible_band(n_bins, k)
    if band is None:
        return dp_bin_borders(sums, counts, k, n_bins)
    width, lows = band
    return band_bin_borders(sums, counts, k, xp.broadcast_to(xp.asarray(lows), (sums.shape[0], k + 1)), width)


def band_edge_rows(borders, lows, n_bins: int):
    """Return bool (R,): rows whose banded borders (R, k + 1) touch an inner edge of their band (lows (R, k + 1)).

    A border pressed against its band's edge may have been held there by the
    band rather than by the data: those rows get the full DP instead, so a
    coarse guide that lands too far off costs time, never the result.
    """
    xp = array_namespace(borders)
    inner, low = borders[:, 1:-1], lows[:, 1:-1]
    at_low = (inner == low) & (low > 0)
    at_high = (inner == low + BAND_WIDTH) & (low + BAND_WIDTH < n_bins)
    return xp.any(at_low | at_high, axis=1)


def _borders(sums, counts, k: int, n_bins: int):
    """Return the DP's bin borders (R, k + 1) of one group of rows (array version): banded when banded(n_bins, k)."""
    if not banded(n_bins, k):
        return _full_borders(sums, counts, k, n_bins)
    coarse = _full_borders(coarse_table(sums, n_bins), coarse_table(counts, n_bins), k, coarse_bins(n_bins))
    lows = band_lows(coarse, n_bins)
    borders = band_bin_borders(sums, counts, k, lows)
    redo = band_edge_rows(borders, lows, n_bins)
    if bool(redo.any()):
        borders[redo] = _full_borders(sums[redo], counts[redo], k, n_bins)
    return borders


def _compiled_band_borders(groups, k: int) -> list:
    """Return compiled band DP borders of groups [(sums, counts, lows, width)], one parallel call per width."""
    borders = [None] * len(groups)
    for width in sorted({group[3] for group in groups}):
        members = [g for g, group in enumerate(groups) if group[3] == width]
        results = compiled.band_groups_borders([groups[g][:3] for g in members], k, width)
        for g, result in zip(members, results):
            borders[g] = result
    return borders


def _compiled_full_borders(tables, k: int) -> list:
    """Return what _full_borders gives each (sums, counts, n_bins) table, from parallel compiled calls."""
    bands = [feasible_band(n_bins, k) for _, _, n_bins in tables]
    plain = [(sums, counts, _strides(n_bins)) for (sums, counts, n_bins), band in zip(tables, bands) if band is None]
    narrow = [(sums, counts, numpy.broadcast_to(band[1], (sums.shape[0], k + 1)), band[0])
              for (sums, counts, _), band in zip(tables, bands) if band is not None]
    plain_borders = iter(compiled.dp_groups_borders(plain, k))
    narrow_borders = iter(_compiled_band_borders(narrow, k))
    return [next(plain_borders) if band is None else next(narrow_borders) for band in bands]


def _compiled_borders(tables, k: int) -> list:
    """Return what _borders gives each (sums, counts, n_bins) table, from a few parallel compiled calls.

    The full DPs (and the coarse DPs of banded tables) of every table share
    one call per kind, the banded DPs another: rows of every size keep every
    core busy, where one call per bin count ran small tensors' DPs one after another.
    """
    is_banded = [banded(n_bins, k) for _, _, n_bins in tables]
    borders = _compiled_full_borders(
        [(coarse_table(sums, n_bins), coarse_table(counts, n_bins), coarse_bins(n_bins)) if band
         else (sums, counts, n_bins) for (sums, counts, n_bins), band in zip(tables, is_banded)], k)
    indices = [i for i, band in enumerate(is_banded) if band]
    lows = {i: band_lows(borders[i], tables[i][2]) for i in indices}
    results = _compiled_band_borders([(tables[i][0], tables[i][1], lows[i], BAND_WIDTH) for i in indices], k)
    redo = {}
    for i, result in zip(indices, results):
        borders[i] = result
        rows = band_edge_rows(result, lows[i], tables[i][2])
        if rows.any():
            redo[i] = rows
    # Rows whose borders touch a band's edge: the full DP instead (band_edge_rows).
    again = _compiled_full_borders([(tables[i][0][rows], tables[i][1][rows], tables[i][2])
                                    for i, rows in redo.items()], k)
    for (i, rows), result in zip(redo.items(), again):
        borders[i][rows] = result
    return borders


def _compiled_binned_edges(batch: SegmentBatch, rows, n_bins: int):
    """Return _binned_edges from its compiled twin (NumPy batches)."""
    return compiled.bin_edges(batch.keys, batch.offsets, rows, n_bins, KEY_SHIFT, KEY_VALUE_MASK, KEY_BIAS,
                              FINE_PER_BIN, CUBE_SHIFT, extreme_bins(n_bins))


def _bin_tables(batch: SegmentBatch, rows, n_bins: int):
    """Return (edges, sums, counts) of the bins of segments `rows`: positions, exact sums and counts from each start."""
    xp = array_namespace(batch.keys)
    on_cpu = xp is numpy and compiled.available()
    edges = bin_edges(batch, rows, n_bins, _compiled_binned_edges if on_cpu else None)
    return _tables_at(batch, edges)


def _tables_at(batch: SegmentBatch, edges):
    """Return (edges, sums, counts) at given bin edges (R, B + 1): exact sums and counts (total weights) from each start.

    Weighted batches give sums of w * q and total weights: the DP's gain
    S**2 / W is then the weighted one (weighted SSE = sum w q**2 - sum S**2 / W).
    Total weights stay below 2**53, so their float64 counts are exact.
    """
    xp = array_namespace(batch.keys)
    if xp is numpy and compiled.available():
        # One compiled pass over the rows (tens of thousands of channels' tables).
        return (edges, *compiled.bin_tables(batch.prefix, batch.weight_prefix, edges))
    starts = xp.broadcast_to(edges[:, :1], edges.shape)
    sums = range_sums(batch.prefix, starts, edges)
    return edges, sums, batch.range_weights(starts, edges).astype(xp.float64)


def _border_centroids(batch: SegmentBatch, rows, edges, borders):
    """Return int64 centroids (R, k), sorted: the means of the clusters that bin borders (R, k + 1) make.

    Empty clusters (only when a segment has fewer than k nonempty bins; or,
    weighted, of zero total weight) take the value just below their
    position, or the segment minimum.
    """
    xp = array_namespace(batch.keys)
    row_index = xp.arange(edges.shape[0], dtype=xp.int64)
    positions = edges[row_index[:, None], borders]
    cluster_counts = batch.range_weights(positions[:, :-1], positions[:, 1:])
    cluster_sums = range_sums(batch.prefix, positions[:, :-1], positions[:, 1:])
    means = rounded_mean(cluster_sums, cluster_counts)
    # An empty cluster at sorted position p takes the value just below p (the
    # segment minimum at its start): at least every centroid below, at most
    # every centroid above, so centroids stay sorted.
    below = xp.maximum(positions[:, :-1] - 1, batch.offsets[rows][:, None])
    return xp.where(cluster_counts > 0, means, key_values(batch.keys[below]))


def dp_centroids(batch: SegmentBatch, rows, k: int, n_bins: int):
    """Return int64 centroids (R, k), sorted, of the DP's k-clustering of the bins of `rows` (array version)."""
    edges, sums, counts = _bin_tables(batch, rows, n_bins)
    return _border_centroids(batch, rows, edges, _borders(sums, counts, k, n_bins))


# Exact DP on distinct values (exact_rows): at most this many split-table
# entries ((k - 1) * (D + 1) int32, 64 MiB) per segment; a segment with more
# distinct values gets the usual bins. k = 256 takes all 65,536 float16 values.
EXACT_TABLE_ENTRIES = 1 << 24


def distinct_edges(batch: SegmentBatch, row: int):
    """Return int64 (D + 1,) sorted positions: where each of segment row's D distinct values starts, then its end.

    Distinct in the batch's fixed point (values closer than one unit of it are one value).
    """
    xp = array_namespace(batch.keys)
    start, end = int(batch.offsets[row]), int(batch.offsets[row + 1])
    keys = batch.keys[start:end]
    changes = xp.flatnonzero(keys[1:] != keys[:-1]).astype(xp.int64) + (start + 1)
    return xp.concatenate([xp.asarray([start], dtype=xp.int64), changes, xp.asarray([end], dtype=xp.int64)])


# From this many rows on, the distinct values of a run of rows (a per-channel int8 or float16 tensor's
# thousands of channels) are found in one pass over the keys of their span, not one call per row.
SPAN_ROWS = 16


def _distinct_spans(batch: SegmentBatch, rows_host):
    """Return (changes, lo, hi, starts, ends) of ascending rows_host: changes, the positions (in the
    span of those rows) where a key differs from the one before it; per row, changes[lo:hi] are its own
    (a row's first position excluded), starts/ends its host offsets. Arrays: changes on the batch's
    device, the rest host int64."""
    xp = array_namespace(batch.keys)
    rows = numpy.asarray(rows_host, dtype=numpy.int64)
    offsets = numpy.asarray(batch.offsets[int(rows[0]) : int(rows[-1]) + 2].tolist(), dtype=numpy.int64)
    local = rows - rows[0]
    starts, ends = offsets[local], offsets[local + 1]
    span = batch.keys[int(offsets[0]) : int(offsets[-1])]
    changes = xp.flatnonzero(span[1:] != span[:-1]).astype(xp.int64) + (int(offsets[0]) + 1)
    lo = numpy.asarray(xp.searchsorted(changes, xp.asarray(starts), side="right").tolist(), dtype=numpy.int64)
    hi = numpy.asarray(xp.searchsorted(changes, xp.asarray(ends), side="left").tolist(), dtype=numpy.int64)
    return changes, lo, hi, starts, ends


def _span_pays(batch: SegmentBatch, rows_host) -> bool:
    """Return whether one pass over the span of ascending rows_host beats one call per row: many rows
    that fill most of their span (a per-channel tensor's channels, not a few small tensors scattered
    through a batch of large ones)."""
    if len(rows_host) < SPAN_ROWS:
        return False
    offsets = batch.offsets
    span = int(offsets[rows_host[-1] + 1]) - int(offsets[rows_host[0]])
    xp = array_namespace(offsets)
    rows = xp.asarray(numpy.asarray(rows_host, dtype=numpy.int64))
    return 2 * int((offsets[rows + 1] - offsets[rows]).sum()) >= span


def _distinct_counts(batch: SegmentBatch, rows_host) -> numpy.ndarray:
    """Return host int64: the number of distinct values (distinct_edges' D) of each of ascending rows_host."""
    if not _span_pays(batch, rows_host):
        return numpy.array([int(distinct_edges(batch, row).shape[0]) - 1 for row in rows_host], dtype=numpy.int64)
    _, lo, hi, _, _ = _distinct_spans(batch, rows_host)
    return hi - lo + 1


def _distinct_edge_lists(batch: SegmentBatch, rows_host) -> list:
    """Return distinct_edges(batch, row) of each of ascending rows_host, the same arrays (views of one)."""
    if not _span_pays(batch, rows_host):
        return [distinct_edges(batch, row) for row in rows_host]
    xp = array_namespace(batch.keys)
    changes, lo, hi, starts, ends = _distinct_spans(batch, rows_host)
    lengths = hi - lo + 2  # start, the row's changes, end
    begins = numpy.zeros(lengths.size + 1, dtype=numpy.int64)
    numpy.cumsum(lengths, out=begins[1:])
    # Position j of the output takes changes[lo_r + j - begin_r - 1] inside row r, its start and end at the ends.
    owner = numpy.repeat(numpy.arange(lengths.size, dtype=numpy.int64), lengths)
    source = numpy.arange(int(begins[-1]), dtype=numpy.int64) - begins[owner] - 1 + lo[owner]
    inner = numpy.ones(int(begins[-1]), dtype=bool)
    inner[begins[:-1]] = False
    inner[begins[1:] - 1] = False
    flat = xp.empty(int(begins[-1]), dtype=xp.int64)
    flat[xp.asarray(numpy.flatnonzero(inner))] = changes[xp.asarray(source[inner])]
    flat[xp.asarray(begins[:-1])] = xp.asarray(starts)
    flat[xp.asarray(begins[1:] - 1)] = xp.asarray(ends)
    return [flat[int(b) : int(e)] for b, e in zip(begins[:-1].tolist(), begins[1:].tolist())]


def exact_rows(batch: SegmentBatch, candidates, k: int) -> numpy.ndarray:
    """Return host bool (S,): the candidate segments whose DP runs on their distinct values (exactly).

    candidates: host bool (S,), segments of few possible values (float16,
    bfloat16, int8 ...). With one bin per distinct value and the bin's total
    weight (its count, times the importances when weighted), the DP is the
    exact k-means optimum over those values, not a near one; taken where the
    split tables stay within EXACT_TABLE_ENTRIES, and without bands.
    """
    chosen = numpy.zeros(batch.n_segments, dtype=bool)
    rows = numpy.flatnonzero(numpy.asarray(candidates, dtype=bool))
    if rows.size:
        chosen[rows] = exact_fits(_distinct_counts(batch, rows.tolist()), k)
    return chosen


def exact_fits(n_distinct, k: int):
    """Return whether a segment of n_distinct distinct values (an int or a host int array) takes the exact
    DP at k: its split tables stay within EXACT_TABLE_ENTRIES (exact_rows' rule)."""
    return (k - 1) * (numpy.asarray(n_distinct, dtype=numpy.int64) + 1) <= EXACT_TABLE_ENTRIES


def _exact_centroids(batch: SegmentBatch, rows_host, k: int, centroids) -> None:
    """Write into centroids the exact DP's centroids of segments rows_host, bins = distinct values."""
    xp = array_namespace(batch.keys)
    groups: dict[int, list] = {}
    for row, edges in zip(rows_host, _distinct_edge_lists(batch, rows_host)):
        groups.setdefault(int(edges.shape[0]) - 1, []).append((row, edges))
    on_cpu = xp is numpy and compiled.available()
    pending, pending_bytes = [], 0

    def flush():
        # Chunks of every distinct count share one parallel compiled call (per-channel rows have
        # hundreds of distinct counts), up to TABLE_BYTES of split tables at a time.
        for (rows, edges, _, _, _), borders in zip(pending, _compiled_full_borders(
                [(sums, counts, n_bins) for _, _, sums, counts, n_bins in pending], k)):
            centroids[rows] = _border_centroids(batch, rows, edges, borders)
        pending.clear()

    for n_bins, members in sorted(groups.items()):
        for first in range(0, len(members), max(1, TABLE_BYTES // (4 * k * (n_bins + 1)))):
            chunk = members[first : first + max(1, TABLE_BYTES // (4 * k * (n_bins + 1)))]
            rows = xp.asarray([row for row, _ in chunk], dtype=xp.int64)
            edges, sums, counts = _tables_at(batch, xp.stack([edges for _, edges in chunk]))
            if not on_cpu:
                centroids[rows] = _border_centroids(batch, rows, edges, _full_borders(sums, counts, k, n_bins))
                continue
            chunk_bytes = 4 * k * (n_bins + 1) * len(chunk)
            if pending and pending_bytes + chunk_bytes > TABLE_BYTES:
                flush()
                pending_bytes = 0
            pending.append((rows, edges, sums, counts, n_bins))
            pending_bytes += chunk_bytes
    if pending:
        flush()


def _chunks(rows_host, k: int, n_bins: int):
    per_chunk = max(1, TABLE_BYTES // (4 * k * (n_bins + 1)))
    for first in range(0, len(rows_host), per_chunk):
        yield rows_host[first : first + per_chunk]


def optimal(batch: SegmentBatch, initial_centroids, max_iter: int, bins_per_cluster: int = BINS_PER_CLUSTER):
    """Cluster every segment near-optimally: DP over bins, then Lloyd on the full data.

    initial_centroids: int64 (S, k), used only for k (the DP needs no start).
    Returns (centroids int64 (S, k) sorted, iterations int64 (S,)), the
    iterations being Lloyd's refinement steps. Each segment's result depends on
    that segment, k and bins_per_cluster alone, never on its batch. Segments
    marked in batch.distinct_rows get the exact DP on their distinct values
    (exact_rows); weighted batches (batch.weight_prefix) minimise sum w (x - c)**2.
    """
    xp = array_namespace(initial_centroids)
    k = int(initial_centroids.shape[1])
    sizes_host = numpy.asarray((batch.offsets[1:] - batch.offsets[:-1]).tolist(), dtype=numpy.int64)
    distinct = (numpy.zeros(sizes_host.shape[0], dtype=bool) if batch.distinct_rows is None
                else numpy.asarray(batch.distinct_rows, dtype=bool))
    bins_host = bin_counts(sizes_host, k, bins_per_cluster)
    # Rows in ascending order within each bin count, as one loop over the rows appended them.
    groups = {int(n_bins): numpy.flatnonzero((bins_host == n_bins) & ~distinct)
              for n_bins in numpy.unique(bins_host[~distinct]).tolist()}
    centroids = xp.empty_like(initial_centroids)
    if distinct.any():
        _exact_centroids(batch, numpy.flatnonzero(distinct).tolist(), k, centroids)
    if xp is numpy and compiled.available():
        # Every group's DP in the same two parallel calls (see _compiled_borders).
        chunks = [(numpy.asarray(chunk, dtype=numpy.int64), n_bins) for n_bins, rows_host in sorted(groups.items())
                  for chunk in _chunks(rows_host, k, n_bins)]
        tables = [_bin_tables(batch, rows, n_bins) for rows, n_bins in chunks]
        borders = _compiled_borders([(sums, counts, n_bins) for (_, sums, counts), (_, n_bins) in zip(tables, chunks)],
                                    k)
        for (rows, _), (edges, _, _), row_borders in zip(chunks, tables, borders):
            centroids[rows] = _border_centroids(batch, rows, edges, row_borders)
        return lloyd(batch, centroids, max_iter)
    for n_bins, rows_host in sorted(groups.items()):
        for chunk in _chunks(rows_host, k, n_bins):
            rows = xp.asarray(chunk, dtype=xp.int64)
            centroids[rows] = dp_centroids(batch, rows, k, n_bins)
    return lloyd(batch, centroids, max_iter)
