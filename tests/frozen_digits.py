"""A real frozen Keras model for the inspect / verify / report tests (TensorFlow imported on use).

The layout of examples/make_example_model.py (conv, conv, dense, softmax over
8x8x1 images) with fewer units and no training: seeded, so every build gives
the same bytes, and a few seconds faster. Frozen by the example's own freeze().
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "make_example_model.py"


def _example_module():
    spec = importlib.util.spec_from_file_location("make_example_model", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_frozen_digits(path: Path) -> Path:
    """Write a small seeded digits CNN, frozen to a GraphDef, to `path`; returns path.

    Input `images` float32 [batch, 8, 8, 1]; output: 10 class probabilities.
    """
    import tensorflow as tf

    tf.keras.utils.set_random_seed(7)
    inputs = tf.keras.Input((8, 8, 1), name="images")
    x = tf.keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    x = tf.keras.layers.Conv2D(16, 3, padding="same", activation="relu")(x)
    x = tf.keras.layers.Flatten()(x)
    x = tf.keras.layers.Dense(32, activation="relu")(x)
    outputs = tf.keras.layers.Dense(10, activation="softmax", name="probabilities")(x)
    model = tf.keras.Model(inputs, outputs)
    graph_def = _example_module().freeze(model)
    path.write_bytes(graph_def.SerializeToString())
    return path
