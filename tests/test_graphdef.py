"""Compressing frozen GraphDefs: a real Keras model end to end, and every selection edge case."""
from __future__ import annotations

import ml_dtypes
import numpy
import pytest

from gpucompress import CompressOptions, FormatError, compress_file, compress_graphdef
from gpucompress.models import GraphDefModel
from gpucompress.models.graphdef import serialized_pieces
from gpucompress.models.tensor_proto import to_numpy

from .conftest import const_node, graphdef_of, run_graphdef

RNG = numpy.random.default_rng(7)


def values_of(graph_def) -> dict[str, numpy.ndarray]:
    return {w.name: w.load() for w in GraphDefModel(graph_def).weights() if w.floating}


def compress(graph_def, **options):
    return compress_graphdef(graph_def, CompressOptions(device="cpu", **options))


@pytest.mark.parametrize("k", [256, 16])
def test_real_keras_model_runs_and_stays_close(keras_frozen, tmp_path, k):
    path, sample = keras_frozen
    output = tmp_path / "cnn.pb.min"
    summary = compress_file(path, output, CompressOptions(n_clusters=k, device="cpu"))
    before = run_graphdef(path.read_bytes(), sample)
    after = run_graphdef(output.read_bytes(), sample)
    relative = numpy.linalg.norm(after - before) / numpy.linalg.norm(before)
    # Untrained uniform (Glorot) weights are the hard case for 16 levels.
    assert relative < (0.03 if k == 256 else 0.25), relative
    assert len(summary.run.clustered()) >= 4  # the conv and dense kernels at least
    for outcome in summary.run.clustered():
        assert numpy.unique(outcome.values()).size <= k


def test_structure_is_identical_but_for_clustered_values(keras_frozen):
    from tensorboard.compat.proto import graph_pb2

    path, _ = keras_frozen
    original = graph_pb2.GraphDef.FromString(path.read_bytes())
    result = compress(original)
    assert [(n.name, n.op, list(n.input), n.device) for n in original.node] == [
        (n.name, n.op, list(n.input), n.device) for n in result.node
    ]
    changed = 0
    for before, after in zip(original.node, result.node):
        assert set(before.attr) == set(after.attr)
        for key in before.attr:
            if key == "value" and before.op == "Const":
                a, b = before.attr[key].tensor, after.attr[key].tensor
                assert (a.dtype, a.tensor_shape) == (b.dtype, b.tensor_shape)
                changed += a.SerializeToString() != b.SerializeToString()
            else:
                assert before.attr[key] == after.attr[key]
    assert changed >= 4


def test_caller_graph_def_is_not_modified(keras_frozen):
    from tensorboard.compat.proto import graph_pb2

    original = graph_pb2.GraphDef.FromString(keras_frozen[0].read_bytes())
    snapshot = original.SerializeToString(deterministic=True)
    compress(original)
    assert original.SerializeToString(deterministic=True) == snapshot


def test_tensorflow_graph_def_in_tensorflow_graph_def_out(keras_frozen):
    import tensorflow as tf

    graph_def = tf.compat.v1.GraphDef.FromString(keras_frozen[0].read_bytes())
    assert isinstance(compress(graph_def), tf.compat.v1.GraphDef)


def test_integer_bool_and_small_tensors_are_untouched():
    # Its own seeded stream: the values must not depend on which tests ran first.
    rng = numpy.random.default_rng(79)
    integers = rng.integers(-1000, 1000, size=(50, 50)).astype(numpy.int32)
    flags = rng.random(600) > 0.5
    few = rng.choice(numpy.float32([0.5, -1.25, 3.0]), size=(40, 40))
    graph_def = graphdef_of(const_node("ints", integers), const_node("flags", flags),
                            const_node("few", few), const_node("dense", rng.normal(size=(30, 30)).astype("f4")))
    result = compress(graph_def, n_clusters=4)
    for before, after in zip(graph_def.node[:3], result.node[:3]):
        assert before.SerializeToString() == after.SerializeToString(), before.name
    assert numpy.unique(values_of(result)["dense"]).size == 4


