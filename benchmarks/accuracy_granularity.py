"""Accuracy of two small trained models after clustering, per codebook granularity (issue 17's closing table).

    python benchmarks/accuracy_granularity.py            # trains both models (about a minute on 2 cores)
    python benchmarks/accuracy_granularity.py --quick    # fewer epochs: a smoke run

Models, trained here on data that needs no download (nothing is kept: they
live in a temporary folder):
- "digits CNN": Conv2D(16) -> Conv2D(32) -> Dense(64) -> Dense(10) on
  scikit-learn's bundled 8x8 digits (1,797 images; 25% held out).
- "synthetic MLP": Dense(128) -> Dense(64) -> Dense(8) on
  sklearn.datasets.make_classification (8 classes, 40 features, 6,000 rows,
  seeded; 25% held out).

Each configuration clusters the saved `.keras` model with `compress` and packs
it with `pack` (CompressOptions from one function per configuration, in
CONFIGURATIONS: add a column by adding a function), then measures held-out
accuracy of the compressed model and the archive's bytes. Prints a markdown
table; writes it to benchmarks/results/<date>-accuracy-granularity.md unless --quick.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import sys
import tempfile
from pathlib import Path
from typing import Callable

import numpy

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from gpucompress import CompressOptions, compress_file  # noqa: E402
from gpucompress.packing import pack_file  # noqa: E402


def per_tensor(k: int, model) -> CompressOptions:
    """Return the options of one codebook per tensor (today's default)."""
    return CompressOptions(n_clusters=k, device="cpu")


def per_channel(k: int, model) -> CompressOptions:
    """Return the options of one codebook per output channel."""
    return CompressOptions(n_clusters=k, device="cpu", granularity="per-channel")


def grouped(group_size: int) -> Callable:
    """Return a configuration function of one codebook per group_size output channels."""
    def configure(k: int, model) -> CompressOptions:
        return CompressOptions(n_clusters=k, device="cpu", granularity="grouped", group_size=group_size)
    configure.__doc__ = f"Return the options of one codebook per {group_size} output channels."
    return configure


# Training samples the importances are computed from (one backward pass each).
IMPORTANCE_SAMPLES = 512


def importance_file(model) -> Path:
    """Return an .npz of the trained model's importances, computed once per model (then reused).

    importance_data.importance_from_data (what --importance-from-data
    computes: squared gradients of the outputs' energy) on the first
    IMPORTANCE_SAMPLES training inputs; compress and pack then read the same
    file (--importance), so the gradients are not recomputed per run.
    """
    cached = getattr(model, "importance_path", None)
    if cached is not None:
        return cached
    from gpucompress.importance_data import importance_from_data
    from gpucompress.model_runners import KerasRunner
    from gpucompress.models import read_model

    (spec,) = KerasRunner(read_model(model.path)).inputs
    inputs = model.path.with_name(f"{model.path.stem}-inputs.npz")
    numpy.savez(inputs, **{spec.name: model.x_train[:IMPORTANCE_SAMPLES]})
    path = model.path.with_name(f"{model.path.stem}-importance.npz")
    numpy.savez(path, **importance_from_data(read_model(model.path), inputs))
    model.importance_path = path
    return path


def weighted(configure: Callable, label: str) -> Callable:
    """Return configure with the model's importances from data (importance_file) added."""
    def configure_weighted(k: int, model) -> CompressOptions:
        return dataclasses.replace(configure(k, model), importance=str(importance_file(model)))
    configure_weighted.__doc__ = f"Return the options of {label}, importance-weighted (importances from data)."
    return configure_weighted


# label -> function(k, trained model record) -> CompressOptions. The record (TrainedModel) holds the
# training data, for a configuration that needs it (e.g. importance weights from gradients).
CONFIGURATIONS: dict[str, Callable] = {
    "per-tensor": per_tensor,
    "per-channel": per_channel,
    "grouped G=4": grouped(4),
    "grouped G=8": grouped(8),
    "per-tensor + importance": weighted(per_tensor, "one codebook per tensor"),
    "per-channel + importance": weighted(per_channel, "one codebook per output channel"),
}


class TrainedModel:
    """A trained Keras model saved as .keras, with its held-out data and training inputs."""

    def __init__(self, name, path, x_train, y_train, x_test, y_test, accuracy, parameters):
        self.name, self.path, self.parameters = name, path, parameters
        self.x_train, self.y_train, self.x_test, self.y_test = x_train, y_train, x_test, y_test
        self.accuracy = accuracy


def _split(x, y, seed):
    order = numpy.random.default_rng(seed).permutation(len(x))
    cut = len(x) * 3 // 4
    return x[order[:cut]], y[order[:cut]], x[order[cut:]], y[order[cut:]]


def _accuracy(model, x, y) -> float:
    return float((numpy.argmax(model.predict(x, verbose=0, batch_size=512), axis=1) == y).mean())


def _save_without_optimizer(model, path: Path) -> None:
    # A deployed model: the weights alone (Adam's two slots would triple the file and stay unclustered).
    import keras

    clean = keras.models.clone_model(model)
    clean.set_weights(model.get_weights())
    clean.save(path)


def train_digits_cnn(folder: Path, epochs: int) -> TrainedModel:
    """Train the digits CNN and save it; returns its TrainedModel."""
    import keras
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0).astype("float32")[..., None]
    x_train, y_train, x_test, y_test = _split(x, digits.target, seed=0)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(16, 3, activation="relu", padding="same", name="conv1"),
        keras.layers.Conv2D(32, 3, activation="relu", name="conv2"),
        keras.layers.Flatten(),
        keras.layers.Dense(64, activation="relu", name="hidden"),
        keras.layers.Dense(10, name="logits"),
    ], name="digits_cnn")
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x_train, y_train, epochs=epochs, batch_size=32, verbose=0)
    path = folder / "digits_cnn.keras"
    _save_without_optimizer(model, path)
    return TrainedModel("digits CNN", path, x_train, y_train, x_test, y_test, _accuracy(model, x_test, y_test),
                        model.count_params())


