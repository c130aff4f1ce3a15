"""TFLite flatbuffers (`.tflite`): read, cluster, write, pack/unpack, TFLite Micro export, bad input.

Real models: a small Keras conv model (Conv2D, DepthwiseConv2D, Dense) and the
shared functional model (Embedding -> GATHER, Dense), converted once per
session with tf.lite.TFLiteConverter (float32, dynamic-range int8,
full-integer int8 with per-channel weights, float16), run with the TFLite
interpreter after compress and after unpack.
"""
import os
import struct

import numpy
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpucompress.api import compress_file
from gpucompress.cli import main
from gpucompress.errors import FormatError
from gpucompress.models import default_output, model_format, read_model
from gpucompress.models.flatbuffer import Reader
from gpucompress.models.tflite import TFLiteModel, parse_structure
from gpucompress.options import CompressOptions
from gpucompress.packing import pack_file, unpack_file

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Without ai-edge-litert the reader takes TensorFlow's copy of the schema and verify tf.lite.Interpreter.
pytest.importorskip("tensorflow")

from .keras_models import K, build_models  # noqa: E402
from .tflite_models import KINDS, conv_model, convert, images, relative_error, run_tflite  # noqa: E402

SAMPLES = 16
# How much worse than the Keras model clustered at the same k a converted
# model's output may get. float32/float16 hold the same kernels (transposed),
# and 1-D clustering ignores order: measured 1.000x (float32), 1.01x (float16)
# on the conv model. The int8 kinds cluster integers (their squared errors
# weighed by the per-channel scales squared) and add their own rounding
# (benchmarks/tflite.py on the same models: below 1x at k=16, see README).
ERROR_FACTOR = {"float32": 1.02, "float16": 1.1, "dynamic": 1.3, "int8": 1.3}


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    """Convert the models once: {"conv", "embedding"} -> {kind: path}, and each Keras model's
    error clustered at k=K (as a .keras file compressed by gpucompress)."""
    import keras

    folder = tmp_path_factory.mktemp("tflite")
    probe = images(SAMPLES)
    conv = conv_model()
    embedding_inputs, functional, _ = build_models(seed=0)
    paths = {"conv": {}, "embedding": {}}
    for kind in KINDS:
        paths["conv"][kind] = folder / f"conv_{kind}.tflite"
        paths["conv"][kind].write_bytes(convert(conv, kind, probe))
    for kind in ("float32", "dynamic"):
        paths["embedding"][kind] = folder / f"embedding_{kind}.tflite"
        paths["embedding"][kind].write_bytes(convert(functional, kind))
    keras_error = {}
    for name, model, inputs in (("conv", conv, probe), ("embedding", functional, embedding_inputs)):
        path = folder / f"{name}.keras"
        model.save(path)
        summary = compress_file(path, None, CompressOptions(n_clusters=K, device="cpu"))
        clustered = keras.models.load_model(summary.output_path, compile=False)
        keras_error[name] = relative_error(model.predict(inputs, verbose=0), clustered.predict(inputs, verbose=0))
    return {"paths": paths, "keras_error": keras_error, "inputs": {"conv": probe, "embedding": embedding_inputs},
            "folder": folder}


def _weight_spans(model: TFLiteModel) -> list[tuple[int, int]]:
    return [model.structure.buffers[e.buffer] for e in model._entries.values()]


def _outside(data: bytes, spans) -> bytes:
    keep = numpy.ones(len(data), bool)
    for start, length in spans:
        keep[start : start + length] = False
    return numpy.frombuffer(data, numpy.uint8)[keep].tobytes()


def test_weights_are_the_operators_constant_inputs(models):
    conv = read_model(models["paths"]["conv"]["float32"])
    shapes = {w.name.split("/")[1]: w.shape for w in conv.weights()}
    assert shapes == {"conv_1": (16, 3, 3, 3), "depthwise_1": (1, 3, 3, 16), "hidden_1": (32, 1024),
                      "head_1": (5, 32)}
    embedding = read_model(models["paths"]["embedding"]["float32"])
    assert any(w.shape == (40, 24) for w in embedding.weights())  # the GATHER table
    half = read_model(models["paths"]["conv"]["float16"])
    assert {w.dtype for w in half.weights()} == {"float16"}  # found through DEQUANTIZE
    integer = read_model(models["paths"]["conv"]["int8"]).integer_weights()
    assert len(integer) == 4 and all(q["dtype"] == "int8" for q in integer.values())
    conv_kernel = next(q for n, q in integer.items() if "/conv_1/" in n)
    assert conv_kernel["scales"].size == 16 and conv_kernel["axis"] == 0  # per-channel scales


