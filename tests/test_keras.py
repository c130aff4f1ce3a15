"""Keras `.keras` and HDF5 (`.h5`, `.weights.h5`) models: compress, load with Keras, compare.

Real small models (functional and subclassed, with Embedding and
BatchNormalization), built once per module; no training beyond one step that
creates optimizer state.
"""
import io
import os
import zipfile

import numpy
import pytest

from gpucompress.api import compress_file
from gpucompress.cli import main
from gpucompress.models import default_output, read_model
from gpucompress.models.keras import HDF5Model, KerasModel
from gpucompress.options import CompressOptions

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
keras = pytest.importorskip("keras")
h5py = pytest.importorskip("h5py")

from .keras_models import K, LENGTH, RELATIVE_TOLERANCE, Subclassed, build_models  # noqa: E402


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Build the models once and save them: {name: (path, model)} and the probe inputs."""
    folder = tmp_path_factory.mktemp("keras")
    inputs, functional, subclassed = build_models(seed=0)
    paths = {
        "functional.keras": folder / "functional.keras",
        "functional.h5": folder / "functional.h5",
        "subclassed.keras": folder / "subclassed.keras",
        "subclassed.weights.h5": folder / "subclassed.weights.h5",
    }
    functional.save(paths["functional.keras"])
    functional.save(paths["functional.h5"])
    subclassed.save(paths["subclassed.keras"])
    subclassed.save_weights(paths["subclassed.weights.h5"])
    models = {"functional.keras": functional, "functional.h5": functional,
              "subclassed.keras": subclassed, "subclassed.weights.h5": subclassed}
    return {"paths": paths, "models": models, "inputs": inputs, "folder": folder}


def _load(kind, path):
    if kind == "subclassed.weights.h5":
        model = Subclassed()
        model(numpy.zeros((1, LENGTH), dtype="int32"))
        model.load_weights(path)
        return model
    return keras.models.load_model(path, compile=False)


def _datasets(path):
    """Return {dataset path: raw bytes} of an HDF5 file or of a .keras file's weights."""
    if str(path).endswith(".keras"):
        with zipfile.ZipFile(path) as archive:
            handle = h5py.File(io.BytesIO(archive.read("model.weights.h5")), "r")
    else:
        handle = h5py.File(path, "r")
    found = {}
    with handle:
        handle.visititems(lambda name, item: found.__setitem__(name, numpy.asarray(item[()]).tobytes())
                          if isinstance(item, h5py.Dataset) else None)
    return found


KINDS = ["functional.keras", "functional.h5", "subclassed.keras", "subclassed.weights.h5"]


@pytest.mark.parametrize("kind", KINDS)
def test_compressed_model_loads_and_predicts_close(saved, kind, tmp_path):
    source = saved["paths"][kind]
    output = tmp_path / default_output(source).name
    summary = compress_file(source, output, CompressOptions(n_clusters=K, device="cpu"))
    clustered = {t.name for t in summary.run.clustered()}
    assert clustered, "the weight matrices should be clustered"
    expected = numpy.asarray(saved["models"][kind](saved["inputs"], training=False))
    got = numpy.asarray(_load(kind, output)(saved["inputs"], training=False))
    error = numpy.linalg.norm(got - expected) / numpy.linalg.norm(expected)
    assert 0 < error < RELATIVE_TOLERANCE

    before, after = _datasets(source), _datasets(output)
    assert before.keys() == after.keys()
    for name in before:
        if name in clustered:
            values = numpy.frombuffer(after[name], dtype="float32")
            assert numpy.unique(values).size <= K, name
        else:
            assert after[name] == before[name], name
    reasons = {t.name: t.reason for t in summary.run.tensors}
    assert all(len(t.shape) >= 2 for t in summary.run.clustered())
    assert any(r.startswith("not a weight matrix") for r in reasons.values())
    if kind == "functional.keras":
        assert reasons["optimizer/vars/4"] == "optimizer state"


def test_all_variables_clusters_vectors_but_never_optimizer_state(saved, tmp_path):
    source = saved["paths"]["functional.h5"]
    output = tmp_path / "all.h5"
    summary = compress_file(source, output, CompressOptions(n_clusters=4, all_variables=True, device="cpu"))
    clustered = {t.name for t in summary.run.clustered()}
    assert "model_weights/norm/norm/gamma" in clustered
    before, after = _datasets(source), _datasets(output)
    for name in before:
        if name.startswith("optimizer_weights/"):
            assert after[name] == before[name]
    keras.models.load_model(output, compile=False)(saved["inputs"])