def test_no_more_distinct_values_than_k_keeps_exact_bytes():
    values = RNG.normal(size=256).astype(numpy.float32)  # exactly k distinct values
    graph_def = graphdef_of(const_node("exact", numpy.tile(values, 4)))
    assert compress(graph_def).SerializeToString() == graph_def.SerializeToString()


def test_non_finite_values_stay_in_place():
    values = RNG.normal(size=1000).astype(numpy.float32)
    values[[3, 500, 999]] = [numpy.nan, numpy.inf, -numpy.inf]
    result = values_of(compress(graphdef_of(const_node("w", values)), n_clusters=8))["w"]
    assert numpy.isnan(result[3]) and result[500] == numpy.inf and result[999] == -numpy.inf
    finite = numpy.isfinite(values)
    assert numpy.isfinite(result[finite]).all()
    assert numpy.unique(result[finite]).size <= 8


def test_all_non_finite_tensor_is_untouched():
    values = numpy.full(500, numpy.nan, dtype=numpy.float32)
    graph_def = graphdef_of(const_node("nan", values))
    assert compress(graph_def).SerializeToString() == graph_def.SerializeToString()


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
@pytest.mark.parametrize("as_values", [False, True])
def test_dtypes_and_storage_forms_keep_their_dtype(dtype, as_values):
    numpy_dtype = numpy.dtype(ml_dtypes.bfloat16) if dtype == "bfloat16" else numpy.dtype(dtype)
    values = RNG.normal(size=(20, 30)).astype(numpy_dtype)
    graph_def = graphdef_of(const_node("w", values, as_values=as_values))
    result = compress(graph_def, n_clusters=16)
    tensor = result.node[0].attr["value"].tensor
    assert bool(tensor.tensor_content) != as_values, "storage form is kept"
    clustered = to_numpy(tensor)
    assert clustered.dtype == numpy_dtype and clustered.shape == values.shape
    assert numpy.unique(clustered.astype(numpy.float64)).size <= 16
    error = clustered.astype(numpy.float64) - values.astype(numpy.float64)
    # N(0, 1) at 16 levels: the optimal quantizer's RMS error is about 0.1;
    # tail values sit up to about 0.7 from the outermost level.
    assert numpy.sqrt(numpy.mean(error**2)) < 0.15 and numpy.abs(error).max() < 1.0


def test_repeated_value_fields_keep_their_length():
    from tensorboard.compat.proto import node_def_pb2

    node = node_def_pb2.NodeDef(name="filled", op="Const")
    node.attr["dtype"].type = 1
    tensor = node.attr["value"].tensor
    tensor.dtype = 1
    tensor.tensor_shape.dim.add().size = 1000
    tensor.float_val.extend(RNG.normal(size=300).astype("f4").tolist())  # TF repeats the last one
    result = compress(graphdef_of(node), n_clusters=4).node[0].attr["value"].tensor
    assert len(result.float_val) == 300
    full = to_numpy(result)
    assert full.shape == (1000,) and numpy.all(full[300:] == full[299])


def test_function_library_consts_are_clustered():
    inside = const_node("kernel", RNG.normal(size=(16, 16)).astype("f4"))
    graph_def = graphdef_of(const_node("top", RNG.normal(size=400).astype("f4")),
                            functions=[("body", [inside])])
    result = compress(graph_def, n_clusters=4)
    clustered = values_of(result)
    assert set(clustered) == {"top", "body::kernel"}
    assert all(numpy.unique(v).size <= 4 for v in clustered.values())


def test_whitelisted_names_are_untouched():
    graph_def = graphdef_of(const_node("keep", RNG.normal(size=500).astype("f4")),
                            const_node("go", RNG.normal(size=500).astype("f4")))
    result = compress(graph_def, n_clusters=4, whitelisted=("keep",))
    assert result.node[0] == graph_def.node[0]
    assert result.node[1] != graph_def.node[1]