@pytest.mark.parametrize("name,kind", [("conv", k) for k in KINDS] + [("embedding", "float32"),
                                                                      ("embedding", "dynamic")])
def test_compress_runs_in_the_interpreter_within_the_keras_error(models, tmp_path, name, kind):
    source = models["paths"][name][kind]
    output = tmp_path / "out.tflite"
    summary = compress_file(source, output, CompressOptions(n_clusters=K, device="cpu"))
    assert summary.run.clustered()
    original, clustered = read_model(source), read_model(output)
    data, new = source.read_bytes(), output.read_bytes()
    assert len(new) == len(data)
    # every byte outside the weight buffers (operators, tensors, quantization, metadata) unchanged
    assert _outside(new, _weight_spans(original)) == _outside(data, _weight_spans(original))
    for weight in clustered.weights():
        if weight.name in {t.name for t in summary.run.clustered()}:
            # float64: NumPy 2.4.6 counts a large float16 array's distinct values wrongly
            assert numpy.unique(weight.load().astype(numpy.float64)).size <= K
    for q_old, q_new in zip(original.integer_weights().values(), clustered.integer_weights().values()):
        assert numpy.array_equal(q_old["scales"], q_new["scales"])
    inputs = models["inputs"][name]
    error = relative_error(run_tflite(data, inputs), run_tflite(new, inputs))
    assert 0 < error <= ERROR_FACTOR[kind] * models["keras_error"][name] + 0.005, (error, models["keras_error"])
    # same input and options, same bytes
    again = tmp_path / "again.tflite"
    compress_file(source, again, CompressOptions(n_clusters=K, device="cpu"))
    assert again.read_bytes() == new


def test_int8_weights_are_clustered_in_their_integer_domain(models, tmp_path):
    output = tmp_path / "int8.tflite"
    compress_file(models["paths"]["conv"]["int8"], output, CompressOptions(n_clusters=4, device="cpu"))
    model = read_model(output)
    for name, quantization in model.integer_weights().items():
        values = model._values(model._entries[name])
        assert values.dtype == numpy.int8 and numpy.unique(values).size <= 4
    assert numpy.isfinite(run_tflite(output.read_bytes(), models["inputs"]["conv"])).all()


def test_int8_weights_take_the_exact_dp_on_their_integers(models, tmp_path):
    # int8 buffers store every value (max_distinct is their size) but their dtype
    # allows 256 (integer_levels): the optimal method's DP runs on the distinct integers.
    import json

    report = tmp_path / "int8.json"
    assert main(["compress", str(models["paths"]["conv"]["int8"]), "-o", str(tmp_path / "int8.tflite"),
                 "--n_clusters", "16", "--device", "cpu", "-q", "--report", str(report)]) == 0
    entries = [t for t in json.loads(report.read_text())["tensors"] if t["clustered"]]
    int8 = set(read_model(models["paths"]["conv"]["int8"]).integer_weights())
    # Buffers of at most 256 values are not flagged (their DP already has one bin per value).
    large = [t for t in entries if t["name"] in int8 and t["values"] > 256]
    assert large and all(t["exact"] for t in large)


LEVEL_OPTIONS = [dict(n_clusters=16), dict(n_clusters=16, granularity="per-channel"),
                 dict(n_clusters=5, keep_zeros=True), dict(n_clusters=100),
                 dict(n_clusters=8, granularity="grouped", group_size=4, keep_zeros=True)]


