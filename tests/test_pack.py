"""pack / unpack on a real frozen TensorFlow model: byte-identical to `compress`, and safe on bad input."""
from __future__ import annotations

import os

import numpy
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpucompress import CompressOptions, FormatError, InputError, compress_file, pack_file, read_archive
from gpucompress.cli import main
from gpucompress.models import GraphDefModel
from gpucompress.packing import same_bytes

from .conftest import add_raw_const

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    """A small Keras CNN frozen to a GraphDef, plus Consts of other dtypes and forms.

    Added: float16 and bfloat16 (tensor_content), float64 in double_val form,
    a float32 tensor with NaN, Inf and -0.0, an int32 tensor and a tiny bias
    (untouched), and a float32 tensor that already has only 5 values.
    """
    import ml_dtypes
    import tensorflow as tf
    from tensorboard.compat.proto import graph_pb2
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    tf.keras.utils.set_random_seed(0)
    inputs = tf.keras.Input((8, 8, 1), name="images")
    x = tf.keras.layers.Conv2D(16, 3, padding="same", activation="relu")(inputs)
    x = tf.keras.layers.Flatten()(x)
    x = tf.keras.layers.Dense(24, activation="relu")(x)
    outputs = tf.keras.layers.Dense(10, name="logits")(x)
    keras_model = tf.keras.Model(inputs, outputs)
    function = tf.function(lambda images: keras_model(images, training=False)).get_concrete_function(
        tf.TensorSpec((None, 8, 8, 1), tf.float32, name="images"))
    frozen = convert_variables_to_constants_v2(function).graph.as_graph_def()
    graph = graph_pb2.GraphDef()
    graph.ParseFromString(frozen.SerializeToString())
    rng = numpy.random.default_rng(0)
    add_raw_const(graph, "extra/half", 19, [40, 30], rng.laplace(0, 0.05, 1200).astype("<f2").tobytes())
    add_raw_const(graph, "extra/bfloat", 14, [700],
               rng.normal(0, 1, 700).astype(ml_dtypes.bfloat16).tobytes())
    add_raw_const(graph, "extra/double", 2, [30, 20], double_val=rng.normal(0, 1, 600).tolist())
    special = rng.laplace(0, 0.1, 900).astype("<f4")
    special[[0, 17, 400]] = [numpy.nan, numpy.inf, -numpy.inf]
    special[5] = -0.0
    add_raw_const(graph, "extra/nan", 1, [30, 30], special.tobytes())
    add_raw_const(graph, "extra/few", 1, [50, 20], rng.choice(numpy.float32([-1.5, 0, 0.25, 2, 7]), 1000).tobytes())
    add_raw_const(graph, "extra/int", 3, [500], rng.integers(0, 100, 500).astype("<i4").tobytes())
    path = tmp_path_factory.mktemp("model") / "model.pb"
    path.write_bytes(graph.SerializeToString())
    return path


@pytest.mark.parametrize("k", [2, 16, 256])
@pytest.mark.parametrize("global_clusters", [False, True])
def test_unpack_equals_compress(model_path, tmp_path, k, global_clusters):
    options = CompressOptions(n_clusters=k, global_clusters=global_clusters, min_n_weights=100, device="cpu")
    compressed = compress_file(model_path, tmp_path / "model.min", options)
    summary = pack_file(model_path, tmp_path / "model.gpcz", options, zip_sizes=False)
    assert {t.name for t in summary.run.clustered()} == {t.name for t in compressed.run.clustered()}
    assert "extra/nan" in {t.name for t in summary.run.clustered()}
    expected = (tmp_path / "model.min").read_bytes()
    assert read_archive(tmp_path / "model.gpcz").to_bytes() == expected
    assert main(["unpack", str(tmp_path / "model.gpcz"), "-o", str(tmp_path / "back.pb"), "-q"]) == 0
    assert (tmp_path / "back.pb").read_bytes() == expected
    sizes = summary.sizes
    assert sizes["archive"] < sizes["min"] / 3
    assert sizes["archive"] <= 1.02 * (sizes["bound"] + sizes["rest"]) + 1024


