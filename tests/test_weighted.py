"""Weighted k-means (engine.cluster_arrays(weights=)) and the exact DP on distinct values (float16, bfloat16, int8).

A reference weighted DP written here (textbook, O(k n^2) time, O(n) memory
per layer) gives the exact weighted optimum the engine is measured against.
"""
from __future__ import annotations

import numpy
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpucompress.engine import cluster_arrays
from gpucompress.errors import OptionsError
from gpucompress.kernels import compiled, fixedpoint, optimal
from gpucompress.kernels.lloyd import lloyd
from gpucompress.kernels.initializers import linear_init
from gpucompress.kernels.segments import build_batch

from .cupy_testing import assert_same, requires_gpu


def exact_weighted_sse(values, weights, k):
    """Return the optimal weighted k-means SSE, sum w (x - c)**2, of 1-D values (exact DP on sorted values)."""
    order = numpy.argsort(values, kind="stable")
    x = numpy.asarray(values, dtype=numpy.float64)[order]
    w = numpy.asarray(weights, dtype=numpy.float64)[order]
    n = x.size
    s0 = numpy.concatenate([[0.0], numpy.cumsum(w)])
    s1 = numpy.concatenate([[0.0], numpy.cumsum(w * x)])
    s2 = numpy.concatenate([[0.0], numpy.cumsum(w * x * x)])

    def costs(j):  # cost of one cluster holding sorted values i..j-1, for every i <= j
        i = numpy.arange(j + 1)
        total = s0[j] - s0[i]
        spread = s2[j] - s2[i] - numpy.where(total > 0, (s1[j] - s1[i]) ** 2 / numpy.maximum(total, 1e-300), 0.0)
        return numpy.maximum(spread, 0.0)

    table = [costs(j) for j in range(n + 1)]
    best = numpy.array([table[j][0] for j in range(n + 1)])
    for _ in range(1, k):
        best = numpy.array([float(numpy.min(best[: j + 1] + table[j])) for j in range(n + 1)])
    return float(best[n])


def weighted_sse_of(values, weights, result):
    values = numpy.asarray(values, dtype=numpy.float64).reshape(-1)
    errors = values - result.codebook[result.labels]
    return float(numpy.dot(numpy.asarray(weights, dtype=numpy.float64).reshape(-1), errors * errors))


def same(first, second):
    return (all(numpy.array_equal(a.codebook, b.codebook) and a.codebook.dtype == b.codebook.dtype
                and numpy.array_equal(a.labels, b.labels) and a.labels.dtype == b.labels.dtype
                and a.iterations == b.iterations for a, b in zip(first, second)) and len(first) == len(second))


def heavy(n, seed):
    rng = numpy.random.default_rng(seed)
    return (rng.laplace(scale=0.05, size=n) * numpy.where(rng.random(n) < 0.02, 10.0, 1.0)).astype(numpy.float32)


def test_hand_computed_weighted_two_clusters():
    # Weight 3 on 0 and 1 on 4: one cluster's centroid is the weighted mean 1.
    values = numpy.array([0.0, 4.0, 10.0, 11.0])
    result = cluster_arrays([values], 2, weights=[numpy.array([3.0, 1.0, 1.0, 1.0])])[0]
    assert result.codebook.tolist() == [1.0, 10.5]
    assert result.labels.tolist() == [0, 0, 1, 1]


@pytest.mark.parametrize("method,init", [("optimal", "linear"), ("lloyd", "linear"), ("lloyd", "density"),
                                         ("lloyd", "kmeans++")])
@pytest.mark.parametrize("scale", [1.0, 3.0, 1e-7])
def test_equal_weights_give_exactly_the_unweighted_result(method, init, scale):
    arrays = [heavy(5000, 1), heavy(300, 2), heavy(40, 3).astype(numpy.float64)]
    plain = cluster_arrays(arrays, 16, method=method, init=init)
    weighted = cluster_arrays(arrays, 16, method=method, init=init,
                              weights=[numpy.full(a.shape, scale) for a in arrays])
    assert same(plain, weighted)


