"""NumPy and CuPy agree bit for bit on every array-code kernel (kernels/*.py), in CuPy's testing style.

Each gpu test body runs twice through cupy_testing.numpy_cupy_array_equal: on NumPy (the array
code, compiled twins off) and on CuPy, with the same host inputs; results must match in bytes and
dtype. The first tests pin the NumPy behaviours the kernels rely on and CuPy implements apart
(benchmarks/README.md, "The CuPy path: review"): argmax ties, searchsorted on strided data,
uint64 wrap-around, floor division and shifts of negative integers, int64 cumsum along rows,
boolean-mask assignment. Then each kernel, then whole methods. Without CUDA they skip; the
helper itself is tested on the CPU at the end.
"""
from __future__ import annotations

import numpy
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpucompress.engine import METHODS, cluster_arrays
from gpucompress.kernels import fixedpoint, initializers, optimal
from gpucompress.kernels.segments import build_batch, segment_indices

from .cupy_testing import assert_same, compare_on, numpy_cupy_array_equal, requires_gpu

gpu = [pytest.mark.gpu, requires_gpu]


def _laplace_arrays(seed: int, sizes=(1, 7, 300, 2500, 20_000)):
    rng = numpy.random.default_rng(seed)
    arrays = [rng.laplace(size=n) * (1 + 30 * (rng.random(n) < 0.01)) for n in sizes]
    arrays.append(numpy.repeat(rng.normal(size=5), 60))  # fewer distinct values than k: ties everywhere
    return arrays


def _batch(arrays, xp):
    values = [numpy.asarray(a, dtype=numpy.float64).ravel() for a in arrays]
    sizes = numpy.array([v.size for v in values], dtype=numpy.int64)
    exponents = fixedpoint.segment_exponents(numpy.array([numpy.abs(v).max() for v in values]), sizes)
    return build_batch(xp.asarray(numpy.concatenate(values).astype(numpy.float32)), xp.asarray(sizes),
                       xp.asarray(exponents))


def _batch_arrays(batch):
    return batch.offsets, batch.exponents, batch.keys, batch.prefix


# --- the library behaviours the kernels rely on --------------------------------------------------

@pytest.mark.parametrize("reverse", [False, True])
@numpy_cupy_array_equal()
def test_argmax_takes_the_first_index_of_ties(reverse, xp):
    # The DP's splits are the first maximizer (optimal._window_argmax); CuPy's CUB path and its
    # own reduction must both give it, on contiguous and on reversed (strided) rows.
    table = numpy.array([[1.0, 3.0, 3.0, 2.0], [-numpy.inf] * 4, [0.0, 0.0, 0.0, 0.0], [5.0, 1.0, 5.0, 5.0]])
    rows = xp.asarray(numpy.tile(table, (64, 8)))
    rows = rows[:, ::-1] if reverse else rows
    return xp.argmax(rows, axis=1), xp.argmax(rows.ravel())


@pytest.mark.parametrize("side", ["left", "right"])
@numpy_cupy_array_equal()
def test_searchsorted_on_strided_sorted_data(side, xp):
    keys = xp.asarray(numpy.repeat(numpy.arange(-50, 50, dtype=numpy.int64) << 41, 3))
    queries = xp.asarray(numpy.arange(-60, 60, dtype=numpy.int64) << 41)
    return xp.searchsorted(keys[::3], queries, side=side), xp.searchsorted(keys[1:], queries[::2], side=side)


@numpy_cupy_array_equal(accept_error=(ValueError,))
def test_searchsorted_refuses_two_dimensional_data_alike(xp):
    return xp.searchsorted(xp.zeros((2, 2), dtype=xp.int64), xp.zeros(3, dtype=xp.int64))


@numpy_cupy_array_equal()
def test_uint64_prefix_sums_wrap_around_exactly(xp):
    q = numpy.array([2**62, 2**62, -(2**40), 3, -(2**62), 2**61] * 100, dtype=numpy.int64)
    prefix = fixedpoint.prefix_sums(xp.asarray(q))
    starts, ends = xp.asarray([0, 1, 7, 100]), xp.asarray([3, 600, 8, 200])
    return prefix, fixedpoint.range_sums(prefix, starts, ends)


@numpy_cupy_array_equal()
def test_integer_division_shift_and_rounding_of_negatives(xp):
    sums = xp.asarray(numpy.array([-7, -6, -5, -1, 0, 1, 5, 6, 7, -(2**55), 2**55 + 1], dtype=numpy.int64))
    counts = xp.asarray(numpy.array([2, 4, 2, 2, 0, 2, 2, 4, 2, 3, 3], dtype=numpy.int64))
    centroids = xp.asarray(numpy.array([[-7, -4, -1, 0, 3, 2**40]], dtype=numpy.int64))
    from gpucompress.kernels.lloyd import midpoints

    return fixedpoint.rounded_mean(sums, counts), sums // xp.maximum(counts, 1), midpoints(centroids)


