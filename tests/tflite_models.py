"""Small .tflite models converted from Keras with tf.lite.TFLiteConverter (imports TensorFlow: import after
importorskip).

KINDS: "float32" (no optimization), "dynamic" (dynamic-range int8 weights,
float activations), "int8" (full-integer: int8 weights per channel and
activations, float input and output), "float16" (float16 weights behind
DEQUANTIZE).
"""
import os

import numpy

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

KINDS = ("float32", "dynamic", "int8", "float16")
IMAGE = (12, 12, 3)


def conv_model(seed: int = 0, width: int = 16, dense: int = 32):
    """Return a Keras model Conv2D -> DepthwiseConv2D -> Flatten -> Dense -> Dense(5) on 12x12x3 images.

    width: Conv2D filters; dense: units of the hidden Dense (its kernel has
    64 * width * dense values).
    """
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(IMAGE)
    x = keras.layers.Conv2D(width, 3, activation="relu", name="conv")(inputs)
    x = keras.layers.DepthwiseConv2D(3, activation="relu", name="depthwise")(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(dense, activation="relu", name="hidden")(x)
    return keras.Model(inputs, keras.layers.Dense(5, name="head")(x))


def images(count: int, seed: int = 0) -> numpy.ndarray:
    """Return `count` float32 images uniform in [0, 1), shape (count, 12, 12, 3)."""
    return numpy.random.default_rng(seed).uniform(0, 1, (count, *IMAGE)).astype("float32")


def convert(model, kind: str, representative: numpy.ndarray | None = None) -> bytes:
    """Return the .tflite bytes of a Keras model converted as `kind` (one of KINDS).

    representative: inputs for the full-integer calibration (kind "int8").
    """
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if kind != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if kind == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if kind == "int8":
        converter.representative_dataset = lambda: ([row[None]] for row in representative)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return converter.convert()


def run_tflite(content: bytes, inputs: numpy.ndarray) -> numpy.ndarray:
    """Run .tflite bytes in the TFLite interpreter on a batch of inputs (one input, one output)."""
    interpreter = tf.lite.Interpreter(model_content=content)
    (detail,) = interpreter.get_input_details()
    interpreter.resize_tensor_input(detail["index"], list(inputs.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(detail["index"], inputs.astype(detail["dtype"]))
    interpreter.invoke()
    return numpy.array(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]))


def relative_error(reference: numpy.ndarray, candidate: numpy.ndarray) -> float:
    """Return ||candidate - reference|| / ||reference|| in float64."""
    reference = reference.astype(numpy.float64)
    return float(numpy.linalg.norm(candidate.astype(numpy.float64) - reference) / numpy.linalg.norm(reference))