@pytest.mark.parametrize("method", ["optimal", "lloyd"])
def test_weights_of_one_through_the_weighted_arithmetic_give_the_unweighted_centroids(method, monkeypatch):
    # quantize_weights maps equal weights to the unweighted path; here the
    # weighted batch (argsort, weighted prefix sums, range_weights) runs with
    # w = 1 and must give the same numbers, on the array code and the compiled twins.
    values = numpy.concatenate([heavy(3000, 5), heavy(700, 6)]).astype(numpy.float64)
    sizes = numpy.array([3000, 700], dtype=numpy.int64)
    exponents = fixedpoint.segment_exponents(numpy.array([numpy.abs(values[:3000]).max(),
                                                          numpy.abs(values[3000:]).max()]), sizes)
    run = (lambda batch: optimal.optimal(batch, linear_init(batch, 16), 300)) if method == "optimal" else (
        lambda batch: lloyd(batch, linear_init(batch, 16), 300))
    built = compiled.available()
    for switch in (True, False):
        with monkeypatch.context() as patch:
            patch.setattr(compiled, "available", lambda switch=switch: switch and built)
            plain = run(build_batch(values, sizes, exponents))
            weighted_batch = build_batch(values, sizes, exponents, numpy.ones(values.size, dtype=numpy.int64))
            assert weighted_batch.weight_prefix is not None
            weighted = run(weighted_batch)
        assert numpy.array_equal(plain[0], weighted[0]) and numpy.array_equal(plain[1], weighted[1])


def test_quantize_weights_rule():
    assert fixedpoint.quantize_weights(numpy.zeros(5)) is None
    assert fixedpoint.quantize_weights(numpy.full(5, 0.3)) is None
    assert fixedpoint.quantize_weights(numpy.array([3.0, 1.0, 0.0])).tolist() == [3, 1, 0]  # counts: as they are
    weights = fixedpoint.quantize_weights(numpy.array([0.0, 1e-12, 0.5, 1.0]))
    # the largest is 2**16, a tiny positive weight 1 (never 0), 0 stays 0
    assert weights.tolist() == [0, 1, 1 << 15, 1 << 16]
    assert fixedpoint.quantize_weights(numpy.array([2.0, 4.0, 4.0])).tolist() == [1, 2, 2]  # gcd reduced


@pytest.mark.parametrize("bad,message", [
    (lambda a: numpy.full(a.shape, -1.0), "negative"),
    (lambda a: numpy.full(a.shape, numpy.nan), "NaN"),
    (lambda a: numpy.full(a.shape, numpy.inf), "NaN or Inf"),
    (lambda a: numpy.ones(a.size + 1), "shape"),
    (lambda a: numpy.array(["x"] * a.size), "dtype"),
])
def test_bad_weights_raise_naming_the_array(bad, message):
    arrays = [heavy(100, 1), heavy(50, 2)]
    with pytest.raises(OptionsError, match=rf"weights\[1\].*{message}|{message}.*weights\[1\]"):
        cluster_arrays(arrays, 4, weights=[None, bad(arrays[1])])
    with pytest.raises(OptionsError, match="one per array"):
        cluster_arrays(arrays, 4, weights=[None])


def test_zero_weight_values_still_get_their_nearest_centroid():
    rng = numpy.random.default_rng(2)
    values = rng.normal(size=2000)
    weights = numpy.where(numpy.abs(values) < 1.0, 1.0, 0.0)  # the tails weigh nothing
    result = cluster_arrays([values], 8, weights=[weights])[0]
    assert result.codebook.min() > -1.0 and result.codebook.max() < 1.0
    distances = numpy.abs(values[:, None] - result.codebook[None, :])
    assert numpy.all(distances[numpy.arange(values.size), result.labels] <= distances.min(axis=1) + 1e-12)


weighted_segments = st.lists(
    st.lists(st.tuples(st.floats(-1e3, 1e3, allow_nan=False, width=32), st.floats(0, 1e4, width=32)),
             min_size=1, max_size=200),
    min_size=1, max_size=4,
)


