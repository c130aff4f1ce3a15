"""Train a small digit classifier (scikit-learn's bundled 8x8 digits) and freeze it to a GraphDef.

    python examples/make_example_model.py examples/digits.pb

Needs TensorFlow and scikit-learn (the `dev` extra). Deterministic: seeded,
single-threaded; takes a few seconds on a CPU. The frozen graph has one input,
`images` (float32, [batch, 8, 8, 1]), and one output, the class probabilities.
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def build_and_train(epochs: int = 8):
    """Return (keras model, test images, test labels) of a small CNN trained on digits."""
    import numpy as np
    import tensorflow as tf
    from sklearn.datasets import load_digits

    tf.keras.utils.set_random_seed(0)
    tf.config.experimental.enable_op_determinism()
    digits = load_digits()
    images = (digits.images / 16.0).astype("float32")[..., None]
    labels = digits.target.astype("int64")
    order = np.random.default_rng(0).permutation(len(images))
    images, labels = images[order], labels[order]
    split = int(0.8 * len(images))
    inputs = tf.keras.Input((8, 8, 1), name="images")
    x = tf.keras.layers.Conv2D(32, 3, padding="same", activation="relu")(inputs)
    x = tf.keras.layers.Conv2D(64, 3, padding="same", activation="relu")(x)
    x = tf.keras.layers.Flatten()(x)
    x = tf.keras.layers.Dense(128, activation="relu")(x)
    outputs = tf.keras.layers.Dense(10, activation="softmax", name="probabilities")(x)
    model = tf.keras.Model(inputs, outputs)
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(images[:split], labels[:split], epochs=epochs, batch_size=64, verbose=0)
    return model, images[split:], labels[split:]


def freeze(model):
    """Return the frozen GraphDef (variables folded into Const nodes) of a Keras model."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    spec = [tf.TensorSpec((None,) + tuple(model.inputs[0].shape[1:]), tf.float32, name="images")]
    function = tf.function(lambda images: model(images, training=False)).get_concrete_function(*spec)
    return convert_variables_to_constants_v2(function).graph.as_graph_def()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", help="where to write the frozen GraphDef (.pb)")
    parser.add_argument("--epochs", type=int, default=8)
    arguments = parser.parse_args(argv)
    model, images, labels = build_and_train(arguments.epochs)
    accuracy = float((model.predict(images, verbose=0).argmax(1) == labels).mean())
    graph_def = freeze(model)
    with open(arguments.output, "wb") as stream:
        stream.write(graph_def.SerializeToString(deterministic=True))  # map fields in key order: the same bytes every run
    weights = sum(int(v.numpy().size) for v in model.weights)
    print(f"wrote {arguments.output}: {weights:,} weights, test accuracy {accuracy:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
