"""Per-channel and grouped codebooks, exact zeros, and the archive that stores them (issue 17)."""
from __future__ import annotations

import hashlib
import json
import os

import numpy
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpucompress import CompressOptions, OptionsError
from gpucompress.channels import Layout, layout_for
from gpucompress.cli import main
from gpucompress.clustering import cluster_weights
from gpucompress.engine import cluster_arrays, cluster_segments
from gpucompress.errors import FormatError
from gpucompress.kernels import compiled
from gpucompress.models.graphdef import GraphDefModel
from gpucompress.packing import decode_archive, encode_model

from .conftest import const_node, graphdef_of

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
DATA = os.path.join(os.path.dirname(__file__), "data")


def _scaled(rng, shape, axis=-1):
    """Return float32 values whose channels along axis differ in scale by about 10x (as trained nets')."""
    gains = numpy.exp(rng.uniform(0, numpy.log(10), shape[axis]))
    gains = numpy.expand_dims(gains, tuple(i for i in range(len(shape)) if i != axis % len(shape)))
    return (rng.normal(size=shape) * gains).astype(numpy.float32)


def _graph(rng):
    """A GraphDef with a conv kernel, a ragged-group matrix (zeros, NaN), a float16 one and a bias."""
    kernel = _scaled(rng, (3, 3, 4, 12))
    matrix = _scaled(rng, (30, 10))
    matrix[rng.random(matrix.shape) < 0.4] = 0
    matrix[0, 0], matrix[3, 7] = numpy.nan, -numpy.inf
    half = _scaled(rng, (20, 6)).astype(numpy.float16)
    bias = rng.normal(size=300).astype(numpy.float32)
    return GraphDefModel(graphdef_of(const_node("kernel", kernel), const_node("matrix", matrix),
                                     const_node("half", half), const_node("bias", bias)))


def _distinct_per_group(outcome):
    layout = outcome.layout()
    moved = numpy.moveaxis(outcome.values(), layout.axis, 0).reshape(layout.channels, -1)
    return [numpy.unique(moved[r * layout.group_size:(r + 1) * layout.group_size][
        numpy.isfinite(moved[r * layout.group_size:(r + 1) * layout.group_size])]).size for r in range(layout.rows)]


@pytest.mark.parametrize("granularity, group_size", [("per-channel", None), ("grouped", 4), ("grouped", 3)])
@pytest.mark.parametrize("k", [3, 8])
def test_each_channel_or_group_holds_at_most_k_values(granularity, group_size, k):
    model = _graph(numpy.random.default_rng(k))
    run = cluster_weights(model.weights(), CompressOptions(n_clusters=k, granularity=granularity,
                                                           group_size=group_size, device="cpu", min_n_weights=1))
    split = [t for t in run.clustered() if t.layout() is not None]
    assert {t.name for t in split} == {"kernel", "matrix", "half"}  # the bias (rank 1) keeps one codebook
    for outcome in split:
        assert max(_distinct_per_group(outcome)) <= k
        assert outcome.codebook.shape == (outcome.layout().rows, k)
        original = model.weights()[[w.name for w in model.weights()].index(outcome.name)].load()
        finite = numpy.isfinite(original)
        errors = outcome.values()[finite].astype(numpy.float64) - original[finite]
        assert outcome.sse == pytest.approx(float(errors @ errors), rel=1e-6)


def test_a_channel_is_a_segment_whose_result_is_its_own():
    # Each segment's result depends on it alone: per channel = clustering every channel by itself.
    rng = numpy.random.default_rng(0)
    values = _scaled(rng, (48, 20), axis=0).reshape(-1)
    (result,) = cluster_segments([values], [numpy.full(20, 48)], 8, device="cpu")
    single = cluster_arrays([values[c * 48:(c + 1) * 48] for c in range(20)], 8, device="cpu")
    for c, alone in enumerate(single):
        numpy.testing.assert_array_equal(result.codebooks[c], alone.codebook)
        numpy.testing.assert_array_equal(result.labels[c * 48:(c + 1) * 48], alone.labels)


