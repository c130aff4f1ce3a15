"""A batch of weight segments laid out for the clustering kernels (see fixedpoint.py)."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy

from . import compiled
from .fixedpoint import (
    KEY_BIAS,
    KEY_SHIFT,
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


# Segments below this size are sorted together: a thread per tiny sort costs more than it saves.
SORT_TASK_VALUES = 1 << 18


def sort_segments(keys, offsets):
    """Return the sorted copy of NumPy keys (N,), sorting runs of segments on parallel threads.

    Segment tags dominate the keys and segments are stored one after another,
    so sorting each run of whole segments gives the global sort exactly.
    NumPy's sort releases the GIL, so the runs use every core.
    """
    out = keys.copy()
    bounds = [0]
    for end in offsets[1:].tolist():
        if end - bounds[-1] >= SORT_TASK_VALUES:
            bounds.append(end)
    if bounds[-1] != keys.shape[0]:
        bounds.append(keys.shape[0])
    if len(bounds) <= 2:
        out.sort()
        return out
    with ThreadPoolExecutor() as pool:
        list(pool.map(lambda pair: out[pair[0]:pair[1]].sort(), zip(bounds[:-1], bounds[1:])))
    return out


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
    if xp is numpy:
        segment_of_value = numpy.repeat(numpy.arange(n_segments, dtype=numpy.int64), sizes)
    else:  # cupy.repeat takes no array of counts
        segment_of_value = xp.searchsorted(
            offsets[1:], xp.arange(values.shape[0], dtype=xp.int64), side="right"
        ).astype(xp.int64)
    if xp is numpy and compiled.available():
        input_keys = compiled.quantized_keys(values, segment_of_value, exponents, KEY_SHIFT, KEY_BIAS)
    else:
        input_keys = make_keys(quantize(values, exponents[segment_of_value]), segment_of_value)
    keys = sort_segments(input_keys, offsets) if xp is numpy else xp.sort(input_keys)
    prefix = prefix_sums(key_values(keys))
    return SegmentBatch(offsets, exponents, keys, prefix, segment_of_value, input_keys)
