"""Shared fixtures: real frozen TensorFlow models and hand-built GraphDefs.

TensorFlow is imported inside the fixtures that need it, so tests of the
engine run without paying for it.
"""
from __future__ import annotations

import os

import numpy
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def freeze_keras(model, input_shape):
    """Return the frozen GraphDef (tensorflow GraphDef) of a Keras model with one float32 input."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    spec = tf.TensorSpec((None,) + tuple(input_shape), tf.float32, name="inputs")
    function = tf.function(lambda inputs: model(inputs, training=False)).get_concrete_function(spec)
    return convert_variables_to_constants_v2(function).graph.as_graph_def()


def run_graphdef(graph_def_bytes: bytes, inputs: numpy.ndarray, input_name="inputs", output_name=None):
    """Import serialized GraphDef bytes with tf.import_graph_def and run it on `inputs`; returns a NumPy array."""
    import tensorflow as tf

    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(graph_def_bytes)
    if output_name is None:
        output_name = [n.name for n in graph_def.node if n.op == "Identity"][-1]

    def imported(x):
        (out,) = tf.compat.v1.import_graph_def(
            graph_def, input_map={input_name + ":0": x}, return_elements=[output_name + ":0"]
        )
        return out

    wrapped = tf.compat.v1.wrap_function(imported, [tf.TensorSpec(inputs.shape, tf.float32)])
    return wrapped(tf.constant(inputs)).numpy()


@pytest.fixture(scope="session")
def keras_frozen(tmp_path_factory):
    """A small real CNN (conv, batch norm, dense) frozen to a .pb: returns (path, sample inputs)."""
    import tensorflow as tf

    tf.keras.utils.set_random_seed(1)
    inputs = tf.keras.Input((12, 12, 3))
    x = tf.keras.layers.Conv2D(16, 3, activation="relu")(inputs)
    x = tf.keras.layers.BatchNormalization()(x)
    x = tf.keras.layers.Conv2D(32, 3, activation="relu")(x)
    x = tf.keras.layers.GlobalAveragePooling2D()(x)
    x = tf.keras.layers.Dense(64, activation="relu")(x)
    outputs = tf.keras.layers.Dense(10)(x)
    model = tf.keras.Model(inputs, outputs)
    graph_def = freeze_keras(model, (12, 12, 3))
    path = tmp_path_factory.mktemp("keras") / "cnn.pb"
    path.write_bytes(graph_def.SerializeToString())
    sample = numpy.random.default_rng(0).random((4, 12, 12, 3), dtype=numpy.float32)
    return path, sample


def const_node(name: str, array: numpy.ndarray, *, as_values: bool = False, dtype_enum: int | None = None):
    """Return a tensorboard NodeDef of op Const holding `array`.

    as_values: store in the repeated *_val field instead of tensor_content.
    dtype_enum: TensorFlow DataType enum (derived from the NumPy dtype by default).
    """
    from tensorboard.compat.proto import node_def_pb2

    enums = {"float32": 1, "float64": 2, "int32": 3, "float16": 19, "bfloat16": 14, "bool": 10, "int64": 9}
    dtype_enum = dtype_enum or enums[array.dtype.name]
    node = node_def_pb2.NodeDef(name=name, op="Const")
    node.attr["dtype"].type = dtype_enum
    tensor = node.attr["value"].tensor
    tensor.dtype = dtype_enum
    for size in array.shape:
        tensor.tensor_shape.dim.add().size = size
    if not as_values:
        tensor.tensor_content = numpy.ascontiguousarray(array).tobytes()
    elif array.dtype.name in ("float16", "bfloat16"):
        tensor.half_val.extend(array.reshape(-1).view(numpy.uint16).astype(numpy.int32).tolist())
    elif array.dtype.name == "float64":
        tensor.double_val.extend(array.reshape(-1).tolist())
    elif array.dtype.name == "float32":
        tensor.float_val.extend(array.reshape(-1).tolist())
    elif array.dtype.name == "bool":
        tensor.bool_val.extend(array.reshape(-1).tolist())
    elif array.dtype.name == "int64":
        tensor.int64_val.extend(array.reshape(-1).tolist())
    else:
        tensor.int_val.extend(array.reshape(-1).tolist())
    return node


def add_raw_const(graph, name, dtype_enum, shape, content=b"", **values):
    """Append a Const node to a GraphDef from raw fields: tensor_content bytes and/or *_val lists.

    Unlike const_node, nothing is derived from an array, so a test can write
    what TensorFlow accepts but never emits itself (a *_val list shorter than
    the shape, which TensorFlow pads with its last entry).
    """
    node = graph.node.add()
    node.name, node.op = name, "Const"
    tensor = node.attr["value"].tensor
    tensor.dtype = dtype_enum
    for size in shape:
        tensor.tensor_shape.dim.add().size = size
    if content:
        tensor.tensor_content = content
    for field, entries in values.items():
        getattr(tensor, field).extend(entries)
    node.attr["dtype"].type = dtype_enum
    return node


def graphdef_of(*nodes, functions=()):
    """Return a tensorboard GraphDef holding the given nodes and (name, nodes) library functions."""
    from tensorboard.compat.proto import graph_pb2

    graph_def = graph_pb2.GraphDef()
    graph_def.node.extend(nodes)
    for name, function_nodes in functions:
        function = graph_def.library.function.add()
        function.signature.name = name
        function.node_def.extend(function_nodes)
    return graph_def


@pytest.fixture
def small_pb(tmp_path):
    """A frozen graph of two float weights (40x40 normal, 300 Laplace) and an int32 shape constant."""
    rng = numpy.random.default_rng(0)
    graph_def = graphdef_of(const_node("w1", rng.normal(size=(40, 40)).astype("f4")),
                            const_node("w2", rng.laplace(size=(300,)).astype("f4")),
                            const_node("shape", numpy.array([1, 40], dtype=numpy.int32)))
    path = tmp_path / "model.pb"
    path.write_bytes(graph_def.SerializeToString())
    return path