def test_global_mode_shares_one_codebook_and_skips_small_tensors():
    graph_def = graphdef_of(const_node("a", RNG.normal(size=600).astype("f4")),
                            const_node("b", (RNG.normal(size=(30, 30)) * 3).astype("f4")),
                            const_node("small", RNG.normal(size=100).astype("f4")))
    result = compress(graph_def, n_clusters=8, global_clusters=True, min_n_weights=256)
    values = values_of(result)
    shared = numpy.union1d(numpy.unique(values["a"]), numpy.unique(values["b"]))
    assert shared.size <= 8
    assert result.node[2] == graph_def.node[2], "fewer than min_n_weights values: untouched"


def test_same_input_same_bytes(keras_frozen):
    from tensorboard.compat.proto import graph_pb2

    graph_def = graph_pb2.GraphDef.FromString(keras_frozen[0].read_bytes())
    for init in ("linear", "density", "kmeans++"):
        first = compress(graph_def, n_clusters=16, init=init).SerializeToString(deterministic=True)
        assert first == compress(graph_def, n_clusters=16, init=init).SerializeToString(deterministic=True)


@pytest.mark.parametrize("data, message", [(b"", "empty file"), (b"\xff\xff\xff\xff", "not a TensorFlow GraphDef"),
                                           (b"hello world, not a graph", "not a TensorFlow GraphDef")])
def test_bytes_that_are_not_a_graphdef(tmp_path, data, message):
    from gpucompress.models import read_model

    path = tmp_path / "bad.pb"
    path.write_bytes(data)
    with pytest.raises(FormatError, match=message):
        read_model(path)


def _streamed_graph_bytes() -> bytes:
    """A GraphDef with nodes, a function library, versions, a scalar field and an unknown field, serialized."""
    graph_def = graphdef_of(const_node("a", RNG.normal(size=300).astype("f4")),
                            const_node("b", RNG.normal(size=(4, 5)).astype("f4")),
                            functions=[("body", [const_node("kernel", RNG.normal(size=(8, 8)).astype("f4"))])])
    graph_def.versions.producer = 1234
    graph_def.version = 7
    # Field 15 (unknown to GraphDef), varint 5, placed between the nodes: kept in place.
    data = graph_def.SerializeToString(deterministic=True)
    first = graph_def.node[0].ByteSize()
    cut = 1 + len(serialized_varint(first)) + first
    return data[:cut] + b"\x78\x05" + data[cut:]


def serialized_varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def test_streamed_read_is_the_whole_parse(tmp_path):
    """read_graphdef parses node by node (peak memory); the message must be the one a whole parse gives."""
    from gpucompress.models.graphdef import _parse_streamed, read_graphdef

    data = _streamed_graph_bytes()
    path = tmp_path / "g.pb"
    path.write_bytes(data)
    with open(path, "rb") as file:
        assert _parse_streamed(file, len(data)) is not None  # streamed, not the whole-file fallback
    streamed, whole = read_graphdef(path), GraphDefModel.from_bytes(data)
    assert streamed.to_bytes() == whole.to_bytes()
    assert streamed.graph_def == whole.graph_def
    assert [w.name for w in streamed.weights()] == ["a", "b", "body::kernel"]


@pytest.mark.parametrize("cut", ["truncated node", "length past the end", "group", "node as a varint",
                                 "bad node bytes"])
def test_streamed_read_of_bad_framing_gives_the_whole_parse_error(tmp_path, cut):
    """A framing the streamed reader does not expect falls back to the whole parse and its error."""
    from gpucompress.models.graphdef import read_graphdef

    data = _streamed_graph_bytes()
    bad = {"truncated node": data[:40], "length past the end": b"\x0a\xff\x7f" + data[:20],
           "group": b"\x0b" + data, "node as a varint": b"\x08\x01" + data,
           "bad node bytes": b"\x0a\x03\xff\xff\xff" + data}[cut]
    path = tmp_path / "bad.pb"
    path.write_bytes(bad)
    try:
        GraphDefModel.from_bytes(bad, source=str(path))
        expected = None
    except FormatError as error:
        expected = str(error)
    if expected is None:  # protobuf accepts it (e.g. a group it skips): the streamed read must agree
        assert read_graphdef(path).to_bytes() == GraphDefModel.from_bytes(bad).to_bytes()
    else:
        with pytest.raises(FormatError) as raised:
            read_graphdef(path)
        assert str(raised.value) == expected


