"""Compare an original and a compressed model on the same inputs.

Inputs come from a `.npz` file (read without pickle) or are generated from the
input signature, deterministically from a seed: floats uniform in [0, 1)
(pixel-like), integers in {0, 1} (valid indices for any embedding), booleans
at random; unknown dimensions get `samples`. Metrics are computed in float64.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy

from .errors import GpucompressError, InputError
from .models import read_model
from .options import VERIFY_SAMPLES
from .runners import InputSpec, open_runner

DEFAULT_SAMPLES = VERIFY_SAMPLES


@dataclass(frozen=True)
class OutputComparison:
    """How one output of the compressed model differs from the original's.

    max_abs_error: max |a - b|. relative_error: ||a - b||_2 / ||a||_2 (0 when
    both are zero, inf when only a is). cosine_similarity: <a, b> / (|a| |b|)
    over the flattened output (1 when both are zero). top1_agreement: share of
    rows whose argmax agrees, for outputs that look like class scores (2-D,
    last dimension > 1), else None. NaN anywhere makes the metrics NaN.
    """

    name: str
    shape: tuple[int, ...]
    max_abs_error: float
    relative_error: float
    cosine_similarity: float
    top1_agreement: float | None

    def to_dict(self) -> dict:
        """Return JSON-ready values (NaN and infinity as None)."""
        def clean(x):
            return None if x is None or not math.isfinite(x) else x

        return {"name": self.name, "shape": list(self.shape), "max_abs_error": clean(self.max_abs_error),
                "relative_error": clean(self.relative_error),
                "cosine_similarity": clean(self.cosine_similarity),
                "top1_agreement": clean(self.top1_agreement)}


@dataclass
class Verification:
    """The comparison of two models: where the inputs came from, how many samples, and one entry per output."""

    inputs_source: str
    samples: int
    outputs: list[OutputComparison]

    @property
    def worst_relative_error(self) -> float:
        """Return the largest relative error over the outputs (NaN when any is NaN)."""
        errors = [o.relative_error for o in self.outputs]
        return math.nan if any(math.isnan(e) for e in errors) else max(errors)

    def passes(self, max_relative_error: float) -> bool:
        """Return whether every output's relative error is <= max_relative_error (NaN fails)."""
        return all(o.relative_error <= max_relative_error for o in self.outputs)

    def to_dict(self) -> dict:
        """Return JSON-ready values."""
        return {"inputs": self.inputs_source, "samples": self.samples,
                "outputs": [o.to_dict() for o in self.outputs]}


def compare_outputs(name: str, reference: numpy.ndarray, candidate: numpy.ndarray) -> OutputComparison:
    """Return the OutputComparison of two arrays of the same shape (reference: the original model's)."""
    if reference.shape != candidate.shape:
        raise GpucompressError(f"output {name}: shapes differ, {reference.shape} vs {candidate.shape}")
    a = reference.astype(numpy.float64).reshape(-1)
    b = candidate.astype(numpy.float64).reshape(-1)
    difference = a - b
    error_norm, norm_a, norm_b = (float(numpy.linalg.norm(v)) for v in (difference, a, b))
    if a.size == 0:
        max_abs = 0.0
    else:
        max_abs = float(numpy.abs(difference).max())
    if norm_a > 0:
        relative = error_norm / norm_a
    else:
        relative = 0.0 if error_norm == 0 else (math.nan if math.isnan(error_norm) else math.inf)
    if norm_a > 0 and norm_b > 0:
        cosine = float(numpy.dot(a, b)) / (norm_a * norm_b)
    else:
        cosine = 1.0 if norm_a == norm_b == 0 else (math.nan if math.isnan(norm_a + norm_b) else 0.0)
    top1 = None
    if reference.ndim == 2 and reference.shape[1] > 1 and reference.shape[0] > 0:
        top1 = float((reference.argmax(axis=1) == candidate.argmax(axis=1)).mean())
    return OutputComparison(name, tuple(reference.shape), max_abs, relative, cosine, top1)


def generate_inputs(specs: list[InputSpec], samples: int = DEFAULT_SAMPLES, seed: int = 0) -> dict:
    """Return deterministic inputs for an input signature: {name: array}; unknown dims get `samples`."""
    rng = numpy.random.default_rng(seed)
    feeds = {}
    for spec in specs:
        if spec.shape is None:
            raise InputError(f"input {spec.name} has an unknown rank: pass its values with --inputs FILE.npz")
        shape = tuple(samples if d is None else d for d in spec.shape)
        dtype = numpy.dtype(spec.dtype) if spec.dtype != "string" else None
        if dtype is None:
            raise InputError(f"input {spec.name} holds strings: pass its values with --inputs FILE.npz")
        if dtype.kind == "f":
            feeds[spec.name] = rng.random(shape).astype(dtype)
        elif dtype.kind in "iu":
            feeds[spec.name] = rng.integers(0, 2, shape).astype(dtype)
        elif dtype.kind == "b":
            feeds[spec.name] = rng.random(shape) < 0.5
        else:
            raise InputError(f"input {spec.name} has dtype {spec.dtype}: pass its values with --inputs FILE.npz")
    return feeds


