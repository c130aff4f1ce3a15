"""Convert TensorFlow TensorProto messages to NumPy arrays and back, without TensorFlow.

Floating tensors may be stored two ways and both round-trip in their own form:
raw little-endian bytes in `tensor_content`, or a repeated `*_val` field whose
last entry TensorFlow repeats to fill the shape (one entry for a constant fill).
half and bfloat16 values sit in `half_val` as int32 holding the 16-bit pattern.
"""
from __future__ import annotations

import numpy

from ..errors import FormatError

# TensorFlow DataType enum values (types.proto) of the floating dtypes we cluster.
DT_FLOAT, DT_DOUBLE, DT_BFLOAT16, DT_HALF = 1, 2, 14, 19

# Largest tensor we will materialize: 2**31 values (8 GiB as float32).
MAX_TENSOR_VALUES = 1 << 31


def _bfloat16():
    import ml_dtypes  # a TensorFlow dependency; only needed for bfloat16 tensors

    return numpy.dtype(ml_dtypes.bfloat16)


def float_numpy_dtype(dtype_enum: int) -> numpy.dtype | None:
    """Return the NumPy dtype of a floating TensorFlow dtype enum, None for any other dtype."""
    if dtype_enum == DT_FLOAT:
        return numpy.dtype("<f4")
    if dtype_enum == DT_DOUBLE:
        return numpy.dtype("<f8")
    if dtype_enum == DT_HALF:
        return numpy.dtype("<f2")
    if dtype_enum == DT_BFLOAT16:
        return _bfloat16()
    return None


def _value_field(dtype_enum: int) -> str:
    return {DT_FLOAT: "float_val", DT_DOUBLE: "double_val"}.get(dtype_enum, "half_val")


def tensor_shape(tensor) -> tuple[int, ...]:
    """Return the shape of a TensorProto as a tuple; raises FormatError on unknown dims."""
    shape = tuple(int(d.size) for d in tensor.tensor_shape.dim)
    if any(size < 0 for size in shape):
        raise FormatError(f"constant tensor has an unknown dimension in shape {list(shape)}")
    return shape


def stored_value_count(tensor, content_bytes: int | None = None) -> int:
    """Return how many values a floating TensorProto stores explicitly (an upper bound on its distinct values).

    content_bytes: len(tensor.tensor_content) when the caller has it (each
    read of the field is a new bytes copy of all of it, with upb). Checks the
    stored size against the shape without decoding; raises FormatError on a mismatch.
    """
    shape = tensor_shape(tensor)
    size = int(numpy.prod(shape, dtype=numpy.int64))
    if content_bytes is None:
        content_bytes = len(tensor.tensor_content)
    if content_bytes:
        itemsize = 2 if tensor.dtype in (DT_HALF, DT_BFLOAT16) else 8 if tensor.dtype == DT_DOUBLE else 4
        if content_bytes != size * itemsize:
            raise FormatError(
                f"tensor_content holds {content_bytes} bytes, shape {list(shape)} needs {size * itemsize}"
            )
        return size
    count = len(getattr(tensor, _value_field(tensor.dtype)))
    if count > size:
        raise FormatError(f"constant stores {count} values for shape {list(shape)}")
    return count


def to_numpy(tensor) -> numpy.ndarray:
    """Return the values of a floating TensorProto as a NumPy array of its shape and dtype.

    Raises FormatError when the stored bytes or values do not match the shape,
    or the tensor is larger than MAX_TENSOR_VALUES.
    """
    dtype = float_numpy_dtype(tensor.dtype)
    if dtype is None:
        raise FormatError(f"dtype enum {tensor.dtype} is not a floating dtype")
    shape = tensor_shape(tensor)
    size = int(numpy.prod(shape, dtype=numpy.int64))
    if size > MAX_TENSOR_VALUES:
        raise FormatError(f"constant tensor of {size} values exceeds the limit of {MAX_TENSOR_VALUES}")
    # One read of the field (each read copies it, upb); the array is a read-only view of that
    # copy, which nothing else holds: a second copy of every weight would cost a pass and fresh pages.
    content = tensor.tensor_content
    if content:
        if len(content) != size * dtype.itemsize:
            raise FormatError(
                f"tensor_content holds {len(content)} bytes, shape {list(shape)} needs {size * dtype.itemsize}"
            )
        return numpy.frombuffer(content, dtype=dtype).reshape(shape)
    stored = getattr(tensor, _value_field(tensor.dtype))
    if len(stored) > size:
        raise FormatError(f"constant stores {len(stored)} values for shape {list(shape)}")
    if dtype.itemsize == 2:
        values = numpy.array(stored, dtype=numpy.int32).astype(numpy.uint16).view(dtype)
    else:
        values = numpy.array(stored, dtype=dtype)
    flat = numpy.zeros(size, dtype=dtype)
    if len(values):
        flat[: len(values)] = values
        flat[len(values) :] = values[-1]
    return flat.reshape(shape)


def store_numpy(tensor, values: numpy.ndarray) -> None:
    """Write `values` (the tensor's own dtype and size) into a floating TensorProto, in place.

    Keeps the storage form: tensor_content stays raw bytes; a `*_val` field keeps
    its number of entries (values that TensorFlow repeats are equal, so they
    stay equal after clustering).
    """
    dtype = float_numpy_dtype(tensor.dtype)
    flat = numpy.ascontiguousarray(values, dtype=dtype).reshape(-1)
    if tensor.tensor_content:
        tensor.tensor_content = flat.tobytes()
        return
    field = getattr(tensor, _value_field(tensor.dtype))
    count = len(field)
    kept = flat[:count]
    if dtype.itemsize == 2:
        kept = kept.view(numpy.uint16).astype(numpy.int32)
    del field[:]
    field.extend(kept.tolist())
