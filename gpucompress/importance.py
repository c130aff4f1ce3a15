"""Per-weight importances for weighted clustering: read an .npz of them, match them to weights, weighted SSE.

An importance is one non-negative number per weight value (squared
gradients, Fisher information ...): the clustering then minimises
sum w * (x - c)**2 instead of sum (x - c)**2 (engine.cluster_arrays'
weights). Importances come from a user's .npz file (load_importance_file),
from the model and sample inputs (importance_data.importance_from_data), or
from a mapping in the Python API; resolve_importance checks them against the
model's weights, by name, before anything is clustered.

A clustered weight without an entry is clustered unweighted (every value
weighs the same); the report says which tensors were weighted.
"""
from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Mapping

import numpy

from .errors import FormatError, InputError, OptionsError

# What a tensor's entry in the report says about its importances.
WEIGHTED = "weighted"
UNIFORM = "uniform (no importance entry)"


def load_importance_file(path: str | os.PathLike) -> dict[str, numpy.ndarray]:
    """Return {name: array} of a plain NumPy .npz file of importances, never unpickled.

    The arrays' declared sizes (their .npy headers) are checked against the
    memory budget before any is read (npz.load_npz). Raises InputError for a
    missing file or one over the budget, FormatError for a file that is not an .npz of plain
    numeric arrays (object arrays and pickles are refused, not loaded).
    """
    from .npz import load_npz  # here: zipfile and the .npy reader only when there is a file

    path, arrays = load_npz(path, "importance arrays")
    for key, array in arrays.items():
        if array.dtype.kind not in "fiu":
            raise FormatError(f"{path}: importance {key!r} has dtype {array.dtype}; importances should be "
                              "real numbers")
    return arrays


def _match(name: str, by_alias: dict[str, str], source: str) -> str:
    if name in by_alias:
        return by_alias[name]
    close = difflib.get_close_matches(name, sorted(by_alias), n=3, cutoff=0.5)
    hint = f" (closest: {', '.join(close)})" if close else ""
    raise OptionsError(f"importance {source}: {name!r} matches no weight of the model{hint} "
                       "(gpucompress inspect lists the names)")


def check_importance_array(name: str, array, shape: tuple[int, ...], source: str) -> numpy.ndarray:
    """Return one weight's importances as float64 after checking shape, finiteness and sign.

    Raises OptionsError naming the weight.
    """
    array = numpy.asarray(array)
    if array.dtype.kind not in "fiu":
        raise OptionsError(f"importance {source}: {name!r} has dtype {array.dtype}; importances should be "
                           "real numbers")
    if tuple(array.shape) != tuple(shape):
        raise OptionsError(f"importance {source}: {name!r} has shape {tuple(array.shape)}, the weight has "
                           f"shape {tuple(shape)}")
    array = array.astype(numpy.float64)
    if not numpy.isfinite(array).all():
        raise OptionsError(f"importance {source}: {name!r} holds NaN or Inf; importances should be finite "
                           "and >= 0")
    if bool((array < 0).any()):
        raise OptionsError(f"importance {source}: {name!r} holds negative values; importances should be "
                           "finite and >= 0")
    return array


def resolve_importance(importance: Mapping[str, numpy.ndarray], weights, source: str = "") -> dict:
    """Return {weight name: float64 importances of its shape}, after checking every entry.

    importance: {name: array}, a name being a weight's name or one of its
    aliases (as in whitelisted); weights: the model's Weight list; source:
    where the importances came from, for messages. Raises OptionsError,
    naming the weight, for an unknown name, two entries for one weight, a
    wrong shape, a non-numeric dtype, NaN, Inf or a negative value.
    """
    by_alias: dict[str, str] = {}
    for weight in weights:
        for alias in weight.aliases:
            by_alias.setdefault(alias, weight.name)
    for weight in weights:
        by_alias[weight.name] = weight.name
    shapes = {weight.name: tuple(weight.shape) for weight in weights}
    resolved: dict[str, numpy.ndarray] = {}
    for name, array in importance.items():
        target = _match(str(name), by_alias, source)
        if target in resolved:
            raise OptionsError(f"importance {source}: {name!r} and another entry both name weight {target!r}")
        resolved[target] = check_importance_array(target, array, shapes[target], source)
    return resolved


def importance_source(importance) -> str:
    """Return a short description of an `importance` option for messages and the report."""
    if importance is None:
        return "none"
    if isinstance(importance, (str, os.PathLike)):
        return str(Path(importance))
    return f"a mapping of {len(importance)} arrays"


def read_importance(importance) -> tuple[dict[str, numpy.ndarray], str]:
    """Return ({name: array}, source) of an `importance` option: a path to an .npz file or a mapping."""
    if isinstance(importance, (str, os.PathLike)):
        return load_importance_file(importance), str(importance)
    if isinstance(importance, Mapping):
        return dict(importance), "mapping"
    raise InputError(f"importance={type(importance).__name__} should be a path to an .npz file or a "
                     "mapping of weight names to arrays")


def weighted_sse(values, codebook, labels, importance=None) -> float:
    """Return sum importance * (values - codebook[labels])**2 in float64 (the plain SSE when importance is None).

    values: a tensor (any shape) or its flat values; codebook: (k,) centroids;
    labels: indices into codebook, one per value (C order); importance: None
    or non-negative weights of values' shape. Non-finite values are skipped
    (they are kept exactly by clustering, so they have no error). The sum is a
    dot product in float64 (NumPy's order: reproducible on one machine).
    """
    flat = numpy.asarray(values).reshape(-1).astype(numpy.float64)
    errors = flat - numpy.asarray(codebook, dtype=numpy.float64)[numpy.asarray(labels).reshape(-1)]
    finite = numpy.isfinite(flat)
    errors = numpy.where(finite, errors, 0.0)
    if importance is None:
        return float(numpy.dot(errors, errors))
    weights = numpy.asarray(importance, dtype=numpy.float64).reshape(-1)
    if weights.shape != flat.shape:
        raise OptionsError(f"importance has {weights.size} values; the tensor has {flat.size}")
    return float(numpy.dot(weights, errors * errors))


def gather_importance(options, model) -> tuple[dict | None, str]:
    """Return ({name: importances} or None, source) for a run: options.importance, or computed from data.

    options: a CompressOptions; model: the read model (importance_from_data
    runs it with TensorFlow). Raises what load_importance_file and
    importance_data.importance_from_data raise.
    """
    if options.importance_from_data is not None:
        from .importance_data import importance_from_data

        source = f"from data {options.importance_from_data}"
        return importance_from_data(model, options.importance_from_data), source
    if options.importance is None:
        return None, ""
    return read_importance(options.importance)
