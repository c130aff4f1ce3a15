"""Channel layout of per-channel and grouped codebooks: which values share a codebook.

A tensor clustered per channel is cut along one axis (its output-channel axis,
see default_axis); grouped codebooks cover `group_size` consecutive channels
each, the last group smaller when group_size does not divide the channel count.
Each channel or group is one segment of the clustering engine; the values of a
segment are the tensor's values with that axis moved first, in C order.

Codebook row r serves channels [r * group_size, (r + 1) * group_size); a
per-channel run is group_size = 1. Everything here is array code: no Python
loop over channels.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy

from .errors import OptionsError


# Output-channel axis by layer kind, for a kernel of the given rank (negative: from the end).
# TensorFlow/Keras layouts: Conv kernels [h, w, in, out], Dense [in, out] -> last;
# DepthwiseConv2D [h, w, in, multiplier] -> axis 2: each input channel with its
# multipliers' filters (the output channels c * multiplier + m) shares a codebook;
# Conv2DTranspose [h, w, out, in] -> axis -2; Embedding [vocabulary, dim] -> last
# (one codebook per embedding dimension: per-row codebooks of a large vocabulary
# would cost more than the indices they save).
# TFLite layouts: CONV_2D and TRANSPOSE_CONV filters [out, h, w, in] and
# FULLY_CONNECTED [out, in] -> axis 0; DEPTHWISE_CONV_2D [1, h, w, out] -> last.
KIND_AXES = {
    "conv": -1, "dense": -1, "matmul": -1, "embedding": -1, "matmul_transposed": 0,
    "depthwise": 2, "transpose_conv": -2,
    "tflite_conv": 0, "tflite_fully_connected": 0, "tflite_transpose_conv": 0, "tflite_depthwise": -1,
}


def kind_axis(kind: str | None, rank: int) -> int | None:
    """Return the output-channel axis (0..rank-1) of a layer kind (a KIND_AXES key), None when unknown.

    A negative rule that falls outside a low-rank tensor (a depthwise rule on a vector) gives None.
    """
    if kind not in KIND_AXES or rank < 1:
        return None
    axis = KIND_AXES[kind]
    axis = axis + rank if axis < 0 else axis
    return axis if 0 <= axis < rank else None


def kind_from_name(name: str, rank: int) -> str | None:
    """Return the layer kind a Keras/SavedModel variable path names, or None: the rule for formats
    whose reader does not see the layer class. Keras' default layer names carry it
    ("depthwise_conv2d/depthwise_kernel", "conv2d_transpose/kernel", "embedding/embeddings");
    a layer the user renamed falls back to the last axis (stated in the report)."""
    parts = name.lower().replace(":0", "").split("/")
    if rank == 4 and any("depthwise" in part for part in parts):
        return "depthwise"
    if rank >= 3 and any("transpose" in part for part in parts) and "kernel" in parts[-1].lstrip("_"):
        return "transpose_conv"
    if rank == 2 and any(part.startswith("embedding") for part in parts):
        return "embedding"
    if rank >= 2 and parts[-1].lstrip("_").startswith("kernel"):
        return "conv" if rank > 2 else "dense"  # Keras kernels: [..., in, out]
    return None


@dataclass(frozen=True)
class Layout:
    """How one tensor is cut into codebook segments.

    axis: the channel axis (0..rank-1); channels: its length; group_size: channels per
    codebook (1 = per channel); inner: values per channel (the other axes' product).
    """

    shape: tuple[int, ...]
    axis: int
    group_size: int

    @property
    def channels(self) -> int:
        """Return the number of channels along the axis."""
        return int(self.shape[self.axis])

    @property
    def inner(self) -> int:
        """Return the number of values of one channel."""
        return int(numpy.prod(self.shape, dtype=numpy.int64)) // max(self.channels, 1)

    @property
    def rows(self) -> int:
        """Return the number of codebooks: ceil(channels / group_size)."""
        return -(-self.channels // self.group_size)

    @property
    def ragged(self) -> bool:
        """Return whether the last group is smaller than group_size."""
        return self.channels % self.group_size != 0

    def segment_sizes(self) -> numpy.ndarray:
        """Return int64 (rows,): the values of each codebook's segment, in channel-major order."""
        sizes = numpy.full(self.rows, self.group_size * self.inner, dtype=numpy.int64)
        sizes[-1] = (self.channels - (self.rows - 1) * self.group_size) * self.inner
        return sizes

    def to_channel_major(self, values: numpy.ndarray) -> numpy.ndarray:
        """Return the flat values (a tensor of `shape`) with the channel axis first, C order (a copy
        unless axis is 0)."""
        return numpy.ascontiguousarray(numpy.moveaxis(values.reshape(self.shape), self.axis, 0)).reshape(-1)

    def from_channel_major(self, flat: numpy.ndarray) -> numpy.ndarray:
        """Return flat channel-major values back in the tensor's C order (flat, new memory)."""
        moved = flat.reshape((self.channels,) + tuple(d for i, d in enumerate(self.shape) if i != self.axis))
        return numpy.ascontiguousarray(numpy.moveaxis(moved, 0, self.axis)).reshape(-1)

    def row_of_channel(self) -> numpy.ndarray:
        """Return int64 (channels,): the codebook row of each channel."""
        return numpy.arange(self.channels, dtype=numpy.int64) // self.group_size

    def expand(self, codebooks: numpy.ndarray, labels: numpy.ndarray) -> numpy.ndarray:
        """Return the tensor (its shape) of codebooks (rows, k) indexed by labels (n,) in C order."""
        moved = numpy.moveaxis(labels.reshape(self.shape), self.axis, 0).reshape(self.channels, -1)
        values = numpy.take_along_axis(codebooks[self.row_of_channel()], moved.astype(numpy.intp), axis=1)
        return numpy.moveaxis(values.reshape((self.channels,) + tuple(
            d for i, d in enumerate(self.shape) if i != self.axis)), 0, self.axis).reshape(self.shape)


def layout_for(name: str, shape: tuple[int, ...], granularity: str, group_size: int | None,
               channel_axis: int | None, default_axis: int | None) -> Layout | None:
    """Return the Layout of a tensor under the options, None for per-tensor codebooks (also for
    tensors of rank 0 or 1, whose channels would hold one value each).

    channel_axis: the user's axis (negative counts from the end) or None for
    default_axis (the layer kind's, see KIND_AXES), itself None for the last axis.
    group_size: channels per codebook of "grouped" (ignored otherwise).
    Raises OptionsError naming the tensor for an axis out of range or a group
    size below 1 or above the channel count.
    """
    if granularity == "per-tensor":
        return None
    rank = len(shape)
    if rank <= 1:
        return None  # a scalar or a vector (a bias): one value per channel would be its own codebook
    axis = channel_axis if channel_axis is not None else (default_axis if default_axis is not None else rank - 1)
    if not -rank <= axis < rank:
        raise OptionsError(f"channel_axis={axis} is out of range for tensor {name!r} of shape {list(shape)} "
                           f"(rank {rank}).")
    axis %= rank
    size = 1 if granularity == "per-channel" else group_size
    if size is None or size < 1 or size > shape[axis]:
        raise OptionsError(f"group_size={size} should be 1..{shape[axis]} for tensor {name!r} "
                           f"({shape[axis]} channels along axis {axis}).")
    return Layout(tuple(int(d) for d in shape), axis, int(size))
