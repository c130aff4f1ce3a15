"""A batch of weight segments laid out for the clustering kernels (see fixedpoint.py)."""
from __future__ import annotations

import os
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
    values: float32 or float64 (N,), the values in input order (for labelling).
    """

    offsets: object
    exponents: object
    keys: object
    prefix: object
    values: object

    @property
    def n_segments(self) -> int:
        return int(self.exponents.shape[0])

    def sizes(self):
        """Return the int64 number of values of each segment."""
        return self.offsets[1:] - self.offsets[:-1]

    def sorted_q(self):
        """Return the int64 fixed-point values in sorted order."""
        return key_values(self.keys)

    def segment_of_value(self):
        """Return the int64 (N,) segment index of each value in input order."""
        return segment_indices(self.offsets)

    def input_keys(self):
        """Return the int64 (N,) keys of the values in input order (made again on each call)."""
        xp = array_namespace(self.keys)
        segment = self.segment_of_value()
        return make_keys(quantize(xp.asarray(self.values, dtype=xp.float64), self.exponents[segment]), segment)


def segment_indices(offsets):
    """Return int64 (N,) the segment index of each position, for int64 offsets (S + 1,) on the device."""
    xp = array_namespace(offsets)
    sizes = offsets[1:] - offsets[:-1]
    if xp is numpy:
        return numpy.repeat(numpy.arange(sizes.shape[0], dtype=numpy.int64), sizes)
    # cupy.repeat takes no array of counts
    n_values = int(offsets[-1])
    return xp.searchsorted(offsets[1:], xp.arange(n_values, dtype=xp.int64), side="right").astype(xp.int64)


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


# Segments of at least this many values are sorted as two halves on two
# threads (merged while quantizing), so that a lone large segment uses two cores.
SPLIT_SORT_VALUES = 1 << 16


def _sort_tasks(offsets, n_threads: int):
    """Return (tasks, middles): lists of (start, end) runs to sort, one list a thread task, and where
    each segment's second run starts (its end when it has one run).

    Small segments share a task (a thread per tiny sort costs more than it saves).
    """
    tasks, pending, pending_values = [], [], 0
    middles = offsets[1:].copy()
    for segment, (start, end) in enumerate(zip(offsets[:-1].tolist(), offsets[1:].tolist())):
        if n_threads > 1 and end - start >= SPLIT_SORT_VALUES:
            middle = (start + end) // 2
            middles[segment] = middle
            tasks += [[(start, middle)], [(middle, end)]]
            continue
        pending.append((start, end))
        pending_values += end - start
        if pending_values >= SORT_TASK_VALUES:
            tasks.append(pending)
            pending, pending_values = [], 0
    if pending:
        tasks.append(pending)
    return tasks, middles


def _usable_cores() -> int:
    # The cores this process may run on (taskset, cgroups' cpusets), not the machine's.
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def sort_runs(values, offsets):
    """Return (sorted_values, middles): each segment of NumPy values sorted as one or two ascending runs.

    values: float (N,), segments one after the other; offsets: int64 (S + 1,).
    sorted_values is a new array (values is not modified) in which segment s
    holds the ascending runs [offsets[s], middles[s]) and [middles[s],
    offsets[s + 1]) (int64 middles (S,); the second run is empty below
    SPLIT_SORT_VALUES). The runs are sorted on parallel threads: NumPy's sort
    releases the GIL. Sorting values, not int64 keys, is the cheap sort
    (float32 sorts ~2x faster), and exact: quantizing is monotone. NaN sorts last.
    """
    offsets = numpy.asarray(offsets, dtype=numpy.int64)
    out = numpy.empty_like(values)
    n_threads = _usable_cores()
    tasks, middles = _sort_tasks(offsets, n_threads)

    def sort_task(runs):
        for start, end in runs:
            out[start:end] = values[start:end]
            out[start:end].sort()

    if len(tasks) <= 1:
        for runs in tasks:
            sort_task(runs)
    else:
        with ThreadPoolExecutor(min(n_threads, len(tasks))) as pool:
            list(pool.map(sort_task, tasks))
    return out, middles


def run_extremes(sorted_values, offsets, middles):
    """Return float64 (low, high) (S,): the least and greatest value of each segment of sort_runs' output.

    A NaN anywhere makes high NaN (NaN sorts last in its run); an infinity
    shows as low = -inf or high = inf.
    """
    starts, ends = offsets[:-1], offsets[1:]
    first = sorted_values[starts].astype(numpy.float64)
    last = sorted_values[ends - 1].astype(numpy.float64)
    split = middles < ends
    # A second run starts at middles and the first ends just before it.
    low = numpy.where(split, numpy.minimum(first, sorted_values[numpy.minimum(middles, ends - 1)]), first)
    high = numpy.where(split, numpy.maximum(last, sorted_values[numpy.maximum(middles - 1, starts)]), last)
    return low, high


def batch_from_runs(values, sorted_values, offsets, middles, exponents) -> SegmentBatch:
    """Return the SegmentBatch of NumPy segments already sorted by sort_runs (compiled CPU path).

    values: float32 or float64 (N,) finite, input order (kept for labelling);
    sorted_values, middles: sort_runs(values, offsets); exponents: int64 (S,).
    The keys and prefix sums are those build_batch's array code makes.
    """
    offsets = numpy.asarray(offsets, dtype=numpy.int64)
    exponents = numpy.asarray(exponents, dtype=numpy.int64)
    keys, prefix = compiled.merged_keys_and_prefix(sorted_values, offsets, middles, exponents, KEY_SHIFT, KEY_BIAS)
    return SegmentBatch(offsets, exponents, keys, prefix, values)


def build_batch(values, sizes, exponents) -> SegmentBatch:
    """Quantize and sort a flat batch of segments.

    values: float32 or float64 (N,) finite values, segments one after the
    other, on the target device. sizes: int64 (S,) segment lengths (>= 1) and
    exponents: int64 (S,) scales from segment_exponents, both on the same
    device. Returns a SegmentBatch.
    """
    xp = array_namespace(values)
    n_segments = int(sizes.shape[0])
    if n_segments > MAX_SEGMENTS:
        raise ValueError(f"n_segments={n_segments} should be <= {MAX_SEGMENTS}.")
    offsets = xp.zeros(n_segments + 1, dtype=xp.int64)
    xp.cumsum(sizes, out=offsets[1:])
    if xp is numpy and compiled.available():
        sorted_values, middles = sort_runs(values, offsets)
        return batch_from_runs(values, sorted_values, offsets, middles, exponents)
    segment_of_value = segment_indices(offsets)
    input_keys = make_keys(quantize(xp.asarray(values, dtype=xp.float64), exponents[segment_of_value]),
                           segment_of_value)
    keys = sort_segments(input_keys, offsets) if xp is numpy else xp.sort(input_keys)
    prefix = prefix_sums(key_values(keys))
    return SegmentBatch(offsets, exponents, keys, prefix, values)