def test_tensor_content_of_the_wrong_size_is_a_format_error():
    node = const_node("w", RNG.normal(size=100).astype("f4"))
    node.attr["value"].tensor.tensor_content = b"\x00" * 12
    with pytest.raises(FormatError, match="tensor_content holds 12 bytes"):
        compress(graphdef_of(node))


def test_streamed_write_equals_one_serialization(keras_frozen, tmp_path):
    """Regression (peak memory): save() writes node by node; the bytes must stay those of to_bytes()."""
    from gpucompress.models.graphdef import serialized_pieces

    graph_def = graphdef_of(const_node("top", RNG.normal(size=400).astype("f4")),
                            functions=[("body", [const_node("kernel", RNG.normal(size=(8, 8)).astype("f4"))])])
    graph_def.versions.producer = 1234
    graph_def.version = 7
    keras = GraphDefModel.from_bytes(keras_frozen[0].read_bytes())
    for model in (GraphDefModel(graph_def), keras):
        # Per node its frame and its bytes (never joined: that would copy a node once more), then the rest.
        assert len(list(serialized_pieces(model))) == 2 * len(model.graph_def.node) + 1
        assert model.save(tmp_path / "out.pb") == len(model.to_bytes())
        assert (tmp_path / "out.pb").read_bytes() == model.to_bytes()


@pytest.mark.parametrize("init", ["linear", "kmeans++"])
def test_clustering_in_batches_gives_the_same_bytes(init):
    """Regression (peak memory): tensors stream through the engine a batch at a time."""
    graph_def = graphdef_of(*[const_node(f"w{i}", RNG.normal(size=300 + 50 * i).astype("f4")) for i in range(6)])
    one_batch = compress(graph_def, n_clusters=8, init=init, batch_values=1 << 20)
    many = compress(graph_def, n_clusters=8, init=init, batch_values=700)
    assert one_batch.SerializeToString(deterministic=True) == many.SerializeToString(deterministic=True)


def _deferral_model():
    """Tensors in both storage forms, a float16 one and a Const inside a library function."""
    return graphdef_of(const_node("content", RNG.normal(size=(6, 5)).astype("f4")),
                       const_node("listed", RNG.normal(size=(4,)).astype("f4"), as_values=True),
                       const_node("half", RNG.normal(size=(3, 3)).astype("f2")),
                       const_node("kept", RNG.normal(size=(2,)).astype("f4")),
                       functions=[("body", [const_node("inner", RNG.normal(size=(5,)).astype("f4"))])])


@pytest.mark.parametrize("weights_first", [False, True])
def test_deferred_values_give_the_bytes_of_replaced_values_in_every_serialization(weights_first):
    # Regression (issue 16, peak memory): compress and pack now defer the new
    # values to the write; the bytes must stay those of replace_values. With
    # weights_first (issue 16, fresh-process time), weights() has remembered which
    # tensors store tensor_content, so the write no longer copies the old content out.
    graph_def = _deferral_model()
    names = ["content", "listed", "half", "body::inner"]
    eager, lazy = GraphDefModel.from_proto(graph_def), GraphDefModel.from_proto(graph_def)
    source = lazy if weights_first else GraphDefModel(graph_def)
    new = {w.name: (RNG.normal(size=w.shape) * 3).astype(w.dtype) for w in source.weights() if w.name in names}
    eager.replace_values(new)
    for name, values in new.items():
        lazy.defer_values(name, values.shape, lambda v=values: v)
    assert lazy.to_bytes() == eager.to_bytes()
    assert b"".join(serialized_pieces(lazy)) == eager.to_bytes()
    assert lazy.to_skeleton(["content", "body::inner"]) == eager.to_skeleton(["content", "body::inner"])
    loaded = {w.name: w.load() for w in lazy.weights()}
    assert all(numpy.array_equal(loaded[name], new[name]) for name in names)
    # the message itself is untouched: its old contents stay, nothing new is stored in it
    assert GraphDefModel(lazy.graph_def).to_bytes() == GraphDefModel.from_proto(graph_def).to_bytes()


