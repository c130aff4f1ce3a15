"""The compiled CPU twins (kernels/compiled.py) give the array kernels' results bit for bit.

The array kernels are what runs on CuPy, so these tests, with the NumPy/CuPy
parity tests, carry the CPU/GPU guarantee to the compiled CPU path.
"""
from __future__ import annotations

import importlib

import numpy
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpucompress.kernels import compiled, fixedpoint, optimal
from gpucompress.kernels.segments import sort_segments

from .test_optimal import batch_of

pytestmark = pytest.mark.skipif(not compiled.available(), reason="the compiled extension is not built")

segments = st.lists(
    st.lists(st.floats(-1e3, 1e3, allow_nan=False, width=32), min_size=1, max_size=300),
    min_size=1, max_size=5,
)


def heavy_tailed(n, seed):
    rng = numpy.random.default_rng(seed)
    return rng.laplace(scale=0.02, size=n) * numpy.where(rng.random(n) < 0.01, 20.0, 1.0)


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


@pytest.mark.parametrize("outlier", [1e6, -1e6])
def test_labels_when_every_centroid_sits_in_one_bucket(monkeypatch, outlier):
    # One huge outlier stretches the lookup buckets: the whole core, and all
    # but one midpoint, fall in one bucket, where the search must still be
    # exact. At either end of the DP, the outlier must not drown the core's
    # gains in rounding (optimal._offset): every cluster is used.
    from gpucompress.engine import cluster_arrays

    values = numpy.concatenate([heavy_tailed(50000, seed=4), [outlier]])
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


@pytest.mark.parametrize("k,n", [(128, 20000), (256, 30000)])
def test_band_borders_match_array_band_dp(monkeypatch, k, n):
    # Two rows of one bin count with different data: bands differ per row.
    batch = batch_of([heavy_tailed(n, seed=k), heavy_tailed(n + 11, seed=n)])
    rows = numpy.array([0, 1], dtype=numpy.int64)
    n_bins = optimal.bin_count(n, k)
    assert optimal.banded(n_bins, k)
    edges = optimal.bin_edges(batch, rows, n_bins)
    starts = edges[:, :1]
    sums = fixedpoint.range_sums(batch.prefix, numpy.broadcast_to(starts, edges.shape), edges)
    counts = (edges - starts).astype(numpy.float64)
    coarse = optimal.dp_bin_borders(optimal.coarse_table(sums, n_bins), optimal.coarse_table(counts, n_bins),
                                    k, optimal.coarse_bins(n_bins))
    lows = optimal.band_lows(coarse, n_bins)
    assert not numpy.array_equal(lows[0], lows[1])
    reference = optimal.band_bin_borders(sums, counts, k, lows)
    twin = compiled.band_bin_borders(sums, counts, k, lows, optimal.BAND_WIDTH)
    assert twin.dtype == reference.dtype and numpy.array_equal(twin, reference)
    monkeypatch.setattr(compiled, "BAND_TABLE_BYTES", 1)  # one row per kernel call
    assert numpy.array_equal(compiled.band_bin_borders(sums, counts, k, lows, optimal.BAND_WIDTH), reference)
    # Every border lies in its layer's band, and the borders are a partition of the bins.
    inner = slice(1, k)
    assert (reference[:, inner] >= lows[:, inner]).all()
    assert (reference[:, inner] <= lows[:, inner] + optimal.BAND_WIDTH).all()
    assert (numpy.diff(reference, axis=1) >= 0).all() and (reference[:, -1] == n_bins).all()


def test_one_parallel_dp_call_for_every_bin_count_matches_the_array_path(monkeypatch):
    # At k=256 these sizes make three DP groups in one batch: 2,048 bins
    # (banded, two rows), 1,500 and 700 bins (full DPs, one bin per value).
    from gpucompress.engine import cluster_arrays

    arrays = [heavy_tailed(30000, seed=5), heavy_tailed(1500, seed=6), heavy_tailed(700, seed=7),
              heavy_tailed(5000, seed=8).astype(numpy.float32)]
    fast = cluster_arrays(arrays, 256, method="optimal", device="cpu")
    monkeypatch.setattr(compiled, "available", lambda: False)
    slow = cluster_arrays(arrays, 256, method="optimal", device="cpu")
    for a, b in zip(fast, slow):
        assert numpy.array_equal(a.codebook, b.codebook) and numpy.array_equal(a.labels, b.labels)
        assert a.iterations == b.iterations


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