def split(segments):
    arrays = [numpy.array([v for v, _ in pairs], dtype=numpy.float32) for pairs in segments]
    weights = [numpy.array([w for _, w in pairs], dtype=numpy.float64) for pairs in segments]
    return arrays, weights


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(segments=weighted_segments, k=st.integers(2, 12), method=st.sampled_from(["optimal", "lloyd"]))
def test_weighted_properties(segments, k, method):
    arrays, weights = split(segments)
    results = cluster_arrays(arrays, k, method=method, weights=weights)
    for values, weight, result in zip(arrays, weights, results):
        x = values.astype(numpy.float64)
        # The engine minimises with the integer weights (resolution 2**-16 of the largest).
        integer = fixedpoint.quantize_weights(weight)
        weight = numpy.ones(x.size) if integer is None else integer.astype(numpy.float64)
        codebook = result.codebook
        assert numpy.all(numpy.diff(codebook) >= 0)
        # Every value, of any weight, sits at its nearest centroid (up to one fixed-point unit).
        unit = 2.0 ** -float(fixedpoint.value_bits(max(1, x.size << fixedpoint.WEIGHT_BITS)) - 1) * max(
            1e-30, float(numpy.abs(x).max()))
        distances = numpy.abs(x[:, None] - codebook[None, :])
        assert numpy.all(distances[numpy.arange(x.size), result.labels] <= distances.min(axis=1) + 4 * unit)
        # A converged cluster of positive weight has its weighted mean as centroid.
        if result.converged:
            for label in numpy.unique(result.labels):
                members = result.labels == label
                total = weight[members].sum()
                if total > 0 and weight[members].max() > 1e-3 * weight.max():
                    mean = float(numpy.dot(weight[members], x[members]) / total)
                    assert abs(codebook[label] - mean) <= 4 * unit + 1e-9 * abs(mean)


def test_weighted_optimal_never_worse_than_weighted_lloyd_on_heavy_tails():
    ratios = []
    for seed in range(6):
        values = heavy(4000, seed)
        weights = numpy.random.default_rng(seed).exponential(size=values.size) ** 2
        best = cluster_arrays([values], 16, method="optimal", weights=[weights])[0]
        plain = cluster_arrays([values], 16, method="lloyd", weights=[weights])[0]
        ratios.append(weighted_sse_of(values, weights, best) / weighted_sse_of(values, weights, plain))
    assert max(ratios) <= 1.0 + 1e-9


@pytest.mark.parametrize("seed", range(6))
def test_weighted_optimal_is_exact_when_every_value_is_a_bin(seed):
    rng = numpy.random.default_rng(seed)
    values = rng.normal(size=120) * numpy.where(rng.random(120) < 0.1, 8, 1)
    weights = rng.exponential(size=120) ** 3
    k = int(rng.integers(2, 9))
    result = cluster_arrays([values], k, method="optimal", weights=[weights])[0]
    integer = fixedpoint.quantize_weights(weights).astype(numpy.float64)
    got = weighted_sse_of(values, integer, result)
    best = exact_weighted_sse(values, integer, k)
    assert got <= best * (1 + 1e-6) + 1e-12


def test_weighted_optimal_within_one_percent_of_the_exact_weighted_optimum_median():
    # More values than bins (900 values at k=8: 128 bins): the DP is near-optimal, not exact.
    ratios = []
    for seed in range(8):
        rng = numpy.random.default_rng(100 + seed)
        values = heavy(900, seed).astype(numpy.float64)
        weights = rng.exponential(size=values.size) ** 2
        integer = fixedpoint.quantize_weights(weights).astype(numpy.float64)
        result = cluster_arrays([values], 8, method="optimal", weights=[weights])[0]
        ratios.append(weighted_sse_of(values, integer, result) / exact_weighted_sse(values, integer, 8))
    assert min(ratios) >= 1 - 1e-6
    assert float(numpy.median(ratios)) <= 1.01


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(segments=weighted_segments, k=st.integers(2, 20),
       method_init=st.sampled_from([("optimal", "linear"), ("lloyd", "linear"), ("lloyd", "kmeans++")]))
