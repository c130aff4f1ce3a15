"""Integer weights by level (kernels/histogram.py, engine.cluster_histograms): the histograms that replace
the sort of int8/int16 values, their compiled twins, and the clustering they give, which must be the
clustering of the values themselves, bit for bit."""
import numpy
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpucompress import OptionsError, engine, gpu_available
from gpucompress.kernels import compiled, histogram

from .cupy_testing import array_code_only

requires_compiled = pytest.mark.skipif(not compiled.available(), reason="the compiled kernels are not built")
requires_gpu = pytest.mark.skipif(not gpu_available(), reason="needs CuPy and a CUDA device")


def integers(rng, n: int, dtype, spread: float) -> numpy.ndarray:
    """Return n heavy-tailed integers of dtype (trained int8 weights crowd near 0), clipped to its range."""
    limits = numpy.iinfo(dtype)
    return numpy.clip(numpy.rint(rng.standard_t(3, n) * spread), limits.min, limits.max).astype(dtype)


def segments(rng, sizes, dtype, spread: float):
    """Return (values, offsets int64) of consecutive segments of the given sizes (0 allowed)."""
    offsets = numpy.concatenate([[0], numpy.cumsum(sizes)]).astype(numpy.int64)
    return integers(rng, int(offsets[-1]), dtype, spread), offsets


def test_level_range_of_int8_and_int16():
    assert histogram.level_range(numpy.int8) == (-128, 256)
    assert histogram.level_range("int16") == (-32768, 65536)


def test_histograms_lookup_and_errors_by_hand():
    values = numpy.array([-128, 0, 0, 5, 127, 5, -1], dtype=numpy.int8)
    offsets = numpy.array([0, 4, 4, 7])  # an empty middle segment
    counts = histogram.segment_histograms(values, offsets)
    assert counts.shape == (3, 256) and counts.dtype == numpy.int64
    assert counts[0, 0] == 1 and counts[0, 128] == 2 and counts[0, 133] == 1 and counts[0].sum() == 4
    assert counts[1].sum() == 0 and counts[2, 255] == 1 and counts[2, 133] == 1 and counts[2, 127] == 1
    table = numpy.zeros((3, 256), dtype=numpy.uint8)
    table[0, 128], table[2, 255] = 3, 7
    assert histogram.segment_lookup(values, offsets, table).tolist() == [0, 3, 3, 0, 7, 0, 0]
    errors = numpy.zeros((3, 256))
    errors[0, 133], errors[2, 127] = 0.5, -2.0
    assert histogram.segment_error_sums(values, offsets, errors) == (4.25, 128.0**2 + 25 + 127**2 + 25 + 1)


@requires_compiled
@pytest.mark.parametrize("dtype", [numpy.int8, numpy.int16])
def test_compiled_twins_give_the_array_code_counts_and_lookups(dtype):
    rng = numpy.random.default_rng(3)
    values, offsets = segments(rng, [70001, 0, 3, 1, 200000, 5], dtype, 40.0)
    counts = histogram.segment_histograms(values, offsets)
    low, n_levels = histogram.level_range(dtype)
    table = rng.integers(0, 200, (offsets.size - 1, n_levels)).astype(numpy.uint8)
    looked_up = histogram.segment_lookup(values, offsets, table)
    with array_code_only():
        assert numpy.array_equal(counts, histogram.segment_histograms(values, offsets))
        reference = histogram.segment_lookup(values, offsets, table)
    assert looked_up.dtype == reference.dtype == numpy.uint8 and numpy.array_equal(looked_up, reference)
    assert counts.sum() == values.size and numpy.array_equal(counts.sum(axis=1), numpy.diff(offsets))


@requires_compiled
def test_error_sums_repeat_the_float_error_sums_bit_for_bit():
    # The compiled version makes the very adds of compiled.error_sums on the values as float32 and their
    # labels; the array version those of numpy.dot (what clustering.py's _error_sums does without the twins).
    rng = numpy.random.default_rng(4)
    values, offsets = segments(rng, [50001, 20000, 7], numpy.int8, 30.0)
    rows, k = offsets.size - 1, 16
    codebooks = numpy.sort(rng.uniform(-128, 127, (rows, k)), axis=1).astype(numpy.float32)
    table = rng.integers(0, k, (rows, 256)).astype(numpy.uint8)
    levels = numpy.arange(-128, 128, dtype=numpy.float64)
    errors = levels[None, :] - numpy.take_along_axis(codebooks, table.astype(numpy.int64), 1).astype(numpy.float64)
    labels = histogram.segment_lookup(values, offsets, table)
    flat_labels = numpy.repeat(numpy.arange(rows) * k, numpy.diff(offsets)) + labels
    floats = values.astype(numpy.float32)
    assert histogram.segment_error_sums(values, offsets, errors) == compiled.error_sums(
        floats, codebooks.reshape(-1), flat_labels)
    with array_code_only():
        by_levels = histogram.segment_error_sums(values, offsets, errors)
    wide = floats.astype(numpy.float64)
    gaps = wide - codebooks.reshape(-1)[flat_labels].astype(numpy.float64)
    assert by_levels == (float(numpy.dot(gaps, gaps)), float(numpy.dot(wide, wide)))


