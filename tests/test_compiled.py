"""The compiled CPU twins (kernels/compiled.py) give the array kernels' results bit for bit.

The array kernels are what runs on CuPy, so these tests, with the NumPy/CuPy
parity tests, carry the CPU/GPU guarantee to the compiled CPU path.
"""
from __future__ import annotations

import importlib

import numpy
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpucompress.kernels import compiled, fixedpoint, optimal
from gpucompress.kernels.segments import build_batch, sort_segments

from .test_optimal import batch_of

pytestmark = pytest.mark.skipif(not compiled.available(), reason="needs Numba")

segments = st.lists(
    st.lists(st.floats(-1e3, 1e3, allow_nan=False, width=32), min_size=1, max_size=300),
    min_size=1, max_size=5,
)


def heavy_tailed(n, seed):
    rng = numpy.random.default_rng(seed)
    return rng.laplace(scale=0.02, size=n) * numpy.where(rng.random(n) < 0.01, 20.0, 1.0)


@settings(max_examples=30, deadline=None)
@given(arrays=segments)
def test_quantized_keys_and_segment_sort_match_array_version(arrays):
    values = [numpy.asarray(a, dtype=numpy.float64) for a in arrays]
    sizes = numpy.array([v.size for v in values], dtype=numpy.int64)
    exponents = fixedpoint.segment_exponents(numpy.array([numpy.abs(v).max() for v in values]), sizes)
    flat = numpy.concatenate(values)
    segment_of_value = numpy.repeat(numpy.arange(sizes.size, dtype=numpy.int64), sizes)
    reference = fixedpoint.make_keys(fixedpoint.quantize(flat, exponents[segment_of_value]), segment_of_value)
    keys = compiled.quantized_keys(flat, segment_of_value, exponents, fixedpoint.KEY_SHIFT, fixedpoint.KEY_BIAS)
    assert keys.dtype == reference.dtype and numpy.array_equal(keys, reference)
    offsets = numpy.concatenate([[0], numpy.cumsum(sizes)])
    assert numpy.array_equal(sort_segments(keys, offsets), numpy.sort(reference))


def test_segment_sort_in_parallel_runs_matches_global_sort(monkeypatch):
    # Small SORT_TASK_VALUES makes several runs, so the thread pool really runs.
    from gpucompress.kernels import segments

    monkeypatch.setattr(segments, "SORT_TASK_VALUES", 64)
    rng = numpy.random.default_rng(3)
    sizes = rng.integers(1, 200, size=40)
    keys = numpy.concatenate([(s << fixedpoint.KEY_SHIFT) + rng.integers(0, 1 << 40, size=n)
                              for s, n in enumerate(sizes)])
    offsets = numpy.concatenate([[0], numpy.cumsum(sizes)])
    assert numpy.array_equal(sort_segments(keys, offsets), numpy.sort(keys))


@settings(max_examples=30, deadline=None)
@given(arrays=segments, k=st.integers(2, 20))
def test_labels_match_searchsorted(arrays, k):
    batch = batch_of(arrays)
    rng = numpy.random.default_rng(k)
    n_segments = len(arrays)
    centroids = numpy.sort(rng.integers(-(1 << 40), 1 << 40, size=(n_segments, k)), axis=1)
    rows = numpy.arange(n_segments, dtype=numpy.int64)
    from gpucompress.kernels.lloyd import KEY_BIAS, midpoints, segment_tags

    mid_keys = (segment_tags(rows)[:, None] + midpoints(centroids) + KEY_BIAS).ravel()
    reference = numpy.searchsorted(mid_keys, batch.input_keys(), side="left") - batch.segment_of_value() * (k - 1)
    labels = compiled.segment_labels(batch.input_keys(), batch.segment_of_value(), mid_keys, k - 1,
                                     batch.keys[batch.offsets[:-1]], batch.keys[batch.offsets[1:] - 1])
    assert numpy.array_equal(labels, reference)


def test_labels_when_every_centroid_sits_in_one_bucket(monkeypatch):
    # One huge outlier stretches the lookup buckets: the whole core, and all
    # but one midpoint, fall in the first bucket, where the search must still be exact.
    from gpucompress.engine import cluster_arrays

    values = numpy.concatenate([heavy_tailed(50000, seed=4), [1e6]])
    fast = cluster_arrays([values], 256, method="optimal", device="cpu")[0]
    monkeypatch.setattr(compiled, "available", lambda: False)
    slow = cluster_arrays([values], 256, method="optimal", device="cpu")[0]
    assert numpy.array_equal(fast.codebook, slow.codebook)
    assert numpy.array_equal(fast.labels, slow.labels)
    assert numpy.unique(fast.labels).size == 256


