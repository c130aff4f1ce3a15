"""Runners for SavedModel folders and Keras files (see runners.py for the interface).

A SavedModel runs through one of its signatures (`serving_default` unless
told otherwise), loaded with `tf.saved_model.load`; `.keras` and full `.h5`
models run through `keras.saving.load_model(compile=False)`; a weights-only
HDF5 file (`save_weights`) runs inside the model an `architecture` file
(`.keras` or full `.h5`) describes. TensorFlow and Keras are imported here
only, when a runner is made.

Anything TensorFlow or Keras cannot load (a custom layer not registered, a
corrupt file) becomes one FormatError naming the file and the loader's reason.
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy

from .errors import FormatError, GpucompressError, InputError, OptionsError
from .runners import InputSpec, _tensorflow

log = logging.getLogger(__name__)

DEFAULT_SIGNATURE = "serving_default"


def _reason(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _numpy_dtype(tf, dtype) -> str:
    dtype = tf.as_dtype(dtype)
    return "string" if dtype == tf.string else numpy.dtype(dtype.as_numpy_dtype).name


def _run_failed(error: BaseException) -> GpucompressError:
    return GpucompressError(f"running the model failed: {_reason(error)}")


class SavedModelRunner:
    """Runs a SavedModel through one signature: inputs and outputs by the signature's names."""

    format_name = "savedmodel"

    def __init__(self, model, *, signature: str | None = None, architecture=None):
        tf = self._tf = _tensorflow()
        if architecture is not None:
            raise OptionsError("architecture (--architecture) applies to weights-only HDF5 files, "
                               f"not to the SavedModel {model.source}")
        name = signature or DEFAULT_SIGNATURE
        try:
            loaded = tf.saved_model.load(str(model.directory))
        except Exception as error:  # noqa: BLE001 - TensorFlow raises many kinds; one line says why
            raise FormatError(f"{model.source}: TensorFlow cannot load this SavedModel ({_reason(error)})") from None
        self._loaded = loaded
        signatures = dict(getattr(loaded, "signatures", {}) or {})
        if name not in signatures:
            have = ", ".join(sorted(signatures)) or "none"
            raise OptionsError(f"signature={name!r} (--signature): {model.source} has no such signature "
                               f"(it has: {have})")
        self._function = signatures[name]
        _, keywords = self._function.structured_input_signature
        self._specs = {key: spec for key, spec in sorted(keywords.items())}
        self.inputs = [InputSpec(key, _numpy_dtype(tf, spec.dtype),
                                 None if spec.shape.rank is None else tuple(spec.shape.as_list()))
                       for key, spec in self._specs.items()]
        outputs = self._function.structured_outputs
        self.outputs = sorted(outputs) if isinstance(outputs, dict) else ["output_0"]

    def run(self, feeds: dict[str, numpy.ndarray]) -> dict[str, numpy.ndarray]:
        """Call the signature; feeds: one array per input name. Returns {output name: array}."""
        tf = self._tf
        try:
            results = self._function(**{key: tf.constant(feeds[key], dtype=spec.dtype)
                                        for key, spec in self._specs.items()})
        except (tf.errors.OpError, ValueError, TypeError) as error:
            raise _run_failed(error) from None
        if not isinstance(results, dict):
            results = {"output_0": results}
        return {name: numpy.asarray(results[name]) for name in self.outputs}


def _keras():
    _tensorflow()
    try:
        import keras
    except ImportError:
        raise GpucompressError("running a Keras model needs Keras: pip install 'gpucompress[tf]'") from None
    return keras


def _load_keras(keras, data: bytes, suffix: str, source: str):
    """Return the Keras model held by a file's bytes (written to a temporary file Keras can open)."""
    with tempfile.TemporaryDirectory(prefix="gpucompress-keras-") as folder:
        path = Path(folder) / f"model{suffix}"
        path.write_bytes(data)
        try:
            return keras.saving.load_model(path, compile=False)
        except Exception as error:  # noqa: BLE001 - Keras raises many kinds; one line says why
            raise FormatError(f"{source}: Keras cannot load this model ({_reason(error)})") from None


