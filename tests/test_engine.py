"""The clustering engine on plain arrays: a hand-computed case, properties, parity, errors."""
from __future__ import annotations

import numpy
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gpucompress import OptionsError, cluster_arrays, gpu_available
from gpucompress.engine import METHODS, plan_batches
from gpucompress.kernels.initializers import INITIALIZERS

finite_floats = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, width=32)
weight_arrays = hnp.arrays(numpy.float32, st.integers(1, 300), elements=finite_floats)


def sse(values, result):
    errors = numpy.asarray(values, dtype=numpy.float64).reshape(-1) - result.codebook[result.labels]
    return float(errors @ errors)


def test_hand_computed_two_clusters():
    values = numpy.array([0.0, 1.0, 2.0, 10.0, 11.0, 12.0], dtype=numpy.float32)
    (result,) = cluster_arrays([values], 2, device="cpu")
    numpy.testing.assert_array_equal(result.codebook, [1.0, 11.0])
    numpy.testing.assert_array_equal(result.labels, [0, 0, 0, 1, 1, 1])
    assert result.labels.dtype == numpy.uint8
    assert result.converged


def test_linear_init_is_deep_compression_spacing():
    values = numpy.array([0.0, 0.0, 0.0, 3.0], dtype=numpy.float64)
    (result,) = cluster_arrays([values], 4, method="lloyd", max_iter=0, device="cpu")
    numpy.testing.assert_allclose(result.codebook, [0.0, 1.0, 2.0, 3.0], rtol=0, atol=1e-9)


@settings(max_examples=60, deadline=None)
@given(values=weight_arrays, k=st.integers(2, 40), init=st.sampled_from(sorted(INITIALIZERS)),
       method=st.sampled_from(sorted(METHODS)))
def test_each_value_goes_to_its_nearest_centroid(values, k, init, method):
    (result,) = cluster_arrays([values], k, init=init, method=method, device="cpu")
    x = values.astype(numpy.float64)
    distance_to_own = numpy.abs(x - result.codebook[result.labels])
    distance_to_best = numpy.abs(x[:, None] - result.codebook[None, :]).min(axis=1)
    # Assignment is exact in fixed point (2**-40 of the largest magnitude).
    tolerance = numpy.abs(x).max() * 2.0**-36 + 1e-300
    assert numpy.all(distance_to_own <= distance_to_best + tolerance)
    assert numpy.all(numpy.diff(result.codebook) >= 0), "centroids are sorted"
    assert result.labels.max() < k


@settings(max_examples=40, deadline=None)
@given(values=weight_arrays, k=st.integers(2, 24), init=st.sampled_from(sorted(INITIALIZERS)))
def test_objective_never_increases(values, k, init):
    objectives = [sse(values, cluster_arrays([values], k, init=init, method="lloyd", max_iter=t,
                                                device="cpu")[0])
                  for t in range(0, 8)]
    scale = float(numpy.abs(values.astype(numpy.float64)).max()) ** 2 * values.size * 2.0**-34
    for before, after in zip(objectives, objectives[1:]):
        assert after <= before + scale


@settings(max_examples=30, deadline=None)
@given(arrays=st.lists(weight_arrays, min_size=1, max_size=6), k=st.integers(2, 32),
       init=st.sampled_from(sorted(INITIALIZERS)), method=st.sampled_from(sorted(METHODS)))
def test_identical_across_runs_and_batch_sizes(arrays, k, init, method):
    first = cluster_arrays(arrays, k, init=init, method=method, device="cpu")
    again = cluster_arrays(arrays, k, init=init, method=method, device="cpu")
    one_by_one = cluster_arrays(arrays, k, init=init, method=method, device="cpu", batch_values=1)
    for a, b, c in zip(first, again, one_by_one):
        for other in (b, c):
            assert a.codebook.tobytes() == other.codebook.tobytes()
            assert a.labels.tobytes() == other.labels.tobytes()
            assert a.iterations == other.iterations


