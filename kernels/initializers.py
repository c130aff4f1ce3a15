"""Deterministic initial centroids for sorted fixed-point segments.

Every initializer takes a SegmentBatch, the number of clusters k and, for the
random one, per-segment host random draws; it returns sorted int64 centroids
(S, k). All of them are integer arithmetic or exact gathers, so they are
identical on NumPy and CuPy.
"""
from __future__ import annotations

import numpy

from .fixedpoint import array_namespace, key_values
from .segments import SegmentBatch

# How many evenly spaced sorted values k-means++ seeds from, per cluster.
KMEANS_PLUS_PLUS_SAMPLES_PER_CLUSTER = 8
# Squared distances are taken on q >> this shift so a sum of them fits in int64.
KMEANS_PLUS_PLUS_SHIFT = 20


def linear_init(batch: SegmentBatch, k: int, draws=None):
    """Return k centroids evenly spaced between each segment's min and max.

    Deep Compression's recommended initialization (Han et al., 2016, sec. 3.1):
    it keeps centroids on the rare large weights, which matter most.
    """
    xp = array_namespace(batch.keys)
    low = key_values(batch.keys[batch.offsets[:-1]])
    high = key_values(batch.keys[batch.offsets[1:] - 1])
    steps = xp.arange(k, dtype=xp.int64)
    return low[:, None] + ((high - low)[:, None] * steps[None, :]) // (k - 1)


def density_init(batch: SegmentBatch, k: int, draws=None):
    """Return the values at the (j + 1/2)/k quantiles of each segment (density-based init).

    Weighted batches take weighted quantiles: the value at which the
    cumulative weight passes (j + 1/2)/k of the segment's total (integer
    arithmetic and one searchsorted; with every weight 1, the same ranks).
    """
    xp = array_namespace(batch.keys)
    steps = xp.arange(k, dtype=xp.int64)
    if batch.weight_prefix is None:
        sizes = batch.sizes()
        ranks = ((2 * steps[None, :] + 1) * sizes[:, None]) // (2 * k)
        return key_values(batch.keys[batch.offsets[:-1, None] + ranks])
    first = batch.weight_prefix[batch.offsets[:-1]]
    totals = batch.weight_prefix[batch.offsets[1:]] - first
    targets = first[:, None] + ((2 * steps[None, :] + 1) * totals[:, None]) // (2 * k)
    positions = xp.searchsorted(batch.weight_prefix, targets.ravel(), side="right").reshape(targets.shape) - 1
    # A segment of zero total weight has no quantiles: its first value (never reached: such weights are uniform).
    positions = xp.clip(positions, batch.offsets[:-1, None], batch.offsets[1:, None] - 1)
    return key_values(batch.keys[positions])


def sample_positions(batch: SegmentBatch, m: int):
    """Return (positions (S, m) int64, valid (S, m) bool): m evenly spaced sorted ranks per segment.

    Segments with fewer than m values repeat ranks; the repeats are marked invalid.
    """
    xp = array_namespace(batch.keys)
    sizes = batch.sizes()
    steps = xp.arange(m, dtype=xp.int64)
    ranks = (steps[None, :] * sizes[:, None]) // m
    valid = xp.concatenate(
        [xp.ones((ranks.shape[0], 1), dtype=bool), ranks[:, 1:] != ranks[:, :-1]], axis=1
    )
    return batch.offsets[:-1, None] + ranks, valid


def kmeans_plus_plus_init(batch: SegmentBatch, k: int, draws):
    """Return k-means++ centroids seeded from a deterministic sample of each segment.

    draws: float64 (S, k) uniform numbers in [0, 1) from a host generator (the
    same on every device). Sampling runs on exact integer squared distances and
    integer cumulative sums; the one float step (draw * total) is a single
    IEEE multiplication, identical everywhere.
    """
    xp = array_namespace(batch.keys)
    n_segments = batch.n_segments
    m = KMEANS_PLUS_PLUS_SAMPLES_PER_CLUSTER * k
    positions, valid = sample_positions(batch, m)
    samples = key_values(batch.keys[positions]) >> KMEANS_PLUS_PLUS_SHIFT
    values = key_values(batch.keys[positions])
    draws = xp.asarray(draws, dtype=xp.float64)
    rows = xp.arange(n_segments, dtype=xp.int64)
    weights = valid.astype(xp.int64)
    chosen = xp.zeros((n_segments, k), dtype=xp.int64)
    distance = None
    for j in range(k):
        cumulative = xp.cumsum(weights, axis=1)
        total = cumulative[:, -1]
        target = xp.floor(draws[:, j] * total.astype(xp.float64)).astype(xp.int64)
        target = xp.minimum(target, xp.maximum(total - 1, 0))
        # First sample whose cumulative weight exceeds the target.
        pick = xp.sum(cumulative <= target[:, None], axis=1)
        pick = xp.minimum(pick, m - 1)
        chosen[:, j] = values[rows, pick]
        delta = samples - samples[rows, pick][:, None]
        squared = delta * delta * valid
        distance = squared if distance is None else xp.minimum(distance, squared)
        # All remaining weight zero (fewer distinct values than k): fall back to
        # uniform over valid samples, which repeats centroids harmlessly.
        weights = xp.where((distance.sum(axis=1) > 0)[:, None], distance, valid.astype(xp.int64))
    return xp.sort(chosen, axis=1)


INITIALIZERS = {
    "linear": linear_init,
    "density": density_init,
    "kmeans++": kmeans_plus_plus_init,
}


def kmeans_plus_plus_draws(seed: int, segment_ids, k: int) -> numpy.ndarray:
    """Return host float64 draws (S, k) for k-means++, one stream per segment id.

    A segment's draws depend only on (seed, its id), never on its batch.
    """
    return numpy.stack(
        [numpy.random.default_rng([seed, int(segment)]).random(k) for segment in segment_ids]
    ) if len(segment_ids) else numpy.zeros((0, k))
