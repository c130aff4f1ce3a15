"""Issue 17's two halves together: importance weights with per-channel/grouped codebooks and kept zeros."""
from __future__ import annotations

import json

import numpy
import pytest

from gpucompress import CompressOptions
from gpucompress.cli import main
from gpucompress.clustering import cluster_weights
from gpucompress.engine import cluster_arrays, cluster_segments
from gpucompress.kernels import compiled, fixedpoint
from gpucompress.models.graphdef import GraphDefModel
from gpucompress.packing import encode_model

from .conftest import const_node, graphdef_of
from .cupy_testing import assert_same, requires_gpu


def _mixed_segments(rng, dtype="float32"):
    """Return (values, sizes, weights): segments whose weights are random, equal, all zero, counts, random."""
    sizes = numpy.array([60, 45, 50, 70, 33], dtype=numpy.int64)
    values = (rng.laplace(size=int(sizes.sum())) * numpy.repeat(rng.uniform(0.1, 3, sizes.size), sizes))
    weights = numpy.concatenate([rng.exponential(size=60) ** 3, numpy.full(45, 2.5), numpy.zeros(50),
                                 rng.integers(0, 9, 70).astype(numpy.float64), rng.random(33)])
    return values.astype(dtype), sizes, weights


def _cut(flat, sizes):
    return numpy.split(flat, numpy.cumsum(sizes)[:-1])


@pytest.mark.parametrize("method, init", [("optimal", "linear"), ("lloyd", "density"), ("lloyd", "linear")])
def test_a_weighted_segment_is_clustered_as_if_alone_with_its_weights(method, init):
    rng = numpy.random.default_rng(11)
    values, sizes, weights = _mixed_segments(rng)
    (result,) = cluster_segments([values], [sizes], 6, method=method, init=init, weights=[weights], device="cpu")
    for s, (part, w) in enumerate(zip(_cut(values, sizes), _cut(weights, sizes))):
        (alone,) = cluster_arrays([part], 6, method=method, init=init, weights=[w], device="cpu")
        numpy.testing.assert_array_equal(result.codebooks[s], alone.codebook)
        numpy.testing.assert_array_equal(_cut(result.labels, sizes)[s], alone.labels)
        assert result.iterations[s] == alone.iterations
    # Uniform segments (equal weights, all zero) are the unweighted clustering.
    for s in (1, 2):
        (plain,) = cluster_arrays([_cut(values, sizes)[s]], 6, method=method, init=init, device="cpu")
        numpy.testing.assert_array_equal(result.codebooks[s], plain.codebook)


def test_segment_weights_quantize_like_each_segment_alone():
    rng = numpy.random.default_rng(3)
    _, sizes, weights = _mixed_segments(rng)
    got = fixedpoint.quantize_segment_weights(weights, sizes)
    expected = [fixedpoint.quantize_weights(w) for w in _cut(weights, sizes)]
    assert expected[1] is None and expected[2] is None  # equal, and all zero: uniform
    numpy.testing.assert_array_equal(got, numpy.concatenate(
        [numpy.ones(n, numpy.int64) if e is None else e for n, e in zip(sizes, expected)]))
    assert fixedpoint.quantize_segment_weights(numpy.full(12, 3.0), numpy.array([5, 7])) is None


def test_weighted_segments_agree_on_the_compiled_and_array_paths(monkeypatch):
    if not compiled.available():
        pytest.skip("the compiled extension is not built")
    rng = numpy.random.default_rng(4)
    values, sizes, weights = _mixed_segments(rng)
    half, half_sizes, half_weights = _mixed_segments(rng, "float16")
    arrays, all_sizes, all_weights = [values, half, values[:100]], [sizes, half_sizes, numpy.array([100])], \
        [weights, half_weights, None]
    fast = cluster_segments(arrays, all_sizes, 8, weights=all_weights, device="cpu")
    with monkeypatch.context() as patch:
        patch.setattr(compiled, "available", lambda: False)
        slow = cluster_segments(arrays, all_sizes, 8, weights=all_weights, device="cpu")
    for a, b in zip(fast, slow):
        numpy.testing.assert_array_equal(a.codebooks, b.codebooks)
        numpy.testing.assert_array_equal(a.labels, b.labels)
        numpy.testing.assert_array_equal(a.exact, b.exact)