# Values that stress the sorted-values CPU path: signed zeros (same key, any
# order), float32 and float64 subnormals, ties, and a wide range of scales.
special_values = st.sampled_from([0.0, -0.0, 1e-40, -1e-40, 1.4e-45, 5e-324, 1.0, -1.0, 0.5, 3.0, 1e-7, -65504.0])
mixed_values = st.one_of(special_values, st.floats(-1e4, 1e4, allow_nan=False, width=32))
DTYPES = ["float16", "bfloat16", "float32", "float64"]


def as_dtype(values, dtype):
    import ml_dtypes

    target = ml_dtypes.bfloat16 if dtype == "bfloat16" else numpy.dtype(dtype)
    with numpy.errstate(over="ignore"):  # float16 overflow is filtered below
        array = numpy.asarray(values, dtype=numpy.float64).astype(target)
    return numpy.where(numpy.isfinite(array.astype(numpy.float64)), array, array.dtype.type(1.0)).astype(target)


@st.composite
def segment_lists(draw):
    """Lists of arrays of mixed dtypes: many tiny ones and an occasional large one."""
    arrays = []
    for _ in range(draw(st.integers(1, 8))):
        dtype = draw(st.sampled_from(DTYPES))
        if draw(st.integers(0, 5)) == 0:  # large: tiles a few drawn values, so ties abound
            pool = draw(st.lists(mixed_values, min_size=1, max_size=20))
            size = draw(st.integers(300, 3000))
            noise = numpy.random.default_rng(size).laplace(size=size)
            values = numpy.concatenate([numpy.resize(pool, size // 2), noise[size // 2 :]])
        else:
            values = draw(st.lists(mixed_values, min_size=1, max_size=12))
        arrays.append(as_dtype(values, dtype))
    return arrays


def both_paths(monkeypatch, arrays, **options):
    """Return (compiled CPU path, array path with the compiled twins off) results of cluster_arrays."""
    from gpucompress.engine import cluster_arrays

    fast = cluster_arrays(arrays, device="cpu", **options)
    with monkeypatch.context() as patch:
        patch.setattr(compiled, "available", lambda: False)
        slow = cluster_arrays(arrays, device="cpu", **options)
    return fast, slow


def assert_same_results(fast, slow):
    assert len(fast) == len(slow)
    for a, b in zip(fast, slow):
        assert a.codebook.dtype == b.codebook.dtype and a.codebook.tobytes() == b.codebook.tobytes()
        assert a.labels.dtype == b.labels.dtype and numpy.array_equal(a.labels, b.labels)
        assert (a.iterations, a.converged) == (b.iterations, b.converged)


@pytest.fixture
def small_sort_tasks(monkeypatch):
    # Tiny thresholds make the split sort and the shared thread tasks run on small inputs.
    from gpucompress.kernels import segments

    monkeypatch.setattr(segments, "SPLIT_SORT_VALUES", 64)
    monkeypatch.setattr(segments, "SORT_TASK_VALUES", 16)
    monkeypatch.setattr(segments, "_usable_cores", lambda: 2)


# The fixtures are constant patches and both_paths restores its own: safe to share between examples.
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(arrays=segment_lists(), k=st.sampled_from([2, 3, 16, 300]),
       method_init=st.sampled_from([("optimal", "linear"), ("lloyd", "linear"), ("lloyd", "density"),
                                    ("lloyd", "kmeans++")]),
       batch_values=st.sampled_from([None, 1, 50, 2000]), max_iter=st.sampled_from([0, 3, 300]))
def test_sorted_values_path_matches_array_path(monkeypatch, small_sort_tasks, arrays, k, method_init, batch_values,
                                               max_iter):
    method, init = method_init
    fast, slow = both_paths(monkeypatch, arrays, n_clusters=k, method=method, init=init,
                            batch_values=batch_values, max_iter=max_iter, seed=3)
    assert_same_results(fast, slow)


def test_sorted_values_path_matches_on_large_split_segments(monkeypatch):
    # Real thresholds: segments above SPLIT_SORT_VALUES are split at a pivot and sort on two threads.
    from gpucompress.kernels import segments

    monkeypatch.setattr(segments, "_usable_cores", lambda: 2)
    rng = numpy.random.default_rng(9)
    big = heavy_tailed(segments.SPLIT_SORT_VALUES * 2 + 17, seed=5).astype(numpy.float32)
    big[rng.integers(0, big.size, 500)] = -0.0
    arrays = [big, heavy_tailed(segments.SPLIT_SORT_VALUES + 1, seed=6), rng.normal(size=40).astype(numpy.float16)]
    for k in (16, 256, 300):
        fast, slow = both_paths(monkeypatch, arrays, n_clusters=k, method="optimal")
        assert_same_results(fast, slow)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(arrays=segment_lists(), split=st.integers(1, 40), dtype=st.sampled_from(["float32", "float64"]))
def test_sorted_keys_and_prefix_match_array_version(monkeypatch, arrays, split, dtype):
    from gpucompress.kernels import segments

    monkeypatch.setattr(segments, "SPLIT_SORT_VALUES", split)
    monkeypatch.setattr(segments, "_usable_cores", lambda: 2)
    values = numpy.concatenate([a.astype(dtype) for a in arrays])
    sizes = numpy.array([a.size for a in arrays], dtype=numpy.int64)
    offsets = numpy.concatenate([[0], numpy.cumsum(sizes)])
    sorted_values = segments.sort_values(values, offsets)
    wide = values.astype(numpy.float64)
    for s in range(sizes.size):
        segment = wide[offsets[s] : offsets[s + 1]]
        assert numpy.array_equal(sorted_values[offsets[s] : offsets[s + 1]], numpy.sort(segment))
    low, high = segments.segment_extremes(sorted_values, offsets)
    exponents = fixedpoint.segment_exponents(numpy.maximum(high, -low), sizes)
    batch = segments.batch_from_sorted(values, sorted_values, offsets, exponents)
    segment = numpy.repeat(numpy.arange(sizes.size, dtype=numpy.int64), sizes)
    input_keys = fixedpoint.make_keys(fixedpoint.quantize(wide, exponents[segment]), segment)
    reference = numpy.sort(input_keys)
    assert batch.keys.dtype == reference.dtype and numpy.array_equal(batch.keys, reference)
    expected = fixedpoint.prefix_sums(fixedpoint.key_values(reference))
    assert batch.prefix.dtype == expected.dtype and numpy.array_equal(batch.prefix, expected)
    assert numpy.array_equal(batch.input_keys(), input_keys)


@pytest.mark.parametrize("pivot", [-numpy.inf, -1.0, 0.0, 0.25, numpy.inf, numpy.nan])
def test_partition_splits_at_the_pivot(pivot):
    values = numpy.array([3.0, -1.0, 0.0, -0.0, numpy.nan, 0.25, -2.0, 0.25, numpy.inf], dtype=numpy.float32)
    out = numpy.full_like(values, 7.0)
    below = compiled.partition(values, numpy.float32(pivot), out)
    assert below == int((values < pivot).sum())
    assert (out[:below] < pivot).all() and not (out[below:] < pivot).any()
    assert numpy.array_equal(numpy.sort(out), numpy.sort(values), equal_nan=True)


@settings(max_examples=30, deadline=None)
@given(arrays=segments, k=st.one_of(st.integers(2, 20), st.integers(256, 300)),
       dtype=st.sampled_from(["uint16", "int64"]))
def test_value_labels_match_searchsorted(arrays, k, dtype):
    batch = batch_of([numpy.asarray(a, dtype=numpy.float32) for a in arrays])
    rng = numpy.random.default_rng(k)
    n_segments = len(arrays)
    centroids = numpy.sort(rng.integers(-(1 << 40), 1 << 40, size=(n_segments, k)), axis=1)
    rows = numpy.arange(n_segments, dtype=numpy.int64)
    from gpucompress.kernels.lloyd import midpoints, segment_tags

    mid_keys = (segment_tags(rows)[:, None] + midpoints(centroids) + fixedpoint.KEY_BIAS).ravel()
    reference = numpy.searchsorted(mid_keys, batch.input_keys(), side="left") - batch.segment_of_value() * (k - 1)
    labels = compiled.value_labels(batch.values, batch.offsets, batch.exponents, mid_keys, k - 1,
                                   batch.keys[batch.offsets[:-1]], batch.keys[batch.offsets[1:] - 1],
                                   fixedpoint.KEY_SHIFT, fixedpoint.KEY_BIAS, dtype)
    assert labels.dtype == numpy.dtype(dtype) and numpy.array_equal(labels, reference)


def test_tiny_float64_values_whose_scale_is_no_normal_double(monkeypatch):
    # max |x| ~ 1e-300 needs a scale of about 2**1040: the kernels' multiply
    # cannot hold it, and the ldexp fallbacks must give the same clustering.
    rng = numpy.random.default_rng(2)
    arrays = [rng.normal(size=500) * 1e-300, numpy.array([1e-300, -3e-301, 5e-302, 0.0, -0.0]), rng.normal(size=30)]
    fast, slow = both_paths(monkeypatch, arrays, n_clusters=4, method="optimal")
    assert_same_results(fast, slow)
    assert numpy.unique(fast[0].labels).size == 4


@pytest.mark.parametrize("bad", [numpy.nan, numpy.inf, -numpy.inf])
@pytest.mark.parametrize("position", [0, 77, 199])
def test_nonfinite_values_raise_the_array_paths_error(monkeypatch, small_sort_tasks, bad, position):
    from gpucompress.errors import OptionsError

    good = heavy_tailed(200, seed=1).astype(numpy.float32)
    poisoned = good.copy()
    poisoned[position] = bad
    cases = [
        [good, poisoned, good],  # in a split segment, in either part
        [good, good[:5], poisoned, numpy.array([1, 2])],  # before a dtype error: NaN/Inf is reported first
        [good, numpy.zeros(0), poisoned],  # after a size error: the size error is reported
        [poisoned.astype(numpy.float16), good],
    ]
    for arrays in cases:
        messages = []
        for switch in (True, False):
            with monkeypatch.context() as patch:
                patch.setattr(compiled, "available", lambda switch=switch: switch)
                with pytest.raises(OptionsError) as error:
                    cluster_arrays_cpu(arrays, batch_values=150)
                messages.append(str(error.value))
        assert messages[0] == messages[1]


def cluster_arrays_cpu(arrays, **options):
    from gpucompress.engine import cluster_arrays

    return cluster_arrays(arrays, 4, device="cpu", **options)


def test_labels_are_views_of_one_batch_array_and_inputs_untouched():
    arrays = [heavy_tailed(300, seed=s).astype(numpy.float32) for s in range(3)]
    before = [a.copy() for a in arrays]
    results = cluster_arrays_cpu(arrays)
    assert all(numpy.array_equal(a, b) for a, b in zip(arrays, before))
    assert [r.labels.size for r in results] == [300, 300, 300]
    assert all(r.labels.dtype == numpy.uint8 for r in results)


@pytest.mark.parametrize("k,n_bins", [(256, 512), (128, 256), (40, 100), (7, 8)])
def test_feasible_band_borders_match_array_band_dp(k, n_bins):
    # The coarse pass of a banded DP (and any full DP much larger than k)
    # runs in optimal.feasible_band's bands.
    rng = numpy.random.default_rng(n_bins)
    # Bins of sorted values: each bin's values equal, rising from bin to bin.
    bin_counts = rng.integers(0, 30, size=(2, n_bins))
    bin_sums = bin_counts * numpy.sort(rng.integers(-1000, 1000, size=(2, n_bins)), axis=1)
    sums = numpy.concatenate([numpy.zeros((2, 1), numpy.int64), numpy.cumsum(bin_sums, axis=1)], axis=1)
    counts = numpy.concatenate([numpy.zeros((2, 1)), numpy.cumsum(bin_counts, axis=1)], axis=1)
    width, lows = optimal.feasible_band(n_bins, k)
    lows = numpy.broadcast_to(lows, (2, k + 1))
    reference = optimal.band_bin_borders(sums, counts, k, lows, width)
    twin = compiled.band_bin_borders(sums, counts, k, lows, width)
    assert numpy.array_equal(twin, reference)


@pytest.mark.parametrize("n_bins", [256, 683, 2048])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_bin_edges_match_array_bin_edges(n_bins, dtype):
    # Heavy tails, an extreme outlier, many ties, a segment of mostly zeros.
    arrays = [heavy_tailed(n, seed=i) for i, n in enumerate([3000, 70000, n_bins + 1])]
    arrays.append(numpy.concatenate([heavy_tailed(20000, seed=9), [1e6]]))
    arrays.append(numpy.round(heavy_tailed(30000, seed=10) * 50) / 50)
    arrays.append(numpy.concatenate([numpy.zeros(5000), [1.0, 2.0, 3.0]]))
    batch = batch_of([a.astype(dtype) for a in arrays])
    rows = numpy.array([i for i, a in enumerate(arrays) if a.size > n_bins], dtype=numpy.int64)
    reference = optimal.bin_edges(batch, rows, n_bins)
    twin = compiled.bin_edges(batch.keys, batch.offsets, rows, n_bins, fixedpoint.KEY_SHIFT,
                              fixedpoint.KEY_VALUE_MASK, fixedpoint.KEY_BIAS, optimal.FINE_PER_BIN, optimal.CUBE_SHIFT,
                              optimal.extreme_bins(n_bins))
    assert twin.dtype == reference.dtype and numpy.array_equal(twin, reference)


@pytest.mark.parametrize("weighted", [False, True])
def test_bin_tables_match_array_tables(weighted):
    # The DP's sums and counts at bin edges: the compiled pass against the array steps, with
    # wrapping uint64 prefix sums and (weighted) integer weights.
    rng = numpy.random.default_rng(5)
    n = 5000
    prefix = numpy.concatenate([[0], numpy.cumsum(rng.integers(-2**40, 2**40, size=n))]).astype(numpy.int64)
    prefix = prefix.view(numpy.uint64) + numpy.uint64(2**63)  # wraps, as fixedpoint.prefix_sums may
    weight_prefix = numpy.concatenate([[0], numpy.cumsum(rng.integers(0, 2**16, size=n))]) if weighted else None
    starts = numpy.sort(rng.integers(0, n - 200, size=40))
    edges = numpy.sort(starts[:, None] + rng.integers(0, 200, size=(40, 33)), axis=1)
    edges[:, 0] = starts
    sums, counts = compiled.bin_tables(prefix, weight_prefix, edges)
    first = numpy.broadcast_to(edges[:, :1], edges.shape)
    assert numpy.array_equal(sums, fixedpoint.range_sums(prefix, first, edges)) and sums.dtype == numpy.int64
    reference = fixedpoint.range_weights(weight_prefix, first, edges).astype(numpy.float64)
    assert numpy.array_equal(counts, reference) and counts.dtype == numpy.float64


def test_bin_edges_of_channels_match_array_bin_edges():
    # Regression for the merged (not qsorted) union and the table of cube roots:
    # many channel-sized segments at 128 bins, ties, a lone outlier, cells of
    # more values than the table covers (the mostly-zeros segment).
    rng = numpy.random.default_rng(17)
    arrays = [heavy_tailed(int(n), seed=100 + i) * rng.uniform(0.1, 10) for i, n in
              enumerate(rng.integers(129, 2000, size=300))]
    arrays += [numpy.round(heavy_tailed(640, seed=7) * 4) / 4, numpy.concatenate([numpy.zeros(5000), [1.0, 2.0]]),
               numpy.concatenate([heavy_tailed(700, seed=8), [1e5]])]
    batch = batch_of([a.astype(numpy.float32) for a in arrays])
    rows = numpy.arange(len(arrays), dtype=numpy.int64)
    reference = optimal.bin_edges(batch, rows, 128)
    twin = compiled.bin_edges(batch.keys, batch.offsets, rows, 128, fixedpoint.KEY_SHIFT, fixedpoint.KEY_VALUE_MASK,
                              fixedpoint.KEY_BIAS, optimal.FINE_PER_BIN, optimal.CUBE_SHIFT, optimal.extreme_bins(128))
    assert numpy.array_equal(twin, reference)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_rows_error_sums_match_error_sums_on_flat_labels(dtype):
    # Per-channel codebooks: the same sums, bit for bit, as error_sums on s * k + labels.
    rng = numpy.random.default_rng(21)
    sizes = rng.integers(0, 700, size=97)
    values = heavy_tailed(int(sizes.sum()), seed=21).astype(dtype)
    codebooks = numpy.sort(rng.standard_normal((sizes.size, 16)), axis=1).astype(dtype)
    labels = rng.integers(0, 16, size=values.size).astype(numpy.uint8)
    flat = numpy.repeat(numpy.arange(sizes.size, dtype=numpy.int64) * 16, sizes) + labels
    assert compiled.rows_error_sums(values, codebooks, labels, sizes) == compiled.error_sums(
        values, codebooks.reshape(-1), flat)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("label_dtype", ["uint8", "int64"])
def test_error_sums_match_numpy(dtype, label_dtype):
    rng = numpy.random.default_rng(12)
    values = heavy_tailed(100003, seed=12).astype(dtype)
    codebook = numpy.sort(rng.choice(values, 200, replace=False))
    labels = rng.integers(0, 200, size=values.size).astype(label_dtype)
    sse, energy = compiled.error_sums(values, codebook, labels)
    wide = values.astype(numpy.float64)
    errors = wide - codebook[labels].astype(numpy.float64)
    assert sse == pytest.approx(float(errors @ errors), rel=1e-12)
    assert energy == pytest.approx(float(wide @ wide), rel=1e-12)
    assert (sse, energy) == compiled.error_sums(values, codebook, labels)
