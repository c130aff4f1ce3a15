"""Importance weights end to end: the .npz file, its checks, the API's importance=, --importance-from-data."""
from __future__ import annotations

import json
import pickle
import zipfile

import numpy
import pytest

from gpucompress.api import compress_file
from gpucompress.cli import main
from gpucompress.errors import FormatError, OptionsError
from gpucompress.importance import load_importance_file, weighted_sse
from gpucompress.models import read_model
from gpucompress.options import CompressOptions

from .conftest import const_node, graphdef_of


def importances(path, **arrays):
    numpy.savez(path, **arrays)
    return path


def run(arguments, capsys):
    code = main(arguments)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_importance_changes_the_codebook_and_is_reported(small_pb, tmp_path, capsys):
    rng = numpy.random.default_rng(1)
    grads = importances(tmp_path / "imp.npz", w1=rng.exponential(size=(40, 40)) ** 3)
    plain, weighted = tmp_path / "plain.pb", tmp_path / "weighted.pb"
    assert main(["compress", str(small_pb), "-o", str(plain), "--n_clusters", "8", "-q"]) == 0
    report = tmp_path / "r.json"
    code, out, _ = run(["compress", str(small_pb), "-o", str(weighted), "--n_clusters", "8", "--importance",
                        str(grads), "--report", str(report)], capsys)
    assert code == 0
    assert "importance-weighted: 1 tensors; 1 without an entry clustered unweighted" in out
    entries = {t["name"]: t for t in json.loads(report.read_text())["tensors"]}
    assert entries["w1"]["importance"] == "weighted" and entries["w2"]["importance"].startswith("uniform")
    # w2 has no entry: clustered exactly as without importances; w1 differently, with a lower weighted SSE.
    before = {w.name: w.load() for w in read_model(plain).weights() if w.floating}
    after = {w.name: w.load() for w in read_model(weighted).weights() if w.floating}
    assert numpy.array_equal(before["w2"], after["w2"])
    assert not numpy.array_equal(before["w1"], after["w1"])
    original = {w.name: w.load() for w in read_model(small_pb).weights() if w.floating}["w1"]
    weight = numpy.load(grads)["w1"]

    def cost(values):
        return float(numpy.sum(weight * (original.astype(numpy.float64) - values) ** 2))

    assert cost(after["w1"]) < cost(before["w1"])
    assert entries["w1"]["weighted_sse"] == pytest.approx(cost(after["w1"]), rel=1e-6)


def test_python_api_mapping_by_alias_and_name(small_pb, tmp_path):
    rng = numpy.random.default_rng(2)
    mapping = {"w1": rng.exponential(size=(40, 40))}
    from_file = compress_file(small_pb, tmp_path / "a.pb", CompressOptions(
        n_clusters=8, importance=importances(tmp_path / "imp.npz", **mapping)))
    from_mapping = compress_file(small_pb, tmp_path / "b.pb", CompressOptions(n_clusters=8, importance=mapping))
    assert (tmp_path / "a.pb").read_bytes() == (tmp_path / "b.pb").read_bytes()
    assert [t.importance for t in from_mapping.run.clustered()] == ["weighted", "uniform (no importance entry)"]
    assert from_file.run.clustered()[0].weighted_sse == from_mapping.run.clustered()[0].weighted_sse


@pytest.mark.parametrize("bad,message", [
    ({"w1": -numpy.ones((40, 40))}, "'w1' holds negative values"),
    ({"w1": numpy.full((40, 40), numpy.nan)}, "'w1' holds NaN or Inf"),
    ({"w1": numpy.full((40, 40), numpy.inf)}, "'w1' holds NaN or Inf"),
    ({"w1": numpy.ones((40, 41))}, "'w1' has shape (40, 41), the weight has shape (40, 40)"),
    ({"w3": numpy.ones(3)}, "'w3' matches no weight of the model (closest: w2, w1)"),
    ({"w1": numpy.array(["a"] * 1600).reshape(40, 40)}, "importance 'w1' has dtype <U1"),
])
def test_bad_importances_are_one_line_naming_the_weight_and_nothing_is_written(small_pb, tmp_path, capsys, bad,
                                                                                message):
    path = importances(tmp_path / "imp.npz", **bad)
    output = tmp_path / "out.pb"
    code, out, err = run(["compress", str(small_pb), "-o", str(output), "--importance", str(path)], capsys)
    assert code == 1 and not output.exists()
    (line,) = err.strip().splitlines()
    assert line.startswith("gpucompress: error:") and message in line
    assert "Traceback" not in err