def test_rest_is_the_zstd_size_of_the_model_without_its_coded_tensors(tmp_path):
    # pack's "rest" reuses the archive's skeleton section when every candidate was coded: the same
    # figure as compressing the skeleton without them on its own.
    from gpucompress.codec import archive as archives
    from gpucompress.codec import entropy

    from .conftest import const_node, graphdef_of

    rng = numpy.random.default_rng(0)
    path = tmp_path / "model.pb"
    path.write_bytes(graphdef_of(const_node("a", rng.normal(size=(64, 48)).astype(numpy.float32)),
                                 const_node("b", rng.laplace(size=(3, 3, 8, 32)).astype(numpy.float32)))
                     .SerializeToString())
    summary = pack_file(path, tmp_path / "model.gpcz", CompressOptions(n_clusters=16, device="cpu"), zip_sizes=False)
    coded = archives.read_archive((tmp_path / "model.gpcz").read_bytes())
    assert summary.coded == len(coded.tensors) == 2 and summary.coders["kept"] == 0  # the reused case
    skeleton = GraphDefModel.from_bytes(path.read_bytes()).to_skeleton(["a", "b"])
    assert skeleton == coded.skeleton
    assert summary.sizes["rest"] == len(entropy.zstd_compress(skeleton, archives.SKELETON_ZSTD_LEVEL))


def test_min_input_is_indexed_not_reclustered(model_path, tmp_path):
    options = CompressOptions(n_clusters=16, device="cpu")
    compress_file(model_path, tmp_path / "model.min", options)
    summary = pack_file(tmp_path / "model.min", tmp_path / "again.gpcz", options, zip_sizes=False)
    assert summary.run.clustered() == [] and summary.coded >= 3
    assert read_archive((tmp_path / "again.gpcz").read_bytes()).to_bytes() == (tmp_path / "model.min").read_bytes()


def test_untouched_tensors_and_special_values_survive(model_path, tmp_path):
    original = {w.name: w for w in GraphDefModel.from_bytes(model_path.read_bytes()).weights()}
    largest = max((w for w in original.values() if w.dtype == "float32"), key=lambda w: w.size).name
    options = CompressOptions(n_clusters=16, device="cpu", whitelisted=(largest,))
    pack_file(model_path, tmp_path / "m.gpcz", options, zip_sizes=False)
    restored = {w.name: w for w in read_archive(tmp_path / "m.gpcz").weights()}
    assert restored.keys() == original.keys()
    for name in (largest, "extra/few"):  # whitelisted: untouched; few values: indexed exactly
        assert restored[name].load().tobytes() == original[name].load().tobytes()
    assert restored["extra/int"].dtype == "int32"
    nan = restored["extra/nan"].load().reshape(-1)
    assert numpy.isnan(nan[0]) and nan[17] == numpy.inf and nan[400] == -numpy.inf
    assert numpy.unique(nan[numpy.isfinite(nan)]).size <= 16


@pytest.mark.parametrize("k", [2, 16])
def test_every_floating_dtype_is_coded(model_path, tmp_path, k):
    from gpucompress.codec import read_archive as read_contents

    pack_file(model_path, tmp_path / "m.gpcz", CompressOptions(n_clusters=k, device="cpu"), zip_sizes=False)
    contents = read_contents((tmp_path / "m.gpcz").read_bytes())
    dtypes = {t.dtype for t in contents.tensors}
    assert dtypes == {"float16", "bfloat16", "float32", "float64"}
    assert {"extra/nan", "extra/few", "extra/double"} <= set(contents.coders)
    assert next(t for t in contents.tensors if t.name == "extra/nan").nonfinite_index.tolist() == [0, 17, 400]