@requires_compiled
@pytest.mark.parametrize("table_dtype", ["int8", "int16", "float16", "float32", "float64"])
@pytest.mark.parametrize("label_dtype", ["uint8", "uint16", "int64"])
def test_gather_is_take_with_clip(table_dtype, label_dtype):
    rng = numpy.random.default_rng(5)
    table = rng.normal(size=40).astype(table_dtype)
    # out of range on both sides: take(mode="clip") takes the nearest end
    indices = rng.integers(0 if label_dtype.startswith("u") else -5, 50, 200003).astype(label_dtype)
    out = numpy.empty(indices.size, dtype=table.dtype)
    compiled.gather(table, indices, out)
    assert out.tobytes() == numpy.take(table, indices, mode="clip").tobytes()
    with pytest.raises(Exception, match="out should be"):
        compiled.gather(table, indices, out[:-1])


def _compare_with_values(tables, lows, k, max_iter=300):
    """Assert cluster_histograms of histograms == cluster_segments of the values they count (as float32)."""
    results = engine.cluster_histograms([t[0] for t in tables], lows, k, max_iter=max_iter, device="cpu")
    for (counts, values, sizes), result in zip(tables, results):
        (reference,) = engine.cluster_segments([values.astype(numpy.float32)], [sizes], k, max_iter=max_iter,
                                               device="cpu", exact_candidates=[True])
        offsets = numpy.concatenate([[0], numpy.cumsum(sizes)]).astype(numpy.int64)
        labels = histogram.segment_lookup(values, offsets, result.level_labels)
        assert reference.exact.all() and result.exact.all()
        assert result.codebooks.dtype == reference.codebooks.dtype
        assert result.codebooks.tobytes() == reference.codebooks.tobytes()
        assert labels.dtype == reference.labels.dtype and numpy.array_equal(labels, reference.labels)
        assert numpy.array_equal(result.iterations, reference.iterations)
        assert result.converged == reference.converged


def _tables(seed: int, specs):
    rng = numpy.random.default_rng(seed)
    tables, lows = [], []
    for dtype, sizes, spread in specs:
        values, offsets = segments(rng, sizes, dtype, spread)
        tables.append((histogram.segment_histograms(values, offsets), values, numpy.asarray(sizes)))
        lows.append(histogram.level_range(dtype)[0])
    return tables, lows


SPECS = [(numpy.int8, [5000], 20.0), (numpy.int8, [300, 1, 2, 4000], 3.0), (numpy.int16, [20000], 900.0),
         (numpy.int8, [9000], 200.0), (numpy.int16, [3, 700, 64], 5.0)]


@pytest.mark.parametrize("k", [2, 3, 16, 255, 256])
@pytest.mark.parametrize("compiled_twins", [True, False])
def test_cluster_histograms_is_the_clustering_of_the_values(k, compiled_twins):
    # Several arrays (int8 and int16 lows) in one call, segments of 1 to 20,000 values.
    tables, lows = _tables(k, SPECS)
    if compiled_twins:
        _compare_with_values(tables, lows, k)
    else:
        with array_code_only():
            _compare_with_values(tables, lows, k)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), k=st.integers(2, 64), max_iter=st.sampled_from([0, 1, 300]),
       sizes=st.lists(st.integers(1, 3000), min_size=1, max_size=4),
       spread=st.sampled_from([0.3, 2.0, 25.0, 400.0]), wide=st.booleans())
def test_cluster_histograms_property(seed, k, max_iter, sizes, spread, wide):
    tables, lows = _tables(seed, [(numpy.int16 if wide else numpy.int8, sizes, spread)])
    _compare_with_values(tables, lows, k, max_iter)


def test_cluster_histograms_rejects_bad_counts():
    counts = numpy.zeros((2, 256), dtype=numpy.int64)
    counts[0, 3] = 4
    with pytest.raises(OptionsError, match="segment of no values"):
        engine.cluster_histograms([counts], [-128], 4, device="cpu")
    with pytest.raises(OptionsError, match="one per array"):
        engine.cluster_histograms([counts[:1]], [], 4, device="cpu")
    with pytest.raises(OptionsError, match="non-negative integer"):
        engine.cluster_histograms([-counts[:1]], [-128], 4, device="cpu")
    # (k - 1) * (D + 1) split-table entries past optimal.EXACT_TABLE_ENTRIES: not the exact DP
    many = numpy.ones((1, 65536), dtype=numpy.int64)
    with pytest.raises(OptionsError, match="too many distinct values"):
        engine.cluster_histograms([many], [-32768], 300, device="cpu")
    with pytest.raises(OptionsError, match="n_clusters"):
        engine.cluster_histograms([counts[:1]], [-128], 1, device="cpu")


@pytest.mark.gpu
@requires_gpu
def test_cluster_histograms_numpy_and_cupy_bit_identical():
    tables, lows = _tables(7, SPECS)
    counts = [t[0] for t in tables]
    for k in (2, 16, 256):
        cpu = engine.cluster_histograms(counts, lows, k, device="cpu")
        gpu = engine.cluster_histograms(counts, lows, k, device="gpu")
        for a, b in zip(cpu, gpu):
            assert a.codebooks.tobytes() == b.codebooks.tobytes()
            assert a.level_labels.dtype == b.level_labels.dtype
            assert a.level_labels.tobytes() == b.level_labels.tobytes()
            assert numpy.array_equal(a.iterations, b.iterations)
