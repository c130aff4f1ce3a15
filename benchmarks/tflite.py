"""Benchmark .tflite models: output error and sizes at k, and compress time against an I/O floor.

    python benchmarks/tflite.py            # conv, embedding and a 4.2M-weight MLP; k = 16
    python benchmarks/tflite.py --quick    # the conv model only (a smoke run)
    python benchmarks/tflite.py --render results/tflite-DATE.json   # the tables of a stored run
    python benchmarks/tflite.py --untrained   # the models as built (random init), as before 2026-12-02

Each Keras model is first trained briefly (seeded, deterministic; nothing is
downloaded): conv and mlp on scikit-learn's bundled digits (load_digits, 8x8
images resized by nearest neighbour to the model's input), the embedding model
on a synthetic regression of its token sequences (see TRAINING). Random-init
weights are near uniform, which is not how a user's model looks. Then each is
converted with tf.lite.TFLiteConverter as float32, dynamic-range int8,
full-integer int8 (per-channel weights; not the embedding model, whose integer
inputs the calibration cannot feed) and float16, then: output error
(||y_k - y|| / ||y||, the compressed .tflite against the original .tflite in
the TFLite interpreter, on 16 fixed inputs: held-out rows of the training
data, random ones with --untrained) beside the Keras model's own error at the
same k (the .keras file compressed by gpucompress); sizes of the original, its
zip -9, the pack archive, and the TFLite Micro file (`--tflm`, with a check
that TFLM's interpreter decodes it to the clustered model's outputs exactly,
where TFLM runs the model: not dynamic-range ones).
On the largest model, compress time (best of 3 after a warm-up) against the
floor: read and parse the file, sort each weight tensor, write the file.
Prints a table and writes it under benchmarks/results/.
"""
from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from benchmarks.machine import cpu_model, usable_cores  # noqa: E402
from gpucompress import CompressOptions, compress_file, pack_file  # noqa: E402
from gpucompress.models import read_model  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def zip9(path: Path) -> int:
    """Return the size of a zip -9 (deflate, level 9) archive of one file."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        archive.write(path, path.name)
    return buffer.tell()


def mlp_model(seed: int = 0):
    """Return a Keras MLP 1024 -> 2048 -> 1024 -> 10 (4.2 million weights)."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((1024,))
    x = keras.layers.Dense(2048, activation="relu", name="wide")(inputs)
    x = keras.layers.Dense(1024, activation="relu", name="narrow")(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="head")(x))


# What each model is trained on (printed into the results file).
TRAINING = {
    "conv": "load_digits (1,781 train rows; 8x8 -> 12x12 nearest, 3 channels), label = digit mod 5, "
            "Adam 1e-3, 10 epochs, batch 32",
    "mlp": "load_digits (1,781 train rows; 8x8 -> 32x32 nearest, flattened to 1024), 10 classes, "
           "Adam 1e-3, 5 epochs, batch 64",
    "embedding": "synthetic: 4,096 random token sequences, target = sum over positions of a fixed random "
                 "(position, token) -> 5 table, MSE, Adam 1e-3, 20 epochs, batch 64",
}
PROBES = 16  # held-out rows: the probe (error) and full-integer calibration inputs


def digits(side: int, channels: int | None):
    """Return load_digits as (images float32 in [0, 1], labels int32), each 8x8 image resized to side x side
    by nearest neighbour; shape (n, side, side, channels), or (n, side * side) when channels is None."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    pictures = (bunch.images / 16.0).astype("float32")
    rows = numpy.arange(side) * 8 // side
    pictures = pictures[:, rows][:, :, rows]
    if channels is None:
        pictures = pictures.reshape(len(pictures), -1)
    else:
        pictures = numpy.repeat(pictures[..., None], channels, axis=-1)
    return pictures, bunch.target.astype("int32")


def token_task(count: int, seed: int):
    """Return (tokens int32 (count, LENGTH), targets float32 (count, 5)) of the synthetic embedding task."""
    from tests.keras_models import LENGTH, VOCABULARY

    rng = numpy.random.default_rng(seed)
    table = rng.normal(size=(LENGTH, VOCABULARY, 5)).astype("float32")
    tokens = rng.integers(0, VOCABULARY, (count, LENGTH)).astype("int32")
    targets = table[numpy.arange(LENGTH), tokens].sum(axis=1) / numpy.sqrt(LENGTH)
    return tokens, targets.astype("float32")


def train(model, inputs, targets, loss: str, epochs: int, batch: int, seed: int = 0) -> float:
    """Train a Keras model in place (Adam 1e-3, seeded, deterministic ops); return the last epoch's loss."""
    import keras
    import tensorflow as tf

    # Same weights every run: seeded shuffling and initial state, deterministic kernels.
    tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(seed)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss)
    history = model.fit(inputs, targets, epochs=epochs, batch_size=batch, shuffle=True, verbose=0)
    return float(history.history["loss"][-1])


