"""Importance-weighted k-means and the exact DP of low-cardinality dtypes: quality, time, accuracy.

    python benchmarks/importance.py            # the figures of benchmarks/results/DATE-importance.md
    python benchmarks/importance.py --quick    # a smoke run (smaller cases, fewer epochs)

Four tables, each measured in this one run:
1. weighted optimal SSE / the exact weighted optimum (a textbook DP, O(k n^2),
   written here), heavy-tailed values, squared-exponential importances;
2. clustering time weighted / unweighted (same arrays, same k, best of 3);
3. float16 tensors: the exact DP on distinct values against the binned DP
   of the same values in float32 (SSE and time);
4. two small Keras models trained on scikit-learn's bundled digits (no
   download): test accuracy at k=16 and k=8 per tensor, unweighted and
   importance-weighted (squared gradients of the outputs' energy from 512
   training samples, importance_data.importance_from_data, what
   --importance-from-data computes; and squared gradients of the
   cross-entropy loss passed as an --importance file), with archive sizes
   (`pack`); k=4 as well, where clustering starts to cost accuracy.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks.machine import describe  # noqa: E402
from gpucompress.engine import cluster_arrays  # noqa: E402
from gpucompress.kernels import fixedpoint  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def heavy(n, seed):
    rng = numpy.random.default_rng(seed)
    return rng.laplace(scale=0.02, size=n) * numpy.where(rng.random(n) < 0.01, 20.0, 1.0)


def exact_weighted_sse(values, weights, k):
    """Return the optimal sum w (x - c)**2 of 1-D values into k clusters (DP on sorted values, O(k n^2))."""
    order = numpy.argsort(values, kind="stable")
    x, w = values[order].astype(numpy.float64), weights[order].astype(numpy.float64)
    s0, s1, s2 = (numpy.concatenate([[0.0], numpy.cumsum(a)]) for a in (w, w * x, w * x * x))
    n = x.size
    table = []
    for j in range(n + 1):
        i = numpy.arange(j + 1)
        total = s0[j] - s0[i]
        table.append(numpy.maximum(s2[j] - s2[i] - numpy.where(total > 0, (s1[j] - s1[i]) ** 2
                                                                 / numpy.maximum(total, 1e-300), 0.0), 0.0))
    best = numpy.array([t[0] for t in table])
    for _ in range(1, k):
        best = numpy.array([float(numpy.min(best[: j + 1] + table[j])) for j in range(n + 1)])
    return float(best[n])


def weighted_sse(values, weights, result):
    errors = values - result.codebook[result.labels]
    return float(numpy.dot(weights, errors * errors))


def quality_table(quick: bool) -> list[str]:
    n, seeds = (600, 3) if quick else (2000, 8)
    lines = ["## 1. Weighted optimal SSE / exact weighted optimum", "",
             f"{seeds} heavy-tailed tensors of {n} values (Laplace, 1% 20x wider), importances "
             "exponential(1)**2; the optimum is taken with the engine's integer weights (resolution 2**-16 of "
             "the largest). `optimal` bins these (more values than its bin_count(n, k) bins at every k here; with "
             "fewer values than bins every value is a bin and the DP is exact, tests/test_weighted.py).", "",
             "| k | median ratio | max ratio | exact DP (s, median) | optimal (s, median) |", "|---|---|---|---|---|"]
    for k in (8, 16) if quick else (8, 16, 32):
        ratios, times, ours = [], [], []
        for seed in range(seeds):
            values = heavy(n, seed)
            weights = numpy.random.default_rng(1000 + seed).exponential(size=n) ** 2
            integer = fixedpoint.quantize_weights(weights).astype(numpy.float64)
            started = time.perf_counter()
            result = cluster_arrays([values], k, weights=[weights], device="cpu")[0]
            ours.append(time.perf_counter() - started)
            started = time.perf_counter()
            best = exact_weighted_sse(values, integer, k)
            times.append(time.perf_counter() - started)
            ratios.append(weighted_sse(values, integer, result) / best)
        lines.append(f"| {k} | {numpy.median(ratios):.5f} | {max(ratios):.5f} | {numpy.median(times):.2f} | "
                     f"{numpy.median(ours):.4f} |")
        print(lines[-1], flush=True)
    return lines


def time_table(quick: bool) -> list[str]:
    sizes = [1 << 16, 1 << 14, 3000] if quick else [1 << 20, 1 << 18, 147456, 65536, 36864, 4096]
    arrays = [heavy(n, i).astype(numpy.float32) for i, n in enumerate(sizes)]
    rng = numpy.random.default_rng(7)
    weights = [rng.exponential(size=a.size) ** 2 for a in arrays]
    lines = ["## 2. Clustering time, weighted / unweighted", "",
             f"{len(arrays)} float32 tensors, {sum(sizes):,} values, CPU (compiled kernels), best of 3 each.", "",
             "| method | k | unweighted (s) | weighted (s) | ratio |", "|---|---|---|---|---|"]
    for method, k in (("optimal", 16), ("optimal", 256), ("lloyd", 16), ("lloyd", 256)):
        best = {}
        for label, extra in (("plain", {}), ("weighted", {"weights": weights})):
            runs = []
            for _ in range(1 if quick else 3):
                started = time.perf_counter()
                cluster_arrays(arrays, k, method=method, device="cpu", **extra)
                runs.append(time.perf_counter() - started)
            best[label] = min(runs)
        lines.append(f"| {method} | {k} | {best['plain']:.3f} | {best['weighted']:.3f} | "
                     f"{best['weighted'] / best['plain']:.2f}x |")
        print(lines[-1], flush=True)
    return lines


def float16_table(quick: bool) -> list[str]:
    n = 1 << 16 if quick else 1 << 20
    values = heavy(n, 3).astype(numpy.float16)
    wide = values.astype(numpy.float32)
    distinct = numpy.unique(values).size
    lines = ["## 3. float16: exact DP on distinct values vs the binned DP", "",
             f"One float16 tensor of {n:,} values ({distinct:,} distinct), against the same values as float32 "
             "(binned DP, 8k bins). Time: one call, CPU.", "",
             "| k | SSE binned / exact | exact (s) | binned (s) | report says exact |", "|---|---|---|---|---|"]
    x = values.astype(numpy.float64)
    for k in (16, 256):
        started = time.perf_counter()
        exact = cluster_arrays([values], k, device="cpu")[0]
        exact_seconds = time.perf_counter() - started
        started = time.perf_counter()
        binned = cluster_arrays([wide], k, device="cpu")[0]
        binned_seconds = time.perf_counter() - started
        ones = numpy.ones(n)
        ratio = weighted_sse(x, ones, binned) / weighted_sse(x, ones, exact)
        lines.append(f"| {k} | {ratio:.5f} | {exact_seconds:.3f} | {binned_seconds:.3f} | {exact.exact} |")
        print(lines[-1], flush=True)
    return lines


def digits_models():
    """Return {name: builder} of the two small Keras models trained on digits."""
    import keras

    def mlp():
        return keras.Sequential([keras.Input((64,), name="pixels"), keras.layers.Dense(128, activation="relu",
                                 name="hidden"), keras.layers.Dense(10, name="logits")], name="mlp")

    def cnn():
        inputs = keras.Input((8, 8, 1), name="image")
        x = keras.layers.Conv2D(16, 3, activation="relu", name="conv1")(inputs)
        x = keras.layers.Conv2D(32, 3, activation="relu", name="conv2")(x)
        x = keras.layers.Flatten()(x)
        x = keras.layers.Dense(64, activation="relu", name="dense")(x)
        return keras.Model(inputs, keras.layers.Dense(10, name="logits")(x), name="cnn")

    return {"MLP 64-128-10": (mlp, (64,)), "CNN conv16-conv32-dense64": (cnn, (8, 8, 1))}


def loss_fisher(model, features, labels):
    """Return {variable path: mean over samples of squared gradients of the cross-entropy loss}."""
    import tensorflow as tf

    loss = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    variables = [v for v in model.weights]
    watched = [getattr(v, "value", v) for v in variables]
    totals = [numpy.zeros(v.shape) for v in variables]
    for row, label in zip(features, labels):
        with tf.GradientTape() as tape:
            value = loss(label[None], model(row[None], training=False))
        for index, gradient in enumerate(tape.gradient(value, watched)):
            totals[index] += numpy.square(gradient.numpy().astype(numpy.float64))
    return {v.path: total / len(features) for v, total in zip(variables, totals)}


def accuracy(path, features, labels) -> float:
    import keras

    model = keras.saving.load_model(path, compile=False)
    predictions = numpy.argmax(numpy.asarray(model(features, training=False)), axis=1)
    return float(numpy.mean(predictions == labels))


def model_table(quick: bool, folder: Path) -> list[str]:
    import keras
    from sklearn.datasets import load_digits

    from gpucompress.api import compress_file
    from gpucompress.importance_data import importance_from_data
    from gpucompress.models import read_model
    from gpucompress.options import CompressOptions
    from gpucompress.packing import pack_file

    digits = load_digits()
    data = (digits.data / 16.0).astype("float32")
    order = numpy.random.default_rng(0).permutation(len(data))
    train, test = order[:1400], order[1400:]
    samples = 128 if quick else 512
    lines = ["## 4. Accuracy of two models trained on digits", "",
             f"scikit-learn's digits (1,797 8x8 images): 1,400 train, {len(test)} test. Adam, "
             f"{5 if quick else 40} epochs. Importances from {samples} training samples: `energy` = squared "
             "gradients of sum(y^2) of the logits (`importance_from_data`, what `--importance-from-data` "
             "computes), `loss` = squared gradients of the cross-entropy with the true labels, passed as an "
             "`--importance` .npz. Every tensor of rank >= 2 (kernels) is clustered; biases stay. Archive: "
             "`pack` (.gpcz) bytes; the float32 .keras is the reference.", "",
             "| model | run | k=16 accuracy | k=16 archive (B) | k=8 accuracy | k=8 archive (B) | k=4 accuracy | "
             "k=4 archive (B) |", "|---|---|---|---|---|---|---|---|"]
    for name, (builder, shape) in digits_models().items():
        keras.utils.set_random_seed(0)
        model = builder()
        model.compile(optimizer=keras.optimizers.Adam(3e-3),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        x = data.reshape((-1, *shape))
        model.fit(x[train], digits.target[train], epochs=5 if quick else 40, batch_size=64, verbose=0)
        stem = folder / name.split()[0].lower()
        original = stem.with_suffix(".keras")
        model.save(original)
        base = accuracy(original, x[test], digits.target[test])
        inputs = folder / "inputs.npz"
        from gpucompress.model_runners import KerasRunner

        (spec,) = KerasRunner(read_model(original)).inputs
        numpy.savez(inputs, **{spec.name: x[train][:samples]})
        started = time.perf_counter()
        energy = importance_from_data(read_model(original), inputs)
        energy_seconds = time.perf_counter() - started
        energy_path = folder / f"{stem.name}-energy.npz"
        numpy.savez(energy_path, **energy)
        loss_path = folder / f"{stem.name}-loss.npz"
        numpy.savez(loss_path, **loss_fisher(model, x[train][:samples], digits.target[train][:samples]))
        lines.append(f"| {name} | float32 (no clustering) | {base:.4f} | {original.stat().st_size:,} (.keras) | "
                     f"{base:.4f} | | {base:.4f} | |")
        print(lines[-1], flush=True)
        for run, importance in (("per tensor", None), ("importance: energy (from data)", energy_path),
                                ("importance: loss (file)", loss_path)):
            cells = []
            for k in (16, 8, 4):
                options = CompressOptions(n_clusters=k, importance=importance, device="cpu")
                output = folder / f"{stem.name}-{k}.keras"
                compress_file(original, output, options, overwrite=True)
                archive = folder / f"{stem.name}-{k}.gpcz"
                pack_file(original, archive, options, overwrite=True, zip_sizes=False)
                cells += [f"{accuracy(output, x[test], digits.target[test]):.4f}", f"{archive.stat().st_size:,}"]
            lines.append(f"| {name} | {run} | " + " | ".join(cells) + " |")
            print(lines[-1], flush=True)
        lines.append(f"| {name} | (energy importances took {energy_seconds:.2f} s) | | | | | | |")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: small cases, few epochs")
    parser.add_argument("--output", type=Path, help="Markdown output (default benchmarks/results/DATE-importance.md)")
    arguments = parser.parse_args(argv)
    machine = describe()
    command = "python benchmarks/importance.py" + (" --quick" if arguments.quick else "")
    lines = [f"# Importance-weighted k-means and exact low-cardinality DP ({machine['date'][:10]})", "",
             f"Command: `{command}`. Machine: {machine['cpu']}, {machine['cores']} usable cores (shared with "
             "other jobs: compare ratios within this run, not absolute times). CPU only; no GPU figures.", ""]
    with tempfile.TemporaryDirectory(prefix="gpucompress-importance-") as folder:
        for table in (quality_table(arguments.quick), time_table(arguments.quick),
                      float16_table(arguments.quick), model_table(arguments.quick, Path(folder))):
            lines += table + [""]
    output = arguments.output or RESULTS / f"{machine['date'][:10]}-importance{'-quick' if arguments.quick else ''}.md"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text("\n".join(lines))
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