@pytest.mark.parametrize("kind", ["int8", "dynamic"])
@pytest.mark.parametrize("options", LEVEL_OPTIONS)
def test_int8_clustered_by_levels_gives_the_bytes_of_clustering_the_values(models, tmp_path, monkeypatch, kind,
                                                                          options):
    # int8 weights are clustered from their histograms (clustering._by_levels): the outputs, the archive and
    # every number of the report must be those of clustering their values as floats (the path before it).
    from gpucompress import clustering, engine

    source = models["paths"]["conv"][kind]
    calls = []
    histograms = engine.cluster_histograms
    monkeypatch.setattr(engine, "cluster_histograms", lambda *a, **kw: calls.append(len(a[0])) or histograms(*a, **kw))
    fast = compress_file(source, tmp_path / "levels.tflite", CompressOptions(device="cpu", **options))
    pack_file(source, tmp_path / "levels.gpcz", CompressOptions(device="cpu", **options))
    assert sum(calls) >= 2  # compress and pack took the level path for some tensors (small channels: values)
    monkeypatch.setattr(clustering, "_by_levels", lambda *arguments: False)
    slow = compress_file(source, tmp_path / "values.tflite", CompressOptions(device="cpu", **options))
    pack_file(source, tmp_path / "values.gpcz", CompressOptions(device="cpu", **options))
    assert (tmp_path / "levels.tflite").read_bytes() == (tmp_path / "values.tflite").read_bytes()
    assert (tmp_path / "levels.gpcz").read_bytes() == (tmp_path / "values.gpcz").read_bytes()
    for a, b in zip(fast.run.tensors, slow.run.tensors):
        assert (a.name, a.clustered, a.reason, a.kept_zeros, a.zero_share, a.exact, a.scale_weighted) == \
               (b.name, b.clustered, b.reason, b.kept_zeros, b.zero_share, b.exact, b.scale_weighted)
        if a.clustered:
            assert a.codebook.dtype == b.codebook.dtype and a.codebook.tobytes() == b.codebook.tobytes()
            assert a.labels.dtype == b.labels.dtype and numpy.array_equal(a.labels, b.labels)
            assert (a.sse, a.sum_squares, a.iterations, a.converged, a.channel_axis, a.group_size) == \
                   (b.sse, b.sum_squares, b.iterations, b.converged, b.channel_axis, b.group_size)


@pytest.mark.parametrize("options", [dict(n_clusters=8), dict(n_clusters=4, granularity="grouped", group_size=4),
                                     dict(n_clusters=8, method="lloyd")])
def test_int8_per_channel_scales_weigh_the_objective(models, tmp_path, monkeypatch, options):
    # The objective of integer weights is their dequantized error: with per-channel scales each
    # squared integer error weighs its channel's scale squared, and the dequantized SSE is at most the
    # one of clustering the integers unweighted (the exact DP's optimum, within the 2**-16 resolution of
    # the integer weights; Lloyd from the same start only moves down its own objective, so no bound there).
    from dataclasses import replace as dataclass_replace

    source = models["paths"]["conv"]["int8"]
    quantization = read_model(source).integer_weights()
    per_channel = {name for name, q in quantization.items() if numpy.unique(q["scales"]).size > 1}
    assert per_channel
    weighted = compress_file(source, tmp_path / "weighted.tflite", CompressOptions(device="cpu", **options))
    assert {t.name for t in weighted.run.clustered() if t.scale_weighted} == per_channel
    # The integers' own error (--integer-objective integer) is what hiding the scales gives.
    unweighted = compress_file(source, tmp_path / "unweighted.tflite",
                               CompressOptions(device="cpu", integer_objective="integer", **options))
    assert not any(t.scale_weighted for t in unweighted.run.clustered())
    monkeypatch.setattr(TFLiteModel, "weights", lambda self, _w=TFLiteModel.weights: [
        dataclass_replace(w, channel_scales=None) for w in _w(self)])
    compress_file(source, tmp_path / "hidden.tflite", CompressOptions(device="cpu", **options))
    assert (tmp_path / "hidden.tflite").read_bytes() == (tmp_path / "unweighted.tflite").read_bytes()
    before = read_model(source)

    def dequantized_sse(path, name):
        model, q = read_model(path), quantization[name]
        along = [1] * len(model._entries[name].shape)
        along[q["axis"]] = -1
        gap = (model._values(model._entries[name]).astype(numpy.float64)
               - before._values(before._entries[name]).astype(numpy.float64))
        return float(((gap * q["scales"].astype(numpy.float64).reshape(along)) ** 2).sum())

    changed = 0
    for name in per_channel:
        mine, plain = dequantized_sse(tmp_path / "weighted.tflite", name), dequantized_sse(tmp_path / "unweighted.tflite", name)
        if options.get("method") != "lloyd":
            assert mine <= plain * (1 + 1e-4), name
        changed += mine != plain
    assert changed  # the weighting changed some codebook
    assert numpy.isfinite(run_tflite((tmp_path / "weighted.tflite").read_bytes(), models["inputs"]["conv"])).all()