def test_whitelisted_matches_dataset_paths_and_legacy_variable_names(saved):
    model = read_model(saved["paths"]["functional.h5"])
    from gpucompress.clustering import cluster_weights

    options = CompressOptions(n_clusters=K, device="cpu",
                              whitelisted=("hidden/kernel", "model_weights/embedding/embedding/embeddings"))
    reasons = {t.name: t.reason for t in cluster_weights(model.weights(), options).tensors}
    assert reasons["model_weights/hidden/hidden/kernel"] == "whitelisted"
    assert reasons["model_weights/embedding/embedding/embeddings"] == "whitelisted"
    assert reasons["model_weights/head/head/kernel"] == "clustered"


@pytest.mark.parametrize("kind", ["functional.keras", "functional.h5"])
def test_same_input_same_bytes(saved, kind, tmp_path):
    source = saved["paths"][kind]
    first, second = tmp_path / ("a." + kind), tmp_path / ("b." + kind)
    compress_file(source, first, CompressOptions(n_clusters=K, device="cpu"))
    compress_file(source, second, CompressOptions(n_clusters=K, device="cpu"))
    assert first.read_bytes() == second.read_bytes()
    if kind.endswith(".keras"):
        with zipfile.ZipFile(first) as archive:
            assert [i.filename for i in archive.infolist()] == sorted(archive.namelist())
            assert {i.date_time for i in archive.infolist()} == {(1980, 1, 1, 0, 0, 0)}


@pytest.mark.parametrize("kind", ["functional.keras", "subclassed.weights.h5"])
def test_skeleton_round_trip_gives_the_compress_output(saved, kind, tmp_path):
    source = saved["paths"][kind]
    output = tmp_path / ("out." + kind)
    compress_file(source, output, CompressOptions(n_clusters=K, device="cpu"))
    from gpucompress.clustering import cluster_weights

    model = read_model(source)
    run = cluster_weights(model.weights(), CompressOptions(n_clusters=K, device="cpu"))
    values = {t.name: t.values() for t in run.clustered()}
    model.replace_values(values)
    skeleton = model.to_skeleton(sorted(values))
    restored = type(model).from_skeleton(skeleton)
    restored_values = {w.name: w.load() for w in restored.weights() if w.name in values}
    assert all(not array.any() for array in restored_values.values())
    restored.replace_values(values)
    again = tmp_path / ("again." + kind)
    restored.save(again)
    assert again.read_bytes() == output.read_bytes()


def test_default_output_keeps_the_format_recognisable(tmp_path):
    assert default_output("model.keras").name == "model.min.keras"
    assert default_output("model.h5").name == "model.min.h5"
    assert default_output("model.hdf5").name == "model.min.hdf5"
    assert default_output("model.weights.h5").name == "model.min.weights.h5"
    assert default_output("model.pb").name == "model.pb.min"