@numpy_cupy_array_equal()
def test_int64_cumsum_along_rows(xp):
    weights = numpy.random.default_rng(2).integers(0, 2**40, size=(37, 1500), dtype=numpy.int64)
    return xp.cumsum(xp.asarray(weights), axis=1), xp.cumsum(xp.asarray(weights).ravel())


@numpy_cupy_array_equal()
def test_boolean_mask_assignment_of_rows(xp):
    edges = xp.asarray(numpy.arange(40, dtype=numpy.int64).reshape(8, 5))
    mask = xp.asarray(numpy.array([0, 1, 1, 0, 0, 1, 0, 1], dtype=bool))
    edges[mask] = xp.asarray(numpy.full((4, 5), -3, dtype=numpy.int64)) * xp.arange(5, dtype=xp.int64)
    return edges


# --- kernels -------------------------------------------------------------------------------------

@numpy_cupy_array_equal()
def test_integer_cube_root_at_and_beside_cubes(xp):
    roots = numpy.array([0, 1, 2, 3, 1000, 2**15, 2**20 - 1, 2**20], dtype=numpy.int64)
    x = numpy.concatenate([roots**3 - 1, roots**3, roots**3 + 1, [2**60, 2**59 + 12345]]).clip(0, 2**60)
    return optimal.integer_cube_root(xp.asarray(x))


@numpy_cupy_array_equal()
def test_quantize_keys_and_segment_indices(xp):
    rng = numpy.random.default_rng(4)
    values = rng.laplace(size=5000)
    exponents = rng.integers(10, 40, size=5000)
    q = fixedpoint.quantize(xp.asarray(values), xp.asarray(exponents))
    segment = xp.asarray(numpy.sort(rng.integers(0, 1000, size=5000)))
    keys = fixedpoint.make_keys(q, segment)
    offsets = xp.asarray(numpy.array([0, 1, 1000, 1001, 4000, 5000], dtype=numpy.int64))
    return q, keys, fixedpoint.key_values(keys), segment_indices(offsets), fixedpoint.dequantize(q, xp.asarray(exponents))


@numpy_cupy_array_equal()
def test_build_batch(xp):
    return _batch_arrays(_batch(_laplace_arrays(5), xp))


@pytest.mark.parametrize("init", sorted(initializers.INITIALIZERS))
@numpy_cupy_array_equal()
def test_initializers(init, xp):
    arrays = _laplace_arrays(6)
    draws = initializers.kmeans_plus_plus_draws(0, range(len(arrays)), 16)
    return initializers.INITIALIZERS[init](_batch(arrays, xp), 16, draws)


@pytest.mark.parametrize("k", [2, 16, 256])
@numpy_cupy_array_equal()
def test_lloyd_and_labels(k, xp):
    from gpucompress.kernels.lloyd import assign_labels, cluster_borders, lloyd

    batch = _batch(_laplace_arrays(7), xp)
    initial = initializers.linear_init(batch, k)
    rows = xp.arange(batch.n_segments, dtype=xp.int64)
    centroids, iterations = lloyd(batch, initial, 300)
    return (cluster_borders(batch, rows, initial), centroids, iterations,
            assign_labels(batch, centroids, "uint8" if k <= 256 else "uint16"))


@pytest.mark.parametrize("n_bins", [64, 512])
@numpy_cupy_array_equal()
def test_bin_edges(n_bins, xp):
    batch = _batch(_laplace_arrays(8), xp)
    rows = xp.arange(batch.n_segments, dtype=xp.int64)
    large = rows[batch.sizes() > n_bins]
    return (optimal.bin_edges(batch, rows, n_bins), optimal.equal_width_positions(batch, large, 33),
            optimal.density_edges(batch, large, n_bins))


@pytest.mark.parametrize("k, n_bins", [(2, 256), (16, 256), (128, 1024), (256, 2048)])
@numpy_cupy_array_equal()
def test_dp_borders(k, n_bins, xp):
    # n_bins as bin_count gives them; 128 and 256 at 1024 and 2048 bins run the banded DP (coarse pass, bands, the redo of rows at
    # a band's edge); the tied values make many equal gains, so argmax's tie rule decides.
    arrays = [a for a in _laplace_arrays(9, sizes=(3000, 5000, 20_000)) if a.size > n_bins]
    batch = _batch(arrays, xp)
    rows = xp.arange(batch.n_segments, dtype=xp.int64)
    edges, sums, counts = optimal._bin_tables(batch, rows, n_bins)
    borders = optimal._borders(sums, counts, k, n_bins)
    return edges, sums, counts, borders, optimal._border_centroids(batch, rows, edges, borders)


