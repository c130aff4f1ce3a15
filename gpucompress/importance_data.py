"""Importances computed from data: squared gradients of the outputs' energy, with TensorFlow.

For each sample s of the inputs, E_s = sum over every output y of sum(y**2);
a weight value's importance is mean_s (dE_s / dw)**2, the diagonal of the
empirical Fisher information of E (one backward pass per sample, so the
gradients of different samples do not cancel). Runs for the formats whose
weights can be made differentiable here:

- Keras `.keras` and whole-model `.h5` files: the model's variables, watched
  by a tf.GradientTape around a call with training=False, matched to the
  weights by their variable paths (the aliases of models/keras.py);
- frozen GraphDefs: the graph is imported into a function whose float
  Consts are extra inputs (input_map), so a tape can watch them.

SavedModel folders and .tflite files are refused with one line (their
variables are not reachable by name here: pass --importance FILE.npz).
TensorFlow is imported only here, when asked.
"""
from __future__ import annotations

import logging
import os

import numpy

from .errors import GpucompressError, OptionsError

log = logging.getLogger(__name__)

# Samples used at most (one backward pass each); more are left out, and said so.
MAX_SAMPLES = 1024
# GraphDef Const dtypes whose values get gradients (TensorFlow's DataType numbers).
_FLOAT_TYPES = {1: "float32", 2: "float64", 19: "float16", 14: "bfloat16"}


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else type(error).__name__


def _samples(feeds: dict) -> int:
    sizes = {array.shape[0] for array in feeds.values() if array.ndim}
    if len(sizes) != 1:
        raise OptionsError("importance_from_data (--importance-from-data): the inputs should share one batch "
                           f"(first) dimension; their first dimensions are {sorted(sizes)}")
    return sizes.pop()


def _energy(tf, outputs):
    return tf.add_n([tf.reduce_sum(tf.square(tf.cast(output, tf.float32))) for output in outputs])


def _accumulate(total, gradients):
    """Add each gradient's square (float64) to total (a list, None entries meaning zero)."""
    for index, gradient in enumerate(gradients):
        if gradient is None:
            continue
        squared = numpy.square(numpy.asarray(gradient, dtype=numpy.float64))
        total[index] = squared if total[index] is None else total[index] + squared


def _keras_importance(model, inputs_path, weights) -> dict:
    from .model_runners import KerasRunner
    from .runners import _tensorflow
    from .verify import load_inputs

    tf = _tensorflow()
    runner = KerasRunner(model)
    feeds = load_inputs(inputs_path, runner.inputs)
    keras_model = runner._model
    variables = list(keras_model.weights)
    known = {alias: w.name for w in weights for alias in (w.name, *w.aliases)}
    chosen = [v for v in variables if getattr(v, "path", v.name) in known]
    if not chosen:
        raise GpucompressError(f"importance from data: no variable of {model.source} matches a weight name "
                               f"(variable paths: {', '.join(getattr(v, 'path', v.name) for v in variables[:5])})")
    if len(chosen) < len(variables):
        log.warning("importance from data: %d of %d variables of the model match no weight name; they get no "
                    "importance", len(variables) - len(chosen), len(variables))
    names = [spec.name for spec in runner.inputs]
    n = _samples(feeds)
    # Keras 3 wraps each tf.Variable (KerasVariable.value): the tape watches the TensorFlow one.
    watched = [getattr(v, "value", v) for v in chosen]

    # Traced once (every sample has the same shape): eager per-sample calls were 5x slower.
    @tf.function(reduce_retracing=True)
    def step(arrays):
        with tf.GradientTape() as tape:
            for variable in watched:
                tape.watch(variable)
            result = keras_model(arrays[0] if len(arrays) == 1 else arrays, training=False)
            outputs = list(result.values()) if isinstance(result, dict) else (
                list(result) if isinstance(result, (list, tuple)) else [result])
            energy = _energy(tf, outputs)
        return tape.gradient(energy, watched)

    def gradients_of(sample):
        return step([tf.constant(feeds[name][sample:sample + 1]) for name in names])

    totals = _run_samples(gradients_of, n, len(chosen))
    return {known[getattr(v, "path", v.name)]: total for v, total in zip(chosen, totals) if total is not None}


