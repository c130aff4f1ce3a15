"""SavedModel folders: compress, load with tf.saved_model.load, compare, and refuse bad input.

Real small Keras models (functional and subclassed, with Embedding and
BatchNormalization) exported once per module, both with `model.export` and
with `tf.saved_model.save` (which also stores the optimizer's state).
"""
import hashlib
import os
import shutil
from pathlib import Path

import numpy
import pytest

from gpucompress.api import compress_file
from gpucompress.cli import main
from gpucompress.clustering import cluster_weights
from gpucompress.errors import FormatError, InputError
from gpucompress.models import default_output, read_model
from gpucompress.models.savedmodel import SavedModel
from gpucompress.options import CompressOptions

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from .keras_models import K, LENGTH, RELATIVE_TOLERANCE, build_models  # noqa: E402

OPTIONS = CompressOptions(n_clusters=K, device="cpu")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Export the models once: {"paths": {kind: folder}, "expected": {kind: outputs}, "inputs"}."""
    folder = tmp_path_factory.mktemp("savedmodel")
    inputs, functional, subclassed = build_models(seed=1)
    paths = {"functional": folder / "functional", "subclassed": folder / "subclassed",
             "trackable": folder / "trackable"}
    functional.export(paths["functional"], verbose=False)
    subclassed.export(paths["subclassed"], verbose=False,
                      input_signature=[tf.TensorSpec((None, LENGTH), tf.int32)])
    tf.saved_model.save(functional, str(paths["trackable"]))
    expected = {kind: numpy.asarray(model(inputs, training=False))
                for kind, model in (("functional", functional), ("subclassed", subclassed))}
    return {"paths": paths, "expected": expected, "inputs": inputs, "folder": folder}


def _checkpoint(folder):
    """Return {checkpoint key: raw bytes of the value} of a SavedModel's variables."""
    reader = tf.train.load_checkpoint(str(Path(folder) / "variables" / "variables"))
    result = {}
    for key in reader.get_variable_to_shape_map():
        value = reader.get_tensor(key)
        result[key] = value if isinstance(value, bytes) else numpy.asarray(value).tobytes()
    return result


