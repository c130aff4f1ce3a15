"""A batch of weight segments laid out for the clustering kernels (see fixedpoint.py)."""
from __future__ import annotations

from dataclasses import dataclass

from .fixedpoint import (
    MAX_SEGMENTS,
    array_namespace,
    key_values,
    make_keys,
    prefix_sums,
    quantize,
)


@dataclass(frozen=True)
class SegmentBatch:
    """Sorted fixed-point segments, all arrays on one device.

    offsets: int64 (S + 1,), segment s holds sorted positions [offsets[s], offsets[s+1]).
    exponents: int64 (S,), the fixed-point scale of each segment.
    keys: int64 (N,), sorted search keys (segment index in the high bits).
    prefix: uint64 (N + 1,), prefix sums of the sorted q.
    segment_of_value: int64 (N,), segment index of each value in input order.
    input_keys: int64 (N,), keys of the values in input order (for labelling).
    """

    offsets: object
    exponents: object
    keys: object
    prefix: object
    segment_of_value: object
    input_keys: object

    @property
    def n_segments(self) -> int:
        return int(self.exponents.shape[0])

    def sizes(self):
        """Return the int64 number of values of each segment."""
        return self.offsets[1:] - self.offsets[:-1]

    def sorted_q(self):
        """Return the int64 fixed-point values in sorted order."""
        return key_values(self.keys)


def build_batch(values, sizes, exponents) -> SegmentBatch:
    """Quantize and sort a flat batch of segments.

    values: float64 (N,) finite values, segments one after the other, on the
    target device. sizes: int64 (S,) segment lengths (>= 1) and exponents: int64
    (S,) scales from segment_exponents, both on the same device. Returns a
    SegmentBatch.
    """
    xp = array_namespace(values)
    n_segments = int(sizes.shape[0])
    if n_segments > MAX_SEGMENTS:
        raise ValueError(f"n_segments={n_segments} should be <= {MAX_SEGMENTS}.")
    offsets = xp.zeros(n_segments + 1, dtype=xp.int64)
    xp.cumsum(sizes, out=offsets[1:])
    # searchsorted rather than repeat: cupy.repeat takes no array of counts.
    segment_of_value = xp.searchsorted(
        offsets[1:], xp.arange(values.shape[0], dtype=xp.int64), side="right"
    ).astype(xp.int64)
    q = quantize(values, exponents[segment_of_value])
    input_keys = make_keys(q, segment_of_value)
    keys = xp.sort(input_keys)
    prefix = prefix_sums(key_values(keys))
    return SegmentBatch(offsets, exponents, keys, prefix, segment_of_value, input_keys)