def test_per_channel_error_is_far_below_per_tensor_on_channel_scaled_weights():
    rng = numpy.random.default_rng(1)
    model = GraphDefModel(graphdef_of(const_node("w", _scaled(rng, (3, 3, 16, 64)))))
    sse = {g: cluster_weights(model.weights(), CompressOptions(n_clusters=16, granularity=g, device="cpu"))
           .clustered()[0].sse for g in ("per-tensor", "per-channel")}
    assert sse["per-channel"] < 0.5 * sse["per-tensor"]


def _archive_bytes(options):
    model = _graph(numpy.random.default_rng(5))
    run = cluster_weights(model.weights(), options)
    model.replace_values({t.name: t.values() for t in run.clustered()})
    return encode_model(model, run)[0], model


@pytest.mark.parametrize("granularity, group_size, method, init", [
    ("per-channel", None, "optimal", "linear"), ("grouped", 4, "lloyd", "kmeans++"), ("per-tensor", None, "lloyd", "density")])
def test_numpy_and_compiled_paths_write_identical_archives(monkeypatch, granularity, group_size, method, init):
    options = CompressOptions(n_clusters=16, granularity=granularity, group_size=group_size, method=method,
                              init=init, device="cpu", keep_zeros=True)
    compiled_bytes = _archive_bytes(options)[0]
    monkeypatch.setenv(compiled.DISABLE_VARIABLE, "0")
    compiled.available.cache_clear()
    try:
        assert not compiled.available()
        assert _archive_bytes(options)[0] == compiled_bytes
    finally:
        monkeypatch.delenv(compiled.DISABLE_VARIABLE)
        compiled.available.cache_clear()


@pytest.mark.parametrize("granularity, group_size", [("per-channel", None), ("grouped", 4)])
def test_graphdef_archive_round_trips_to_the_compressed_model(granularity, group_size):
    data, compressed = _archive_bytes(CompressOptions(n_clusters=16, granularity=granularity,
                                                      group_size=group_size, device="cpu"))
    assert decode_archive(data).to_bytes() == compressed.to_bytes()


def test_keep_zeros_keeps_them_exact_and_out_of_the_clustering():
    rng = numpy.random.default_rng(2)
    values = rng.laplace(size=(40, 25)).astype(numpy.float32)
    values[rng.random(values.shape) < 0.5] = 0
    values[1, 1] = -0.0
    model = GraphDefModel(graphdef_of(const_node("w", values)))
    kept = cluster_weights(model.weights(), CompressOptions(n_clusters=8, device="cpu")).clustered()[0]
    assert kept.kept_zeros and kept.zero_share > 0.3  # auto: on above 30% zeros
    out = kept.values()
    assert (out[values == 0] == 0).all() and numpy.count_nonzero(out[values != 0] == 0) == 0
    assert 0.0 in kept.codebook and numpy.all(numpy.diff(kept.codebook) >= 0)  # 0.0 in sorted place
    # The nonzeros get exactly what clustering them alone with k - 1 centroids gives.
    (alone,) = cluster_arrays([values[values != 0]], 7, device="cpu")
    numpy.testing.assert_array_equal(numpy.delete(kept.codebook, numpy.flatnonzero(kept.codebook == 0)[0]),
                                     alone.codebook.astype(numpy.float32))
    plain = cluster_weights(model.weights(), CompressOptions(n_clusters=8, device="cpu", keep_zeros=False))
    assert not plain.clustered()[0].kept_zeros
    per_channel = cluster_weights(model.weights(), CompressOptions(n_clusters=8, granularity="per-channel",
                                                                   device="cpu")).clustered()[0]
    assert per_channel.kept_zeros and (per_channel.values()[values == 0] == 0).all()
    assert max(_distinct_per_group(per_channel)) <= 8


def test_keep_zeros_auto_stays_off_below_the_threshold_and_the_report_says_so(tmp_path, capsys):
    rng = numpy.random.default_rng(3)
    sparse = rng.normal(size=(50, 20)).astype(numpy.float32)
    sparse[rng.random(sparse.shape) < 0.6] = 0
    dense = rng.normal(size=(50, 20)).astype(numpy.float32)
    dense[rng.random(dense.shape) < 0.1] = 0
    path = tmp_path / "m.pb"
    path.write_bytes(graphdef_of(const_node("sparse", sparse), const_node("dense", dense)).SerializeToString())
    report = tmp_path / "r.json"
    assert main(["compress", str(path), "--n_clusters", "16", "--granularity", "grouped", "--group-size", "3",
                 "--report", str(report)]) == 0
    printed = capsys.readouterr().out
    entries = {t["name"]: t for t in json.loads(report.read_text())["tensors"]}
    assert entries["sparse"]["kept_zeros"] and not entries["dense"]["kept_zeros"]
    assert entries["sparse"]["codebooks"] == 7 and entries["sparse"]["last_group_channels"] == 2
    assert "exact zeros kept" in printed and "last group smaller" in printed and "14 codebooks" in printed


