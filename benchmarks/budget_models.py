"""Small trained models for the budget benchmark (scikit-learn's bundled 8x8 digits; nothing downloaded).

    python benchmarks/budget_models.py FOLDER      # writes the models and digits_inputs.npz

- digits_cnn.pb: examples/make_example_model.py's CNN (conv 32, conv 64, dense
  128, softmax), trained 8 epochs, frozen to a GraphDef;
- digits_mlp.keras: a Keras MLP 64 -> 256 -> 128 -> 10, trained 20 epochs;
- digits_spectrum.pb: a fixed, non-learned front end feeding trained layers,
  as an audio model's filter bank does: a Hann window and a 64x48 Gabor
  filter bank (Gaussian-windowed cosines at spread centres and frequencies:
  3072 distinct values, so it is clustered, unlike a DCT's few repeated
  cosines), Consts in the frozen graph, then log(1e-3 + power), then dense
  128 and softmax, trained 20 epochs and frozen.

digits_inputs.npz holds the held-out images (the calibration inputs), under
each model's input name. Seeded and single-threaded: deterministic up to
TensorFlow's own kernels.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))


def _digits():
    import numpy
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0).astype("float32")
    order = numpy.random.default_rng(0).permutation(len(images))
    images, labels = images[order], digits.target[order].astype("int64")
    split = int(0.8 * len(images))
    return images[:split], labels[:split], images[split:], labels[split:]


def gabor_bank(n: int = 64, filters: int = 48):
    """Return a fixed (n, filters) float32 Gabor filter bank: filter f is a cosine of frequency
    omega_f and phase phi_f under a Gaussian window centred at c_f (all spread evenly, not learned)."""
    import numpy

    i = numpy.arange(n)[:, None].astype(numpy.float64)
    f = numpy.arange(filters)[None, :].astype(numpy.float64)
    centre = (f * 7.3) % n
    omega = 0.15 + 2.6 * f / filters
    phase = 0.37 * f
    window = numpy.exp(-0.5 * ((i - centre) / 9.0) ** 2)
    return (window * numpy.cos(omega * i + phase)).astype(numpy.float32)


def _freeze(function, spec):
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    return convert_variables_to_constants_v2(function.get_concrete_function(*spec)).graph.as_graph_def()


def write_models(folder: Path) -> dict:
    """Train and write the three models and the calibration inputs into folder; returns {name: accuracy}."""
    import numpy
    import tensorflow as tf

    from make_example_model import build_and_train, freeze

    folder.mkdir(parents=True, exist_ok=True)
    tf.keras.utils.set_random_seed(0)
    tf.config.experimental.enable_op_determinism()
    train_x, train_y, test_x, test_y = _digits()
    accuracy = {}

    cnn, images, labels = build_and_train(8)
    accuracy["digits_cnn.pb"] = float((cnn.predict(images, verbose=0).argmax(1) == labels).mean())
    (folder / "digits_cnn.pb").write_bytes(freeze(cnn).SerializeToString())

    tf.keras.utils.set_random_seed(0)
    inputs = tf.keras.Input((64,), name="pixels")
    x = tf.keras.layers.Dense(256, activation="relu")(inputs)
    x = tf.keras.layers.Dense(128, activation="relu")(x)
    outputs = tf.keras.layers.Dense(10, activation="softmax")(x)
    mlp = tf.keras.Model(inputs, outputs)
    mlp.compile("adam", "sparse_categorical_crossentropy")
    mlp.fit(train_x.reshape(-1, 64), train_y, epochs=20, batch_size=64, verbose=0)
    accuracy["digits_mlp.keras"] = float((mlp.predict(test_x.reshape(-1, 64), verbose=0).argmax(1) == test_y).mean())
    mlp.save(folder / "digits_mlp.keras")

    tf.keras.utils.set_random_seed(0)
    window = tf.constant(numpy.hanning(66)[1:-1].astype("float32"), name="hann_window")
    bank = tf.constant(gabor_bank(), name="gabor_filter_bank")

    class Spectrum(tf.keras.layers.Layer):
        def call(self, pixels):
            coefficients = tf.matmul(pixels * window, bank)
            return tf.math.log(1e-3 + tf.square(coefficients))

    inputs = tf.keras.Input((64,), name="pixels")
    x = Spectrum()(inputs)
    x = tf.keras.layers.Dense(128, activation="relu")(x)
    outputs = tf.keras.layers.Dense(10, activation="softmax")(x)
    spectrum = tf.keras.Model(inputs, outputs)
    spectrum.compile("adam", "sparse_categorical_crossentropy")
    spectrum.fit(train_x.reshape(-1, 64), train_y, epochs=20, batch_size=64, verbose=0)
    accuracy["digits_spectrum.pb"] = float(
        (spectrum.predict(test_x.reshape(-1, 64), verbose=0).argmax(1) == test_y).mean())
    graph = _freeze(tf.function(lambda pixels: spectrum(pixels, training=False)),
                    [tf.TensorSpec((None, 64), tf.float32, name="pixels")])
    (folder / "digits_spectrum.pb").write_bytes(graph.SerializeToString())

    numpy.savez(folder / "digits_inputs.npz", images=images, pixels=test_x.reshape(-1, 64),
                keras_tensor=test_x.reshape(-1, 64))
    return accuracy


if __name__ == "__main__":
    for name, value in write_models(Path(sys.argv[1])).items():
        print(f"{name}: test accuracy {value:.3f}")