def test_deferred_values_fill_a_skeleton_as_replace_values_does():
    model = GraphDefModel.from_proto(_deferral_model())
    skeleton = model.to_skeleton(["content", "listed", "body::inner"])
    values = {w.name: w.load() for w in model.weights()}
    lazy = GraphDefModel.from_skeleton(skeleton)
    for name in ("content", "listed", "body::inner"):
        lazy.defer_values(name, values[name].shape, lambda v=values[name]: v)
    assert lazy.to_bytes() == model.to_bytes()


def test_deferred_values_are_checked_against_the_weight():
    model = GraphDefModel.from_proto(_deferral_model())
    with pytest.raises(KeyError):
        model.defer_values("missing", (2,), lambda: numpy.zeros(2, "f4"))
    with pytest.raises(ValueError, match="should be"):
        model.defer_values("kept", (3,), lambda: numpy.zeros(3, "f4"))
    model.defer_values("kept", (2,), lambda: numpy.zeros(3, "f4"))  # lies about its shape
    with pytest.raises(FormatError, match="shape"):
        model.to_bytes()


def test_loaded_content_values_are_a_read_only_array_of_their_own():
    # Issue 16: a tensor_content weight loads as a view of one copy of its bytes (no second copy);
    # nothing may write through it, and the model's own bytes are not shared with it.
    model = GraphDefModel.from_proto(_deferral_model())
    before = model.to_bytes()
    values = {w.name: w.load() for w in model.weights() if w.floating}
    assert not values["content"].flags.writeable
    with pytest.raises(ValueError):
        values["content"][...] = 0
    assert model.to_bytes() == before


def test_labelled_values_give_the_bytes_of_replaced_values():
    # Issue 16: compress hands GraphDef weights their codebook and labels (replace_labels); a
    # tensor_content weight's bytes are gathered straight from the codebook, the others made as values.
    graph_def = _deferral_model()
    names = ["content", "listed", "half", "body::inner"]
    for learn_forms in (False, True):
        lazy, eager = GraphDefModel.from_proto(graph_def), GraphDefModel.from_proto(graph_def)
        weights = {w.name: w for w in (lazy.weights() if learn_forms else GraphDefModel(graph_def).weights())}
        new = {}
        for name in names:
            codebook = numpy.sort(RNG.normal(size=5))  # float64: cast to the weight's dtype
            labels = RNG.integers(0, 5, size=weights[name].size).astype(numpy.uint8)
            lazy.replace_labels(name, weights[name].shape, codebook, labels)
            new[name] = codebook.astype(weights[name].dtype)[labels].reshape(weights[name].shape)
        eager.replace_values(new)
        assert lazy.to_bytes() == eager.to_bytes()
        assert b"".join(serialized_pieces(lazy)) == eager.to_bytes()
        assert lazy.to_skeleton(["listed"]) == eager.to_skeleton(["listed"])
        loaded = {w.name: w.load() for w in lazy.weights()}
        assert all(numpy.array_equal(loaded[name], new[name]) for name in names)
    with pytest.raises(ValueError, match="labels"):
        lazy.replace_labels("content", weights["content"].shape, numpy.zeros(2), numpy.zeros(3, numpy.uint8))
    # values given later win over the labels
    lazy.defer_values("content", weights["content"].shape, lambda: numpy.zeros(weights["content"].shape, "f4"))
    assert not numpy.any(next(w for w in lazy.weights() if w.name == "content").load())