@pytest.mark.parametrize("arguments, message", [
    (["--granularity", "grouped", "--group-size", "0"], "group_size=0 should be >= 1"),
    (["--granularity", "grouped", "--group-size", "21"], "group_size=21 should be 1..20 for tensor 'w'"),
    (["--granularity", "grouped"], "needs group_size"),
    (["--granularity", "per-channel", "--channel-axis", "2"], "channel_axis=2 is out of range for tensor 'w'"),
    (["--group-size", "4"], "applies to granularity='grouped' only"),
    (["--channel-axis", "0"], "applies to granularity 'per-channel' or 'grouped' only"),
    (["--keep-zeros", "--n_clusters", "2"], "keep_zeros=True needs n_clusters >= 3"),
    (["--granularity", "per-channel", "--global_clusters"], "does not apply to global_clusters"),
])
def test_bad_granularity_options_fail_with_one_line_and_write_nothing(tmp_path, capsys, arguments, message):
    path = tmp_path / "m.pb"
    path.write_bytes(graphdef_of(const_node("w", numpy.random.default_rng(0).normal(size=(30, 20))
                                            .astype(numpy.float32))).SerializeToString())
    for command in ("compress", "pack"):
        assert main([command, str(path), *arguments]) != 0
        error = capsys.readouterr().err.strip()
        assert message in error and len(error.splitlines()) == 1 and "Traceback" not in error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pb"]


def test_layout_rules():
    layout = layout_for("t", (3, 3, 8, 10), "grouped", 4, None, None)
    assert (layout.axis, layout.rows, layout.ragged) == (3, 3, True)
    assert layout.segment_sizes().tolist() == [72 * 4, 72 * 4, 72 * 2]
    assert layout_for("t", (300,), "per-channel", None, None, None) is None  # vectors: one codebook
    assert layout_for("t", (5, 7), "per-channel", None, -2, None).axis == 0
    values = numpy.arange(5 * 7 * 2, dtype=numpy.float32).reshape(5, 7, 2)
    layout = Layout(values.shape, 1, 3)
    numpy.testing.assert_array_equal(layout.from_channel_major(layout.to_channel_major(values)), values.reshape(-1))


def test_graphdef_layer_kinds_pick_the_output_channel_axis():
    from tensorboard.compat.proto import node_def_pb2

    rng = numpy.random.default_rng(4)
    consts = {"conv": (3, 3, 4, 8), "depthwise": (3, 3, 4, 2), "transpose": (3, 3, 8, 4), "matmul_t": (6, 9),
              "embedding": (50, 6), "free": (7, 9)}
    nodes = [const_node(name, rng.normal(size=shape).astype(numpy.float32)) for name, shape in consts.items()]
    nodes.append(node_def_pb2.NodeDef(name="conv_read", op="Identity", input=["conv"]))
    for name, op, inputs in [("c", "Conv2D", ["x", "conv_read:0"]), ("d", "DepthwiseConv2dNative", ["x", "depthwise"]),
                             ("t", "Conv2DBackpropInput", ["s", "transpose", "x"]), ("m", "MatMul", ["x", "matmul_t"]),
                             ("g", "GatherV2", ["embedding", "ids", "axis"])]:
        nodes.append(node_def_pb2.NodeDef(name=name, op=op, input=inputs))
    nodes[-2].attr["transpose_b"].b = True
    model = GraphDefModel(graphdef_of(*nodes))
    run = cluster_weights(model.weights(), CompressOptions(n_clusters=4, granularity="per-channel", device="cpu"))
    axes = {t.name: (t.channel_axis, t.axis_source) for t in run.clustered()}
    assert axes == {"conv": (3, "layer kind conv"), "depthwise": (2, "layer kind depthwise"),
                    "transpose": (2, "layer kind transpose_conv"), "matmul_t": (0, "layer kind matmul_transposed"),
                    "embedding": (1, "layer kind embedding"), "free": (1, "last axis (layer kind unknown)")}