def train_synthetic_mlp(folder: Path, epochs: int) -> TrainedModel:
    """Train the MLP on seeded make_classification data and save it; returns its TrainedModel."""
    import keras
    from sklearn.datasets import make_classification

    x, y = make_classification(n_samples=6000, n_features=40, n_informative=24, n_redundant=8, n_classes=8,
                               n_clusters_per_class=2, class_sep=1.2, random_state=0)
    x = ((x - x.mean(axis=0)) / x.std(axis=0)).astype("float32")
    x_train, y_train, x_test, y_test = _split(x, y, seed=1)
    keras.utils.set_random_seed(1)
    model = keras.Sequential([
        keras.Input((40,)),
        keras.layers.Dense(128, activation="relu", name="dense1"),
        keras.layers.Dense(64, activation="relu", name="dense2"),
        keras.layers.Dense(8, name="logits"),
    ], name="synthetic_mlp")
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x_train, y_train, epochs=epochs, batch_size=64, verbose=0)
    path = folder / "synthetic_mlp.keras"
    _save_without_optimizer(model, path)
    return TrainedModel("synthetic MLP", path, x_train, y_train, x_test, y_test, _accuracy(model, x_test, y_test),
                        model.count_params())


def run_configuration(trained: TrainedModel, options: CompressOptions, folder: Path, tag: str) -> dict:
    """Compress and pack a trained model with options; return held-out accuracy and archive bytes."""
    import keras

    compressed = folder / f"{tag}.keras"
    compress_file(trained.path, compressed, options, overwrite=True)
    archive = folder / f"{tag}.gpcz"
    summary = pack_file(trained.path, archive, options, overwrite=True, zip_sizes=False)
    model = keras.models.load_model(compressed, compile=False)
    return {"accuracy": _accuracy(model, trained.x_test, trained.y_test), "archive": archive.stat().st_size,
            "sse": sum(t.sse for t in summary.run.clustered())}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 epochs, k = 16 only (smoke run)")
    parser.add_argument("--output", help="markdown file (default benchmarks/results/<date>-accuracy-granularity.md)")
    arguments = parser.parse_args(argv)
    epochs = 2 if arguments.quick else 40
    ks = (16,) if arguments.quick else (16, 8)
    lines = []
    with tempfile.TemporaryDirectory(prefix="gpucompress-accuracy-") as temporary:
        folder = Path(temporary)
        models = [train_digits_cnn(folder, epochs), train_synthetic_mlp(folder, epochs)]
        header = "| model | float32 accuracy | k | " + " | ".join(CONFIGURATIONS) + " |"
        lines += [header, "|" + "---|" * (3 + len(CONFIGURATIONS))]
        for trained in models:
            for k in ks:
                cells = []
                for label, configure in CONFIGURATIONS.items():
                    tag = f"{trained.path.stem}-k{k}-{label.replace(' ', '').replace('=', '')}"
                    result = run_configuration(trained, configure(k, trained), folder, tag)
                    cells.append(f"{100 * result['accuracy']:.1f}% ({result['archive'] / 1024:.1f} KiB)")
                    print(f"{trained.name} k={k} {label}: {cells[-1]}, SSE {result['sse']:.4g}", file=sys.stderr)
                lines.append(f"| {trained.name} ({trained.parameters:,} parameters = {4 * trained.parameters / 1024:.0f} KiB "
                             f"float32, {len(trained.y_test)} held out) "
                             f"| {100 * trained.accuracy:.1f}% | {k} | " + " | ".join(cells) + " |")
    command = "python benchmarks/accuracy_granularity.py" + (" --quick" if arguments.quick else "")
    text = "\n".join([
        f"# Held-out accuracy after clustering, by codebook granularity "
        f"({datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')})", "",
        f"Command: `{command}`", "",
        f"Two small models trained by the command ({epochs} epochs, Adam, seeded; data bundled with "
        "scikit-learn or generated by it). Each cell: held-out accuracy of the model `compress` writes, and "
        "(in brackets) the `.gpcz` archive `pack` writes of the same clustering. Default channel axis "
        "(the kernels' last: output channels), method optimal, keep_zeros auto. \"+ importance\": weighted "
        "k-means with importances from data (squared gradients of the outputs' energy sum(y^2) on "
        f"{IMPORTANCE_SAMPLES} training inputs: `importance_data.importance_from_data`, what "
        "`--importance-from-data` computes; computed once per model and passed as `--importance`).", "",
        *lines]) + "\n"
    print(text)
    if not arguments.quick or arguments.output:
        day = datetime.date.today().isoformat()
        output = Path(arguments.output) if arguments.output else (
            Path(__file__).resolve().parent / "results" / f"{day}-accuracy-granularity.md")
        output.write_text(text)
        print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
