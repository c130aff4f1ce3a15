"""A TFLite skeleton's quantization parameters, made compressible before zstd (and made back after).

Why: once pack removes the clustered weights, what remains of an int8 model
is mostly its per-channel quantization parameters: a float32 scale and an
int64 zero point per output channel, for every weight and again for every
bias. zstd finds little in float32 scales stored one after another (30 KB of
the 4.2 M-weight MLP's 4.3 MB skeleton after zstd, 22 KB of it scales). Two
exact, invertible rewrites of those vectors' bytes (nothing else moves; every
offset and length of the flatbuffer stays as it was):

- a bias's scales, which the converter sets to input scale x weight scale
  (float32, per channel), are stored XORed with that product: zeros when it
  holds, the plain bits otherwise (any value round-trips). Only biases of
  FULLY_CONNECTED, CONV_2D and DEPTHWISE_CONV_2D with one input scale and as
  many scales as their weight, whose scales no such product reads;
- then every scale and zero-point vector of two or more entries is stored
  byte-plane by byte-plane (all first bytes, then all second bytes ...), as
  blosc's shuffle filter does: the sign and exponent bytes of similar scales,
  and the zero bytes of zero points, form long runs.

encode and decode take the skeleton's body (the file with its clustered
buffers zeroed) and rewrite it in place; decode(encode(x)) is x, byte for byte.
"""
from __future__ import annotations

import numpy

from .flatbuffer import Reader


def _vectors(data: bytearray, source: str) -> dict[tuple[int, int], dict[str, tuple[int, int]]]:
    """Return {(subgraph, tensor index): {"scales": (start, count), "zero_points": (start, count)}}."""
    found = {}
    model = Reader(bytes(data), source).root()
    for number, subgraph in enumerate(model.tables(2, "subgraph")):
        for index, tensor in enumerate(subgraph.tables(0, "tensor")):
            what = f"subgraph {number} tensor {index} quantization"
            quantization = tensor.table(4, what)
            if quantization is not None:
                found[(number, index)] = {"scales": quantization.vector(2, 4, what),
                                          "zero_points": quantization.vector(3, 8, what)}
    return found


def _bias_predictions(data: bytearray, source: str) -> dict[tuple[int, int], numpy.ndarray]:
    """Return {bias tensor: the uint32 bits of input scale x weight scale (float32)} for the biases rewritten.

    Decided from the operators and the shapes of the scale vectors, and read
    from scales that are never rewritten: the same on the plain and the
    rewritten bytes.
    """
    from .tflite import parse_structure, schema

    codes = schema().BuiltinOperator
    structure = parse_structure(bytes(data), source)
    candidates, sources = {}, set()
    for number, (tensors, operators) in enumerate(zip(structure.tensors, structure.operators)):
        for op in operators:
            if op.code not in (codes.FULLY_CONNECTED, codes.CONV_2D, codes.DEPTHWISE_CONV_2D):
                continue
            if len(op.inputs) < 3 or min(op.inputs[:3]) < 0:
                continue
            x, w, b = (tensors[i] for i in op.inputs[:3])
            sources.update({(number, x.index), (number, w.index)})
            if x.scales.size == 1 and w.scales.size >= 1 and b.scales.size == w.scales.size:
                candidates.setdefault((number, b.index), (x, w))
    predictions = {}
    for key, (x, w) in candidates.items():
        if key not in sources:
            product = (x.scales.astype("<f4") * w.scales.astype("<f4")).astype("<f4")
            predictions[key] = product.view("<u4")
    return predictions


def _shuffle(data: bytearray, start: int, count: int, itemsize: int, inverse: bool) -> None:
    if count < 2:
        return
    raw = numpy.frombuffer(bytes(data[start : start + count * itemsize]), dtype=numpy.uint8)
    shape = (itemsize, count) if inverse else (count, itemsize)
    data[start : start + count * itemsize] = raw.reshape(shape).T.tobytes()


def _xor_biases(data: bytearray, vectors, predictions) -> None:
    for key, bits in predictions.items():
        start, count = vectors[key]["scales"]
        stored = numpy.frombuffer(bytes(data[start : start + 4 * count]), dtype="<u4")
        data[start : start + 4 * count] = (stored ^ bits).tobytes()


def encode(data: bytearray, source: str = "model") -> bool:
    """Rewrite a TFLite file's quantization vectors in place (see the module docstring).

    Returns whether any byte changed (False: no vector of two or more entries, the bytes are as they were).
    Raises FormatError for bytes that are not a readable TFLite file.
    """
    vectors = _vectors(data, source)
    predictions = _bias_predictions(data, source)
    _xor_biases(data, vectors, predictions)
    changed = bool(predictions)
    for entry in vectors.values():
        for name, itemsize in (("scales", 4), ("zero_points", 8)):
            start, count = entry[name]
            _shuffle(data, start, count, itemsize, inverse=False)
            changed |= count >= 2
    return changed


def decode(data: bytearray, source: str = "skeleton") -> None:
    """Undo encode in place. Raises FormatError for bytes that are not a readable TFLite file."""
    vectors = _vectors(data, source)
    for entry in vectors.values():
        for name, itemsize in (("scales", 4), ("zero_points", 8)):
            start, count = entry[name]
            _shuffle(data, start, count, itemsize, inverse=True)
    _xor_biases(data, vectors, _bias_predictions(data, source))