def test_lloyd_matches_scikit_learn_from_the_same_start():
    from sklearn.cluster import KMeans

    values = numpy.random.default_rng(3).laplace(size=5000)
    (ours,) = cluster_arrays([values], 8, init="density", method="lloyd", device="cpu")
    (start,) = cluster_arrays([values], 8, init="density", method="lloyd", max_iter=0, device="cpu")
    reference = KMeans(8, init=start.codebook[:, None], n_init=1, max_iter=300, tol=0,
                       algorithm="lloyd").fit(values[:, None])
    numpy.testing.assert_allclose(ours.codebook, numpy.sort(reference.cluster_centers_[:, 0]), rtol=1e-6)


def test_mixed_dtypes_and_shapes():
    rng = numpy.random.default_rng(0)
    arrays = [rng.normal(size=(4, 5)).astype(numpy.float16), rng.normal(size=300), rng.normal(size=(7,))]
    results = cluster_arrays(arrays, 4, device="cpu")
    assert [r.labels.size for r in results] == [20, 300, 7]
    assert all(r.codebook.dtype == numpy.float64 and r.codebook.size == 4 for r in results)


def test_large_k_uses_wider_labels():
    values = numpy.arange(1000, dtype=numpy.float32)
    (result,) = cluster_arrays([values], 300, device="cpu")
    assert result.labels.dtype == numpy.uint16
    assert numpy.unique(result.codebook[result.labels]).size == 300


def test_plan_batches_respects_budget_and_order():
    assert plan_batches([3, 3, 3, 10, 1], 6) == [range(0, 2), range(2, 3), range(3, 4), range(4, 5)]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(n_clusters=1), "n_clusters=1 should be an integer >= 2"),
        (dict(init="random"), "init='random' should be one of"),
        (dict(method="magic"), "method='magic' should be one of"),
        (dict(max_iter=-1), "max_iter=-1 should be"),
    ],
)
def test_bad_options_are_named(kwargs, message):
    with pytest.raises(OptionsError, match=message.replace("(", r"\(").replace("[", r"\[")):
        cluster_arrays([numpy.ones(3)], **{"n_clusters": 2, **kwargs})


def test_rejects_non_finite_and_integers():
    with pytest.raises(OptionsError, match="NaN or Inf"):
        cluster_arrays([numpy.array([1.0, numpy.nan])], 2, device="cpu")
    with pytest.raises(OptionsError, match="floating dtype"):
        cluster_arrays([numpy.arange(5)], 2, device="cpu")


requires_gpu = pytest.mark.skipif(not gpu_available(), reason="needs CuPy and a CUDA device")


@pytest.mark.gpu
@requires_gpu
@settings(max_examples=25, deadline=None)
@given(arrays=st.lists(weight_arrays, min_size=1, max_size=5), k=st.integers(2, 64),
       init=st.sampled_from(sorted(INITIALIZERS)), method=st.sampled_from(sorted(METHODS)))
def test_numpy_and_cupy_bit_identical(arrays, k, init, method):
    cpu = cluster_arrays(arrays, k, init=init, method=method, device="cpu")
    gpu = cluster_arrays(arrays, k, init=init, method=method, device="gpu")
    for a, b in zip(cpu, gpu):
        assert a.codebook.dtype == b.codebook.dtype and a.labels.dtype == b.labels.dtype
        assert a.codebook.tobytes() == b.codebook.tobytes()
        assert a.labels.tobytes() == b.labels.tobytes()
        assert a.iterations == b.iterations


def test_first_id_lets_a_caller_split_the_arrays():
    """kmeans++ draws follow each array's id, so two calls with first_id equal one call."""
    rng = numpy.random.default_rng(3)
    arrays = [rng.normal(size=500 + 100 * i) for i in range(4)]
    whole = cluster_arrays(arrays, 8, init="kmeans++", method="lloyd", device="cpu")
    split = (cluster_arrays(arrays[:1], 8, init="kmeans++", method="lloyd", device="cpu")
             + cluster_arrays(arrays[1:], 8, init="kmeans++", method="lloyd", device="cpu", first_id=1))
    unshifted = cluster_arrays(arrays[1:], 8, init="kmeans++", method="lloyd", device="cpu")
    for a, b in zip(whole, split):
        assert numpy.array_equal(a.codebook, b.codebook) and numpy.array_equal(a.labels, b.labels)
    assert any(not numpy.array_equal(a.codebook, b.codebook) for a, b in zip(whole[1:], unshifted))