def load_inputs(path: str | os.PathLike, specs: list[InputSpec]) -> dict:
    """Read inputs from a .npz file (never unpickled): one array per input, by name (`name` or `name:0`).

    Raises InputError when an input is missing, the arrays' declared sizes are
    over the memory budget, or a shape does not fit the signature;
    FormatError for a file that is not an .npz of plain arrays.
    """
    from .npz import load_npz

    path, arrays = load_npz(path, "inputs")
    feeds = {}
    for spec in specs:
        array = arrays.get(spec.name, arrays.get(f"{spec.name}:0"))
        if array is None:
            raise InputError(f"{path}: no array named {spec.name!r} (holds {', '.join(sorted(arrays)) or 'none'}; "
                             f"the model's inputs are {', '.join(s.name for s in specs)})")
        if spec.shape is not None and (array.ndim != len(spec.shape) or any(
                d is not None and d != n for d, n in zip(spec.shape, array.shape))):
            expected = "x".join("?" if d is None else str(d) for d in spec.shape)
            raise InputError(f"{path}: {spec.name} has shape {array.shape}, the model expects {expected}")
        feeds[spec.name] = array.astype(spec.dtype) if spec.dtype != "string" else array
    return feeds


def _batch_size(feeds: dict) -> int:
    sizes = {array.shape[0] for array in feeds.values() if array.ndim}
    return sizes.pop() if len(sizes) == 1 else 1


def verify_models(original: str | os.PathLike, compressed: str | os.PathLike, *,
                  inputs: str | os.PathLike | None = None, samples: int = DEFAULT_SAMPLES,
                  seed: int = 0, signature: str | None = None,
                  architecture: str | os.PathLike | None = None) -> Verification:
    """Run both models on the same inputs and compare every output.

    Every format compress reads: frozen GraphDefs, SavedModel folders (through
    `signature`, default serving_default), `.keras` and `.h5` files (through
    Keras; a weights-only `.weights.h5` inside the model `architecture` names).
    inputs: a .npz file, or None to generate `samples` rows from the signature
    with `seed`. Raises InputError / FormatError for unusable files (a model
    TensorFlow or Keras cannot load: the file and the loader's reason),
    OptionsError for an unknown signature (listing the model's) or an option
    that does not apply, GpucompressError when the models' signatures differ
    or a run fails.
    """
    if samples < 1:
        raise InputError(f"samples={samples} should be >= 1.")
    reference_runner = open_runner(read_model(original), signature=signature, architecture=architecture)
    candidate_runner = open_runner(read_model(compressed), signature=signature, architecture=architecture)
    if reference_runner.inputs != candidate_runner.inputs or reference_runner.outputs != candidate_runner.outputs:
        raise GpucompressError(f"{original} and {compressed} have different inputs or outputs: "
                               "not a model and its compressed copy")
    specs = reference_runner.inputs
    if inputs is not None:
        feeds, source = load_inputs(inputs, specs), str(Path(inputs))
    else:
        feeds, source = generate_inputs(specs, samples, seed), f"generated (seed {seed})"
    reference = reference_runner.run(feeds)
    candidate = candidate_runner.run(feeds)
    if reference.keys() != candidate.keys():
        raise GpucompressError(f"{original} and {compressed} give different outputs: "
                               "not a model and its compressed copy")
    outputs = [compare_outputs(name, reference[name], candidate[name]) for name in reference]
    return Verification(source, _batch_size(feeds), outputs)


def format_verification(verification: Verification) -> str:
    """Return the comparison as a plain-text table, one row per output."""
    header = ("output", "shape", "max abs error", "relative L2", "cosine", "top-1 agree")
    rows = [header] + [
        (o.name, "x".join(map(str, o.shape)), f"{o.max_abs_error:.3g}", f"{o.relative_error:.3g}",
         f"{o.cosine_similarity:.6f}", "-" if o.top1_agreement is None else f"{100 * o.top1_agreement:.1f}%")
        for o in verification.outputs]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append(f"inputs: {verification.inputs_source}, {verification.samples} samples")
    return "\n".join(lines)
