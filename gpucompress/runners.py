"""Run a model on NumPy inputs, one runner per format (the only place `verify` needs TensorFlow).

A runner has `inputs` (InputSpec list: name, NumPy dtype name, shape with None
for unknown dims), `outputs` (output names) and `run(feeds) -> {output: array}`.
RUNNERS maps a model's `format_name` to its runner class (SavedModel and
Keras runners live in model_runners.py); adding a format is one class and
one entry here.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy

from .errors import FormatError, GpucompressError, OptionsError

# Ops that are never a model's output even when nothing consumes them.
_NOT_OUTPUTS = {"Const", "Placeholder", "NoOp", "Assert", "PlaceholderWithDefault", "VarHandleOp",
                "SaveV2", "RestoreV2"}


@dataclass(frozen=True)
class InputSpec:
    """One model input: name, NumPy dtype name, shape (None where unknown; None for unknown rank)."""

    name: str
    dtype: str
    shape: tuple[int | None, ...] | None


def _tensorflow():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow as tf
    except ImportError:
        raise GpucompressError("running a model needs TensorFlow: pip install 'gpucompress[tf]'") from None
    return tf


class GraphDefRunner:
    """Runs a frozen GraphDef: inputs are its Placeholder nodes, outputs its unconsumed nodes (`:0`)."""

    format_name = "graphdef"

    def __init__(self, model):
        tf = self._tf = _tensorflow()
        self._graph_def = tf.compat.v1.GraphDef()
        self._graph_def.ParseFromString(model.to_bytes())
        nodes = list(self._graph_def.node)
        self.inputs = [self._spec(node) for node in nodes if node.op == "Placeholder"]
        consumed = {name.lstrip("^").split(":")[0] for node in nodes for name in node.input}
        self.outputs = [node.name for node in nodes if node.name not in consumed and node.op not in _NOT_OUTPUTS]
        if not self.outputs:
            raise FormatError("the GraphDef has no output node to compare")
        self._function = None

    def _spec(self, node) -> InputSpec:
        dtype = self._tf.as_dtype(node.attr["dtype"].type)
        shape = node.attr["shape"].shape
        dims = None if shape.unknown_rank else tuple(d.size if d.size >= 0 else None for d in shape.dim)
        return InputSpec(node.name, numpy.dtype(dtype.as_numpy_dtype).name if dtype != self._tf.string
                         else "string", dims)

    def _wrapped(self):
        if self._function is None:
            tf = self._tf
            names = [spec.name for spec in self.inputs]

            def imported(*tensors):
                return tf.compat.v1.import_graph_def(
                    self._graph_def, input_map={f"{n}:0": t for n, t in zip(names, tensors)},
                    return_elements=[f"{o}:0" for o in self.outputs], name="")

            signature = [tf.TensorSpec(None if s.shape is None else list(s.shape),
                                       tf.string if s.dtype == "string" else tf.as_dtype(s.dtype)) for s in self.inputs]
            self._function = tf.compat.v1.wrap_function(imported, signature)
        return self._function

    def run(self, feeds: dict[str, numpy.ndarray]) -> dict[str, numpy.ndarray]:
        """Run the graph; feeds: one array per input name. Returns {output name: array}."""
        tf = self._tf
        try:
            results = self._wrapped()(*[tf.constant(feeds[spec.name]) for spec in self.inputs])
        except (tf.errors.OpError, ValueError, TypeError) as error:
            message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise GpucompressError(f"running the model failed: {message}") from None
        return {name: numpy.asarray(result) for name, result in zip(self.outputs, results)}


def tflite_interpreter(content: bytes):
    """Return a TFLite interpreter over model bytes: LiteRT's (ai-edge-litert), else tf.lite.Interpreter.

    Raises GpucompressError when neither is installed or the model does not load.
    """
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            Interpreter = _tensorflow().lite.Interpreter
        except GpucompressError:
            raise GpucompressError("running a .tflite model needs ai-edge-litert: "
                                   "pip install 'gpucompress[tflite]'") from None
    try:
        return Interpreter(model_content=bytes(content))
    except (ValueError, RuntimeError) as error:
        raise GpucompressError(f"the TFLite interpreter cannot load the model: {str(error).strip()[:200]}") from None


class TFLiteRunner:
    """Runs a .tflite model in the TFLite interpreter: inputs and outputs from its signature-less details.

    A dimension the model leaves open (-1 in its shape signature) is None, and
    the interpreter is resized to the shapes fed.
    """

    format_name = "tflite"

    def __init__(self, model):
        self._interpreter = tflite_interpreter(model.to_bytes())
        details = self._interpreter.get_input_details()
        self._input_index = {d["name"]: d["index"] for d in details}
        self.inputs = [InputSpec(d["name"], numpy.dtype(d["dtype"]).name,
                                 tuple(None if n < 0 else int(n) for n in d.get("shape_signature", d["shape"])))
                       for d in details]
        outputs = self._interpreter.get_output_details()
        self._output_index = {d["name"]: d["index"] for d in outputs}
        self.outputs = [d["name"] for d in outputs]

    def run(self, feeds: dict[str, numpy.ndarray]) -> dict[str, numpy.ndarray]:
        """Run the model once on the whole feeds; returns {output name: array}."""
        interpreter = self._interpreter
        try:
            for name, index in self._input_index.items():
                interpreter.resize_tensor_input(index, list(feeds[name].shape))
            interpreter.allocate_tensors()
            for name, index in self._input_index.items():
                interpreter.set_tensor(index, feeds[name])
            interpreter.invoke()
        except (ValueError, RuntimeError) as error:
            raise GpucompressError(f"running the model failed: {str(error).strip().splitlines()[0][:200]}") from None
        return {name: numpy.array(interpreter.get_tensor(index)) for name, index in self._output_index.items()}


# format_name -> "module:class" (model_runners imports TensorFlow and Keras only when used).
RUNNERS = {"graphdef": "runners:GraphDefRunner", "savedmodel": "model_runners:SavedModelRunner",
           "keras": "model_runners:KerasRunner", "h5": "model_runners:KerasRunner",
           "tflite": "runners:TFLiteRunner"}


def open_runner(model, *, signature: str | None = None, architecture=None):
    """Return the runner of a read model (by its format_name).

    signature: the SavedModel signature to run (default serving_default; an
    error for other formats). architecture: the .keras/.h5 model a
    weights-only HDF5 file belongs to. Raises FormatError when no runner
    exists or the model cannot be loaded, OptionsError for an option that does
    not apply or an unknown signature (listing the ones the model has).
    """
    import importlib

    entry = RUNNERS.get(model.format_name)
    if entry is None:
        raise FormatError(f"cannot run {model.format_name} models (verify runs: {', '.join(sorted(RUNNERS))})")
    module, name = entry.split(":")
    runner = getattr(importlib.import_module(f"{__package__}.{module}"), name)
    if runner in (GraphDefRunner, TFLiteRunner):
        if signature is not None or architecture is not None:
            raise OptionsError("signature (--signature) and architecture (--architecture) do not apply to "
                               f"{model.format_name} models")
        return runner(model)
    return runner(model, signature=signature, architecture=architecture)