def test_compiled_and_array_paths_agree_with_weights(segments, k, method_init):
    if not compiled.available():
        pytest.skip("the compiled extension is not built")
    arrays, weights = split(segments)
    method, init = method_init
    fast = cluster_arrays(arrays, k, method=method, init=init, weights=weights, device="cpu")
    original = compiled.available
    try:
        compiled.available = lambda: False
        slow = cluster_arrays(arrays, k, method=method, init=init, weights=weights, device="cpu")
    finally:
        compiled.available = original
    assert same(fast, slow)


def test_compiled_and_array_paths_agree_with_weights_on_large_segments(monkeypatch):
    if not compiled.available():
        pytest.skip("the compiled extension is not built")
    arrays = [heavy(30000, 1), heavy(5000, 2), heavy(3, 3)]
    rng = numpy.random.default_rng(0)
    weights = [rng.exponential(size=a.size) ** 2 for a in arrays]
    for k in (16, 256):
        fast = cluster_arrays(arrays, k, weights=weights, device="cpu")
        with monkeypatch.context() as patch:
            patch.setattr(compiled, "available", lambda: False)
            slow = cluster_arrays(arrays, k, weights=weights, device="cpu")
        assert same(fast, slow)


# --- exact DP on distinct values (low-cardinality dtypes) ---

def exact_sse_on_distinct(values, weights, k):
    distinct, inverse = numpy.unique(values, return_inverse=True)
    totals = numpy.bincount(inverse.reshape(-1), weights=weights.reshape(-1))
    return exact_weighted_sse(distinct, totals, k)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "int8"])
@pytest.mark.parametrize("k", [4, 16])
def test_low_cardinality_tensors_reach_the_exact_optimum(dtype, k):
    rng = numpy.random.default_rng(k)
    if dtype == "int8":
        values = numpy.clip(rng.laplace(scale=20, size=20000), -128, 127).astype(numpy.int8).astype(numpy.float32)
        candidates = [True]
    else:
        if dtype == "bfloat16":
            import ml_dtypes

            dtype = ml_dtypes.bfloat16
        values = (rng.laplace(scale=0.02, size=20000)).astype(dtype)
        candidates = None
    result = cluster_arrays([values], k, exact_candidates=candidates)[0]
    assert result.exact
    x = values.astype(numpy.float64)
    distinct = numpy.unique(x)
    if candidates is None:  # float16, bfloat16: more distinct values than bins, not exact otherwise
        assert distinct.size > optimal.bin_count(x.size, k)
    if distinct.size <= 1500:
        best = exact_sse_on_distinct(x, numpy.ones(x.size), k)
        got = weighted_sse_of(x, numpy.ones(x.size), result)
        assert got <= best * (1 + 1e-9)
    # The binned DP (the float32 path) is never better than the exact one.
    binned = cluster_arrays([x.astype(numpy.float32)], k)[0]
    assert not binned.exact
    assert weighted_sse_of(x, numpy.ones(x.size), result) <= weighted_sse_of(x, numpy.ones(x.size), binned) * (
        1 + 1e-9)


def test_exact_dp_with_weights_matches_the_reference_on_distinct_values():
    rng = numpy.random.default_rng(4)
    values = numpy.clip(rng.laplace(scale=6, size=5000), -60, 60).astype(numpy.int8).astype(numpy.float32)
    weights = rng.exponential(size=values.size)
    result = cluster_arrays([values], 6, weights=[weights], exact_candidates=[True])[0]
    assert result.exact
    integer = fixedpoint.quantize_weights(weights).astype(numpy.float64)
    got = weighted_sse_of(values, integer, result)
    assert got <= exact_sse_on_distinct(values.astype(numpy.float64), integer, 6) * (1 + 1e-9)