def test_integer_objective_on_a_float_model_says_it_changes_nothing(models, tmp_path, caplog):
    assert main(["compress", str(models["paths"]["conv"]["float32"]), "-o", str(tmp_path / "f.tflite"), "-q",
                 "--n_clusters", "8", "--device", "cpu", "--integer-objective", "integer"]) == 0
    assert any("integer_objective='integer' changes nothing here" in r.getMessage()
               for r in caplog.records if r.levelname == "WARNING")


def test_global_clusters_says_per_channel_scales_go_unweighted(models, tmp_path, caplog):
    summary = compress_file(models["paths"]["conv"]["int8"], tmp_path / "global.tflite",
                            CompressOptions(n_clusters=8, global_clusters=True, device="cpu"))
    assert summary.run.clustered() and not any(t.scale_weighted for t in summary.run.clustered())
    assert any("per-channel scales; with global_clusters their integers are clustered unweighted" in r.getMessage()
               for r in caplog.records if r.levelname == "WARNING")


def test_int8_per_channel_holds_at_most_k_integers_per_channel(models, tmp_path):
    # Full-integer int8 with per-channel scales, clustered per channel (the level path for the Dense
    # kernel's 1,024-value channels): k integers per channel, scales unchanged, and the interpreter runs it.
    source, output = models["paths"]["conv"]["int8"], tmp_path / "per_channel.tflite"
    k = 4
    summary = compress_file(source, output, CompressOptions(n_clusters=k, granularity="per-channel", device="cpu"))
    original, model = read_model(source), read_model(output)
    clustered = {t.name: t for t in summary.run.clustered()}
    assert len(clustered) == 4
    for name, quantization in model.integer_weights().items():
        values = model._values(model._entries[name])
        assert numpy.array_equal(quantization["scales"], original.integer_weights()[name]["scales"])
        moved = numpy.moveaxis(values, clustered[name].channel_axis, 0)
        by_channel = moved.reshape(moved.shape[0], -1)
        assert max(numpy.unique(row).size for row in by_channel) <= k
        assert numpy.array_equal(values, numpy.rint(clustered[name].values()).astype(numpy.int8))
    per_tensor = tmp_path / "per_tensor.tflite"
    compress_file(source, per_tensor, CompressOptions(n_clusters=k, device="cpu"))
    inputs = models["inputs"]["conv"]
    reference = run_tflite(source.read_bytes(), inputs)
    error = relative_error(reference, run_tflite(output.read_bytes(), inputs))
    assert 0 < error < relative_error(reference, run_tflite(per_tensor.read_bytes(), inputs))


@pytest.mark.parametrize("kind", KINDS)
def test_replace_labels_writes_the_bytes_of_replace_values(models, kind):
    # compress writes codebook[labels] through replace_labels (rounded, clipped codebook gathered into the
    # buffer); pack's unpack and other callers use replace_values: the same bytes, or pack/unpack breaks.
    source = models["paths"]["conv"][kind]
    by_values, by_labels = read_model(source), read_model(source)
    rng = numpy.random.default_rng(0)
    for weight in by_values.weights():
        if not weight.floating:
            continue
        # Integer weights: codebook entries past the dtype's range and at .5 (rounding half to even) too.
        spread = 300.0 if weight.name in by_values.integer_weights() else 1.0
        codebook = numpy.concatenate([rng.uniform(-spread, spread, 13), [0.5, 1.5, -2.5]]).astype(weight.dtype)
        labels = rng.integers(0, codebook.size, weight.size).astype(numpy.uint8)
        by_values.replace_values({weight.name: codebook[labels].reshape(weight.shape)})
        by_labels.replace_labels(weight.name, weight.shape, codebook, labels)
    assert by_labels.to_bytes() == by_values.to_bytes() != source.read_bytes()
    with pytest.raises(ValueError):
        by_labels.replace_labels(weight.name, (1,), codebook, labels[:1])