def _graphdef_importance(model, inputs_path, weights) -> dict:
    from .runners import GraphDefRunner, _tensorflow
    from .verify import load_inputs

    tf = _tensorflow()
    runner = GraphDefRunner(model)
    feeds = load_inputs(inputs_path, runner.inputs)
    weight_names = {w.name for w in weights}
    consts = [node for node in runner._graph_def.node
              if node.op == "Const" and node.attr["dtype"].type in _FLOAT_TYPES and node.name in weight_names]
    if not consts:
        raise GpucompressError(f"importance from data: {model.source} has no float Const among its weights")
    values = [tf.make_ndarray(node.attr["value"].tensor) for node in consts]
    input_names = [spec.name for spec in runner.inputs]
    graph_def, outputs = runner._graph_def, runner.outputs

    @tf.autograph.experimental.do_not_convert  # plain graph building: nothing for AutoGraph to convert
    def imported(*tensors):
        mapping = {f"{name}:0": tensor for name, tensor in zip(input_names, tensors)}
        mapping.update({f"{node.name}:0": tensor for node, tensor in zip(consts, tensors[len(input_names):])})
        return tf.compat.v1.import_graph_def(graph_def, input_map=mapping,
                                             return_elements=[f"{o}:0" for o in outputs], name="")

    specs = [tf.TensorSpec(None if s.shape is None else [None, *s.shape[1:]] if s.shape else [],
                           tf.as_dtype(s.dtype)) for s in runner.inputs]
    specs += [tf.TensorSpec(value.shape, tf.as_dtype(value.dtype)) for value in values]
    try:
        function = tf.compat.v1.wrap_function(imported, specs)
    except (ValueError, TypeError, tf.errors.OpError) as error:
        raise GpucompressError(f"importance from data: the graph cannot be imported ({_first_line(error)})") from None
    n = _samples(feeds)

    constants = [tf.constant(value) for value in values]

    @tf.function(reduce_retracing=True)
    def step(arrays):
        with tf.GradientTape() as tape:
            for constant in constants:
                tape.watch(constant)
            energy = _energy(tf, function(*arrays, *constants))
        return tape.gradient(energy, constants)

    def gradients_of(sample):
        return step([tf.constant(feeds[name][sample:sample + 1]) for name in input_names])

    totals = _run_samples(gradients_of, n, len(consts))
    return {node.name: total for node, total in zip(consts, totals) if total is not None}


def _run_samples(gradients_of, n: int, n_tensors: int) -> list:
    """Return per tensor the mean over samples of the squared gradients (None where no gradient reached it)."""
    import tensorflow as tf

    if n < 1:
        raise OptionsError("importance_from_data (--importance-from-data): the inputs hold no sample")
    if n > MAX_SAMPLES:
        log.warning("importance from data: using the first %d of %d samples", MAX_SAMPLES, n)
        n = MAX_SAMPLES
    totals: list = [None] * n_tensors
    for sample in range(n):
        try:
            gradients = gradients_of(sample)
        except (tf.errors.OpError, ValueError, TypeError, LookupError) as error:
            raise GpucompressError(f"importance from data: computing gradients failed ({_first_line(error)})") from None
        _accumulate(totals, gradients)
    return [None if total is None else total / n for total in totals]


def importance_from_data(model, inputs_path: str | os.PathLike) -> dict:
    """Return {weight name: float64 mean squared gradient of the outputs' energy} of a read model.

    model: from models.read_model (a Keras .keras/.h5 or frozen GraphDef);
    inputs_path: an .npz with one array per model input (first dimension:
    samples; verify.load_inputs reads it, never unpickling). Weights that no
    gradient reaches are left out (clustered unweighted). Raises OptionsError
    for a format it cannot differentiate, InputError/FormatError for unusable
    inputs, GpucompressError when TensorFlow fails.
    """
    weights = model.weights()
    if model.format_name in ("keras", "h5"):
        return _keras_importance(model, inputs_path, weights)
    if model.format_name == "graphdef":
        return _graphdef_importance(model, inputs_path, weights)
    raise OptionsError(f"importance_from_data (--importance-from-data) cannot compute gradients of "
                       f"{model.format_name} models (it runs Keras .keras/.h5 files and frozen GraphDefs); "
                       "compute importances yourself and pass --importance FILE.npz")