@pytest.mark.parametrize("k", [2, 5, 16, 40])
@pytest.mark.parametrize("n", [7, 300, 5000])
def test_dp_borders_match_array_dp(k, n):
    batch = batch_of([heavy_tailed(n, seed=k), heavy_tailed(n // 2 + 1, seed=n)])
    rows = numpy.array([0, 1], dtype=numpy.int64)
    for row in rows:  # rows of one bin count, as optimal() groups them
        size = int(batch.sizes()[row])
        n_bins = optimal.bin_count(size, k)
        edges = optimal.bin_edges(batch, rows[row : row + 1], n_bins)
        starts = edges[:, :1]
        sums = fixedpoint.range_sums(batch.prefix, numpy.broadcast_to(starts, edges.shape), edges)
        counts = (edges - starts).astype(numpy.float64)
        reference = optimal.dp_bin_borders(sums, counts, k, n_bins)
        twin = compiled.dp_bin_borders(sums, counts, k, optimal._strides(n_bins))
        assert twin.dtype == reference.dtype and numpy.array_equal(twin, reference)


def test_compiled_and_array_paths_give_identical_clusterings(monkeypatch):
    from gpucompress.engine import cluster_arrays

    arrays = [heavy_tailed(20000, seed=1).astype(numpy.float32), heavy_tailed(900, seed=2), heavy_tailed(3, seed=3)]
    for method in ("lloyd", "optimal"):
        fast = cluster_arrays(arrays, 16, method=method, device="cpu")
        monkeypatch.setattr(compiled, "available", lambda: False)
        slow = cluster_arrays(arrays, 16, method=method, device="cpu")
        monkeypatch.undo()
        for a, b in zip(fast, slow):
            assert numpy.array_equal(a.codebook, b.codebook) and numpy.array_equal(a.labels, b.labels)
            assert a.labels.dtype == b.labels.dtype and a.iterations == b.iterations


def test_quantized_keys_of_tiny_float64_values_whose_scale_is_no_normal_double():
    # max |x| = 1e-300 needs a scale of about 2**1040: the multiply shortcut
    # cannot hold it, the ldexp path must give the same keys.
    flat = numpy.array([1e-300, -3e-301, 5e-302, 0.0])
    sizes = numpy.array([4], dtype=numpy.int64)
    exponents = fixedpoint.segment_exponents(numpy.array([1e-300]), sizes)
    assert exponents[0] > 1023
    segment_of_value = numpy.zeros(4, dtype=numpy.int64)
    reference = fixedpoint.make_keys(fixedpoint.quantize(flat, exponents[segment_of_value]), segment_of_value)
    keys = compiled.quantized_keys(flat, segment_of_value, exponents, fixedpoint.KEY_SHIFT, fixedpoint.KEY_BIAS)
    assert numpy.array_equal(keys, reference)


@settings(max_examples=40, deadline=None)
@given(arrays=segments, k=st.integers(2, 24), max_iter=st.integers(0, 12), seed=st.integers(0, 3))
def test_lloyd_matches_array_version(arrays, k, max_iter, seed):
    lloyd_module = importlib.import_module("gpucompress.kernels.lloyd")
    # Negative values wrap the uint64 prefix sums around 2**64: the modular
    # arithmetic of the twin's sums is exercised in almost every case.
    batch = batch_of(arrays)
    rng = numpy.random.default_rng(seed)
    sorted_q = fixedpoint.key_values(batch.keys)
    starts = []
    for row in range(batch.n_segments):
        segment = sorted_q[batch.offsets[row] : batch.offsets[row + 1]]
        starts.append(numpy.sort(rng.choice(segment, size=k)))
    initial = numpy.array(starts, dtype=numpy.int64)
    twin = compiled.lloyd(batch.keys, batch.prefix, batch.offsets, initial, max_iter,
                          fixedpoint.KEY_SHIFT, fixedpoint.KEY_BIAS)
    original = compiled.available
    try:
        compiled.available = lambda: False
        reference = lloyd_module.lloyd(batch, initial, max_iter)
    finally:
        compiled.available = original
    assert numpy.array_equal(twin[0], reference[0]) and numpy.array_equal(twin[1], reference[1])