@pytest.mark.parametrize("k", [2, 16, 256])
@numpy_cupy_array_equal()
def test_optimal_method(k, xp):
    batch = _batch(_laplace_arrays(10), xp)
    return optimal.optimal(batch, xp.zeros((batch.n_segments, k), dtype=xp.int64), 300)


@pytest.mark.parametrize("k", [2, 16, 256, 2048])
@pytest.mark.parametrize("max_iter", [300, 3])
@numpy_cupy_array_equal()
def test_fused_lloyd_kernel_equals_the_array_code(k, max_iter, xp):
    # kernels/lloyd.cu (opt-in, GPUCOMPRESS_FUSED=1) against lloyd.lloyd's array code.
    from gpucompress.kernels import fused
    from gpucompress.kernels.lloyd import lloyd

    batch = _batch(_laplace_arrays(11), xp)
    initial = initializers.linear_init(batch, k)
    if xp is numpy:
        return lloyd(batch, initial, max_iter)
    return fused.lloyd(batch, initial, max_iter, fixedpoint.KEY_SHIFT, fixedpoint.KEY_BIAS)


# --- whole engine: GPU against the default CPU path (compiled twins on) ---------------------------

weight_arrays = st.lists(st.integers(0, 2**31), min_size=1, max_size=4).map(
    lambda seeds: [numpy.random.default_rng(s).laplace(size=int(numpy.random.default_rng(s).integers(1, 5000)))
                   .astype(numpy.float32) for s in seeds])


@pytest.mark.gpu
@requires_gpu
@settings(max_examples=8, deadline=None)
@given(arrays=weight_arrays, k=st.sampled_from([2, 16, 256]), method=st.sampled_from(sorted(METHODS)))
def test_engine_gpu_equals_default_cpu(arrays, k, method):
    cpu = cluster_arrays(arrays, k, method=method, device="cpu")
    on_gpu = cluster_arrays(arrays, k, method=method, device="gpu")
    for a, b in zip(cpu, on_gpu):
        assert_same((a.codebook, a.labels, a.iterations), (b.codebook, b.labels, b.iterations))


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("method", sorted(METHODS))
def test_engine_with_fused_kernels_equals_default_cpu(method, monkeypatch):
    from gpucompress.kernels import fused

    arrays = [a.astype(numpy.float32) for a in _laplace_arrays(12)]
    cpu = cluster_arrays(arrays, 256, method=method, device="cpu")
    monkeypatch.setenv(fused.VARIABLE, "1")
    on_gpu = cluster_arrays(arrays, 256, method=method, device="gpu")
    for a, b in zip(cpu, on_gpu):
        assert_same((a.codebook, a.labels, a.iterations), (b.codebook, b.labels, b.iterations))


for _name, _test in list(globals().items()):
    if _name.startswith("test_") and not _name.startswith("test_engine_"):
        for _mark in gpu:
            _test = _mark(_test)
        globals()[_name] = _test


# --- the helper itself, on the CPU ----------------------------------------------------------------

def test_assert_same_compares_bytes_and_dtypes():
    assert_same((numpy.arange(3), 1.5), (numpy.arange(3), 1.5))
    with pytest.raises(AssertionError, match="dtype"):
        assert_same(numpy.arange(3, dtype=numpy.int64), numpy.arange(3, dtype=numpy.int32))
    with pytest.raises(AssertionError, match=r"differs at \(1,\)"):
        assert_same(numpy.array([0.0, 0.0]), numpy.array([0.0, -0.0]))
    with pytest.raises(AssertionError, match="shape"):
        assert_same(numpy.zeros((2, 2)), numpy.zeros(4))
    with pytest.raises(AssertionError, match="structure"):
        assert_same((numpy.zeros(2),), numpy.zeros(2))


def test_compare_on_runs_the_array_code_and_checks_errors_alike():
    from gpucompress.kernels import compiled

    seen = []

    def body(xp):
        seen.append(compiled.available())
        return xp.arange(4)

    compare_on(body, (numpy, numpy))
    assert seen == [False, False]  # the NumPy runs use the array code, CuPy's code
    compare_on(lambda xp: fixedpoint.value_bits(0), (numpy, numpy), accept_error=(ValueError,))
    with pytest.raises(AssertionError, match="one run raised"):
        calls = iter([0, 1])
        compare_on(lambda xp: fixedpoint.value_bits(next(calls)), (numpy, numpy), accept_error=(ValueError,))
    with pytest.raises(AssertionError, match="dtype"):
        dtypes = iter([numpy.int64, numpy.int32])
        compare_on(lambda xp: xp.arange(3, dtype=next(dtypes)), (numpy, numpy))