def _corrupt_inputs(saved, folder):
    good = saved["paths"]["functional.keras"].read_bytes()
    truncated = folder / "truncated.keras"
    truncated.write_bytes(good[: len(good) // 2])
    not_zip = folder / "text.keras"
    not_zip.write_bytes(b"this is not a zip file\n")
    no_weights = folder / "noweights.keras"
    with zipfile.ZipFile(no_weights, "w") as archive:
        archive.writestr("config.json", "{}")
    broken_h5 = folder / "broken.h5"
    broken_h5.write_bytes(saved["paths"]["functional.h5"].read_bytes()[:3000])
    garbage_h5 = folder / "garbage.h5"
    garbage_h5.write_bytes(b"\x00" * 100)
    return [truncated, not_zip, no_weights, broken_h5, garbage_h5]


def test_bad_inputs_fail_with_one_line_and_leave_nothing(saved, tmp_path, capsys):
    for path in _corrupt_inputs(saved, tmp_path):
        before = set(tmp_path.iterdir())
        code = main(["compress", str(path), "-q"])
        captured = capsys.readouterr()
        assert code == 1, path
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 and str(path) in lines[0] and "Traceback" not in captured.err, captured.err
        assert set(tmp_path.iterdir()) == before, path


def test_readers_pick_the_format_from_the_path(saved):
    assert isinstance(read_model(saved["paths"]["functional.keras"]), KerasModel)
    assert isinstance(read_model(saved["paths"]["functional.h5"]), HDF5Model)
    assert read_model(saved["paths"]["subclassed.weights.h5"]).format_name == "h5"


# pack / unpack: the archive gives back exactly what `compress` writes.

@pytest.mark.parametrize("kind, global_clusters", [(kind, False) for kind in KINDS]
                         + [("functional.keras", True), ("functional.h5", True)])
def test_pack_unpack_equals_compress_and_predicts_the_same(saved, kind, global_clusters, tmp_path):
    from gpucompress.packing import pack_file, unpack_file

    options = CompressOptions(n_clusters=K, global_clusters=global_clusters, device="cpu")
    source = saved["paths"][kind]
    compressed = tmp_path / ("compressed." + kind)
    compress_file(source, compressed, options)
    archive = tmp_path / (source.name + ".gpcz")
    summary = pack_file(source, archive, options, zip_sizes=False)
    assert summary.coded >= len(summary.run.clustered()) > 0
    assert summary.sizes["archive"] < summary.sizes["min"]
    output, written = unpack_file(archive)
    assert output == tmp_path / default_output(source).name  # model.min.keras, model.min.weights.h5
    assert output.read_bytes() == compressed.read_bytes() and written == output.stat().st_size
    expected = numpy.asarray(_load(kind, compressed)(saved["inputs"], training=False))
    got = numpy.asarray(_load(kind, output)(saved["inputs"], training=False))
    numpy.testing.assert_array_equal(got, expected)


def test_pack_of_a_compressed_model_indexes_it_unchanged(saved, tmp_path):
    from gpucompress.packing import pack_file, unpack_file

    compressed = tmp_path / "c.h5"
    compress_file(saved["paths"]["functional.h5"], compressed, CompressOptions(n_clusters=K, device="cpu"))
    pack_file(compressed, tmp_path / "c.gpcz", CompressOptions(n_clusters=K, device="cpu"), zip_sizes=False)
    output, _ = unpack_file(tmp_path / "c.gpcz", tmp_path / "again.h5")
    assert output.read_bytes() == compressed.read_bytes()


def test_bad_archives_and_outputs_fail_with_one_line_and_leave_nothing(saved, tmp_path, capsys):
    from gpucompress.packing import pack_file

    options = CompressOptions(n_clusters=K, device="cpu")
    keras_archive, h5_archive = tmp_path / "m.keras.gpcz", tmp_path / "m.h5.gpcz"
    pack_file(saved["paths"]["functional.keras"], keras_archive, options, zip_sizes=False)
    pack_file(saved["paths"]["functional.h5"], h5_archive, options, zip_sizes=False)
    damaged = tmp_path / "damaged.keras.gpcz"
    data = bytearray(keras_archive.read_bytes())
    data[len(data) // 2] ^= 0x10
    damaged.write_bytes(bytes(data))
    folder = tmp_path / "folder.keras"
    folder.mkdir()
    corrupt = _corrupt_inputs(saved, folder)
    cases = [(["unpack", str(damaged)], str(damaged)),
             (["unpack", str(keras_archive), "-o", str(tmp_path / "out.h5")], "needs a name ending in .keras"),
             (["unpack", str(h5_archive), "-o", str(tmp_path / "out.keras")], "needs a name ending in .h5"),
             (["unpack", str(h5_archive), "-o", str(tmp_path / "out.pb")], "needs a name ending in .h5"),
             (["unpack", str(keras_archive), "-o", str(folder)], "is a directory"),
             (["unpack", str(keras_archive), "-o", str(folder / "out.keras" / "x.keras")], "does not exist")]
    cases += [(["pack", str(path), "-o", str(tmp_path / "bad.gpcz")], str(path)) for path in corrupt]
    for argv, message in cases:
        before, inside = set(tmp_path.iterdir()), set(folder.iterdir())
        assert main([*argv, "-q"]) == 1, argv
        error = capsys.readouterr().err
        assert error.startswith("gpucompress: error: ") and error.count("\n") == 1, error
        assert message in error and "Traceback" not in error, error
        assert set(tmp_path.iterdir()) == before and set(folder.iterdir()) == inside, argv


def test_keras_file_weights_answer_to_the_variables_own_paths(saved):
    # The names come from config.json (no Keras import); Keras itself says which variable is which.
    path = saved["paths"]["functional.keras"]
    model = saved["models"]["functional.keras"]
    aliases = {w.name: w.aliases for w in read_model(path).weights()}
    checked = 0
    keys = {}
    for layer in model.layers:
        # the file's key: the class in snake case, numbered from the second layer of a class
        key = {"Dense": "dense", "Embedding": "embedding", "BatchNormalization": "batch_normalization"}.get(
            type(layer).__name__)
        if key is None:
            continue
        keys[key] = keys.get(key, -1) + 1
        key = key if keys[key] == 0 else f"{key}_{keys[key]}"
        for index, variable in enumerate(layer.weights):
            name = f"layers/{key}/vars/{index}"
            assert variable.path in aliases[name], (name, variable.path, aliases[name])
            checked += 1
    assert checked == 9  # embedding, hidden (2), norm (4), head (2)


def test_keras_file_whitelisted_by_variable_path(saved, tmp_path):
    path = saved["paths"]["functional.keras"]
    options = CompressOptions(n_clusters=K, device="cpu", whitelisted=("hidden/kernel",))
    summary = compress_file(path, tmp_path / "out.keras", options)
    reasons = {t.name: t.reason for t in summary.run.tensors}
    assert reasons["layers/dense/vars/0"] == "whitelisted"  # the first Dense: hidden
    assert reasons["layers/dense_1/vars/0"] == "clustered"