def _digest(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


@pytest.mark.parametrize("kind", ["functional", "subclassed"])
def test_compressed_savedmodel_loads_and_predicts_close(saved, kind, tmp_path):
    source = saved["paths"][kind]
    output = tmp_path / default_output(source).name
    summary = compress_file(source, output, OPTIONS)
    clustered = {t.name for t in summary.run.clustered()}
    assert clustered
    assert all(len(t.shape) >= 2 for t in summary.run.clustered())

    original = tf.saved_model.load(str(source))
    loaded = tf.saved_model.load(str(output))
    assert sorted(loaded.signatures) == sorted(original.signatures)
    got = numpy.asarray(loaded.serve(tf.constant(saved["inputs"])))
    expected = saved["expected"][kind]
    error = numpy.linalg.norm(got - expected) / numpy.linalg.norm(expected)
    assert 0 < error < RELATIVE_TOLERANCE

    before, after = _checkpoint(source), _checkpoint(output)
    assert before.keys() == after.keys()
    suffix = "/.ATTRIBUTES/VARIABLE_VALUE"
    for key in before:
        name = key[: -len(suffix)] if key.endswith(suffix) else key
        if name in clustered:
            assert numpy.unique(numpy.frombuffer(after[key], dtype="float32")).size <= K, key
        else:
            assert after[key] == before[key], key


def test_optimizer_state_and_structure_are_kept(saved, tmp_path):
    source = saved["paths"]["trackable"]
    output = tmp_path / "trackable.min"
    summary = compress_file(source, output, CompressOptions(n_clusters=4, all_variables=True, device="cpu"))
    reasons = {t.name: t.reason for t in summary.run.tensors}
    assert reasons["optimizer/_variables/4"] == "optimizer state"
    assert reasons["_CHECKPOINTABLE_OBJECT_GRAPH"] == "not floating"
    assert any(r == "clustered" for name, r in reasons.items() if name.endswith("/gamma"))
    before, after = _checkpoint(source), _checkpoint(output)
    for key in before:
        if key.startswith("optimizer/") or key == "_CHECKPOINTABLE_OBJECT_GRAPH":
            assert after[key] == before[key], key
    assert (output / "saved_model.pb").read_bytes() == (source / "saved_model.pb").read_bytes()
    loaded = tf.saved_model.load(str(output))
    signature = loaded.signatures["serving_default"]
    (name,) = signature.structured_input_signature[1]
    (result,) = signature(**{name: tf.constant(saved["inputs"])}).values()
    assert result.shape == (16, 5)


def test_whitelisted_matches_variable_names(saved):
    model = read_model(saved["paths"]["functional"])
    options = CompressOptions(n_clusters=K, device="cpu", whitelisted=("hidden/kernel",))
    outcomes = cluster_weights(model.weights(), options).tensors
    aliases = {w.name: w.aliases for w in model.weights()}
    whitelisted = [t.name for t in outcomes if t.reason == "whitelisted"]
    assert whitelisted and all(aliases[name] == ("hidden/kernel",) for name in whitelisted)
    assert any(t.clustered and "embedding/embeddings" in aliases[t.name] for t in outcomes)


def test_same_input_same_bytes_and_skeleton_round_trip(saved, tmp_path):
    source = saved["paths"]["functional"]
    first, second = tmp_path / "a", tmp_path / "b"
    compress_file(source, first, OPTIONS)
    compress_file(source, second, OPTIONS)
    assert _digest(first) == _digest(second)

    model = read_model(source)
    values = {t.name: t.values() for t in cluster_weights(model.weights(), OPTIONS).clustered()}
    model.replace_values(values)
    skeleton = model.to_skeleton(sorted(values))
    assert skeleton == model.to_skeleton(sorted(values))
    restored = SavedModel.from_skeleton(skeleton)
    assert all(not w.load().any() for w in restored.weights() if w.name in values)
    restored.replace_values(values)
    restored.save(tmp_path / "c")
    assert _digest(tmp_path / "c") == _digest(first)


def test_existing_output_folders(saved, tmp_path):
    source = saved["paths"]["functional"]
    output = tmp_path / "out"
    compress_file(source, output, OPTIONS)
    with pytest.raises(InputError, match="already exists"):
        compress_file(source, output, OPTIONS)
    compress_file(source, output, OPTIONS, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "precious.txt").write_text("keep me")
    with pytest.raises(InputError, match="not a SavedModel"):
        compress_file(source, plain, OPTIONS, overwrite=True)
    assert (plain / "precious.txt").read_text() == "keep me"
    with pytest.raises(InputError, match="inside the input"):
        compress_file(source, source / "assets" / "inner", OPTIONS)


def test_bad_inputs_fail_with_one_line_and_leave_nothing(saved, tmp_path, capsys):
    not_saved_model = tmp_path / "plain_folder"
    not_saved_model.mkdir()
    broken_graph = tmp_path / "broken_graph"
    shutil.copytree(saved["paths"]["functional"], broken_graph)
    (broken_graph / "saved_model.pb").write_bytes(b"\xff\xff\xff garbage")
    broken_variables = tmp_path / "broken_variables"
    shutil.copytree(saved["paths"]["functional"], broken_variables)
    index = broken_variables / "variables" / "variables.index"
    index.write_bytes(index.read_bytes()[:40])
    for path in (not_saved_model, broken_graph, broken_variables):
        before = set(tmp_path.iterdir())
        code = main(["compress", str(path), "-q"])
        captured = capsys.readouterr()
        lines = captured.err.strip().splitlines()
        assert code == 1, path
        assert len(lines) == 1 and str(path) in lines[0] and "Traceback" not in captured.err, captured.err
        assert set(tmp_path.iterdir()) == before, path
    with pytest.raises(FormatError):
        SavedModel.from_skeleton(b"not a tar at all" * 64)


# pack / unpack: the archive gives back exactly the folder `compress` writes.

def _serve(folder, inputs):
    """Return the outputs of a SavedModel's serving_default signature on `inputs`."""
    signature = tf.saved_model.load(str(folder)).signatures["serving_default"]
    (name,) = signature.structured_input_signature[1]
    (result,) = signature(**{name: tf.constant(inputs)}).values()
    return result.numpy()


@pytest.mark.parametrize("kind, global_clusters", [("functional", False), ("subclassed", False),
                                                   ("trackable", False), ("functional", True)])
def test_pack_unpack_equals_compress_and_serves_the_same(saved, kind, global_clusters, tmp_path):
    from gpucompress.packing import pack_file, unpack_file

    options = CompressOptions(n_clusters=K, global_clusters=global_clusters, device="cpu")
    source = saved["paths"][kind]
    compressed = tmp_path / "compressed"
    compress_file(source, compressed, options)
    archive = tmp_path / (source.name + ".gpcz")
    summary = pack_file(source, archive, options)
    assert summary.coded >= len(summary.run.clustered()) > 0
    assert summary.sizes["original"] == sum(p.stat().st_size for p in source.rglob("*") if p.is_file())
    assert summary.sizes["archive"] < summary.sizes["min_zip"] < summary.sizes["min"]
    output, written = unpack_file(archive)
    assert output == tmp_path / default_output(source).name  # saved -> saved.min
    assert _digest(output) == _digest(compressed)  # every file, fingerprint.pb included
    assert written == sum(p.stat().st_size for p in output.rglob("*") if p.is_file())
    numpy.testing.assert_array_equal(_serve(output, saved["inputs"]), _serve(compressed, saved["inputs"]))


def test_savedmodel_archives_refuse_wrong_outputs_and_bad_folders(saved, tmp_path, capsys):
    from gpucompress.packing import pack_file

    archive = tmp_path / "m.gpcz"
    pack_file(saved["paths"]["functional"], archive, OPTIONS, zip_sizes=False)
    a_file = tmp_path / "file.min"
    a_file.write_bytes(b"precious")
    plain = tmp_path / "plain"
    plain.mkdir()
    damaged = tmp_path / "damaged.gpcz"
    data = bytearray(archive.read_bytes())
    data[-5] ^= 0x01
    damaged.write_bytes(bytes(data))
    cases = [(["unpack", str(archive), "-o", str(tmp_path / "m.keras")], "holds a SavedModel"),
             (["unpack", str(archive), "-o", str(tmp_path / "m.h5")], "holds a SavedModel"),
             (["unpack", str(archive), "-o", str(a_file), "--overwrite"], "is a file"),
             (["unpack", str(archive), "-o", str(plain), "--overwrite"], "not a SavedModel"),
             (["unpack", str(damaged)], str(damaged)),
             (["pack", str(plain)], "without saved_model.pb")]
    for argv, message in cases:
        before = set(tmp_path.iterdir())
        assert main([*argv, "-q"]) == 1, argv
        error = capsys.readouterr().err
        assert error.startswith("gpucompress: error: ") and error.count("\n") == 1, error
        assert message in error, error
        assert set(tmp_path.iterdir()) == before, argv
    assert a_file.read_bytes() == b"precious" and not any(plain.iterdir())


# compress --to-graphdef: the serving signature frozen into a GraphDef, clustered.

def _run_frozen(path, inputs):
    """Import a frozen GraphDef with tf.import_graph_def and run it: its one Placeholder -> `Identity`."""
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(Path(path).read_bytes())
    (placeholder,) = [node.name for node in graph_def.node if node.op == "Placeholder"]

    def imported(x):
        (out,) = tf.compat.v1.import_graph_def(graph_def, input_map={placeholder + ":0": x},
                                               return_elements=["Identity:0"])
        return out

    wrapped = tf.compat.v1.wrap_function(imported, [tf.TensorSpec(inputs.shape, tf.int32)])
    return wrapped(tf.constant(inputs)).numpy()


@pytest.mark.parametrize("kind", ["functional", "subclassed"])
def test_to_graphdef_freezes_the_serving_signature_and_runs_close(saved, kind, tmp_path):
    from gpucompress.models.freeze import freeze_saved_model

    source = saved["paths"][kind]
    freeze_saved_model(source).save(tmp_path / "frozen.pb")
    expected = saved["expected"][kind]
    numpy.testing.assert_allclose(_run_frozen(tmp_path / "frozen.pb", saved["inputs"]), expected,
                                  rtol=1e-5, atol=1e-6)

    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path)
        shutil.copytree(source, tmp_path / kind)
        assert main(["compress", kind, "--to-graphdef", "--n_clusters", str(K), "-q"]) == 0
    output = tmp_path / (kind + ".min.pb")
    model = read_model(output)
    assert model.format_name == "graphdef"
    clustered = [w for w in model.weights() if w.floating and w.size > K]
    assert clustered and all(numpy.unique(w.load()).size <= K for w in clustered)
    got = _run_frozen(output, saved["inputs"])
    error = numpy.linalg.norm(got - expected) / numpy.linalg.norm(expected)
    assert 0 < error < RELATIVE_TOLERANCE
    again = compress_file(source, tmp_path / "again.pb", OPTIONS, to_graphdef=True)
    assert again.output_path.read_bytes() == output.read_bytes()


