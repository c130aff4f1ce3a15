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
    WEIGHT_SHIFT,
    range_weights,
    weighted_prefix_sums,
)


@dataclass(frozen=True)
class SegmentBatch:
    """Sorted fixed-point segments, all arrays on one device.

    offsets: int64 (S + 1,), segment s holds sorted positions [offsets[s], offsets[s+1]).
    exponents: int64 (S,), the fixed-point scale of each segment.
    keys: int64 (N,), sorted search keys (segment index in the high bits).
    prefix: uint64 (N + 1,), prefix sums of the sorted q.
    values: float32 or float64 (N,), the values in input order (for labelling).
    weight_prefix: None (every value weighs 1), or int64 (N + 1,) prefix sums of
    the integer weights in sorted order; prefix then holds the sums of w * q.
    distinct_rows: None, or host bool (S,): segments whose DP bins are their
    distinct values (optimal.exact_rows), which makes the DP exact on them.
    """

    offsets: object
    exponents: object
    keys: object
    prefix: object
    values: object
    weight_prefix: object = None
    distinct_rows: object = None

    @property
    def n_segments(self) -> int:
        return int(self.exponents.shape[0])

    def sizes(self):
        """Return the int64 number of values of each segment."""
        return self.offsets[1:] - self.offsets[:-1]

    def range_weights(self, starts, ends):
        """Return int64 total weights of sorted positions [starts, ends) (their counts when unweighted)."""
        return range_weights(self.weight_prefix, starts, ends)

    def sorted_q(self):
        """Return the int64 fixed-point values in sorted order."""
        return key_values(self.keys)

    def segment_of_value(self):
        """Return the int64 (N,) segment index of each value in input order."""
        return segment_indices(self.offsets)

    def input_keys(self, segment=None):
        """Return the int64 (N,) keys of the values in input order (made again on each call).

        segment: segment_of_value(), when the caller has it already (on CuPy it
        costs a searchsorted over all N values).
        """
        xp = array_namespace(self.keys)
        if segment is None:
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
    list(_sort_pool().map(lambda pair: out[pair[0]:pair[1]].sort(), zip(bounds[:-1], bounds[1:])))
    return out


# Segments of at least this many values are split at a pivot into two parts
# sorted on two threads, so that a lone large segment uses two cores.
SPLIT_SORT_VALUES = 1 << 16
# About this many values are sampled to pick the pivot (their median).
PIVOT_SAMPLE = 1024


def _usable_cores() -> int:
    # The cores this process may run on (taskset, cgroups' cpusets), not the machine's.
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


_pool = {"pid": None, "executor": None}


def _sort_pool() -> ThreadPoolExecutor:
    # One pool for the process: starting threads for every batch costs ~1 ms
    # each time, as much as sorting 100 K values. A forked child (whose
    # copy of the pool has no threads) makes its own.
    if _pool["pid"] != os.getpid():
        _pool["executor"] = ThreadPoolExecutor(_usable_cores(), thread_name_prefix="gpucompress-sort")
        _pool["pid"] = os.getpid()
    return _pool["executor"]


def _sort_task(values, out, runs, copy: bool) -> None:
    # runs: (start, end, size), [start, end) holding segments of size values each.
    for start, end, size in runs:
        if copy:
            out[start:end] = values[start:end]
        if size == 0:
            continue
        # One sort call per run of equal segments (a tensor's channels): NumPy
        # sorts each row with the 1-D sort, so the bits are the same.
        out[start:end].reshape(-1, size).sort(axis=1)