def test_exact_path_compiled_and_array_agree(monkeypatch):
    if not compiled.available():
        pytest.skip("the compiled extension is not built")
    rng = numpy.random.default_rng(5)
    arrays = [rng.laplace(scale=0.05, size=30000).astype(numpy.float16), rng.normal(size=500).astype(numpy.float16)]
    for k in (8, 64):
        fast = cluster_arrays(arrays, k)
        with monkeypatch.context() as patch:
            patch.setattr(compiled, "available", lambda: False)
            slow = cluster_arrays(arrays, k)
        assert same(fast, slow) and all(r.exact for r in fast)


def test_float32_tensors_keep_the_binned_dp():
    result = cluster_arrays([heavy(5000, 1)], 16)[0]
    assert not result.exact
    assert not cluster_arrays([heavy(5000, 1).astype(numpy.float16)], 16, method="lloyd")[0].exact


@pytest.mark.parametrize("k", [3, 8])
def test_float16_exact_optimum_matches_the_reference_dp(k):
    # More distinct values than bins (so the binned DP would be approximate), few enough for the reference.
    values = (numpy.random.default_rng(k).laplace(scale=0.02, size=1500)).astype(numpy.float16)
    x = values.astype(numpy.float64)
    n_distinct = numpy.unique(x).size
    assert optimal.bin_count(x.size, k) < n_distinct <= 1500
    result = cluster_arrays([values], k)[0]
    assert result.exact
    got = weighted_sse_of(x, numpy.ones(x.size), result)
    assert got <= exact_sse_on_distinct(x, numpy.ones(x.size), k) * (1 + 1e-9)


def test_the_gpu_sort_of_weighted_keys_gives_the_cpu_sequence(monkeypatch):
    # CuPy sorts weighted keys with sort_by_key_then_weight; NumPy packs each
    # weight under its value and sorts per segment. Both must give the same
    # (key, weight) sequence, ties included (many equal values, varied weights).
    from gpucompress.kernels import segments

    rng = numpy.random.default_rng(9)
    values = numpy.round(rng.normal(size=6000), 1)  # many ties
    sizes = numpy.array([4000, 1500, 500], dtype=numpy.int64)
    offsets = numpy.concatenate([[0], numpy.cumsum(sizes)])
    weights = rng.integers(0, 1 << 16, size=values.size)
    exponents = fixedpoint.segment_exponents(numpy.array([numpy.abs(values[a:b]).max() for a, b in
                                                          zip(offsets[:-1], offsets[1:])]), sizes << 16)
    batch = build_batch(values, sizes, exponents, weights)
    segment = segments.segment_indices(offsets)
    keys = fixedpoint.make_keys(fixedpoint.quantize(values, exponents[segment]), segment)
    gpu_keys, gpu_weights = segments.sort_by_key_then_weight(keys, weights.astype(numpy.int64))
    assert numpy.array_equal(batch.keys, gpu_keys)
    assert numpy.array_equal(batch.weight_prefix, numpy.concatenate([[0], numpy.cumsum(gpu_weights)]))


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("method", ["optimal", "lloyd"])
@pytest.mark.parametrize("k", [4, 16, 256])
def test_weighted_and_exact_gpu_equals_cpu(method, k):
    # The CuPy path of weighted batches (two stable argsorts) and of the exact
    # DP on distinct values against the CPU's packed sort and compiled twins.
    rng = numpy.random.default_rng(k)
    arrays = [heavy(20000, 1), numpy.round(heavy(3000, 2), 2), heavy(40, 3), heavy(9000, 4).astype(numpy.float16)]
    weights = [rng.exponential(size=a.size) ** 2 for a in arrays]
    weights[2] = None
    for extra in ({"weights": weights}, {}):
        cpu = cluster_arrays(arrays, k, method=method, device="cpu", **extra)
        on_gpu = cluster_arrays(arrays, k, method=method, device="gpu", **extra)
        for a, b in zip(cpu, on_gpu):
            assert_same((a.codebook, a.labels, a.iterations, a.exact), (b.codebook, b.labels, b.iterations, b.exact))


