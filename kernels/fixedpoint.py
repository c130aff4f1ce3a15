"""Exact fixed-point representation of weight segments, shared by every method.

Why integers: the k-means updates need sums of many values. Floating-point sums
depend on the order of the additions, and NumPy and CuPy reduce in different
orders, so float sums break CPU/GPU parity. Each segment's values are scaled by
a power of two and rounded to 64-bit integers once (`q = rint(x * 2**e)`, an
exact and order-free operation); after that every sum, mean and midpoint is
integer arithmetic, identical on any device.

A batch of segments lives in flat arrays:
- `keys`: int64, one per value, `(segment << KEY_SHIFT) | (q + KEY_BIAS)`, so one
  global sort orders segments one after the other and each segment by value,
  and one `searchsorted` answers queries for every segment at once;
- `prefix`: uint64 prefix sums of q in sorted order, with a leading 0; sums over
  a range are differences of two entries. The running total may wrap around
  2**64, but every range we take lies in one segment, whose true sum fits in
  int64, so modular arithmetic returns it exactly.
"""
from __future__ import annotations

import numpy

# q lies in (-2**MAX_VALUE_BITS, 2**MAX_VALUE_BITS); biased by KEY_BIAS it fits in
# KEY_SHIFT bits, leaving 63 - KEY_SHIFT = 22 bits for the segment index.
MAX_VALUE_BITS = 40
KEY_BIAS = 1 << MAX_VALUE_BITS
KEY_SHIFT = MAX_VALUE_BITS + 1
MAX_SEGMENTS = 1 << (63 - KEY_SHIFT)
KEY_VALUE_MASK = (1 << KEY_SHIFT) - 1


def array_namespace(*arrays):
    """Return the array module (numpy or cupy) that owns the given arrays."""
    for array in arrays:
        if type(array).__module__.startswith("cupy"):
            import cupy

            return cupy
    return numpy


def value_bits(n: int) -> int:
    """Return the fixed-point precision (bits) for a segment of n values.

    Chosen so that any sum of up to n values, doubled, fits in int64:
    n * 2**bits <= 2**61. It depends on n alone, never on the batch a segment
    travels in, so results do not depend on batching.
    """
    if n < 1:
        raise ValueError(f"n={n} should be >= 1.")
    return min(MAX_VALUE_BITS, 61 - int(n).bit_length())


def segment_exponents(max_abs: numpy.ndarray, sizes: numpy.ndarray) -> numpy.ndarray:
    """Return, per segment, the power-of-two exponent e with max|x| * 2**e < 2**value_bits(n).

    Takes host arrays: max_abs (float64, finite, >= 0) and sizes (int, >= 1), one
    entry per segment: its number of values, or for a weighted segment its
    total integer weight (quantize_weights), so that every weighted sum
    sum w*q, doubled, fits in int64 too. Returns int64 exponents. A segment
    of zeros gets exponent 0.
    """
    max_abs = numpy.asarray(max_abs, dtype=numpy.float64)
    sizes = numpy.asarray(sizes, dtype=numpy.int64)
    if sizes.size and int(sizes.min()) >= 1 and int(sizes.max()) < 1 << 52:
        # value_bits of every size at once: below 2**52 a size is an exact
        # float64 and frexp's exponent is its bit length (n = m * 2**e, 0.5 <= m < 1).
        bits = numpy.minimum(MAX_VALUE_BITS, 61 - numpy.frexp(sizes.astype(numpy.float64))[1].astype(numpy.int64))
    else:
        bits = numpy.array([value_bits(int(n)) for n in sizes], dtype=numpy.int64)
    _, exponent = numpy.frexp(max_abs)  # max_abs = m * 2**exponent, 0.5 <= m < 1
    result = bits - exponent.astype(numpy.int64)
    return numpy.where(max_abs > 0, result, 0).astype(numpy.int64)


def quantize(values, exponents):
    """Return int64 q = rint(values * 2**exponents), exact and device independent.

    values: float64 array; exponents: int64 array broadcastable to it.
    """
    xp = array_namespace(values)
    return xp.rint(xp.ldexp(values, exponents.astype(xp.int32))).astype(xp.int64)


def dequantize(q, exponents):
    """Return float64 q * 2**-exponents (exact while |q| < 2**53)."""
    xp = array_namespace(q)
    return xp.ldexp(q.astype(xp.float64), (-exponents).astype(xp.int32))


def make_keys(q, segment_index):
    """Return the int64 search keys of q (int64) for the given per-value segment indices."""
    return (segment_index.astype(q.dtype) << KEY_SHIFT) + (q + KEY_BIAS)


def key_values(keys):
    """Return q (int64) from keys made by make_keys."""
    return (keys & KEY_VALUE_MASK) - KEY_BIAS


def prefix_sums(q_sorted):
    """Return uint64 prefix sums of q_sorted (int64) with a leading zero (length n + 1).

    Wrap-around is intended: see the module docstring.
    """
    xp = array_namespace(q_sorted)
    prefix = xp.zeros(q_sorted.shape[0] + 1, dtype=xp.uint64)
    xp.cumsum(q_sorted.view(xp.uint64), out=prefix[1:])
    return prefix


def range_sums(prefix, starts, ends):
    """Return int64 sums of q over [starts, ends) from prefix sums (exact, see module docstring)."""
    xp = array_namespace(prefix)
    return (prefix[ends] - prefix[starts]).view(xp.int64)


def rounded_mean(sums, counts):
    """Return round-half-up(sums / counts) in int64 for counts > 0 (0 where counts == 0).

    Pure integer arithmetic: floor((2*s + c) / (2*c)).
    """
    xp = array_namespace(sums)
    safe = xp.maximum(counts, 1)
    return (2 * sums + safe) // (2 * safe)