def models(quick: bool, trained: bool = True):
    """Return [(name, Keras model, probe inputs, kinds)]; trained per TRAINING unless trained is False."""
    from tests.keras_models import build_models, functional_model
    from tests.tflite_models import IMAGE, KINDS, conv_model, images

    if not trained:
        result = [("conv", conv_model(), images(16), KINDS)]
        if not quick:
            inputs, functional, _ = build_models(seed=0)
            result.append(("embedding", functional, inputs, ("float32", "dynamic", "float16")))
            probe = numpy.random.default_rng(0).normal(size=(16, 1024)).astype("float32")
            result.append(("mlp", mlp_model(), probe, KINDS))
        return result
    pictures, labels = digits(IMAGE[0], IMAGE[2])
    conv = conv_model()
    loss = train(conv, pictures[:-PROBES], labels[:-PROBES] % 5, logits_loss(), 10, 32)
    print(f"conv trained: loss {loss:.4f}", flush=True)
    result = [("conv", conv, pictures[-PROBES:], KINDS)]
    if not quick:
        import keras

        keras.utils.set_random_seed(0)
        functional = functional_model()
        tokens, targets = token_task(4096 + PROBES, seed=0)
        loss = train(functional, tokens[:-PROBES], targets[:-PROBES], "mse", 20, 64)
        print(f"embedding trained: loss {loss:.4f}", flush=True)
        result.append(("embedding", functional, tokens[-PROBES:], ("float32", "dynamic", "float16")))
        flat, labels = digits(32, None)
        mlp = mlp_model()
        loss = train(mlp, flat[:-PROBES], labels[:-PROBES], logits_loss(), 5, 64)
        print(f"mlp trained: loss {loss:.4f}", flush=True)
        result.append(("mlp", mlp, flat[-PROBES:], KINDS))
    return result


def logits_loss():
    """Return sparse categorical cross-entropy on logits (the classifiers' heads are linear Dense layers)."""
    import keras

    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def keras_error(model, inputs, k: int, folder: Path) -> float:
    """Return the relative output error of a Keras model compressed by gpucompress at k."""
    import keras

    from tests.tflite_models import relative_error

    path = folder / "model.keras"
    model.save(path)
    summary = compress_file(path, folder / "model.min.keras", CompressOptions(n_clusters=k), overwrite=True)
    clustered = keras.models.load_model(summary.output_path, compile=False)
    return relative_error(model.predict(inputs, verbose=0), clustered.predict(inputs, verbose=0))


def keras_alone(model, inputs, k: int, folder: Path) -> list[tuple[str, float]]:
    """Return [(name, relative output error)] of a Keras model with one of its clustered tensors clustered at a time."""
    import keras

    from tests.tflite_models import relative_error

    path = folder / "model.keras"
    model.save(path)
    names = [t.name for t in compress_file(path, folder / "model.min.keras", CompressOptions(n_clusters=k),
                                           overwrite=True).run.clustered()]
    reference, errors = model.predict(inputs, verbose=0), []
    for name in names:
        others = tuple(other for other in names if other != name)
        summary = compress_file(path, folder / "model.one.keras", CompressOptions(n_clusters=k, whitelisted=others),
                                overwrite=True)
        errors.append((name, relative_error(reference, keras.models.load_model(summary.output_path, compile=False)
                                            .predict(inputs, verbose=0))))
    return errors


def tflite_alone(source: Path, folder: Path, inputs, k: int, names: list[str]) -> list[tuple[str, float]]:
    """Return [(name, relative output error)] of a .tflite with one of `names` clustered at a time."""
    from tests.tflite_models import relative_error, run_tflite

    reference, errors = run_tflite(source.read_bytes(), inputs), []
    for name in names:
        output = folder / "one.tflite"
        others = tuple(other for other in names if other != name)
        compress_file(source, output, CompressOptions(n_clusters=k, whitelisted=others), overwrite=True)
        errors.append((name, relative_error(reference, run_tflite(output.read_bytes(), inputs))))
    return errors


def root_sum_square(errors: list) -> float:
    """Return sqrt(sum e^2) of [(name, e)]: the error of independent output errors added together."""
    return float(numpy.sqrt(sum(error ** 2 for _, error in errors)))