def test_to_graphdef_refuses_other_inputs(saved, tmp_path, capsys):
    from gpucompress.errors import OptionsError

    (tmp_path / "model.keras").write_bytes(b"not read")
    with pytest.raises(OptionsError, match="needs a SavedModel folder"):
        compress_file(tmp_path / "model.keras", to_graphdef=True)
    plain = tmp_path / "plain"
    plain.mkdir()
    before = set(tmp_path.iterdir())
    assert main(["compress", str(plain), "--to-graphdef", "-q"]) == 1
    assert capsys.readouterr().err.count("\n") == 1 and set(tmp_path.iterdir()) == before


def test_object_graph_tells_model_variables_from_optimizer_state():
    # A hand-built object graph: the kernel is reachable through the optimizer (its shortest path,
    # hence its key) and through the layer; the momentum only through the optimizer; a tf_keras-style
    # slot variable hangs off the layer but is listed as a slot. Child ids out of range are ignored.
    from tensorflow.core.protobuf import trackable_object_graph_pb2

    from gpucompress.models.object_graph import key_roles

    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    root, optimizer, layer, kernel, momentum, slot = (graph.nodes.add() for _ in range(6))
    root.children.add(node_id=1, local_name="optimizer")
    root.children.add(node_id=2, local_name="_layers")
    root.children.add(node_id=99, local_name="broken")
    optimizer.children.add(node_id=3, local_name="0")
    optimizer.children.add(node_id=4, local_name="1")
    optimizer.slot_variables.add(original_variable_node_id=3, slot_name="m", slot_variable_node_id=5)
    layer.children.add(node_id=3, local_name="_kernel")
    layer.children.add(node_id=5, local_name="slot")
    kernel.attributes.add(name="VARIABLE_VALUE", full_name="sequential/dense/kernel", checkpoint_key="optimizer/0")
    momentum.attributes.add(name="VARIABLE_VALUE", full_name="adam/m", checkpoint_key="optimizer/1")
    slot.attributes.add(name="VARIABLE_VALUE", full_name="dense/kernel/m", checkpoint_key="_layers/slot")
    roles = key_roles(graph)
    assert roles.optimizer == {"optimizer/1", "_layers/slot"}
    assert roles.names["optimizer/0"] == ("sequential/dense/kernel", "dense/kernel")