def test_exact_rows_of_float16_segments_are_those_of_each_segment_alone():
    rng = numpy.random.default_rng(5)
    values, sizes, weights = _mixed_segments(rng, "float16")
    for w in (None, weights):
        (result,) = cluster_segments([values], [sizes], 4, weights=None if w is None else [w], device="cpu")
        assert result.exact.shape == (sizes.size,) and result.exact.all()
        for s, part in enumerate(_cut(values, sizes)):
            (alone,) = cluster_arrays([part], 4, weights=None if w is None else [_cut(w, sizes)[s]], device="cpu")
            assert alone.exact
            numpy.testing.assert_array_equal(result.codebooks[s], alone.codebook)
    # A float32 array flagged as few-valued (int8 integers) is exact in every segment too.
    integers = rng.integers(-128, 128, size=int(sizes.sum())).astype(numpy.float32)
    (flagged,) = cluster_segments([integers], [sizes], 4, exact_candidates=[True], device="cpu")
    (plain,) = cluster_segments([integers], [sizes], 4, device="cpu")
    assert flagged.exact.all() and not plain.exact.any()


def _model(rng, zeros=0.0):
    matrix = (rng.normal(size=(40, 12)) * numpy.exp(rng.uniform(0, 2.3, 12))).astype(numpy.float32)
    matrix[rng.random(matrix.shape) < zeros] = 0
    other = rng.laplace(size=(20, 10)).astype(numpy.float32)
    return GraphDefModel(graphdef_of(const_node("matrix", matrix), const_node("other", other))), matrix


def _archive(model, options, importance=None):
    run = cluster_weights(model.weights(), options, importance=importance)
    model.replace_values({t.name: t.values() for t in run.clustered()})
    return encode_model(model, run)[0], run


@pytest.mark.parametrize("granularity, group_size", [("per-channel", None), ("grouped", 4)])
def test_equal_importances_give_the_unweighted_per_channel_bytes(granularity, group_size):
    options = CompressOptions(n_clusters=8, granularity=granularity, group_size=group_size, device="cpu")
    model, _ = _model(numpy.random.default_rng(0))
    plain, _ = _archive(model, options)
    model, _ = _model(numpy.random.default_rng(0))
    equal, run = _archive(model, options, {"matrix": numpy.full((40, 12), 0.3), "other": numpy.ones((20, 10))})
    assert equal == plain
    assert {t.importance for t in run.clustered()} == {"weighted"}


def test_weighted_per_channel_differs_keeps_k_per_channel_and_each_channel_is_its_own():
    rng = numpy.random.default_rng(1)
    model, matrix = _model(rng)
    importance = rng.exponential(size=matrix.shape) ** 4
    options = CompressOptions(n_clusters=4, granularity="per-channel", device="cpu")
    plain = {t.name: t for t in cluster_weights(model.weights(), options).clustered()}
    weighted = {t.name: t for t in cluster_weights(model.weights(), options,
                                                   importance={"matrix": importance}).clustered()}
    outcome = weighted["matrix"]
    assert outcome.importance == "weighted" and weighted["other"].importance.startswith("uniform")
    assert outcome.codebook.shape == (12, 4) and outcome.layout().axis == 1  # unknown kind: last axis
    values = outcome.values()
    assert not numpy.array_equal(values, plain["matrix"].values())
    numpy.testing.assert_array_equal(weighted["other"].values(), plain["other"].values())
    for c in range(12):
        assert numpy.unique(values[:, c]).size <= 4
        (alone,) = cluster_arrays([matrix[:, c]], 4, weights=[importance[:, c]], device="cpu")
        numpy.testing.assert_array_equal(outcome.codebook[c], alone.codebook.astype(numpy.float32))
    errors = values.astype(numpy.float64) - matrix
    assert outcome.weighted_sse == pytest.approx(float(numpy.sum(importance * errors ** 2)), rel=1e-9)
    assert outcome.sse == pytest.approx(float(numpy.sum(errors ** 2)), rel=1e-9)
    plain_errors = plain["matrix"].values().astype(numpy.float64) - matrix
    assert outcome.weighted_sse < float(numpy.sum(importance * plain_errors ** 2))