@pytest.mark.parametrize("kind", ["float32", "int8"])
def test_pack_unpack_is_byte_identical_and_runs(models, tmp_path, kind):
    source = models["paths"]["conv"][kind]
    options = CompressOptions(n_clusters=K, device="cpu")
    compressed = tmp_path / "min.tflite"
    compress_file(source, compressed, options)
    archive = tmp_path / "model.gpcz"
    pack_file(source, archive, options)
    unpacked = tmp_path / "unpacked.tflite"
    unpack_file(archive, unpacked)
    assert unpacked.read_bytes() == compressed.read_bytes()
    assert numpy.isfinite(run_tflite(unpacked.read_bytes(), models["inputs"]["conv"])).all()


def _tensor_tables(data: bytes):
    return Reader(data).root().tables(2, "subgraph")[0].tables(0, "tensor")


def test_a_shared_buffer_is_one_weight(tmp_path):
    import keras

    keras.utils.set_random_seed(1)
    inputs = keras.Input((32,))
    x = keras.layers.Dense(32, name="first")(inputs)
    x = keras.layers.Dense(32, name="second")(x)
    data = bytearray(convert(keras.Model(inputs, keras.layers.Dense(5, name="head")(x)), "float32"))
    tensors = parse_structure(bytes(data)).tensors[0]
    first, second = [t for t in tensors if t.shape == (32, 32) and t.buffer]
    # point the second kernel at the first one's buffer (the uint32 `buffer` field, slot 2)
    field = _tensor_tables(bytes(data))[second.index].field(2, 4)
    data[field : field + 4] = struct.pack("<I", first.buffer)
    source = tmp_path / "shared.tflite"
    source.write_bytes(bytes(data))
    model = read_model(source)
    shared = [w for w in model.weights() if w.shape == (32, 32)]
    assert len(shared) == 1 and {shared[0].name, *shared[0].aliases} == {first.name, second.name}
    output = tmp_path / "shared.min.tflite"
    summary = compress_file(source, output, CompressOptions(n_clusters=K, device="cpu"))
    assert [t.name for t in summary.run.clustered()].count(shared[0].name) == 1
    probe = numpy.random.default_rng(0).normal(size=(4, 32)).astype("float32")
    assert numpy.isfinite(run_tflite(output.read_bytes(), probe)).all()


def _root(data: bytes):
    return Reader(data).root()