def short_name(name: str) -> str:
    """Return a weight's name cut for a table: the first of a fused TFLite name's parts, at most 28 characters."""
    first = name.split(";")[0]
    return first if len(first) <= 28 else "..." + first[-25:]


def alone_cell(errors: list) -> str:
    """Return a table cell of [(name, error)]: `name` error, ..."""
    return ", ".join(f"`{short_name(name)}` {error:.4f}" for name, error in errors)


def tflm_matches(micro: Path, clustered: Path, inputs: numpy.ndarray) -> str:
    """Return "yes"/"NO" when TFLM's interpreter gives the same outputs for both files, or why it cannot run."""
    from tflite_micro import runtime

    outputs = []
    for path in (micro, clustered):
        try:
            interpreter = runtime.Interpreter.from_bytes(path.read_bytes())
            rows = []
            for row in inputs[:4]:
                interpreter.set_input(row[None], 0)
                interpreter.invoke()
                rows.append(interpreter.get_output(0).copy())
            outputs.append(numpy.stack(rows))
        except (RuntimeError, ValueError) as error:
            return f"TFLM cannot run it ({str(error)[:40]})"
    return "yes" if numpy.array_equal(*outputs) else "NO"


def io_floor(path: Path, folder: Path, runs: int = 3) -> float:
    """Return the best of `runs` times of: read and parse the file, sort each weight, write the file."""
    best = None
    for _ in range(runs):
        started = time.perf_counter()
        model = read_model(path)
        for weight in model.weights():
            if weight.floating:
                numpy.sort(weight.load().reshape(-1))
        model.save(folder / "floor.tflite")
        elapsed = time.perf_counter() - started
        best = elapsed if best is None else min(best, elapsed)
    return best


def compress_seconds(path: Path, folder: Path, k: int, runs: int = 3) -> float:
    """Return the best of `runs` compress times (s) after one warm-up run."""
    times = []
    for _ in range(runs + 1):
        started = time.perf_counter()
        compress_file(path, folder / "timed.tflite", CompressOptions(n_clusters=k), overwrite=True)
        times.append(time.perf_counter() - started)
    return min(times[1:])


def machine_load() -> str:
    """Return the load averages as one line (the cores are shared: above the core count, others ran too)."""
    try:
        return "load average %.2f, %.2f, %.2f" % os.getloadavg()
    except OSError:
        return "load average unknown"


def dequantized_sse(source: Path, clustered: Path) -> float:
    """Return the sum over the int8/int16 weights of ((q' - q) * scale)^2: the squared error of their
    dequantized values (per-channel scales along their quantized dimension)."""
    from gpucompress.models import read_model

    before, after = read_model(source), read_model(clustered)
    total = 0.0
    for name, quantization in before.integer_weights().items():
        shape = before._entries[name].shape
        along = [1] * len(shape)
        if quantization["scales"].size > 1:
            along[quantization["axis"]] = -1
        gap = (after._values(after._entries[name]).astype(numpy.float64)
               - before._values(before._entries[name]).astype(numpy.float64))
        total += float(((gap * quantization["scales"].astype(numpy.float64).reshape(along)) ** 2).sum())
    return total


def objective_rows(name: str, kind: str, source: Path, folder: Path, inputs, ks) -> list[dict]:
    """Return, per k, the output error and dequantized weight SSE of a quantized model clustered with each
    integer objective (`--integer-objective dequantized`, the default, and `integer`)."""
    from tests.tflite_models import relative_error, run_tflite

    reference, rows = run_tflite(source.read_bytes(), inputs), []
    for k in ks:
        row = {"model": name, "kind": kind, "k": k}
        for objective in ("dequantized", "integer"):
            output = folder / f"{name}_{kind}.{objective}.tflite"
            compress_file(source, output, CompressOptions(n_clusters=k, integer_objective=objective), overwrite=True)
            row[objective] = {"error": relative_error(reference, run_tflite(output.read_bytes(), inputs)),
                              "dequantized_sse": dequantized_sse(source, output)}
        rows.append(row)
    return rows