def _pivot(values):
    sample = numpy.sort(values[:: max(1, values.shape[0] // PIVOT_SAMPLE)])
    return sample[sample.shape[0] // 2]


def sort_values(values, offsets):
    """Return a copy of NumPy values (N,) with each segment [offsets[s], offsets[s + 1]) sorted ascending.

    Compiled CPU path (needs the built extension); values is not modified. Sorting the
    values in their own precision, not int64 keys, is the cheap sort (float32
    sorts ~2x faster) and exact: quantizing is monotone. NaN sorts last. NumPy
    sorts release the GIL, so segments sort on parallel threads; a segment of
    SPLIT_SORT_VALUES or more is first split at a sampled median (compiled.
    partition), and its two parts sort on two threads.
    """
    offsets = numpy.asarray(offsets, dtype=numpy.int64)
    out = numpy.empty_like(values)
    split = _usable_cores() > 1
    futures, pending, pending_values = [], [], 0
    for start, end in zip(offsets[:-1].tolist(), offsets[1:].tolist()):
        size = end - start
        if split and size >= SPLIT_SORT_VALUES:
            segment = values[start:end]
            middle = start + compiled.partition(segment, _pivot(segment), out[start:end])
            for part in ((start, middle), (middle, end)):
                futures.append(_sort_pool().submit(_sort_task, values, out, [(*part, part[1] - part[0])], False))
            continue
        if size == 0:
            continue
        if pending and pending[-1][2] == size and pending[-1][1] == start:
            pending[-1] = (pending[-1][0], end, size)  # one more segment of the run
        else:
            pending.append((start, end, size))
        pending_values += size
        if pending_values >= SORT_TASK_VALUES:
            futures.append(_sort_pool().submit(_sort_task, values, out, pending, True))
            pending, pending_values = [], 0
    _sort_task(values, out, pending, True)  # small leftovers: the caller's thread
    for future in futures:
        future.result()
    return out


def segment_extremes(sorted_values, offsets):
    """Return float64 (low, high) (S,): the first and last value of each sorted segment.

    After sort_values these are each segment's least and greatest value; a
    NaN anywhere makes high NaN, an infinity shows as low = -inf or high = inf.
    """
    return (sorted_values[offsets[:-1]].astype(numpy.float64),
            sorted_values[offsets[1:] - 1].astype(numpy.float64))


def batch_from_sorted(values, sorted_values, offsets, exponents) -> SegmentBatch:
    """Return the SegmentBatch of NumPy segments already sorted by sort_values (compiled CPU path).

    values: float32 or float64 (N,) finite, input order (kept for labelling);
    sorted_values: sort_values(values, offsets); offsets: int64 (S + 1,);
    exponents: int64 (S,). The keys and prefix sums are those build_batch's
    array code makes.
    """
    offsets = numpy.asarray(offsets, dtype=numpy.int64)
    exponents = numpy.asarray(exponents, dtype=numpy.int64)
    keys, prefix = compiled.sorted_keys_and_prefix(sorted_values, offsets, exponents, KEY_SHIFT, KEY_BIAS)
    return SegmentBatch(offsets, exponents, keys, prefix, values)


def build_batch(values, sizes, exponents, weights=None) -> SegmentBatch:
    """Quantize and sort a flat batch of segments.

    values: float32 or float64 (N,) finite values, segments one after the
    other, on the target device. sizes: int64 (S,) segment lengths (>= 1) and
    exponents: int64 (S,) scales from segment_exponents, both on the same
    device. weights: None, or int64 (N,) integer weights in input order
    (fixedpoint.quantize_weights; exponents then from each segment's total
    weight). Returns a SegmentBatch.
    """
    xp = array_namespace(values)
    n_segments = int(sizes.shape[0])
    if n_segments > MAX_SEGMENTS:
        raise ValueError(f"n_segments={n_segments} should be <= {MAX_SEGMENTS}.")
    offsets = xp.zeros(n_segments + 1, dtype=xp.int64)
    xp.cumsum(sizes, out=offsets[1:])
    if weights is not None:
        return _weighted_batch(values, offsets, exponents, weights)
    if xp is numpy and compiled.available():
        return batch_from_sorted(values, sort_values(values, offsets), offsets, exponents)
    segment_of_value = segment_indices(offsets)
    input_keys = make_keys(quantize(xp.asarray(values, dtype=xp.float64), exponents[segment_of_value]),
                           segment_of_value)
    keys = sort_segments(input_keys, offsets) if xp is numpy else xp.sort(input_keys)
    prefix = prefix_sums(key_values(keys))
    return SegmentBatch(offsets, exponents, keys, prefix, values)


def _weighted_batch(values, offsets, exponents, weights) -> SegmentBatch:
    """Return the SegmentBatch of weighted segments: keys sorted with their weights, weighted prefix sums.

    The same sequence on every path (NumPy array code, the compiled twins
    compiled.pack_weighted / unpack_weighted around the same sort, CuPy). Equal keys
    are ordered by weight, so the sequence of (key, weight) pairs, and every
    bin sum that splits a run of equal values, is the same on every device
    and with any sort algorithm. On NumPy each segment sorts one int64 per
    value, (q + KEY_BIAS) << WEIGHT_SHIFT | w (q + KEY_BIAS < 2**42 and
    w <= 2**16: 59 bits), on parallel threads: one plain sort, no argsort and
    no gathers. CuPy sorts by weight, then stably by key.
    """
    xp = array_namespace(values)
    if xp is numpy and compiled.available():
        # Compiled twins of the packing before the sort and of the keys and sums after it.
        packed = compiled.pack_weighted(values, offsets, exponents, weights, KEY_BIAS, WEIGHT_SHIFT)
        if packed is not None:
            _sort_each_segment(packed, offsets)
            keys, prefix, weight_prefix = compiled.unpack_weighted(packed, offsets, KEY_SHIFT, KEY_BIAS, WEIGHT_SHIFT)
            return SegmentBatch(offsets, exponents, keys, prefix, values, weight_prefix)
    segment_of_value = segment_indices(offsets)
    q = quantize(xp.asarray(values, dtype=xp.float64), exponents[segment_of_value])
    weights = xp.asarray(weights, dtype=xp.int64)
    if xp is numpy:
        packed = ((q + KEY_BIAS) << WEIGHT_SHIFT) | weights
        del q
        _sort_each_segment(packed, offsets)
        keys = (segment_of_value << KEY_SHIFT) + (packed >> WEIGHT_SHIFT)
        sorted_weights = packed & ((1 << WEIGHT_SHIFT) - 1)
        del packed
    else:
        keys, sorted_weights = sort_by_key_then_weight(make_keys(q, segment_of_value), weights)
    del segment_of_value
    prefix, weight_prefix = weighted_prefix_sums(key_values(keys), sorted_weights)
    return SegmentBatch(offsets, exponents, keys, prefix, values, weight_prefix)


def sort_by_key_then_weight(keys, weights):
    """Return (keys, weights) int64 (N,) sorted by key, equal keys by weight (the CuPy path of _weighted_batch).

    Two stable argsorts (CuPy's sorts are always stable; any array module):
    by weight, then by key. Equal (key, weight) pairs are interchangeable.
    """
    by_weight = _stable_argsort(weights)
    order = by_weight[_stable_argsort(keys[by_weight])]
    return keys[order], weights[order]


def _stable_argsort(array):
    # CuPy's argsort is always stable and takes no other kind; NumPy's must be asked.
    xp = array_namespace(array)
    return numpy.argsort(array, kind="stable") if xp is numpy else xp.argsort(array)


def _sort_each_segment(array, offsets) -> None:
    """Sort each segment [offsets[s], offsets[s + 1]) of a NumPy array in place, on parallel threads."""
    tasks, pending, pending_values = [], [], 0
    for start, end in zip(offsets[:-1].tolist(), offsets[1:].tolist()):
        pending.append((start, end))
        pending_values += end - start
        if pending_values >= SORT_TASK_VALUES:
            tasks.append(pending)
            pending, pending_values = [], 0
    if pending:
        tasks.append(pending)

    def run(segments):
        for start, end in segments:
            array[start:end].sort()

    if len(tasks) == 1:
        run(tasks[0])
        return
    list(_sort_pool().map(run, tasks))
