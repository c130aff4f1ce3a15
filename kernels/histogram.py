"""Integer weights by level: per-segment histograms, lookups and error sums (int8, int16 buffers).

Why: an int8 tensor holds at most 256 distinct values. Its clustering (the
exact DP on its distinct values, then Lloyd) depends only on how many times
each value occurs in each segment, so a histogram, one O(n) pass, replaces
the sort of every value; the labels then come from a table with one entry
per level, one lookup per value. A level j of a segment stands for the value
low + j (low: the dtype's least value, -128 for int8).

Each function is array code (NumPy, or CuPy for arrays on a device) with a
compiled CPU twin (compiled.segment_histograms ...) giving the same numbers:
counts and lookups are integers, identical by definition. segment_error_sums
is the exception: its two versions repeat the two versions of the float
tensors' error sums (compiled.error_sums' four running sums, numpy.dot),
each bit for bit, which differ from each other in rounding as those do.
"""
from __future__ import annotations

import numpy

from . import compiled
from .fixedpoint import array_namespace
from .segments import segment_indices


def level_range(dtype) -> tuple[int, int]:
    """Return (low, n_levels) of an int8 or int16 dtype: its least value and how many values it has."""
    limits = numpy.iinfo(numpy.dtype(dtype))
    return int(limits.min), int(limits.max) - int(limits.min) + 1


def _levels(values, offsets):
    """Return (segment index int64 (N,), level int64 (N,)) of int8/int16 values (the array code's keys)."""
    xp = array_namespace(values)
    low, _ = level_range(values.dtype)
    return segment_indices(xp.asarray(offsets, dtype=xp.int64)), values.astype(xp.int64) - low


def segment_histograms(values, offsets):
    """Return int64 (S, L): how many values low + j segment s holds, L the dtype's number of values.

    values: int8 or int16 (N,), segment s at [offsets[s], offsets[s + 1]) (int64 (S + 1,), from 0 to N).
    """
    xp = array_namespace(values)
    low, n_levels = level_range(values.dtype)
    n_segments = int(offsets.shape[0]) - 1
    if xp is numpy and compiled.available():
        return compiled.segment_histograms(values, offsets, low, n_levels)
    segment, level = _levels(values, offsets)
    counts = xp.bincount(segment * n_levels + level, minlength=n_segments * n_levels)
    return counts.astype(xp.int64).reshape(n_segments, n_levels)


def segment_lookup(values, offsets, table):
    """Return table[s, v - low] for each value v of segment s, in input order, in table's dtype.

    values, offsets: as segment_histograms; table: (S, L) of an unsigned or int32/int64 dtype.
    """
    xp = array_namespace(values)
    low, _ = level_range(values.dtype)
    if xp is numpy and compiled.available():
        return compiled.segment_lookup(values, offsets, low, table)
    segment, level = _levels(values, offsets)
    return table[segment, level]


def segment_error_sums(values, offsets, errors) -> tuple[float, float]:
    """Return float64 (sum of errors[s, v - low]**2, sum of v**2) over the values v of segments s.

    errors: float64 (S, L), the error of each level against its centroid.
    The compiled version adds in compiled.error_sums' order, this one with
    numpy.dot: each gives the bits its float twin gives on the values as
    floats (see the module docstring). Host arrays.
    """
    if compiled.available():
        return compiled.segment_error_sums(values, offsets, level_range(values.dtype)[0], errors)
    segment, level = _levels(values, offsets)
    gathered = errors[segment, level]
    wide = values.astype(numpy.float64)
    return float(numpy.dot(gathered, gathered)), float(numpy.dot(wide, wide))
