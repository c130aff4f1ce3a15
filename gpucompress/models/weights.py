"""The record every model format hands to the engine: one named weight tensor."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy

# What a weight is in its model, which the selection rules read.
ROLE_CONSTANT = "constant"  # a Const tensor of a frozen graph
ROLE_VARIABLE = "variable"  # a model variable (SavedModel checkpoint, Keras weights)
ROLE_OPTIMIZER = "optimizer"  # optimizer state (slots, iteration counter): never clustered


@dataclass(frozen=True)
class Weight:
    """One weight tensor of a model, read lazily.

    name: unique within the model (a node name, or `function::node` for a node
    inside the graph's function library). dtype: NumPy-style name ("float32",
    "bfloat16", "int32", "string", ...). shape: the tensor's shape. floating:
    whether it is a floating dtype (the only kind ever clustered).
    max_distinct: an upper bound on its distinct values known without decoding
    (the number of values it stores). load: returns the values as a new NumPy
    array of that shape and dtype (floating tensors only), shared with no one
    but possibly read-only (a GraphDef's tensor_content loads as a view of
    one copy of its bytes).
    role: ROLE_CONSTANT, ROLE_VARIABLE or ROLE_OPTIMIZER. aliases: other names
    the weight answers to in `whitelisted` (a SavedModel variable's own name,
    e.g. "dense/kernel", next to its checkpoint path). layer_kind: the kind of
    layer that uses it, a key of channels.KIND_AXES ("conv", "depthwise",
    "tflite_conv" ...), None when the reader cannot tell: it picks the
    output-channel axis of per-channel codebooks. integer_levels: for integer
    weights read as floats (int8/int16 TFLite buffers), how many distinct values
    their dtype allows (256, 65536); None otherwise. With max_distinct it bounds
    the distinct values, which lets the optimal method's DP run exactly on them.
    load_integers: for those weights, returns the stored integers (a new
    int8/int16 array of the shape, whose values load() gives as floats), which
    the clustering histograms instead of sorting the floats; None otherwise.
    channel_scales: for those weights when their integers dequantize with a
    scale per channel that is not the same for all (TFLite per-channel
    quantization): returns (axis, float64 scales along it, finite and > 0).
    The dequantized error of a value is its integer error times its scale,
    so the clustering weighs each squared integer error by the scale
    squared. None otherwise (one scale: the integer error is the
    dequantized error up to a constant factor).
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    floating: bool
    max_distinct: int
    load: Callable[[], numpy.ndarray]
    role: str = ROLE_CONSTANT
    aliases: tuple[str, ...] = ()
    layer_kind: str | None = None
    integer_levels: int | None = None
    load_integers: Callable[[], numpy.ndarray] | None = None
    channel_scales: Callable[[], tuple[int, numpy.ndarray]] | None = None

    @property
    def distinct_bound(self) -> int:
        """Return the least known upper bound on the weight's distinct values."""
        return self.max_distinct if self.integer_levels is None else min(self.max_distinct, self.integer_levels)

    @property
    def size(self) -> int:
        """Return the number of values (the product of the shape)."""
        return int(numpy.prod(self.shape, dtype=numpy.int64))


def variable_names(path: str) -> tuple[str, ...]:
    """Return the names a variable answers to in `whitelisted`: its own path, and, for a path of
    three parts or more, that path without its first part (the model's name):
    "sequential/dense/kernel" -> also "dense/kernel" ("dense/kernel" never becomes "kernel").

    A trailing ":0" (TensorFlow 1 variable names) is dropped. Returns unique, non-empty names.
    """
    path = path[:-2] if path.endswith(":0") else path
    names = [path]
    if path.count("/") >= 2:
        names.append(path.split("/", 1)[1])
    return tuple(dict.fromkeys(name for name in names if name))