def test_a_float16_graph_reports_its_exact_tensors(tmp_path, capsys):
    import json

    from gpucompress.cli import main

    from .conftest import const_node, graphdef_of

    rng = numpy.random.default_rng(0)
    graph = graphdef_of(const_node("half", rng.laplace(scale=0.05, size=(64, 64)).astype("f2")),
                        const_node("single", rng.laplace(scale=0.05, size=(64, 64)).astype("f4")))
    path = tmp_path / "m.pb"
    path.write_bytes(graph.SerializeToString())
    report = tmp_path / "r.json"
    assert main(["compress", str(path), "-o", str(tmp_path / "o.pb"), "--n_clusters", "16", "--report",
                 str(report)]) == 0
    assert "exact optimum (DP on the distinct values: float16, bfloat16, int8/int16, or at most 256 values): 1 tensors" in (
        capsys.readouterr().out)
    entries = {t["name"]: t for t in json.loads(report.read_text())["tensors"]}
    assert entries["half"]["exact"] is True and entries["single"]["exact"] is False
    assert entries["half"]["importance"] is None and entries["half"]["weighted_sse"] is None


def test_batches_follow_the_input_order_with_mixed_weights():
    arrays = [heavy(100, i) for i in range(5)]
    weights = [None, numpy.ones(100) * numpy.arange(100), None, None, numpy.arange(100.0)]
    finished = []
    results = cluster_arrays(arrays, 4, weights=weights, on_batch=finished.append)
    assert finished == [1, 1, 2, 1]  # runs: [0], [1], [2, 3], [4]
    for index in (0, 2, 3):
        assert same([results[index]], cluster_arrays([arrays[index]], 4))


def test_density_init_takes_weighted_quantiles():
    from gpucompress.kernels.initializers import density_init

    values = numpy.arange(10, dtype=numpy.float64)
    sizes = numpy.array([10], dtype=numpy.int64)
    exponents = fixedpoint.segment_exponents(numpy.array([9.0]), sizes * 100)
    heavy_end = numpy.array([1, 1, 1, 1, 1, 1, 1, 1, 1, 91], dtype=numpy.int64)  # 91% of the weight on 9
    batch = build_batch(values, sizes, exponents, heavy_end)
    centroids = fixedpoint.dequantize(density_init(batch, 2), batch.exponents[:, None])
    assert centroids.tolist() == [[9.0, 9.0]]
    ones = build_batch(values, sizes, exponents, numpy.ones(10, dtype=numpy.int64))
    plain = build_batch(values, sizes, exponents)
    assert numpy.array_equal(density_init(ones, 4), density_init(plain, 4))


def test_compiled_weighted_batch_equals_the_array_code(monkeypatch):
    if not compiled.available():
        pytest.skip("the compiled extension is not built")
    from gpucompress.errors import KernelInputError

    rng = numpy.random.default_rng(11)
    values = numpy.concatenate([numpy.round(rng.normal(size=3000), 2), heavy(5000, 1), [0.0]]).astype(numpy.float32)
    sizes = numpy.array([3000, 5000, 1], dtype=numpy.int64)
    weights = rng.integers(0, (1 << 16) + 1, size=values.size)
    offsets = numpy.concatenate([[0], numpy.cumsum(sizes)])
    exponents = fixedpoint.segment_exponents(numpy.array([numpy.abs(values[a:b]).max() for a, b in
                                                          zip(offsets[:-1], offsets[1:])], dtype=numpy.float64),
                                             sizes << 16)
    fast = build_batch(values, sizes, exponents, weights)
    with monkeypatch.context() as patch:
        patch.setattr(compiled, "available", lambda: False)
        slow = build_batch(values, sizes, exponents, weights)
    for name in ("keys", "prefix", "weight_prefix"):
        left, right = getattr(fast, name), getattr(slow, name)
        assert left.dtype == right.dtype and numpy.array_equal(left, right), name
    with pytest.raises(KernelInputError, match="weights"):
        compiled.pack_weighted(values, offsets, exponents, weights + (1 << 17), fixedpoint.KEY_BIAS,
                               fixedpoint.WEIGHT_SHIFT)