# Importance weights become integers in [0, 2**WEIGHT_BITS] before any sum
# (quantize_weights): every weighted sum, mean and DP gain is then as exact
# and device independent as the unweighted ones.
WEIGHT_BITS = 16
# Integer weights fit in this many bits (w <= 2**WEIGHT_BITS): the weighted
# sort packs each weight below its fixed-point value (segments._weighted_batch).
WEIGHT_SHIFT = WEIGHT_BITS + 1


def quantize_weights(weights: numpy.ndarray) -> numpy.ndarray | None:
    """Return int64 integer weights of a segment's non-negative float weights, or None for uniform ones.

    Takes host float weights (n,), finite and >= 0 (the caller checks).
    The rule: integer weights up to 2**WEIGHT_BITS (counts) are used as
    they are; any others become w_int = rint(w * 2**WEIGHT_BITS / max(w)),
    a positive w that rounds to 0 getting 1 (a positive importance never
    drops out of the objective) and 0 staying 0. The integers are then
    divided by their greatest common divisor (the objective is scale-free).
    Resolution: 2**-16 of the largest weight. Returns None when every weight
    is 0 (no preference: uniform) or when the reduced integers are all 1
    (uniform exactly): the unweighted path, whose arithmetic equals the
    weighted one with w = 1.
    """
    weights = numpy.asarray(weights, dtype=numpy.float64).reshape(-1)
    largest = float(weights.max()) if weights.size else 0.0
    if largest <= 0.0:
        return None
    head = weights[:1024]  # a non-integer among the first values spares the full check
    if largest <= (1 << WEIGHT_BITS) and bool((head == numpy.floor(head)).all()) and bool(
            (weights == numpy.floor(weights)).all()):
        scaled = weights.astype(numpy.int64)
    else:
        # w / largest * 2**16: one correctly rounded division, an exact ldexp, a rint.
        scaled = numpy.rint(numpy.ldexp(weights / largest, WEIGHT_BITS)).astype(numpy.int64)
        scaled = numpy.where((weights > 0) & (scaled == 0), 1, scaled)
    positive = scaled[scaled > 0]
    # The gcd of some of the integers divides theirs all: 1 among the first ones is the answer.
    divisor = int(numpy.gcd.reduce(positive[:1024]))
    if divisor > 1:
        divisor = int(numpy.gcd.reduce(positive))
    if divisor > 1:
        scaled //= divisor
    if bool((scaled == 1).all()):
        return None
    return scaled


def quantize_segment_weights(weights: numpy.ndarray, sizes: numpy.ndarray) -> numpy.ndarray | None:
    """Return int64 integer weights of consecutive segments, each made integers on its own, or None.

    weights: host float (n,), finite and >= 0; sizes: int (S,) >= 1 summing
    to n. Segment s gets quantize_weights(its weights) (the same rule, in
    vectorized form: no Python loop per segment), or ones where that is
    None (uniform: the weighted arithmetic with w = 1 is the unweighted
    one). Returns None when every segment is uniform.
    """
    weights = numpy.asarray(weights, dtype=numpy.float64).reshape(-1)
    sizes = numpy.asarray(sizes, dtype=numpy.int64).reshape(-1)
    starts = numpy.concatenate([[0], numpy.cumsum(sizes)[:-1]]).astype(numpy.int64)
    segment = numpy.repeat(numpy.arange(sizes.size), sizes)
    largest = numpy.maximum.reduceat(weights, starts)
    fractional = numpy.logical_or.reduceat(weights != numpy.floor(weights), starts)
    counts = (largest <= (1 << WEIGHT_BITS)) & ~fractional
    # w / largest * 2**16 as quantize_weights does (a zero segment divides by 1: it is uniform anyway).
    scale = numpy.where(largest > 0, largest, 1.0)[segment]
    scaled = numpy.where(counts[segment], weights,
                         numpy.rint(numpy.ldexp(weights / scale, WEIGHT_BITS))).astype(numpy.int64)
    del scale
    scaled = numpy.where((weights > 0) & (scaled == 0), 1, scaled)
    # gcd(0, x) = x: the zeros of a segment do not change its divisor; a segment of zeros gets 1.
    divisor = numpy.gcd.reduceat(scaled, starts)
    divisor = numpy.where(divisor > 0, divisor, 1)
    scaled //= divisor[segment]
    uniform = (largest <= 0) | numpy.logical_and.reduceat(scaled == 1, starts)
    if bool(uniform.all()):
        return None
    return numpy.where(uniform[segment], 1, scaled).astype(numpy.int64)


def weighted_prefix_sums(q_sorted, w_sorted):
    """Return (uint64 prefix sums of w * q, int64 prefix sums of w), each with a leading zero (n + 1,).

    q_sorted: int64 fixed-point values; w_sorted: int64 integer weights in
    the same (sorted) order. The first wraps as prefix_sums does; the second
    never does (a segment's total weight fits: see value_bits).
    """
    xp = array_namespace(q_sorted)
    weight_prefix = xp.zeros(w_sorted.shape[0] + 1, dtype=xp.int64)
    xp.cumsum(w_sorted, out=weight_prefix[1:])
    return prefix_sums(q_sorted * w_sorted), weight_prefix


def range_weights(weight_prefix, starts, ends):
    """Return int64 total weights over sorted positions [starts, ends): ends - starts when weight_prefix is None."""
    if weight_prefix is None:
        return ends - starts
    return weight_prefix[ends] - weight_prefix[starts]