def markdown(rows: list[dict], timing: list[dict], k: int, date: str, machine: str, load: str = "",
             training: dict | None = None, objectives: list[dict] | None = None) -> str:
    """Return the results table (rows and timing as main() collects them, or as the .json stores them).

    training: {model: what it was trained on}, or None for untrained (random-init) models.
    """
    lines = [f"# .tflite models at k={k} ({date}, {machine}{', ' + load if load else ''})", ""]
    if training is None:
        lines += ["models: untrained (random init, `--untrained`)", ""]
    else:
        lines += ["models trained before conversion (seeded, deterministic):", ""]
        lines += [f"- {name}: {text}" for name, text in training.items()] + [""]
    lines += [
             "error: ||y_k - y|| / ||y|| of the compressed .tflite against the original (TFLite interpreter, "
             "16 fixed inputs); keras: the Keras model's own error at the same k; TFLM decoded: TFLM's interpreter "
             "gives the clustered model's outputs exactly; smallest: the archive of `--speed-tolerance 0` (the "
             "smallest index streams); bound: the entropy of the indices with their codebooks, rest: zstd of the "
             "model without them (pack's own figures); no archive of this format gets below bound + rest", "",
             "| model | kind | k | weights | error | keras error | original | zip -9 | compressed zip -9 "
             "| archive | zip / archive | TFLM file | TFLM decoded |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        # Three decimals: the target is 2x, and 1.996x must not print as 2.00x.
        lines.append(f"| {r['model']} | {r['kind']} | {r['k']} | {r['weights']:,} | {r['error']:.4f} | "
                     f"{r['keras_error']:.4f} | {r['original']:,} | {r['zip9']:,} | {r['min_zip9']:,} | "
                     f"{r['archive']:,} | {r['zip9'] / r['archive']:.3f}x | "
                     f"{'-' if r['tflm'] is None else format(r['tflm'], ',')} | {r['tflm_decoded']} |")
    sized = [r for r in rows if "bound" in r]  # runs stored before 2026-12-02 (issue19c) lack these
    if sized:
        lines += ["", "where the archive bytes go (bytes; zip / 2: what the 2x target allows):", "",
                  "| model | kind | zip -9 / 2 | archive | smallest | zip / smallest | bound | rest | bound + rest "
                  "| zip / (bound + rest) |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in sized:
            floor = r["bound"] + r["rest"]
            lines.append(f"| {r['model']} | {r['kind']} | {r['zip9'] / 2:,.0f} | {r['archive']:,} | "
                         f"{r['archive_smallest']:,} | {r['zip9'] / r['archive_smallest']:.3f}x | {r['bound']:,} | "
                         f"{r['rest']:,} | {floor:,} | {r['zip9'] / floor:.3f}x |")
    alone = [r for r in rows if "alone" in r]  # runs stored before 2026-12-02's second session lack these
    if alone:
        lines += ["", "the output error with one tensor clustered at a time (the others as they were, in the "
                  "order compress lists them), their root sum of squares (what independent errors add up to) and "
                  "the error with all clustered, for the .tflite and for the Keras model it was converted from "
                  "(whose tensors differ: the converter folds BatchNormalization into the next layer):", "",
                  "| model | kind | each alone | root sum of squares | all | Keras: each alone | Keras root sum "
                  "of squares | Keras all |", "|---|---|---|---|---|---|---|---|"]
        for r in alone:
            lines.append(f"| {r['model']} | {r['kind']} | {alone_cell(r['alone'])} | "
                         f"{root_sum_square(r['alone']):.4f} | {r['error']:.4f} | {alone_cell(r['keras_alone'])} | "
                         f"{root_sum_square(r['keras_alone']):.4f} | {r['keras_error']:.4f} |")
    if objectives:
        lines += ["", "the objective of int8 weights (`--integer-objective`): output error and the dequantized "
                  "weights' squared error (sum over the int8 weights of ((q' - q) * scale)^2) when each squared "
                  "integer error weighs its channel's scale squared (dequantized, the default) or not (integer):", "",
                  "| model | kind | k | error, dequantized | error, integer | weight SSE, dequantized "
                  "| weight SSE, integer | SSE ratio |", "|---|---|---|---|---|---|---|---|"]
        for o in objectives:
            mine, plain = o["dequantized"], o["integer"]
            ratio = mine["dequantized_sse"] / plain["dequantized_sse"] if plain["dequantized_sse"] else 1.0
            lines.append(f"| {o['model']} | {o['kind']} | {o['k']} | {mine['error']:.4f} | {plain['error']:.4f} | "
                         f"{mine['dequantized_sse']:.6g} | {plain['dequantized_sse']:.6g} | {ratio:.3f} |")
    lines += ["", "compress time (best of 3 after a warm-up) against the floor (read + parse, sort each weight, "
              "write; best of 3):", "", "| model | kind | weights | file bytes | compress s | floor s | ratio |",
              "|---|---|---|---|---|---|---|"]
    for t in timing:
        lines.append(f"| {t['model']} | {t['kind']} | {t['weights']:,} | {t['bytes']:,} | {t['compress_s']:.3f} | "
                     f"{t['floor_s']:.3f} | {t['ratio']:.1f}x |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the conv model only")
    parser.add_argument("-k", type=int, default=16, help="clusters per tensor (default 16)")
    parser.add_argument("--untrained", action="store_true",
                        help="the models as built (random init): the figures before 2026-12-02's trained run")
    parser.add_argument("--output", type=Path, help="results stem (default results/tflite-DATE)")
    parser.add_argument("--render", type=Path, metavar="JSON",
                        help="print the tables of an earlier run's .json (nothing is measured)")
    arguments = parser.parse_args(argv)
    if arguments.render:
        stored = json.loads(arguments.render.read_text())
        # Runs stored before the trained models had no "training" key: they were untrained.
        print(markdown(stored["rows"], stored["timing"], stored.get("k", arguments.k), arguments.render.stem,
                       f"{cpu_model()}, {usable_cores()} cores", stored.get("machine", ""),
                       stored.get("training"), stored.get("objectives")), end="")
        return 0
    from tests.tflite_models import convert, relative_error, run_tflite

    k = arguments.k
    rows, timing, objectives = [], [], []
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        for name, model, inputs, kinds in models(arguments.quick, not arguments.untrained):
            reference = keras_error(model, inputs, k, folder)
            reference_alone = keras_alone(model, inputs, k, folder)
            weights = 0
            for kind in kinds:
                source = folder / f"{name}_{kind}.tflite"
                source.write_bytes(convert(model, kind, inputs))
                clustered, archive, micro = (folder / f"{name}_{kind}.min.tflite", folder / f"{name}_{kind}.gpcz",
                                             folder / f"{name}_{kind}.tflm.tflite")
                summary = compress_file(source, clustered, CompressOptions(n_clusters=k), overwrite=True)
                weights = sum(t.size for t in summary.run.clustered())
                alone = tflite_alone(source, folder, inputs, k, [t.name for t in summary.run.clustered()])
                packed = pack_file(source, archive, CompressOptions(n_clusters=k), overwrite=True)
                # The smallest streams (speed tolerance 0: ANS where it is smaller at all) beside the default.
                smallest = pack_file(source, folder / f"{name}_{kind}.smallest.gpcz", CompressOptions(n_clusters=k),
                                     overwrite=True, speed_tolerance=0.0).sizes["archive"]
                error = relative_error(run_tflite(source.read_bytes(), inputs),
                                       run_tflite(clustered.read_bytes(), inputs))
                tflm_bytes, decoded = None, "-"
                if kind != "float16" and k <= 128:
                    compress_file(source, micro, CompressOptions(n_clusters=k), overwrite=True, tflm=True)
                    tflm_bytes = micro.stat().st_size
                    decoded = tflm_matches(micro, clustered, inputs)
                original = source.stat().st_size
                rows.append({"model": name, "kind": kind, "k": k, "weights": weights, "error": error,
                             "keras_error": reference, "original": original, "zip9": zip9(source),
                             "min_zip9": zip9(clustered), "archive": archive.stat().st_size,
                             "archive_smallest": smallest, "bound": packed.sizes["bound"],
                             "rest": packed.sizes["rest"], "tflm": tflm_bytes, "tflm_decoded": decoded,
                             "alone": alone, "keras_alone": reference_alone})
                print(rows[-1], flush=True)
                if kind in ("int8", "dynamic"):
                    objectives += objective_rows(name, kind, source, folder, inputs, (k, max(2, k // 2)))
                if name == ("conv" if arguments.quick else "mlp") and kind in ("float32", "int8"):
                    floor = io_floor(source, folder)
                    seconds = compress_seconds(source, folder, k)
                    timing.append({"model": name, "kind": kind, "weights": weights, "bytes": original,
                                   "compress_s": seconds, "floor_s": floor, "ratio": seconds / floor})
                    print(timing[-1], flush=True)
    names = {row["model"] for row in rows}
    training = None if arguments.untrained else {name: TRAINING[name] for name in TRAINING if name in names}
    text = markdown(rows, timing, k, datetime.date.today().isoformat(), f"{cpu_model()}, {usable_cores()} cores",
                    machine_load(), training, objectives)
    print(text)
    if not arguments.quick:
        RESULTS.mkdir(exist_ok=True)
        stem = arguments.output or RESULTS / f"tflite-{datetime.date.today().isoformat()}"
        stem.with_suffix(".md").write_text(text)
        stem.with_suffix(".json").write_text(json.dumps({"rows": rows, "timing": timing, "k": k, "objectives": objectives,
                                                         "machine": machine_load(), "training": training}, indent=1))
        print(f"wrote {stem}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