def test_restored_graph_runs_in_tensorflow(model_path, tmp_path):
    import tensorflow as tf

    options = CompressOptions(n_clusters=256, device="cpu")
    pack_file(model_path, tmp_path / "m.gpcz", options, zip_sizes=False)
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(read_archive(tmp_path / "m.gpcz").to_bytes())
    original = tf.compat.v1.GraphDef()
    original.ParseFromString(model_path.read_bytes())
    images = numpy.random.default_rng(0).random((4, 8, 8, 1), dtype=numpy.float32)

    def run(definition):
        output = [n.name for n in definition.node if n.op == "Identity"][-1]
        function = tf.compat.v1.wrap_function(
            lambda: tf.compat.v1.import_graph_def(definition, name=""), [])
        pruned = function.prune(function.graph.get_tensor_by_name("images:0"),
                                function.graph.get_tensor_by_name(f"{output}:0"))
        return pruned(tf.constant(images)).numpy()

    numpy.testing.assert_allclose(run(graph_def), run(original), atol=0.05)


def test_cli_pack_prints_sizes_and_refuses_to_overwrite(model_path, tmp_path, capsys):
    output = tmp_path / "cli.gpcz"
    assert main(["pack", str(model_path), "-o", str(output), "--n_clusters", "16"]) == 0
    printed = capsys.readouterr().out
    for label in ("original", "zip of original", ".min", "zip of .min", "archive", "entropy bound"):
        assert label in printed
    assert main(["pack", str(model_path), "-o", str(output), "--n_clusters", "16", "-q"]) == 1
    assert "already exists" in capsys.readouterr().err
    assert main(["pack", str(model_path), "-o", str(output), "--n_clusters", "16", "-q", "--overwrite"]) == 0
    assert main(["unpack", str(output), "-o", str(output)]) == 1
    assert "refusing to overwrite the input" in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty"])
def test_cli_unpack_of_a_damaged_archive_fails_cleanly(model_path, tmp_path, capsys, damage):
    archive = tmp_path / "m.gpcz"
    pack_file(model_path, archive, CompressOptions(n_clusters=16, device="cpu"), zip_sizes=False)
    data = bytearray(archive.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x40
    elif damage == "truncate":
        del data[len(data) - 100 :]
    else:
        data.clear()
    archive.write_bytes(bytes(data))
    output = tmp_path / "out.pb"
    assert main(["unpack", str(archive), "-o", str(output)]) == 1
    error = capsys.readouterr().err
    assert error.startswith("gpucompress: error: ") and error.count("\n") == 1
    assert not output.exists() and os.listdir(tmp_path) == ["m.gpcz"]


def test_read_archive_errors():
    with pytest.raises(InputError, match="no such file"):
        read_archive("/nonexistent/model.gpcz")
    with pytest.raises(FormatError, match="bad magic"):
        read_archive(b"\x08\x01\x12\x03abc" * 20)


def test_speed_tolerance_trades_size_for_speed(model_path, tmp_path):
    options = CompressOptions(n_clusters=256, device="cpu")
    fast = pack_file(model_path, tmp_path / "fast.gpcz", options, zip_sizes=False)
    small = pack_file(model_path, tmp_path / "small.gpcz", options, zip_sizes=False, speed_tolerance=0.0)
    assert small.sizes["archive"] <= fast.sizes["archive"] <= 1.015 * small.sizes["archive"] + 64
    assert read_archive(tmp_path / "fast.gpcz").to_bytes() == read_archive(tmp_path / "small.gpcz").to_bytes()


def test_benchmark_quick_smoke(tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "pack.py"
    spec = importlib.util.spec_from_file_location("pack_benchmark", path)
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    assert benchmark.main(["--quick", "--results", str(tmp_path)]) == 0
    assert len(list(tmp_path.glob("pack_quick_*.md"))) == 1


@given(st.binary(max_size=64), st.data())
@settings(max_examples=60, deadline=None)
def test_same_bytes_compares_streams_split_anywhere(data, draw):
    # pack's check that the archive decodes to the model compares two streams
    # of pieces without joining them; the pieces split the bytes differently.
    def split(blob):
        cuts = sorted(draw.draw(st.lists(st.integers(0, len(blob)), max_size=6)))
        return [blob[a:b] for a, b in zip([0, *cuts], [*cuts, len(blob)])]

    other = draw.draw(st.binary(max_size=64))
    assert same_bytes(split(data), split(data))
    assert same_bytes(split(data), split(other)) == (data == other)