def test_version_1_archives_still_read(monkeypatch):
    from gpucompress.kernels import optimal

    from .data.make_archive_v1 import tiny_graph

    data = open(os.path.join(DATA, "archive_v1.gpcz"), "rb").read()
    assert int.from_bytes(data[8:10], "little") == 1
    model = tiny_graph()
    # The fixture's tensors (237 and 300 values) were clustered with the bin
    # counts of the time, min(n, max(256, 8 k)): what MIN_BINS = 256 gives
    # (bin_count); since issue 17 they get 128.
    monkeypatch.setattr(optimal, "MIN_BINS", 256)
    run = cluster_weights(model.weights(), CompressOptions(n_clusters=8, device="cpu"))
    model.replace_values({t.name: t.values() for t in run.clustered()})
    assert decode_archive(data).to_bytes() == model.to_bytes()


def test_archive_refuses_codebook_rows_that_do_not_fit_the_channels():
    from gpucompress.codec import archive

    data, _ = _archive_bytes(CompressOptions(n_clusters=8, granularity="per-channel", device="cpu"))
    parsed = archive.read_archive(data)
    (tensor,) = [t for t in parsed.tensors if t.name == "kernel"]
    wrong = archive.CodedTensor(tensor.name, tensor.dtype, tensor.shape, tensor.codebook[:-1], tensor.indices,
                                channel_axis=tensor.channel_axis, group_size=tensor.group_size)
    with pytest.raises(ValueError, match="rows"):
        archive.write_archive(archive.Archive("graphdef", parsed.skeleton, [wrong]))
    manifest = {"tensors": [{"name": "t", "shape": [4, 6], "channels": {"axis": 1, "group_size": 4}}]}
    with pytest.raises(FormatError, match="6 channels in groups of 4, its codebook 1 rows"):
        archive._check_channels(manifest["tensors"][0], 1)


def _digest(path):
    if path.is_dir():
        return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(path.rglob("*")) if p.is_file()}
    return hashlib.sha256(path.read_bytes()).hexdigest()


GRANULARITIES = [("per-channel", None), ("grouped", 4)]


def _pack_equals_compress(source, tmp_path, options, name):
    from gpucompress import compress_file
    from gpucompress.packing import pack_file, unpack_file

    compressed = tmp_path / f"{name}.compressed{''.join(source.suffixes) if source.is_file() else ''}"
    summary = compress_file(source, compressed, options)
    assert summary.run.clustered() and all(t.layout() is not None or len(t.shape) <= 1
                                           for t in summary.run.clustered())
    archive = tmp_path / f"{name}.gpcz"
    pack_file(source, archive, options, zip_sizes=False)
    output, _ = unpack_file(archive, tmp_path / f"{name}.unpacked{''.join(source.suffixes) if source.is_file() else ''}")
    assert _digest(output) == _digest(compressed)
    return summary


@pytest.fixture(scope="module")
def keras_files(tmp_path_factory):
    """A functional Keras model (Embedding, Dense, BatchNormalization) as .keras, .h5, .weights.h5 and SavedModel."""
    pytest.importorskip("tensorflow")
    import keras

    from .keras_models import _randomize_batch_norm, functional_model

    folder = tmp_path_factory.mktemp("granularity_keras")
    keras.utils.set_random_seed(3)
    functional = functional_model()  # untrained: no optimizer state to carry (its own tests cover that)
    _randomize_batch_norm(functional, numpy.random.default_rng(3))
    paths = {"keras": folder / "m.keras", "h5": folder / "m.h5", "weights": folder / "m.weights.h5",
             "savedmodel": folder / "saved"}
    functional.save(paths["keras"])
    functional.save(paths["h5"])
    functional.save_weights(paths["weights"])
    functional.export(str(paths["savedmodel"]), verbose=False)
    return paths


