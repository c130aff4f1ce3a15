"""TensorFlow Lite Micro's compressed form of a clustered .tflite: a lookup table plus bit-packed indices.

The clustered weights (at most k <= 128 distinct values each) go through
TFLM's own compression tool (pip `tflite-micro`, `tflite_micro.compression`,
built from TFLM commit 8f6596d, package 0.dev20261023182759): one value table
per tensor (per channel for per-channel quantized integer tensors) and indices
of ceil(log2 distinct) <= ceil(log2 k) <= 7 bits,
decoded on the device by the DECODE operators the tool inserts. Only the types
TFLM's DECODE kernel handles are exported (int8, int16, float32 ...); a float16
weight (behind a DEQUANTIZE) stays as it is and is named in the result.
"""
from __future__ import annotations

import contextlib
import io
import math
import warnings
from pathlib import Path

import numpy

from ..errors import FormatError, InputError, OptionsError

TFLM_REVISION = "tflite-micro 0.dev20261023182759 (github.com/tensorflow/tflite-micro commit 8f6596d)"
MAX_TFLM_CLUSTERS = 128  # 7-bit indices: the widest TFLM's LUT metadata can state
MAX_TFLM_BITWIDTH = 7
TFLM_TYPES = ("int8", "int16", "float32")


def _compression():
    try:
        from tflite_micro.tensorflow.lite.micro.compression import compress, compressor, spec
    except ImportError:
        raise InputError("--tflm needs TFLite Micro's compression tool: pip install 'gpucompress[tflm]' "
                         "(tflite-micro)") from None
    return compress, compressor, spec


def check_tflm_clusters(n_clusters: int) -> None:
    """Raise OptionsError when k does not fit TFLM's LUT indices (1-7 bits)."""
    if n_clusters > MAX_TFLM_CLUSTERS:
        raise OptionsError(f"n_clusters={n_clusters} should be <= {MAX_TFLM_CLUSTERS} with --tflm "
                           f"(TFLM's lookup-table indices are at most {MAX_TFLM_BITWIDTH} bits).")


def index_bitwidth(distinct: int) -> int:
    """Return the bits per index for a table of `distinct` values: ceil(log2 distinct), at least 1."""
    return max(1, math.ceil(math.log2(max(distinct, 1))))


def _lut_method(spec, values: numpy.ndarray, quantization: dict | None, itemsize: int):
    """Return (TFLM LUT method, bytes it stores) for a clustered tensor.

    A per-channel quantized tensor gets one table per channel along its
    quantized dimension: TFLM's int8 kernels decode a per-tensor table of such
    a tensor wrongly (measured with its interpreter: outputs off by up to 0.07
    on the test conv model, exact with per-channel tables). Its values are then
    at most k distinct per tensor and so per channel; the index width is that
    of the channel with the most distinct values.
    """
    axis = None
    if quantization is not None and quantization["scales"].size > 1:
        axis = quantization["axis"]
    if axis is None or values.ndim < 2 or axis not in (0, values.ndim - 1):
        distinct = numpy.unique(values).size
        tables, mode = 1, spec.PerTensor()
    else:
        channels = numpy.moveaxis(values, axis, 0).reshape(values.shape[axis], -1)
        sorted_rows = numpy.sort(channels, axis=1)
        distinct = int((1 + (numpy.diff(sorted_rows, axis=1) != 0).sum(axis=1)).max())
        tables, mode = values.shape[axis], spec.PerChannel(axis=axis)
    bits = index_bitwidth(distinct)
    stored = (values.size * bits + 7) // 8 + 16 + tables * distinct * itemsize
    return spec.LookUpTableCompression(index_bitwidth=bits, mode=mode), stored


def tflm_bytes(model, names, n_clusters: int) -> tuple[bytes, dict[str, str]]:
    """Return (the TFLM-compressed model bytes, {weight name: why it was not exported}).

    model: a TFLiteModel whose named weights are clustered (at most n_clusters
    distinct values each). Each tensor using a named weight's buffer gets a
    lookup table (per channel for per-channel quantized ones, see _lut_method);
    a weight whose table and indices would not be smaller is kept as it is. Raises OptionsError for n_clusters > 128,
    FormatError when TFLM's tool refuses the model or nothing can be exported.
    """
    check_tflm_clusters(n_clusters)
    compress, compressor, spec = _compression()
    integer = model.integer_weights()
    weights = {w.name: w for w in model.weights()}
    specs, skipped = [], {}
    for name in names:
        weight = weights[name]
        dtype = integer[name]["dtype"] if name in integer else weight.dtype
        if dtype not in TFLM_TYPES:
            skipped[name] = f"{dtype} has no TFLM DECODE kernel"
            continue
        values = weight.load()
        distinct = numpy.unique(values).size
        if distinct > n_clusters:
            skipped[name] = f"{distinct} distinct values, more than k={n_clusters}"
            continue
        method, stored = _lut_method(spec, values, integer.get(name), numpy.dtype(dtype).itemsize)
        if stored >= values.size * numpy.dtype(dtype).itemsize:
            skipped[name] = f"its lookup table and indices ({stored} bytes) would not be smaller"
            continue
        for subgraph, tensor in model.tensor_locations(name):
            specs.append(spec.Tensor(subgraph=subgraph, tensor=tensor, compression=[method]))
    if not specs:
        raise FormatError("--tflm: no clustered weight TFLM can decode (" +
                          "; ".join(f"{n}: {why}" for n, why in skipped.items())[:300] + ")")
    try:
        # the tool warns on stdout/stderr; its warnings are for its own CLI
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")
            data = compress(model.to_bytes(), specs)
    except compressor.CompressionError as error:
        raise FormatError(f"--tflm: TFLM's compression tool refused the model: {str(error)[:300]}") from None
    return bytes(data), skipped


def tflm_output(path) -> Path:
    """Return the default --tflm output path: `model.tflite` -> `model.tflm.tflite`."""
    path = Path(path)
    stem = path.name[: -len(".tflite")] if path.name.lower().endswith(".tflite") else path.name
    return path.with_name(f"{stem}.tflm.tflite")


def write_tflm(model, names, n_clusters: int, path) -> int:
    """Write `tflm_bytes` of a clustered model to `path` atomically; returns the bytes written.

    Weights TFLM cannot decode are logged (warning) and stay uncompressed.
    """
    import logging
    from pathlib import Path

    from ..files import write_atomic

    data, skipped = tflm_bytes(model, names, n_clusters)
    for name, why in skipped.items():
        logging.getLogger(__name__).warning("--tflm: %s kept uncompressed (%s)", name, why)
    write_atomic(Path(path), data)
    return len(data)
