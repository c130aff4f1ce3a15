"""Fidelity on a trained model: accuracy and prediction agreement after compression.

Trains the digits CNN of examples/make_example_model.py (scikit-learn's bundled
8x8 digits, seconds on a CPU), freezes it, compresses it with every engine /
method / init and k, runs each frozen graph with TensorFlow, and compares its
predictions with the original's on the held-out images.
"""
from __future__ import annotations

import itertools
import os
import sys
from pathlib import Path

import numpy

from gpucompress import engine
from gpucompress.api import compress_file
from gpucompress.kernels.initializers import INITIALIZERS
from gpucompress.options import CompressOptions

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _example_module():
    sys.path.insert(0, str(EXAMPLES))
    try:
        import make_example_model
    finally:
        sys.path.remove(str(EXAMPLES))
    return make_example_model


def predict(graph_bytes: bytes, images: numpy.ndarray) -> numpy.ndarray:
    """Run a frozen digits graph (input images:0, output Identity:0); return class probabilities."""
    import tensorflow as tf

    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(graph_bytes)
    function = tf.compat.v1.wrap_function(lambda: tf.compat.v1.import_graph_def(graph_def, name=""), [])
    pruned = function.prune(function.graph.get_tensor_by_name("images:0"),
                            function.graph.get_tensor_by_name("Identity:0"))
    return pruned(tf.constant(images)).numpy()


def configurations(quick: bool) -> list[dict]:
    """Return the option sets to try: every method x init of ours, and the faiss engine."""
    inits = ["linear"] if quick else sorted(INITIALIZERS)
    configs = [{"engine": "gpucompress", "method": m, "init": i}
               for m, i in itertools.product(engine.METHODS, inits)]
    configs.append({"engine": "faiss", "method": "lloyd", "init": "linear"})
    return configs


def measure(workdir: Path, quick: bool = False, epochs: int = 8) -> dict:
    """Train, freeze, compress and evaluate; return {"model": ..., "rows": [...]}.

    quick: one init and k in {256, 8}; epochs: training epochs.
    Rows: engine, method, init, k, accuracy, agreement (fraction of test images
    whose predicted class matches the original model's), max_abs_probability_change.
    """
    example = _example_module()
    model, images, labels = example.build_and_train(epochs=epochs)
    original_path = workdir / "digits.pb"
    original_path.write_bytes(example.freeze(model).SerializeToString())
    original = predict(original_path.read_bytes(), images)
    weights = sum(int(v.numpy().size) for v in model.weights)
    rows = []
    for config, k in itertools.product(configurations(quick), (256, 8) if quick else (256, 32, 16, 8)):
        output = workdir / f"digits-{config['engine']}-{config['method']}-{config['init']}-{k}.pb"
        compress_file(original_path, output, CompressOptions(n_clusters=k, device="cpu", **config),
                      overwrite=True)
        probabilities = predict(output.read_bytes(), images)
        rows.append({**config, "k": k,
                     "accuracy": float((probabilities.argmax(1) == labels).mean()),
                     "agreement": float((probabilities.argmax(1) == original.argmax(1)).mean()),
                     "max_abs_probability_change": float(numpy.abs(probabilities - original).max())})
    return {"model": {"name": "digits CNN (examples/make_example_model.py)", "weights": weights,
                      "test_images": int(len(images)),
                      "accuracy": float((original.argmax(1) == labels).mean())},
            "rows": rows}