@pytest.mark.parametrize("granularity", ["per-tensor", "per-channel"])
def test_kept_zeros_and_their_importances_stay_out_of_the_weighted_clustering(granularity):
    rng = numpy.random.default_rng(2)
    model, matrix = _model(rng, zeros=0.5)
    importance = rng.exponential(size=matrix.shape) ** 3
    options = CompressOptions(n_clusters=5, granularity=granularity, device="cpu", keep_zeros=True)
    first, run = _archive(model, options, {"matrix": importance})
    outcome = {t.name: t for t in run.clustered()}["matrix"]
    assert outcome.kept_zeros and outcome.importance == "weighted"
    values = outcome.values()
    assert (values[matrix == 0] == 0).all() and not (values[matrix != 0] == 0).any()
    # The zeros' importances change nothing: they are dropped with the zeros.
    changed = importance.copy()
    changed[matrix == 0] = 1e6
    model, _ = _model(numpy.random.default_rng(2), zeros=0.5)
    assert _archive(model, options, {"matrix": changed})[0] == first
    # The nonzeros are clustered alone with their importances and k - 1 centroids.
    columns = [slice(None)] if granularity == "per-tensor" else [numpy.s_[:, c] for c in range(12)]
    codebooks = outcome.codebook.reshape(len(columns), -1)
    for row, column in enumerate(columns):
        part, weight = matrix[column], importance[column]
        (alone,) = cluster_arrays([part[part != 0]], 4, weights=[weight[part != 0]], device="cpu")
        numpy.testing.assert_array_equal(numpy.delete(codebooks[row], numpy.flatnonzero(codebooks[row] == 0)[0]),
                                         alone.codebook.astype(numpy.float32))
    errors = values.astype(numpy.float64) - matrix
    assert outcome.weighted_sse == pytest.approx(float(numpy.sum(importance * errors ** 2)), rel=1e-9)


def test_cli_per_channel_keep_zeros_importance_report_fits_the_schema(tmp_path, capsys):
    from .test_report import validate

    model, matrix = _model(numpy.random.default_rng(3), zeros=0.5)
    path, grads = tmp_path / "m.pb", tmp_path / "imp.npz"
    path.write_bytes(model.to_bytes())
    numpy.savez(grads, matrix=numpy.random.default_rng(4).exponential(size=matrix.shape))
    report = tmp_path / "r.json"
    assert main(["compress", str(path), "-o", str(tmp_path / "o.pb"), "--n_clusters", "6", "--granularity",
                 "per-channel", "--importance", str(grads), "--report", str(report)]) == 0
    out = capsys.readouterr().out
    assert "importance-weighted: 1 tensors; 1 without an entry clustered unweighted" in out
    loaded = json.loads(report.read_text())
    validate(loaded)
    entries = {t["name"]: t for t in loaded["tensors"]}
    assert entries["matrix"]["importance"] == "weighted" and entries["matrix"]["kept_zeros"]
    assert entries["matrix"]["codebooks"] == 12 and entries["matrix"]["weighted_sse"] > 0
    assert entries["other"]["importance"].startswith("uniform")
    assert entries["other"]["weighted_sse"] == entries["other"]["sse"]


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("method", ["optimal", "lloyd"])
def test_weighted_and_exact_segments_gpu_equal_cpu(method):
    # The CuPy path of weighted segments (per-segment scales and weight totals) against the CPU's.
    rng = numpy.random.default_rng(6)
    values, sizes, weights = _mixed_segments(rng)
    half, half_sizes, half_weights = _mixed_segments(rng, "float16")
    arrays, all_sizes = [values, half, values[:100]], [sizes, half_sizes, numpy.array([60, 40])]
    for extra in ({"weights": [weights, half_weights, None]}, {}):
        cpu = cluster_segments(arrays, all_sizes, 8, method=method, device="cpu", **extra)
        on_gpu = cluster_segments(arrays, all_sizes, 8, method=method, device="gpu", **extra)
        for a, b in zip(cpu, on_gpu):
            assert_same((a.codebooks, a.labels, a.iterations, a.exact), (b.codebooks, b.labels, b.iterations, b.exact))
