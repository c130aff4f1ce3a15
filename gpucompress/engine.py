"""The clustering engine: batches many 1-D arrays into segments and runs the kernels.

Only this module knows about devices and memory. It groups the arrays into
batches of at most `batch_values` values (a single larger array travels alone),
moves each batch to the device once, runs the initializer and the method there,
and brings back codebooks and labels. Because every segment's result depends on
that segment alone (see kernels/fixedpoint.py), batching changes speed and
memory, never the output.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy

from . import device as devices
from .errors import OptionsError
from .kernels import compiled, fixedpoint
from .kernels.initializers import INITIALIZERS
from .kernels.lloyd import assign_labels, lloyd
from .kernels.optimal import LARGE_BINS, exact_fits, exact_rows, optimal
from .kernels.segments import SegmentBatch, batch_from_sorted, build_batch, segment_extremes, sort_values

log = logging.getLogger(__name__)

# Values per batch by device: about 60 bytes of working memory per value. On
# the CPU, 2 M values (~120 MB) cost no measurable time over 4 M and save
# ~75 MB of peak RSS on a 23 M-weight model; 1 M was ~20 % slower.
DEFAULT_BATCH_VALUES = {"cpu": 1 << 21, "gpu": 1 << 26}


@dataclass(frozen=True)
class ClusterResult:
    """The clustering of one array.

    codebook: float64 (k,), sorted centroids (may repeat when the array has
    fewer distinct values than k). labels: (n,) unsigned ints, the index into the
    codebook of each value, in input order. iterations: Lloyd steps that moved
    the centroids. converged: False when max_iter stopped it first. exact:
    True when the optimal method's DP ran on the array's distinct values (a
    float16, bfloat16 or few-valued array), so its DP solution is the exact
    optimum (before Lloyd's refinement, which never raises the SSE).
    """

    codebook: numpy.ndarray
    labels: numpy.ndarray
    iterations: int
    converged: bool
    exact: bool = False


def label_dtype(k: int) -> numpy.dtype:
    """Return the smallest unsigned dtype that holds labels in [0, k)."""
    return numpy.dtype(numpy.uint8 if k <= 256 else numpy.uint16 if k <= 65536 else numpy.uint32)


def _lloyd_method(batch, centroids, max_iter):
    return lloyd(batch, centroids, max_iter)


# name -> function(batch, initial centroids, max_iter) -> (centroids, iterations)
METHODS: dict[str, Callable] = {"lloyd": _lloyd_method, "optimal": optimal}


def plan_batches(sizes: Sequence[int], batch_values: int, counts: Sequence[int] | None = None) -> list[range]:
    """Split array indices, in order, into consecutive batches of at most batch_values values.

    counts: segments per array (default 1 each); a batch holds at most
    fixedpoint.MAX_SEGMENTS segments. An array larger than batch_values (or
    with that many segments) forms a batch of its own. Returns ranges of indices.
    """
    batches, start, total, segments = [], 0, 0, 0
    limit = fixedpoint.MAX_SEGMENTS
    counts = counts if counts is not None else [1] * len(sizes)
    for index, (size, count) in enumerate(zip(sizes, counts)):
        if index > start and (total + size > batch_values or segments + count > limit):
            batches.append(range(start, index))
            start, total, segments = index, 0, 0
        total += size
        segments += count
    if start < len(sizes):
        batches.append(range(start, len(sizes)))
    return batches


def _nonfinite_message(index: int) -> str:
    return f"arrays[{index}] holds NaN or Inf; pass finite values only."


def _check_arrays(arrays, check_finite: bool = True) -> list[numpy.ndarray]:
    """Return the arrays flattened, after checking dtype, size and (if check_finite) finiteness.

    With check_finite False the caller checks finiteness later (the CPU path
    reads it off the sorted segments); the first error raised is still the
    one a full check would raise first: before a dtype or size error at
    index i, the arrays before i are checked for NaN and Inf.
    """
    checked = []
    for index, array in enumerate(arrays):
        array = numpy.asarray(array)
        problem = None
        if array.dtype.kind != "f" and array.dtype.name != "bfloat16":
            problem = f"arrays[{index}].dtype={array.dtype} should be a floating dtype."
        # Kept in its own dtype (a view when possible): each batch is converted
        # on its own, so the whole model never exists in float64 at once.
        values = array.reshape(-1)
        if problem is None and values.size == 0:
            problem = f"arrays[{index}].size=0 should be >= 1."
        if problem is not None:
            if not check_finite:
                for earlier, earlier_values in enumerate(checked):
                    if not numpy.isfinite(earlier_values).all():
                        raise OptionsError(_nonfinite_message(earlier))
            raise OptionsError(problem)
        if check_finite and not numpy.isfinite(values).all():
            raise OptionsError(_nonfinite_message(index))
        checked.append(values)
    return checked


def _integer_weights(weights, arrays, values, segment_sizes) -> list[numpy.ndarray | None]:
    """Return per array None (uniform) or its int64 integer weights, flat, quantized segment by segment.

    weights: None or one entry per array: None, or a non-negative finite
    float array of the array's shape. segment_sizes: int64 sizes per array.
    Each segment's weights are made integers on their own
    (fixedpoint.quantize_weights), so a segment's result is that of the
    segment clustered alone with its weights; a segment whose weights come
    out uniform gets ones (the weighted arithmetic with w = 1 is the
    unweighted one) and an array with every segment uniform None. Raises
    OptionsError naming the index.
    """
    if weights is None:
        return [None] * len(values)
    if len(weights) != len(values):
        raise OptionsError(f"weights holds {len(weights)} entries; it should hold one per array ({len(values)}).")
    result = []
    for index, (weight, array) in enumerate(zip(weights, arrays)):
        if weight is None:
            result.append(None)
            continue
        weight = numpy.asarray(weight)
        shape = numpy.shape(array)
        if weight.dtype.kind not in "fiu":
            raise OptionsError(f"weights[{index}].dtype={weight.dtype} should be a real number dtype.")
        if weight.shape != shape:
            raise OptionsError(f"weights[{index}].shape={weight.shape} should be the array's shape {shape}.")
        weight = weight.astype(numpy.float64, copy=False).reshape(-1)
        if not numpy.isfinite(weight).all():
            raise OptionsError(f"weights[{index}] holds NaN or Inf; weights should be finite and >= 0.")
        if bool((weight < 0).any()):
            raise OptionsError(f"weights[{index}] holds negative values; weights should be finite and >= 0.")
        sizes = segment_sizes[index]
        if sizes.size == 1:
            result.append(fixedpoint.quantize_weights(weight))
        else:
            result.append(fixedpoint.quantize_segment_weights(weight, sizes))
    return result


def _exact_candidates(values, exact_candidates) -> numpy.ndarray:
    """Return host bool (n_arrays,): arrays of at most 65,536 possible values (float16, bfloat16, or flagged),
    and arrays of at most LARGE_BINS values.

    Why the small arrays: up to LARGE_BINS values every value was a bin
    (bin_count), so the DP was exact on them; since bin_count gives 128 bins
    to segments of up to 1,024 values (at k <= 16, for per-channel runs'
    speed), a whole small tensor (a bias, a head layer: few, and cheap) keeps
    the exact optimum through the DP on its distinct values instead.
    """
    flags = numpy.array([v.dtype.itemsize == 2 or v.size <= LARGE_BINS for v in values], dtype=bool)
    if exact_candidates is not None:
        if len(exact_candidates) != len(values):
            raise OptionsError(f"exact_candidates holds {len(exact_candidates)} entries; it should hold one per "
                               f"array ({len(values)}).")
        flags |= numpy.array([bool(flag) for flag in exact_candidates], dtype=bool)
    return flags


def _weighted_batch(values, integer_weights, ids: list[int], sizes: numpy.ndarray, segment_sizes, xp):
    """Return the SegmentBatch of weighted arrays ids: scales from their segments' total weights, sorted
    with the weights.

    sizes: int64 (S,) the batch's segment sizes; segment_sizes: per array of
    ids, its segment sizes (for the per-segment max |x| and weight totals).
    """
    flat_weights = numpy.concatenate([integer_weights[i] for i in ids])
    starts = numpy.concatenate([[0], numpy.cumsum(sizes)[:-1]]).astype(numpy.int64)
    totals = numpy.maximum(numpy.add.reduceat(flat_weights, starts), 1).astype(numpy.int64)
    max_abs = _segment_max_abs([values[i] for i in ids], segment_sizes)
    exponents = fixedpoint.segment_exponents(max_abs, totals)
    return build_batch(xp.asarray(_concatenated(values, ids)), xp.asarray(sizes), xp.asarray(exponents),
                       xp.asarray(flat_weights))


def _concatenated(values: list[numpy.ndarray], ids: list[int]) -> numpy.ndarray:
    """Return values[i] for i in ids one after the other, in float32 or float64.

    float32 when every one widens to it exactly (float16, bfloat16, float32),
    else float64; a lone float32 or float64 array comes back as it is (no
    copy: nothing downstream writes to it).
    """
    narrow = all(values[i].dtype.itemsize <= 4 for i in ids)
    dtype = numpy.dtype(numpy.float32 if narrow else numpy.float64)
    if len(ids) == 1 and values[ids[0]].dtype == dtype and values[ids[0]].flags.c_contiguous:
        return values[ids[0]]
    out = numpy.empty(sum(values[i].size for i in ids), dtype=dtype)
    start = 0
    for i in ids:
        out[start : start + values[i].size] = values[i]
        start += values[i].size
    return out


def _cpu_batch(values: list[numpy.ndarray], ids: list[int], sizes: numpy.ndarray, owners: numpy.ndarray):
    """Return the SegmentBatch of arrays ids on the CPU, each scale taken from its sorted segment's ends.

    sizes: int64 (S,) the segments' sizes (the arrays' own, or their channels');
    owners: int64 (S,) the array index of each segment (for the error message).

    Sorting first gives max |x| for free and lets the values sort in their own
    precision (float32 sorts ~2x faster than int64 keys). Raises OptionsError
    for the first array of the batch that holds NaN or Inf (NaN sorts last,
    infinities to the ends), before anything is quantized.
    """
    flat = _concatenated(values, ids)
    offsets = numpy.concatenate([[0], numpy.cumsum(sizes)]).astype(numpy.int64)
    sorted_values = sort_values(flat, offsets)
    low, high = segment_extremes(sorted_values, offsets)
    finite = numpy.isfinite(low) & numpy.isfinite(high)
    if not finite.all():
        raise OptionsError(_nonfinite_message(int(owners[int(numpy.argmin(finite))])))
    exponents = fixedpoint.segment_exponents(numpy.maximum(high, -low), sizes)
    return batch_from_sorted(flat, sorted_values, offsets, exponents)


def _check_arguments(n_clusters, init, method, max_iter) -> None:
    if not isinstance(n_clusters, int) or n_clusters < 2:
        raise OptionsError(f"n_clusters={n_clusters!r} should be an integer >= 2.")
    if init not in INITIALIZERS:
        raise OptionsError(f"init={init!r} should be one of {sorted(INITIALIZERS)}.")
    if method not in METHODS:
        raise OptionsError(f"method={method!r} should be one of {sorted(METHODS)}.")
    if not isinstance(max_iter, int) or max_iter < 0:
        raise OptionsError(f"max_iter={max_iter!r} should be an integer >= 0.")


def cluster_arrays(
    arrays: Sequence[numpy.ndarray],
    n_clusters: int = 256,
    *,
    init: str = "linear",
    method: str = "optimal",
    max_iter: int = 300,
    device: str = "auto",
    seed: int = 0,
    batch_values: int | None = None,
    on_batch: Callable[[int], None] | None = None,
    first_id: int = 0,
    weights: Sequence[numpy.ndarray | None] | None = None,
    exact_candidates: Sequence[bool] | None = None,
) -> list[ClusterResult]:
    """Cluster the values of each array with 1-D k-means, many arrays per device batch.

    arrays: NumPy arrays of any floating dtype and shape, finite values, >= 1
    value each (flattened). n_clusters: k >= 2. init: a name in INITIALIZERS.
    method: a name in METHODS. device: "auto", "cpu" or "gpu". seed: for random
    initializers. batch_values: values per device batch (default by device).
    on_batch: called with the number of arrays finished after each batch.
    first_id: the id of arrays[0] for the random initializers (array i draws
    from the stream of id first_id + i), so that a caller may split one list
    of arrays over several calls and get the results of a single call.
    weights: None, or one entry per array: None (every value weighs the
    same) or a non-negative finite importance array of the array's shape;
    the clustering then minimises sum w * (x - c)**2. Weights are made
    integers first (kernels.fixedpoint.quantize_weights: resolution 2**-16 of
    the array's largest weight), so results stay bit-identical on every
    device; equal weights give exactly the unweighted result. A value of
    weight 0 still gets its nearest centroid. exact_candidates: None, or one
    bool per array: arrays known to hold at most 65,536 distinct values
    (integers seen as float32); with method "optimal" those, and every
    float16 and bfloat16 array, run the DP on their distinct values, which is
    exact (ClusterResult.exact).

    Returns one ClusterResult per array, in order; bit-identical for the same
    inputs and options on every device and batch size. Raises OptionsError on
    bad arguments, DeviceError when device="gpu" is not usable; an OptionsError
    for NaN or Inf may come after on_batch has reported earlier batches (the
    CPU path finds them while sorting), never after a result is returned.
    """
    _check_arguments(n_clusters, init, method, max_iter)
    results = _cluster(arrays, None, n_clusters, init, method, max_iter, device, seed, batch_values,
                       on_batch, first_id, weights, exact_candidates)
    return [ClusterResult(r.codebooks[0], r.labels, int(r.iterations[0]), r.converged, bool(r.exact[0]))
            for r in results]


@dataclass(frozen=True)
class SegmentedResult:
    """The clustering of one array cut into segments, each with its own codebook.

    codebooks: float64 (S, k), row s the sorted centroids of segment s.
    labels: (n,) unsigned ints in input order, each an index into its segment's row.
    iterations: int64 (S,) Lloyd steps per segment. converged: every segment stopped before max_iter.
    exact: bool (S,), per segment ClusterResult.exact (the DP ran on the segment's distinct values).
    """

    codebooks: numpy.ndarray
    labels: numpy.ndarray
    iterations: numpy.ndarray
    converged: bool
    exact: numpy.ndarray


def cluster_segments(
    arrays: Sequence[numpy.ndarray],
    segment_sizes: Sequence[numpy.ndarray],
    n_clusters: int = 256,
    *,
    init: str = "linear",
    method: str = "optimal",
    max_iter: int = 300,
    device: str = "auto",
    seed: int = 0,
    batch_values: int | None = None,
    on_batch: Callable[[int], None] | None = None,
    first_id: int = 0,
    weights: Sequence[numpy.ndarray | None] | None = None,
    exact_candidates: Sequence[bool] | None = None,
) -> list[SegmentedResult]:
    """Cluster consecutive segments of each array, one codebook per segment (per-channel, grouped).

    arrays: as cluster_arrays (flattened); segment_sizes[i]: int64 sizes (>= 1
    each) summing to arrays[i].size, the segments one after another. Every
    segment is a segment of the same batched engine (no loop per segment): its
    result is that of cluster_arrays on the segment alone, except the random
    initializer's stream, which is (seed, first_id + i, s) for segment s of
    array i (an array of one segment: (seed, first_id + i), as cluster_arrays).
    An array's segments always share a batch. weights: as cluster_arrays, in
    the arrays' (segment after segment) order; each segment's weights are
    made integers on their own, so the rule "a segment's result is that of
    cluster_arrays on the segment alone" holds with weights too.
    exact_candidates: as cluster_arrays, an array's flag holding for each of
    its segments. Other arguments and errors as cluster_arrays; also
    OptionsError for sizes that do not fit. Returns one SegmentedResult per
    array, in order.
    """
    _check_arguments(n_clusters, init, method, max_iter)
    if len(segment_sizes) != len(arrays):
        raise OptionsError(f"segment_sizes has {len(segment_sizes)} entries, arrays {len(arrays)}.")
    checked = []
    for index, (array, sizes) in enumerate(zip(arrays, segment_sizes)):
        sizes = numpy.asarray(sizes, dtype=numpy.int64).reshape(-1)
        if sizes.size == 0 or sizes.min() < 1 or int(sizes.sum()) != numpy.asarray(array).size:
            raise OptionsError(f"segment_sizes[{index}] should be sizes >= 1 summing to arrays[{index}].size.")
        if sizes.size > fixedpoint.MAX_SEGMENTS:
            raise OptionsError(f"arrays[{index}] has {sizes.size} segments, at most {fixedpoint.MAX_SEGMENTS}.")
        checked.append(sizes)
    return _cluster(arrays, checked, n_clusters, init, method, max_iter, device, seed, batch_values,
                    on_batch, first_id, weights, exact_candidates)


def _segment_draws(seed: int, ids: list[int], counts: numpy.ndarray, k: int) -> numpy.ndarray:
    """Return k-means++ draws (S, k) of a batch: stream (seed, id) for an array of one segment (as
    cluster_arrays), (seed, id, s) for segment s of an array of several (kmeans++ only)."""
    rows = [numpy.random.default_rng([seed, int(i)] if count == 1 else [seed, int(i), s]).random(k)
            for i, count in zip(ids, counts.tolist()) for s in range(count)]
    return numpy.stack(rows) if rows else numpy.zeros((0, k))


def _cluster(arrays, segment_sizes, n_clusters, init, method, max_iter, device, seed, batch_values,
             on_batch, first_id, weights=None, exact_candidates=None) -> list[SegmentedResult]:
    """The batch loop of cluster_arrays (segment_sizes None: one segment per array) and cluster_segments."""
    resolved = devices.resolve_device(device)
    xp = devices.array_module(resolved)
    batch_values = batch_values or DEFAULT_BATCH_VALUES[resolved]
    # The compiled CPU path sorts each batch's values first and reads max |x|
    # and finiteness off the sorted ends: no separate passes over the input.
    # Weighted batches are not built from sorted float values (they sort
    # packed values and weights): their arrays are checked for NaN and Inf first.
    on_cpu = xp is numpy and compiled.available()
    values = _check_arrays(arrays, check_finite=not on_cpu or weights is not None)
    sizes = numpy.array([v.size for v in values], dtype=numpy.int64)
    if segment_sizes is None:
        segment_sizes = [sizes[i : i + 1] for i in range(len(values))]
    integer_weights = _integer_weights(weights, arrays, values, segment_sizes)
    candidates = _exact_candidates(values, exact_candidates) if method == "optimal" else None
    counts = numpy.array([s.size for s in segment_sizes], dtype=numpy.int64)
    all_sizes = numpy.concatenate(segment_sizes) if len(segment_sizes) else numpy.zeros(0, numpy.int64)
    first_segment = numpy.concatenate([[0], numpy.cumsum(counts)]).astype(numpy.int64)
    if not on_cpu:
        exponents = fixedpoint.segment_exponents(_segment_max_abs(values, segment_sizes), all_sizes)
    dtype = label_dtype(n_clusters)
    # Weighted and unweighted arrays travel in batches of their own (each
    # segment's result depends on it alone): consecutive runs of one kind, so
    # batches, and on_batch's counts, still follow the input order.
    runs: list[list[int]] = []
    for index, weight in enumerate(integer_weights):
        if not runs or (integer_weights[runs[-1][0]] is None) != (weight is None):
            runs.append([])
        runs[-1].append(index)
    by_index: dict[int, SegmentedResult] = {}
    for subset in runs:
        weighted = integer_weights[subset[0]] is not None
        for batch_range in plan_batches(sizes[subset].tolist(), batch_values, counts[subset].tolist()):
            started = time.perf_counter()
            ids = [subset[position] for position in batch_range]
            # A run's indices are consecutive, so a batch's segments are too.
            segment_rows = slice(int(first_segment[ids[0]]), int(first_segment[ids[-1] + 1]))
            owners = numpy.repeat(numpy.array(ids, dtype=numpy.int64), counts[ids])
            if weighted:
                batch = _weighted_batch(values, integer_weights, ids, all_sizes[segment_rows],
                                        [segment_sizes[i] for i in ids], xp)
            elif on_cpu:
                batch = _cpu_batch(values, ids, all_sizes[segment_rows], owners)
            else:
                # Sent in float32 where that is exact (half the bytes over PCIe);
                # build_batch widens on the device, exactly.
                batch = build_batch(
                    xp.asarray(_concatenated(values, ids)),
                    xp.asarray(all_sizes[segment_rows]),
                    xp.asarray(exponents[segment_rows]),
                )
            distinct = numpy.zeros(int(counts[ids].sum()), dtype=bool)
            if candidates is not None and candidates[ids].any():
                # An array's flag holds for each of its segments (a part of it has no more distinct values).
                distinct = exact_rows(batch, numpy.repeat(candidates[ids], counts[ids]), n_clusters)
                batch = dataclasses.replace(batch, distinct_rows=distinct)
            draws = None
            if init == "kmeans++":
                draws = _segment_draws(seed, [first_id + i for i in ids], counts[ids], n_clusters)
            initial = INITIALIZERS[init](batch, n_clusters, draws)
            centroids, iterations = METHODS[method](batch, initial, max_iter)
            labels = devices.to_numpy(assign_labels(batch, centroids, dtype))
            codebooks = devices.to_numpy(fixedpoint.dequantize(centroids, batch.exponents[:, None]))
            iterations = devices.to_numpy(iterations)
            offsets = numpy.concatenate([[0], numpy.cumsum(sizes[ids])])
            rows = numpy.concatenate([[0], numpy.cumsum(counts[ids])])
            for row, index in enumerate(ids):
                steps = iterations[rows[row] : rows[row + 1]].astype(numpy.int64)
                by_index[index] = SegmentedResult(
                    codebooks=codebooks[rows[row] : rows[row + 1]].copy(),
                    # A view: the batch's labels are new memory that only the results share.
                    labels=labels[offsets[row] : offsets[row + 1]],
                    iterations=steps,
                    converged=bool((steps < max_iter).all()),
                    exact=distinct[rows[row] : rows[row + 1]].copy(),
                )
            log.debug(
                "batch of %d arrays, %d segments, %d values on %s%s: %.3f s", len(ids), int(rows[-1]),
                int(offsets[-1]), resolved, " (weighted)" if weighted else "", time.perf_counter() - started,
            )
            # Release this batch's device arrays before the next one is built:
            # otherwise two batches' working memory (~50 bytes a value) coexist.
            del batch, initial, centroids, labels, codebooks
            if on_batch is not None:
                on_batch(len(ids))
    return [by_index[index] for index in range(len(values))]


def _segment_max_abs(values: list[numpy.ndarray], segment_sizes: list[numpy.ndarray]) -> numpy.ndarray:
    """Return float64 max |x| of every segment of every array, in order (array code per array)."""
    parts = []
    for v, sizes in zip(values, segment_sizes):
        if sizes.size == 1:
            parts.append(numpy.array([max(float(v.max()), -float(v.min()))], dtype=numpy.float64))
            continue
        starts = numpy.concatenate([[0], numpy.cumsum(sizes)[:-1]])
        parts.append(numpy.maximum(numpy.maximum.reduceat(v, starts).astype(numpy.float64),
                                   -numpy.minimum.reduceat(v, starts).astype(numpy.float64)))
    return numpy.concatenate(parts) if parts else numpy.zeros(0, numpy.float64)


@dataclass(frozen=True)
class LevelResult:
    """The clustering of one integer array given by its histograms (cluster_histograms).

    codebooks: float64 (S, k), as SegmentedResult. level_labels: (S, L)
    unsigned ints, the label of the value low + j in segment s (0 for values
    the segment does not hold). iterations: int64 (S,). converged: every
    segment stopped before max_iter. exact: bool (S,), all True (the DP ran on the distinct values).
    """

    codebooks: numpy.ndarray
    level_labels: numpy.ndarray
    iterations: numpy.ndarray
    converged: bool
    exact: numpy.ndarray


# Segments per batch of cluster_histograms: each holds at most L distinct values (256 for int8).
HISTOGRAM_BATCH_SEGMENTS = 1 << 16


def cluster_histograms(
    counts: Sequence[numpy.ndarray],
    lows: Sequence[int],
    n_clusters: int = 256,
    *,
    max_iter: int = 300,
    device: str = "auto",
    on_batch: Callable[[int], None] | None = None,
) -> list[LevelResult]:
    """Cluster integer arrays given as histograms: method "optimal", its exact DP on the distinct values.

    counts: per array, host int64 (S, L): counts[i][s, j] values lows[i] + j
    in segment s of array i (kernels.histogram.segment_histograms), every row
    summing to >= 1 (L may differ between arrays). Returns one LevelResult per array, in order: the
    codebooks, iterations and (through level_labels) labels that
    cluster_segments(method="optimal", exact_candidates=True) returns on
    the values themselves (as floats, segment after segment), bit for bit on
    every device: the batch holds each distinct value once, weighing its
    count, which gives the same fixed-point scales (from max |x| and the
    count of values), DP tables, Lloyd sums and labels. The initializer plays
    no part in that method. on_batch: called with the number of arrays
    finished after each batch. Raises OptionsError for bad arguments or a row
    whose distinct values do not fit the exact DP (kernels.optimal.exact_fits:
    check first), DeviceError when device="gpu" is not usable.
    """
    _check_arguments(n_clusters, "linear", "optimal", max_iter)
    xp = devices.array_module(devices.resolve_device(device))
    if len(lows) != len(counts):
        raise OptionsError(f"lows holds {len(lows)} entries; it should hold one per array ({len(counts)}).")
    checked = []
    for index, table in enumerate(counts):
        table = numpy.asarray(table)
        if table.ndim != 2 or table.dtype.kind not in "iu" or table.shape[0] < 1 or (table < 0).any():
            raise OptionsError(f"counts[{index}] should be a 2-D array of non-negative integer counts.")
        present = table > 0
        if not present.any(axis=1).all():
            raise OptionsError(f"counts[{index}] has a segment of no values; every row should sum to >= 1.")
        if table.shape[0] > fixedpoint.MAX_SEGMENTS:
            raise OptionsError(f"counts[{index}] has {table.shape[0]} segments, at most {fixedpoint.MAX_SEGMENTS}.")
        if not exact_fits(present.sum(axis=1), n_clusters).all():
            raise OptionsError(f"counts[{index}] has a segment of too many distinct values for the exact DP "
                               f"at n_clusters={n_clusters}.")
        checked.append((table.astype(numpy.int64, copy=False), present, int(lows[index])))
    dtype = label_dtype(n_clusters)
    results: list[LevelResult] = []
    for batch_range in plan_batches([table.shape[0] for table, _, _ in checked], HISTOGRAM_BATCH_SEGMENTS):
        members = [checked[i] for i in batch_range]
        batch = _level_batch(members, xp)
        centroids, iterations = optimal(batch, xp.zeros((batch.n_segments, n_clusters), dtype=xp.int64), max_iter)
        labels = devices.to_numpy(assign_labels(batch, centroids, dtype))
        codebooks = devices.to_numpy(fixedpoint.dequantize(centroids, batch.exponents[:, None]))
        iterations = devices.to_numpy(iterations).astype(numpy.int64)
        start = used = 0
        for member, present, _ in members:
            stop = start + member.shape[0]
            level_labels = numpy.zeros(member.shape, dtype=dtype)
            level_labels[present] = labels[used : used + int(present.sum())]
            used += int(present.sum())
            steps = iterations[start:stop]
            results.append(LevelResult(codebooks[start:stop].copy(), level_labels, steps,
                                       bool((steps < max_iter).all()), numpy.ones(stop - start, dtype=bool)))
            start = stop
        del batch, centroids, labels
        if on_batch is not None:
            on_batch(len(members))
    return results


def _level_batch(members, xp) -> SegmentBatch:
    """Return the SegmentBatch of histogram rows: each row's distinct values once, sorted, weighing their counts.

    members: (counts int64 (S, L), counts > 0, low) per array, on the host. Scales as the values' own
    batch has them (segment_exponents of max |x| and the number of values), marked for the exact DP.
    """
    parts, weights, distinct, sizes = [], [], [], []
    for table, present, low in members:
        _, level = numpy.nonzero(present)  # row after row, levels ascending: sorted within each segment
        parts.append((level + low).astype(numpy.float64))
        weights.append(table[present])
        distinct.append(present.sum(axis=1))
        sizes.append(table.sum(axis=1))
    values, weights = numpy.concatenate(parts), numpy.concatenate(weights)
    distinct, sizes = numpy.concatenate(distinct), numpy.concatenate(sizes)
    offsets = numpy.zeros(distinct.shape[0] + 1, dtype=numpy.int64)
    numpy.cumsum(distinct, out=offsets[1:])
    segment = numpy.repeat(numpy.arange(distinct.shape[0], dtype=numpy.int64), distinct)
    max_abs = numpy.maximum(values[offsets[1:] - 1], -values[offsets[:-1]])
    exponents = fixedpoint.segment_exponents(max_abs, sizes)
    device_values, device_segment = xp.asarray(values), xp.asarray(segment)
    device_exponents = xp.asarray(exponents)
    q = fixedpoint.quantize(device_values, device_exponents[device_segment])
    prefix, weight_prefix = fixedpoint.weighted_prefix_sums(q, xp.asarray(weights))
    return SegmentBatch(xp.asarray(offsets), device_exponents, fixedpoint.make_keys(q, device_segment), prefix,
                        device_values, weight_prefix, distinct_rows=numpy.ones(distinct.shape[0], dtype=bool))