@pytest.mark.parametrize("granularity, group_size", GRANULARITIES)
@pytest.mark.parametrize("kind", ["keras", "h5", "weights", "savedmodel"])
def test_pack_unpack_equals_compress_for_keras_and_savedmodel(keras_files, tmp_path, kind, granularity, group_size):
    options = CompressOptions(n_clusters=8, granularity=granularity, group_size=group_size, device="cpu")
    summary = _pack_equals_compress(keras_files[kind], tmp_path, options, kind)
    for outcome in summary.run.clustered():
        if outcome.layout() is not None:
            assert max(_distinct_per_group(outcome)) <= 8


@pytest.mark.parametrize("granularity, group_size", GRANULARITIES)
def test_pack_unpack_equals_compress_for_a_frozen_graph(keras_frozen, tmp_path, granularity, group_size):
    path, _ = keras_frozen
    options = CompressOptions(n_clusters=16, granularity=granularity, group_size=group_size, device="cpu")
    summary = _pack_equals_compress(path, tmp_path, options, "graph")
    sources = {t.axis_source for t in summary.run.clustered() if t.layout() is not None}
    assert "layer kind conv" in sources and "layer kind matmul" in sources


@pytest.fixture(scope="module")
def tflite_files(tmp_path_factory):
    """The Conv2D -> DepthwiseConv2D -> Dense -> Dense model as float32 and full-integer .tflite files."""
    pytest.importorskip("tensorflow")
    from .tflite_models import conv_model, convert, images

    folder = tmp_path_factory.mktemp("granularity_tflite")
    model = conv_model(seed=2)
    paths = {}
    for kind in ("float32", "int8"):
        paths[kind] = folder / f"{kind}.tflite"
        paths[kind].write_bytes(convert(model, kind, images(16)))
    return paths


@pytest.mark.parametrize("granularity, group_size", GRANULARITIES)
@pytest.mark.parametrize("kind", ["float32", "int8"])
def test_pack_unpack_equals_compress_for_tflite(tflite_files, tmp_path, kind, granularity, group_size):
    options = CompressOptions(n_clusters=8, granularity=granularity, group_size=group_size, device="cpu")
    summary = _pack_equals_compress(tflite_files[kind], tmp_path, options, kind)
    by_kind = {t.axis_source: t for t in summary.run.clustered() if t.layout() is not None}
    # TFLite filters are [out, h, w, in]: the output channels are axis 0; depthwise [1, h, w, out]: the last.
    assert by_kind["layer kind tflite_conv"].channel_axis == 0
    assert by_kind["layer kind tflite_depthwise"].channel_axis == 3
    assert by_kind["layer kind tflite_fully_connected"].channel_axis == 0
    for outcome in summary.run.clustered():
        if outcome.layout() is not None:
            assert max(_distinct_per_group(outcome)) <= 8


def test_options_reject_what_does_not_apply():
    with pytest.raises(OptionsError, match="granularity='bad' should be one of"):
        CompressOptions(granularity="bad")
    with pytest.raises(OptionsError, match="engine='gpucompress'"):
        CompressOptions(granularity="per-channel", engine="faiss")
    with pytest.raises(OptionsError, match="keep_zeros=True does not apply to global_clusters"):
        CompressOptions(global_clusters=True, keep_zeros=True)


def test_report_of_a_grouped_run_fits_the_schema(tmp_path):
    from .test_report import validate

    path = tmp_path / "m.pb"
    path.write_bytes(_graph(numpy.random.default_rng(6)).to_bytes())
    report = tmp_path / "r.json"
    assert main(["compress", str(path), "--n_clusters", "8", "--granularity", "grouped", "--group-size", "4",
                 "--report", str(report), "-q"]) == 0
    loaded = json.loads(report.read_text())
    validate(loaded)
    entries = {t["name"]: t for t in loaded["tensors"]}
    assert (entries["kernel"]["codebooks"], entries["kernel"]["last_group_channels"]) == (3, None)
    assert (entries["matrix"]["codebooks"], entries["matrix"]["last_group_channels"]) == (3, 2)
    assert entries["bias"]["granularity"] == "per-tensor" and entries["bias"]["codebooks"] == 1
    assert entries["matrix"]["kept_zeros"] and entries["kernel"]["axis_source"] == "last axis (layer kind unknown)"
    assert loaded["totals"]["codebooks"] == 3 + 3 + 2 + 1