def test_an_npz_with_a_pickled_object_array_is_refused_without_unpickling(small_pb, tmp_path, capsys):
    class Boom:
        def __reduce__(self):  # would run on unpickling
            return (exec, ("raise SystemExit('unpickled!')",))

    path = tmp_path / "evil.npz"
    with zipfile.ZipFile(path, "w") as archive:
        with archive.open("w1.npy", "w") as member:
            numpy.lib.format.write_array(member, numpy.array([Boom()], dtype=object), allow_pickle=True)
    with pytest.raises(FormatError, match="not a NumPy .npz file of plain arrays"):
        load_importance_file(path)
    code, _, err = run(["compress", str(small_pb), "-o", str(tmp_path / "o.pb"), "--importance", str(path)], capsys)
    assert code == 1 and "plain arrays" in err and "unpickled" not in err


@pytest.mark.parametrize("kind", ["text", "pickle", "missing"])
def test_a_file_that_is_no_npz_is_refused(small_pb, tmp_path, capsys, kind):
    path = tmp_path / "imp.npz"
    if kind == "text":
        path.write_text("w1,1.0\n")
    elif kind == "pickle":
        path.write_bytes(pickle.dumps({"w1": numpy.ones((40, 40))}))
    code, _, err = run(["compress", str(small_pb), "-o", str(tmp_path / "o.pb"), "--importance", str(path)], capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert ("no such file" if kind == "missing" else "not a NumPy .npz file") in err


def test_importance_arrays_over_the_memory_budget_are_refused_before_reading(small_pb, tmp_path, capsys):
    path = importances(tmp_path / "imp.npz", w1=numpy.zeros((40, 40)))  # deflates to almost nothing? stored
    code, _, err = run(["compress", str(small_pb), "-o", str(tmp_path / "o.pb"), "--importance", str(path),
                        "--max-memory", "1000"], capsys)
    assert code == 1 and "over the memory budget" in err


def test_options_refuse_both_sources_and_the_faiss_engine(tmp_path):
    with pytest.raises(OptionsError, match="exclude each other"):
        CompressOptions(importance="a.npz", importance_from_data="b.npz")
    with pytest.raises(OptionsError, match="engine='gpucompress'"):
        CompressOptions(importance="a.npz", engine="faiss")
    with pytest.raises(OptionsError, match="should be a path"):
        CompressOptions(importance=3)


def test_global_codebook_needs_an_entry_for_every_weight(small_pb, tmp_path):
    with pytest.raises(OptionsError, match="'w2' has no entry; with global_clusters"):
        compress_file(small_pb, tmp_path / "o.pb", CompressOptions(
            n_clusters=8, global_clusters=True, importance={"w1": numpy.ones((40, 40))}))
    assert not (tmp_path / "o.pb").exists()
    summary = compress_file(small_pb, tmp_path / "o.pb", CompressOptions(
        n_clusters=8, global_clusters=True, min_n_weights=1,
        importance={"w1": numpy.ones((40, 40)), "w2": numpy.ones(300)}))
    plain = compress_file(small_pb, tmp_path / "p.pb", CompressOptions(n_clusters=8, global_clusters=True,
                                                                        min_n_weights=1))
    # Equal importances everywhere: the unweighted global codebook, byte for byte.
    assert (tmp_path / "o.pb").read_bytes() == (tmp_path / "p.pb").read_bytes()
    assert summary.run.clustered()[0].codebook_id == plain.run.clustered()[0].codebook_id == 0


def test_pack_takes_importance_too(small_pb, tmp_path, capsys):
    grads = importances(tmp_path / "imp.npz", w1=numpy.random.default_rng(3).exponential(size=(40, 40)) ** 3)
    archive = tmp_path / "m.gpcz"
    assert main(["pack", str(small_pb), "-o", str(archive), "--n_clusters", "8", "--importance", str(grads),
                 "--no-zip-sizes", "-q"]) == 0
    assert main(["unpack", str(archive), "-o", str(tmp_path / "u.pb"), "-q"]) == 0
    assert main(["compress", str(small_pb), "-o", str(tmp_path / "c.pb"), "--n_clusters", "8", "--importance",
                 str(grads), "-q"]) == 0
    assert (tmp_path / "u.pb").read_bytes() == (tmp_path / "c.pb").read_bytes()


def test_weighted_sse_function():
    values = numpy.array([[0.0, 1.0], [2.0, numpy.nan]])
    codebook = numpy.array([0.5, 2.0])
    labels = numpy.array([0, 0, 1, 0])
    assert weighted_sse(values, codebook, labels) == pytest.approx(0.5)
    assert weighted_sse(values, codebook, labels, numpy.array([[2.0, 0.0], [1.0, 5.0]])) == pytest.approx(0.5)
    with pytest.raises(OptionsError):
        weighted_sse(values, codebook, labels, numpy.ones(3))


# --- importances from data (TensorFlow) ---

@pytest.fixture(scope="module")
def tiny_keras(tmp_path_factory):
    """A real tiny Keras model (Sequential Dense-relu-Dense, one epoch of Adam) saved as .keras, and inputs."""
    pytest.importorskip("tensorflow")
    keras = pytest.importorskip("keras")
    from .keras_models import matrix_model

    folder = tmp_path_factory.mktemp("importance")
    keras.utils.set_random_seed(0)
    rng = numpy.random.default_rng(0)
    features = rng.random((64, 16)).astype("float32")
    model = matrix_model("sequential")
    model.compile(optimizer="adam", loss="mse")
    model.fit(features, rng.normal(size=(64, 10)), epochs=1, verbose=0)
    path = folder / "model.keras"
    model.save(path)
    from gpucompress.model_runners import KerasRunner

    # The loaded model's input name (Keras renames it on saving).
    (spec,) = KerasRunner(read_model(path)).inputs
    inputs = folder / "inputs.npz"
    numpy.savez(inputs, **{spec.name: features[:12]})
    return path, inputs, model, features[:12], spec.name


def test_importance_from_data_on_a_keras_model(tiny_keras, tmp_path, capsys):
    import tensorflow as tf

    from gpucompress.importance_data import importance_from_data

    path, inputs, model, features, _ = tiny_keras
    computed = importance_from_data(read_model(path), inputs)
    assert set(computed) == {"layers/dense/vars/0", "layers/dense/vars/1", "layers/dense_1/vars/0",
                             "layers/dense_1/vars/1"}
    # The definition, by hand: mean over samples of (d sum(y**2) / d kernel)**2.
    kernel = model.get_layer("dense_1").kernel
    expected = numpy.zeros(kernel.shape)
    for row in features:
        with tf.GradientTape() as tape:
            energy = tf.reduce_sum(tf.square(model(row[None], training=False)))
        expected += numpy.square(tape.gradient(energy, kernel.value).numpy().astype(numpy.float64))
    numpy.testing.assert_allclose(computed["layers/dense_1/vars/0"], expected / len(features), rtol=1e-5)
    output = tmp_path / "w.keras"
    code, out, err = run(["compress", str(path), "-o", str(output), "--n_clusters", "4",
                          "--importance-from-data", str(inputs)], capsys)
    assert code == 0, err
    assert "importance-weighted: 2 tensors" in out and "importance" in out.split("time", 1)[1].split("\n")[0]


def test_importance_from_data_refuses_formats_it_cannot_run(tmp_path, capsys):
    pytest.importorskip("tensorflow")
    from .tflite_models import conv_model, convert

    path = tmp_path / "m.tflite"
    path.write_bytes(convert(conv_model(), "float32"))
    numpy.savez(tmp_path / "inputs.npz", x=numpy.zeros((1, 8, 8, 1), dtype="float32"))
    output = tmp_path / "o.tflite"
    code, _, err = run(["compress", str(path), "-o", str(output), "--importance-from-data",
                        str(tmp_path / "inputs.npz")], capsys)
    assert code == 1 and not output.exists()
    (line,) = err.strip().splitlines()
    assert "cannot compute gradients of tflite models" in line


def test_importance_from_data_with_inputs_that_do_not_fit(tiny_keras, tmp_path, capsys):
    path, _, _, _, name = tiny_keras
    numpy.savez(tmp_path / "bad.npz", **{name: numpy.zeros((3, 5), dtype="float32")})
    code, _, err = run(["compress", str(path), "-o", str(tmp_path / "o.keras"), "--importance-from-data",
                        str(tmp_path / "bad.npz")], capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1 and "shape" in err


def test_importance_from_data_on_a_frozen_graph(keras_frozen, tmp_path, capsys):
    from gpucompress.importance_data import importance_from_data

    path, sample = keras_frozen
    model = read_model(path)
    from gpucompress.runners import GraphDefRunner

    (spec,) = GraphDefRunner(model).inputs
    numpy.savez(tmp_path / "inputs.npz", **{spec.name: sample})
    computed = importance_from_data(model, tmp_path / "inputs.npz")
    shapes = {w.name: w.shape for w in model.weights()}
    assert len(computed) >= 4 and all(computed[name].shape == tuple(shapes[name]) for name in computed)
    assert all(float(values.max()) > 0 for values in computed.values())
    code, out, err = run(["compress", str(path), "-o", str(tmp_path / "o.pb"), "--n_clusters", "8",
                          "--importance-from-data", str(tmp_path / "inputs.npz")], capsys)
    assert code == 0, err
    assert "importance-weighted" in out


def test_an_entry_for_a_weight_left_as_it_is_is_said(small_pb, tmp_path, caplog):
    with caplog.at_level("WARNING", logger="gpucompress"):
        compress_file(small_pb, tmp_path / "o.pb", CompressOptions(
            n_clusters=8, whitelisted=("w2",), importance={"w2": numpy.ones(300)}))
    assert any("importance: 1 entries are for weights left as they are" in r.getMessage() and "w2" in r.getMessage()
               for r in caplog.records)


def test_compress_graphdef_takes_importance(small_pb):
    from tensorboard.compat.proto import graph_pb2

    from gpucompress.api import compress_graphdef

    graph_def = graph_pb2.GraphDef()
    graph_def.ParseFromString(small_pb.read_bytes())
    weight = numpy.random.default_rng(4).exponential(size=(40, 40)) ** 3
    weighted = compress_graphdef(graph_def, CompressOptions(n_clusters=8, importance={"w1": weight}))
    plain = compress_graphdef(graph_def, CompressOptions(n_clusters=8))
    assert weighted.SerializeToString() != plain.SerializeToString()
    assert compress_graphdef(graph_def, CompressOptions(n_clusters=8, importance={"w1": numpy.full((40, 40), 2.0)})
                             ).SerializeToString() == plain.SerializeToString()


def test_importance_of_a_tensor_holding_nan_follows_its_finite_values(tmp_path):
    values = numpy.random.default_rng(5).normal(size=(30, 30)).astype("f4")
    values[3, 4] = numpy.nan
    values[7, 1] = numpy.inf
    path = tmp_path / "m.pb"
    path.write_bytes(graphdef_of(const_node("w", values)).SerializeToString())
    importance = numpy.random.default_rng(6).exponential(size=(30, 30))
    summary = compress_file(path, tmp_path / "o.pb", CompressOptions(n_clusters=4, importance={"w": importance}))
    (outcome,) = summary.run.clustered()
    clustered = outcome.values()
    assert numpy.isnan(clustered[3, 4]) and clustered[7, 1] == numpy.inf
    finite = numpy.isfinite(values)
    expected = float(numpy.sum(importance[finite] * (values[finite].astype(numpy.float64) - clustered[finite]) ** 2))
    assert outcome.weighted_sse == pytest.approx(expected, rel=1e-6)