def is_weights_only(model) -> bool:
    """Return whether a read HDF5 model holds weights only (save_weights), not a whole model."""
    return model.format_name == "h5" and not model.holds_model_config()


class KerasRunner:
    """Runs a `.keras` or `.h5` model with Keras (a weights-only file inside `architecture`'s model)."""

    def __init__(self, model, *, signature: str | None = None, architecture=None):
        keras = self._keras = _keras()
        if signature is not None:
            raise OptionsError(f"signature={signature!r} (--signature) applies to SavedModel folders, "
                               f"not to {model.source}")
        suffix = ".keras" if model.format_name == "keras" else ".h5"
        if is_weights_only(model):
            if architecture is None:
                raise InputError(f"{model.source}: holds weights only (save_weights); pass the model they "
                                 "belong to with --architecture MODEL.keras")
            from .models import read_model

            shape = read_model(architecture)
            if shape.format_name not in ("keras", "h5") or is_weights_only(shape):
                raise InputError(f"{architecture}: architecture should be a .keras or whole-model .h5 file")
            self._model = _load_keras(keras, shape.to_bytes(), ".keras" if shape.format_name == "keras" else ".h5",
                                      str(architecture))
            with tempfile.TemporaryDirectory(prefix="gpucompress-keras-") as folder:
                path = Path(folder) / "model.weights.h5"
                path.write_bytes(model.to_bytes())
                try:
                    self._model.load_weights(path)
                except Exception as error:  # noqa: BLE001 - one line says why
                    raise FormatError(f"{model.source}: Keras cannot load these weights into {architecture} "
                                      f"({_reason(error)})") from None
        else:
            if architecture is not None:
                raise OptionsError(f"architecture (--architecture) applies to weights-only HDF5 files; "
                                   f"{model.source} is a whole model")
            self._model = _load_keras(keras, model.to_bytes(), suffix, model.source)
        self.inputs = self._input_specs()
        names = getattr(self._model, "output_names", None)
        self._output_names = list(names) if names else None
        self.outputs = self._output_names or ["output_0"]

    def _input_specs(self) -> list[InputSpec]:
        model = self._model
        try:
            tensors = list(model.inputs or [])
        except (AttributeError, ValueError):
            tensors = []
        if tensors:
            return [InputSpec(tensor.name, numpy.dtype(str(tensor.dtype)).name,
                              tuple(None if d is None else int(d) for d in tensor.shape)) for tensor in tensors]
        # A subclassed model has no symbolic inputs; its build config records the input shape.
        shapes = getattr(model, "_build_shapes_dict", None) or {}
        if len(shapes) == 1:
            (shape,) = shapes.values()
            if isinstance(shape, (list, tuple)) and all(d is None or isinstance(d, int) for d in shape):
                return [InputSpec("inputs", "float32", tuple(shape))]
        raise FormatError("the Keras model records no input shape to generate inputs from")

    def run(self, feeds: dict[str, numpy.ndarray]) -> dict[str, numpy.ndarray]:
        """Call the model (training=False); feeds: one array per input name. Returns {output name: array}."""
        arrays = [feeds[spec.name] for spec in self.inputs]
        try:
            result = self._model(arrays[0] if len(arrays) == 1 else arrays, training=False)
        except Exception as error:  # noqa: BLE001 - Keras raises many kinds; one line says why
            raise _run_failed(error) from None
        if isinstance(result, dict):
            return {name: numpy.asarray(result[name]) for name in self.outputs}
        results = list(result) if isinstance(result, (list, tuple)) else [result]
        names = self.outputs if len(self.outputs) == len(results) else [f"output_{i}" for i in range(len(results))]
        self.outputs = names
        return {name: numpy.asarray(value) for name, value in zip(names, results)}