def test_inspect_tells_per_channel_and_grouped_codebooks(tmp_path):
    from gpucompress.inspect import format_table, inspect_model

    rng = numpy.random.default_rng(7)
    model = GraphDefModel(graphdef_of(const_node("w", _scaled(rng, (3, 3, 16, 32)))))
    for fields, group in (({"granularity": "per-channel"}, 1), ({"granularity": "grouped", "group_size": 4}, 4)):
        run = cluster_weights(model.weights(), CompressOptions(n_clusters=8, device="cpu", **fields))
        clustered = GraphDefModel(graphdef_of(const_node("w", run.clustered()[0].values())))
        path = tmp_path / f"g{group}.pb"
        path.write_bytes(clustered.to_bytes())
        (stats,) = inspect_model(path, max_centroids=8).tensors
        assert stats.looks_clustered and (stats.channel_axis, stats.group_size, stats.codebooks) == (3, group, 32 // group)
        assert "** at most 8 distinct per channel or group" in format_table(inspect_model(path, max_centroids=8))
    (plain,) = inspect_model(tmp_path / "g1.pb").tensors  # default 256: 256 or fewer in all, one codebook's worth
    (raw,) = GraphDefModel(graphdef_of(const_node("w", _scaled(rng, (3, 3, 16, 32))))).weights()
    path = tmp_path / "raw.pb"
    path.write_bytes(GraphDefModel(graphdef_of(const_node("w", raw.load()))).to_bytes())
    assert not inspect_model(path, max_centroids=8).tensors[0].looks_clustered


def test_keep_zeros_on_a_tensor_without_zeros_keeps_every_centroid():
    values = numpy.random.default_rng(8).normal(size=(40, 30)).astype(numpy.float32)
    values[values == 0] = 1.0
    model = GraphDefModel(graphdef_of(const_node("w", values)))
    kept = cluster_weights(model.weights(), CompressOptions(n_clusters=8, device="cpu", keep_zeros=True))
    plain = cluster_weights(model.weights(), CompressOptions(n_clusters=8, device="cpu"))
    assert not kept.clustered()[0].kept_zeros
    numpy.testing.assert_array_equal(kept.clustered()[0].codebook, plain.clustered()[0].codebook)


@settings(max_examples=25, deadline=None)
@given(shape=st.lists(st.integers(1, 7), min_size=2, max_size=3), axis_seed=st.integers(0, 10),
       group_seed=st.integers(0, 10), seed=st.integers(0, 2 ** 16), zeros=st.booleans())
def test_every_group_is_clustered_as_if_alone(shape, axis_seed, group_seed, seed, zeros):
    # Property: the codebook of a channel group, and its values' labels, are those of clustering the
    # group's values (channel-major) alone; zeros kept stay zeros. k = 4 so small groups matter.
    rng = numpy.random.default_rng(seed)
    values = rng.normal(size=shape).astype(numpy.float32)
    if zeros:
        values[rng.random(shape) < 0.5] = 0
    axis = axis_seed % len(shape)
    group = 1 + group_seed % shape[axis]
    model = GraphDefModel(graphdef_of(const_node("w", values)))
    options = CompressOptions(n_clusters=4, granularity="grouped", group_size=group, channel_axis=axis,
                              device="cpu", min_n_weights=1)
    (outcome,) = cluster_weights(model.weights(), options).clustered() or [None]
    if outcome is None:  # 4 or fewer distinct values: left as it is
        return
    layout = outcome.layout()
    major = layout.to_channel_major(values)
    out_major = layout.to_channel_major(outcome.values())
    starts = numpy.concatenate([[0], numpy.cumsum(layout.segment_sizes())])
    for row in range(layout.rows):
        part, got = major[starts[row]:starts[row + 1]], out_major[starts[row]:starts[row + 1]]
        sent = part[part != 0] if outcome.kept_zeros else part
        assert (got[part == 0] == 0).all() or not outcome.kept_zeros
        if sent.size == 0:
            continue
        (alone,) = cluster_arrays([sent], 3 if outcome.kept_zeros else 4, device="cpu")
        expected = alone.codebook.astype(numpy.float32)[alone.labels]
        numpy.testing.assert_array_equal(got[part != 0] if outcome.kept_zeros else got, expected)