def _corrupt(data: bytes, how: str) -> bytes:
    """Return a damaged copy of a .tflite file (positions found with the checked reader)."""
    data = bytearray(data)
    structure = parse_structure(bytes(data))
    if how == "truncated":
        return bytes(data[: len(data) // 2])
    if how == "corrupt root":
        data[0:4] = struct.pack("<I", len(data) + 64)
    elif how == "buffer past the end":
        weight = max(structure.buffers, key=lambda span: span[1])
        data[weight[0] - 4 : weight[0]] = struct.pack("<I", len(data))  # the data vector's length
    elif how == "shape disagrees":
        kernel = next(t for t in structure.tensors[0] if t.shape == (5, 32))
        start, _ = _tensor_tables(bytes(data))[kernel.index].vector(0, 4, "shape")
        data[start : start + 4] = struct.pack("<i", 6)
    elif how == "schema version":
        position = _root(bytes(data)).field(0, 4)
        data[position : position + 4] = struct.pack("<I", 4)
    elif how == "not a flatbuffer":
        return b"this is not a model, only text that is long enough\n" * 4
    return bytes(data)


@pytest.mark.parametrize("how,message", [
    ("truncated", "past the end"), ("corrupt root", "past the end"), ("buffer past the end", "past the end"),
    ("shape disagrees", "of shape [6, 32] needs 768 bytes"), ("schema version", "schema version 4"),
    ("not a flatbuffer", "not a TFLite flatbuffer"),
])
def test_bad_input_is_one_line_exit_1_and_nothing_written(models, tmp_path, capsys, how, message):
    source = tmp_path / "bad.tflite"
    source.write_bytes(_corrupt(models["paths"]["conv"]["float32"].read_bytes(), how))
    for command in (["compress", str(source), "-o", str(tmp_path / "out.tflite")],
                    ["compress", str(source), "--tflm", "--n_clusters", "16", "-o", str(tmp_path / "out.tflite")],
                    ["pack", str(source), "-o", str(tmp_path / "out.gpcz")], ["inspect", str(source)]):
        assert main(command) == 1
        err = capsys.readouterr().err
        assert err.startswith("gpucompress: error:") and err.count("\n") == 1 and message in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.tflite"]


# Edits land anywhere, and half the time in the first or last 2 KiB, where the
# flatbuffer builder puts the root table, vtables and vectors of offsets.
_POSITIONS = st.one_of(st.integers(-2048, 2047), st.integers(0, 1 << 20))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cut=st.one_of(st.just(0), st.integers(0, 1 << 20)),
       edits=st.lists(st.tuples(_POSITIONS, st.integers(0, 255)), max_size=8))
def test_reader_fuzz_only_raises_format_errors(fuzz_source, cut, edits):
    data = bytearray(fuzz_source[: max(8, len(fuzz_source) - cut % len(fuzz_source))])
    for position, value in edits:
        data[position % len(data)] = value
    try:
        model = TFLiteModel(bytes(data))
    except FormatError:
        return
    for weight in model.weights():
        if weight.floating:
            assert weight.load().shape == weight.shape


@pytest.fixture(scope="session")
def fuzz_source(models):
    """The smallest converted model's bytes (the fuzz test mutates copies)."""
    return min((p.read_bytes() for kinds in models["paths"].values() for p in kinds.values()), key=len)


def test_format_default_output_verify_and_inspect(models, tmp_path, capsys):
    source = models["paths"]["conv"]["int8"]
    assert model_format(source) == "tflite"
    plain = tmp_path / "model.bin"
    plain.write_bytes(source.read_bytes())
    assert model_format(plain) == "tflite"  # by its TFL3 identifier
    assert default_output(source).name == "conv_int8.min.tflite"
    output = tmp_path / "min.tflite"
    assert main(["compress", str(source), "--n_clusters", "16", "-o", str(output), "-q"]) == 0
    assert main(["verify", str(source), str(output)]) == 0
    assert "relative" in capsys.readouterr().out
    assert main(["inspect", str(output)]) == 0
    assert "(tflite)" in capsys.readouterr().out


# ---- TensorFlow Lite Micro export -------------------------------------------------------------

def _tflm_run(content: bytes, inputs: numpy.ndarray) -> numpy.ndarray:
    from tflite_micro import runtime

    interpreter = runtime.Interpreter.from_bytes(content)
    rows = []
    for row in inputs:
        interpreter.set_input(row[None], 0)
        interpreter.invoke()
        rows.append(interpreter.get_output(0)[0].copy())
    return numpy.stack(rows)


@pytest.mark.parametrize("kind", ["float32", "int8"])
def test_tflm_export_is_decoded_by_tflm_to_the_clustered_model(models, tmp_path, kind):
    pytest.importorskip("tflite_micro")
    from gpucompress.models.tflite import schema

    source = models["paths"]["conv"][kind]
    clustered, micro = tmp_path / "min.tflite", tmp_path / "model.tflm.tflite"
    assert main(["compress", str(source), "--n_clusters", "16", "-o", str(clustered), "-q"]) == 0
    assert main(["compress", str(source), "--n_clusters", "16", "--tflm", "-o", str(micro), "-q"]) == 0
    data = micro.read_bytes()
    # 4-bit indices instead of 32- or 8-bit values, plus tables and the rest of the model
    assert len(data) < {"float32": 0.2, "int8": 0.65}[kind] * clustered.stat().st_size
    codes = Reader(data).root().tables(1, "operator code")
    assert any(code.string(1, "custom code") == "TFLM_DECODE" for code in codes)
    assert schema().BuiltinOperator.FULLY_CONNECTED in [c.scalar(3, "i32") for c in codes]
    inputs = models["inputs"]["conv"][:4]
    # TFLM's DECODE gives back exactly the clustered weights: same outputs, bit for bit
    assert numpy.array_equal(_tflm_run(data, inputs), _tflm_run(clustered.read_bytes(), inputs))


def test_tflm_needs_k_at_most_128_and_a_tflite_input(models, tmp_path, capsys):
    source = models["paths"]["conv"]["float32"]
    assert main(["compress", str(source), "--tflm", "-o", str(tmp_path / "x.tflite")]) == 1
    assert "n_clusters=256 should be <= 128 with --tflm" in capsys.readouterr().err
    keras_file = tmp_path / "conv.keras"
    keras_file.write_bytes(b"")
    assert main(["compress", str(keras_file), "--tflm", "--n_clusters", "16"]) == 1
    assert "needs a .tflite model" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["conv.keras"]


@pytest.mark.parametrize("distinct,bits", [(1, 1), (2, 1), (3, 2), (4, 2), (5, 3), (16, 4), (17, 5), (128, 7)])
def test_index_bitwidth(distinct, bits):
    from gpucompress.models.tflm import index_bitwidth

    assert index_bitwidth(distinct) == bits


def _decode_lut(data: bytes, structure, op) -> tuple[str, numpy.ndarray]:
    """Decode one TFLM_DECODE operator's LUT tensor as TFLM's format documents it, without TFLM's code:
    a 16-byte DCM header (byte 0 decode type 0 = LUT, byte 1 DCM version 1, byte 4 LUT version 1,
    byte 5 axis << 4 | bit width, byte 6 table stride), the value tables from byte 16, and the indices
    packed most significant bit first. Returns (the decoded tensor's original name, its values)."""
    from gpucompress.models.tflite import _numpy_types

    tensors = structure.tensors[0]
    encoded, ancillary = (structure.buffers[tensors[i].buffer] for i in op.inputs[:2])
    output = tensors[op.outputs[0]]
    header = numpy.frombuffer(data, numpy.uint8, 16, ancillary[0])
    assert (header[0], header[1], header[4]) == (0, 1, 1)
    axis, bits, stride = int(header[5]) >> 4, int(header[5]) & 7, int(header[6])
    dtype = _numpy_types()[output.type]
    tables = numpy.frombuffer(data, dtype, (ancillary[1] - 16) // dtype.itemsize, ancillary[0] + 16)
    n = int(numpy.prod(output.shape))
    packed = numpy.unpackbits(numpy.frombuffer(data, numpy.uint8, encoded[1], encoded[0]))[: n * bits]
    indices = packed.reshape(n, bits).astype(numpy.int64) @ (1 << numpy.arange(bits - 1, -1, -1))
    if axis == 15:
        channel = numpy.zeros(n, numpy.int64)
    else:
        channel = numpy.indices(output.shape)[axis].reshape(-1)
    return output.name.removesuffix("_decoded"), tables[channel * stride + indices].reshape(output.shape)


@pytest.mark.parametrize("kind", ["float32", "int8"])
def test_tflm_bit_layout_matches_its_documented_format(models, tmp_path, kind):
    pytest.importorskip("tflite_micro")
    source = models["paths"]["conv"][kind]
    clustered, micro = tmp_path / "min.tflite", tmp_path / "model.tflm.tflite"
    compress_file(source, clustered, CompressOptions(n_clusters=8, device="cpu"))
    compress_file(source, micro, CompressOptions(n_clusters=8, device="cpu"), tflm=True)
    data = micro.read_bytes()
    structure = parse_structure(data)
    reference = read_model(clustered)
    decoded = dict(_decode_lut(data, structure, op) for op in structure.operators[0] if op.code == -1)
    # int8 at k=8: the depthwise kernel's 16 channel tables would outweigh its 144 bytes: kept as it is
    assert len(decoded) == {"float32": 4, "int8": 3}[kind]
    tensors = {e.tensors[0].name: e for e in reference._entries.values()}
    for name, values in decoded.items():
        assert numpy.array_equal(values, reference._values(tensors[name])), name
    if kind == "int8":  # per-channel quantized: one table per channel, 3 bits for k=8
        header = numpy.frombuffer(data, numpy.uint8, 16, structure.buffers[
            structure.tensors[0][next(op for op in structure.operators[0] if op.code == -1).inputs[1]].buffer][0])
        assert header[5] & 7 <= 3


def test_pack_and_unpack_default_names(models, tmp_path):
    from gpucompress.packing import default_archive_output, default_unpack_output

    source = tmp_path / "model.tflite"
    source.write_bytes(models["paths"]["conv"]["float32"].read_bytes())
    assert main(["pack", str(source), "--n_clusters", "16", "-q"]) == 0
    archive = default_archive_output(source)
    assert archive.name == "model.tflite.gpcz" and archive.exists()
    assert default_unpack_output(archive, "tflite").name == "model.min.tflite"
    assert main(["unpack", str(archive), "-q"]) == 0
    assert main(["compress", str(source), "--n_clusters", "16", "-o", str(tmp_path / "c.tflite"), "-q"]) == 0
    assert (tmp_path / "model.min.tflite").read_bytes() == (tmp_path / "c.tflite").read_bytes()
