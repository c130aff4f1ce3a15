"""The small Keras models the Keras and SavedModel tests share (imports Keras: import after importorskip)."""
import keras
import numpy

VOCABULARY, LENGTH = 40, 6
K = 16
# Bound on ||new - original|| / ||original|| of the predictions after
# 16-cluster quantization of the weight matrices of these models: measured
# 0.033 (functional) and 0.045 (subclassed) with the default method, 0.048 and
# 0.080 with lloyd (build_models(seed=0), saved as .keras).
RELATIVE_TOLERANCE = 0.2


@keras.saving.register_keras_serializable(package="gpucompress_tests")
class Subclassed(keras.Model):
    """A subclassed model: Embedding -> mean -> Dense -> BatchNormalization -> Dense."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.embedding = keras.layers.Embedding(VOCABULARY, 24)
        self.hidden = keras.layers.Dense(48, activation="relu")
        self.norm = keras.layers.BatchNormalization()
        self.head = keras.layers.Dense(5)

    def call(self, inputs, training=False):
        x = keras.ops.mean(self.embedding(inputs), axis=1)
        return self.head(self.norm(self.hidden(x), training=training))


def functional_model():
    """Return a functional model: Embedding -> Flatten -> Dense -> BatchNormalization -> Dense."""
    inputs = keras.Input((LENGTH,), dtype="int32")
    x = keras.layers.Embedding(VOCABULARY, 24, name="embedding")(inputs)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(48, activation="relu", name="hidden")(x)
    x = keras.layers.BatchNormalization(name="norm")(x)
    return keras.Model(inputs, keras.layers.Dense(5, name="head")(x))


def _randomize_batch_norm(model, rng):
    # Fresh BatchNormalization layers hold ones and zeros, which no codebook changes.
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, variance = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape).astype("float32"),
                               rng.normal(0, 0.1, beta.shape).astype("float32"),
                               rng.normal(0, 0.1, mean.shape).astype("float32"),
                               rng.uniform(0.5, 1.5, variance.shape).astype("float32")])


def build_models(seed: int):
    """Return (inputs int32 (16, LENGTH), functional, subclassed), seeded.

    The functional model has taken one training step (so it holds optimizer
    state); both have random BatchNormalization statistics.
    """
    keras.utils.set_random_seed(seed)
    rng = numpy.random.default_rng(seed)
    inputs = rng.integers(0, VOCABULARY, (16, LENGTH)).astype("int32")
    functional = functional_model()
    functional.compile(optimizer="adam", loss="mse")
    functional.fit(inputs, rng.normal(size=(16, 5)), epochs=1, batch_size=16, verbose=0)
    _randomize_batch_norm(functional, rng)
    subclassed = Subclassed()
    subclassed(inputs)
    _randomize_batch_norm(subclassed, rng)
    return inputs, functional, subclassed


# The save-path matrix: three kinds of model, each saved every way Keras 3 and
# TensorFlow offer. Kernels 16x32 and 32x10 hold more values than a 256-entry
# codebook, so they are clustered at k=256 too.
MATRIX_INPUTS, MATRIX_HIDDEN, MATRIX_OUTPUTS = 16, 32, 10
MATRIX_KINDS = ("functional", "sequential", "subclassed")
SAVE_PATHS = ("export", "tf.saved_model.save", ".keras", ".h5", ".weights.h5")
KERNEL_SHAPES = {(MATRIX_INPUTS, MATRIX_HIDDEN), (MATRIX_HIDDEN, MATRIX_OUTPUTS)}


@keras.saving.register_keras_serializable(package="gpucompress_tests")
class TwoDense(keras.Model):
    """A subclassed model: Dense(relu) -> Dense."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.hidden = keras.layers.Dense(MATRIX_HIDDEN, activation="relu")
        self.head = keras.layers.Dense(MATRIX_OUTPUTS)

    def call(self, inputs):
        return self.head(self.hidden(inputs))


def matrix_model(kind: str):
    """Return an untrained model of a kind in MATRIX_KINDS (float32 input of MATRIX_INPUTS values)."""
    if kind == "functional":
        inputs = keras.Input((MATRIX_INPUTS,), name="features")
        hidden = keras.layers.Dense(MATRIX_HIDDEN, activation="relu", name="hidden")(inputs)
        return keras.Model(inputs, keras.layers.Dense(MATRIX_OUTPUTS, name="head")(hidden))
    if kind == "sequential":
        # Names fixed: Keras numbers unnamed layers per process (dense_18 after other tests).
        return keras.Sequential([keras.Input((MATRIX_INPUTS,)),
                                 keras.layers.Dense(MATRIX_HIDDEN, activation="relu", name="dense"),
                                 keras.layers.Dense(MATRIX_OUTPUTS, name="dense_1")], name="sequential")
    return TwoDense()


def save_matrix(folder, seed: int = 0) -> dict:
    """Build, train one epoch (Adam, so optimizer state is saved too) and save every matrix model.

    Returns {(kind, save_path): (path, extra verify arguments)}; `.h5` is left
    out for the subclassed model (Keras saves only functional and Sequential
    models as legacy HDF5). A `.weights.h5` file verifies inside its `.keras`
    twin (--architecture).
    """
    import tensorflow as tf

    from pathlib import Path

    folder = Path(folder)
    rng = numpy.random.default_rng(seed)
    features = rng.random((64, MATRIX_INPUTS)).astype("float32")
    targets = rng.normal(size=(64, MATRIX_OUTPUTS)).astype("float32")
    saved = {}
    for kind in MATRIX_KINDS:
        keras.utils.set_random_seed(seed)
        model = matrix_model(kind)
        model.compile(optimizer="adam", loss="mse")
        model.fit(features, targets, epochs=1, batch_size=32, verbose=0)
        stem = folder / kind
        model.export(str(stem) + "_export", verbose=False)
        saved[kind, "export"] = (Path(str(stem) + "_export"), [])
        tf.saved_model.save(model, str(stem) + "_tfsave")
        saved[kind, "tf.saved_model.save"] = (Path(str(stem) + "_tfsave"), [])
        model.save(str(stem) + ".keras")
        saved[kind, ".keras"] = (Path(str(stem) + ".keras"), [])
        if kind != "subclassed":
            model.save(str(stem) + ".h5")
            saved[kind, ".h5"] = (Path(str(stem) + ".h5"), [])
        model.save_weights(str(stem) + ".weights.h5")
        saved[kind, ".weights.h5"] = (Path(str(stem) + ".weights.h5"), ["--architecture", str(stem) + ".keras"])
    return saved
