"""Lloyd's k-means on sorted 1-D segments, exact and batched.

In one dimension the clusters of a nearest-centroid assignment are contiguous
runs of the sorted values, split at the midpoints between neighbouring
centroids. So one Lloyd step for every segment of a batch is: midpoints (S, k-1)
-> one searchsorted over the flat sorted keys -> cluster counts and sums from
prefix-sum differences -> new centroids. That is O(k log n) per segment and
step instead of O(k n), and all of it is integer arithmetic (fixedpoint.py).
"""
from __future__ import annotations

import numpy

from . import compiled, fused
from .fixedpoint import KEY_BIAS, KEY_SHIFT, array_namespace, range_sums, rounded_mean
from .segments import SegmentBatch


def midpoints(centroids):
    """Return floor((c_j + c_{j+1}) / 2) for sorted int64 centroids (S, k) -> (S, k - 1).

    A value q <= midpoint_j goes to cluster j or below: the exact nearest
    centroid in fixed point, ties going to the lower centroid.
    """
    return (centroids[:, :-1] + centroids[:, 1:]) >> 1


def segment_tags(segment_index):
    """Return the high key bits of the given segment indices (int64)."""
    return segment_index.astype("int64") << KEY_SHIFT


def cluster_borders(batch: SegmentBatch, rows, centroids):
    """Return the sorted-position borders (R, k + 1) of the clusters of segments `rows`.

    rows: int64 (R,) segment indices; centroids: int64 (R, k) sorted per row.
    Cluster j of row r holds sorted positions [borders[r, j], borders[r, j+1]).
    """
    xp = array_namespace(centroids)
    n_rows, k = centroids.shape
    queries = segment_tags(rows)[:, None] + midpoints(centroids) + KEY_BIAS
    inner = xp.searchsorted(batch.keys, queries.ravel(), side="right").reshape(n_rows, k - 1)
    return xp.concatenate(
        [batch.offsets[rows][:, None], inner.astype(xp.int64), batch.offsets[rows + 1][:, None]], axis=1
    )


def update_centroids(batch: SegmentBatch, rows, centroids):
    """Return one Lloyd step: the means of the clusters that `centroids` induce.

    Empty clusters (and, weighted, clusters of zero total weight) keep their
    centroid: it stays between its neighbours, so centroids stay sorted, and
    the rule is the same on every device. Weighted (batch.weight_prefix), the
    means are sum(w * q) / sum(w), rounded half up.
    """
    xp = array_namespace(centroids)
    borders = cluster_borders(batch, rows, centroids)
    counts = batch.range_weights(borders[:, :-1], borders[:, 1:])
    sums = range_sums(batch.prefix, borders[:, :-1], borders[:, 1:])
    return xp.where(counts > 0, rounded_mean(sums, counts), centroids)


def lloyd(batch: SegmentBatch, centroids, max_iter: int):
    """Run Lloyd's algorithm on every segment of a batch until its centroids stop moving.

    centroids: int64 (S, k) sorted initial centroids in each segment's fixed
    point. Returns (centroids int64 (S, k), iterations int64 (S,)): iterations
    counts the steps that changed a segment's centroids; a segment that reached
    max_iter with centroids still moving has iterations == max_iter and is not
    converged. Each segment's trajectory is independent of the others in the
    batch. Weighted batches minimise sum w * (x - c)**2 (update_centroids).
    """
    xp = array_namespace(centroids)
    if xp is numpy and compiled.available():
        return compiled.lloyd(batch.keys, batch.prefix, batch.offsets, centroids, max_iter, KEY_SHIFT, KEY_BIAS,
                              batch.weight_prefix)
    if xp is not numpy and batch.weight_prefix is None and fused.enabled(int(centroids.shape[1])):
        return fused.lloyd(batch, centroids, max_iter, KEY_SHIFT, KEY_BIAS)  # opt-in, never run on a GPU yet
    centroids = centroids.copy()
    iterations = xp.zeros(centroids.shape[0], dtype=xp.int64)
    active = xp.arange(centroids.shape[0], dtype=xp.int64)
    for _ in range(max_iter):
        current = centroids[active]
        updated = update_centroids(batch, active, current)
        changed = xp.any(updated != current, axis=1)
        centroids[active] = updated
        iterations[active] += changed.astype(xp.int64)
        active = active[changed]
        if active.shape[0] == 0:
            break
    return centroids, iterations


def assign_labels(batch: SegmentBatch, centroids, dtype="int64"):
    """Return, for every value in input order, the index of its nearest centroid.

    centroids: int64 (S, k) sorted. Returns (N,) labels in [0, k) in `dtype`
    (an integer dtype that holds k - 1). Weights play no part: a value of
    zero weight gets its nearest centroid too.
    """
    xp = array_namespace(centroids)
    n_segments, k = centroids.shape
    rows = xp.arange(n_segments, dtype=xp.int64)
    # Midpoint keys are sorted across the batch: segment tags dominate.
    mid_keys = (segment_tags(rows)[:, None] + midpoints(centroids) + KEY_BIAS).ravel()
    if xp is numpy and compiled.available():
        low_keys, high_keys = batch.keys[batch.offsets[:-1]], batch.keys[batch.offsets[1:] - 1]
        return compiled.value_labels(batch.values, batch.offsets, batch.exponents, mid_keys, k - 1,
                                     low_keys, high_keys, KEY_SHIFT, KEY_BIAS, dtype)
    # The segment of each value is found once (a searchsorted over N values on
    # CuPy, which has no repeat with array counts) and serves the keys and the offsets.
    segment = batch.segment_of_value()
    position = xp.searchsorted(mid_keys, batch.input_keys(segment), side="left")
    return (position - segment * (k - 1)).astype(dtype)
