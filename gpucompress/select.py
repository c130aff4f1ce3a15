"""Which weights get clustered, and why not: the selection rules in one place.

A rule is a (reason, test) pair checked in order; the first that matches says
why a weight is left exactly as it is. Rules that need the values come last, so
most decisions never decode a tensor.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass

import numpy

from .models.weights import ROLE_OPTIMIZER, ROLE_VARIABLE, Weight
from .errors import OptionsError
from .options import CompressOptions

CLUSTER = "clustered"

# Rules that need only the weight's metadata: (reason, test(weight, options)).
METADATA_RULES = (
    ("whitelisted", lambda w, o: w.name in o.whitelisted or any(a in o.whitelisted for a in w.aliases)),
    ("optimizer state", lambda w, o: w.role == ROLE_OPTIMIZER),
    ("not floating", lambda w, o: not w.floating),
    ("empty", lambda w, o: w.size == 0),
    # SavedModel and Keras variables: only weights proper (kernels, embeddings)
    # unless all_variables; a frozen graph's Consts are all candidates.
    ("not a weight matrix (rank < 2; all_variables includes it)",
     lambda w, o: w.role == ROLE_VARIABLE and len(w.shape) < 2 and not o.all_variables),
    ("fewer than min_n_weights values (global mode)",
     lambda w, o: o.global_clusters and w.size < o.min_n_weights),
    ("no more distinct values than the codebook", lambda w, o: w.max_distinct <= o.n_clusters),
)


@dataclass(frozen=True)
class Decision:
    """Whether a weight is clustered, and the reason (CLUSTER when it is)."""

    cluster: bool
    reason: str


def decide_without_values(weight: Weight, options: CompressOptions) -> Decision | None:
    """Return the Decision that metadata alone settles, or None when the values are needed."""
    for reason, test in METADATA_RULES:
        if test(weight, options):
            return Decision(False, reason)
    return None


def decide_with_values(values: numpy.ndarray, options: CompressOptions) -> Decision:
    """Return the Decision for a decoded floating tensor (any shape, its own dtype)."""
    return decide_finite(finite_values(values), options)


def decide_finite(finite: numpy.ndarray, options: CompressOptions) -> Decision:
    """Return the Decision for a tensor's finite values (1-D, any floating dtype)."""
    if finite.size == 0:
        return Decision(False, "no finite values")
    if not has_more_distinct_than(finite, options.n_clusters):
        return Decision(False, "no more distinct values than the codebook")
    return Decision(True, CLUSTER)


def finite_values(values: numpy.ndarray) -> numpy.ndarray:
    """Return the finite values of a tensor, flattened, in its own dtype (a view when all are finite)."""
    flat = values.reshape(-1)
    mask = numpy.isfinite(flat)
    return flat if mask.all() else flat[mask]


def has_more_distinct_than(values: numpy.ndarray, k: int) -> bool:
    """Return whether a 1-D array of finite floats has more than k distinct values (-0.0 equals 0.0).

    Looks at a prefix first: nearly every weight tensor shows more than k
    distinct values early, which spares a full sort.
    """
    prefix = values[: 16 * k]
    if _distinct_count(prefix) > k:
        return True
    if prefix.size == values.size:
        return False
    return _distinct_count(values) > k


def _distinct_count(values: numpy.ndarray) -> int:
    # A sort and a compare, not numpy.unique: unique imports numpy.ma on first use (tens of ms
    # of a fresh process), and NumPy 2.4 miscounts large float16 arrays (hence the float64 sort).
    if values.size == 0:
        return 0
    ordered = numpy.sort(values if values.dtype in (numpy.float32, numpy.float64) else values.astype(numpy.float64))
    return 1 + int(numpy.count_nonzero(ordered[1:] != ordered[:-1]))


def check_whitelist(weights: list[Weight], options: CompressOptions) -> None:
    """Raise OptionsError when a `whitelisted` name matches no weight, listing the closest names.

    A name matches a weight's name or one of its aliases (a variable's own
    path, e.g. "dense/kernel" or "sequential/dense/kernel").
    """
    known = {name for weight in weights for name in (weight.name, *weight.aliases)}
    missing = [name for name in options.whitelisted if name not in known]
    if not missing:
        return
    parts = []
    for name in missing:
        close = difflib.get_close_matches(name, sorted(known), n=3, cutoff=0.5)
        parts.append(f"{name!r} (closest: {', '.join(close)})" if close else repr(name))
    raise OptionsError(f"whitelisted (--whitelisted): {'; '.join(parts)} match{'es' if len(missing) == 1 else ''} "
                       "no weight of the model (gpucompress inspect lists the names)")


NOT_FLOATING = "not floating"


def left_out_notice(tensors) -> str | None:
    """Return a one-line warning when a run clustered nothing, or left out over half of its float weights.

    tensors: the run's TensorOutcomes (name, shape, clustered, reason, size).
    The line names the main reasons, by the float values they kept, and
    points at --report for every tensor's reason. None when neither applies.
    """
    # Optimizer state and whitelisted tensors are left out on purpose: not counted.
    floating = [t for t in tensors if t.reason not in (NOT_FLOATING, "optimizer state", "whitelisted")]
    total = sum(t.size for t in floating)
    kept = [t for t in floating if not t.clustered]
    kept_values = sum(t.size for t in kept)
    clustered = len(floating) - len(kept)
    if clustered and kept_values * 2 <= total:
        return None
    by_reason: dict[str, list[int]] = {}
    for t in kept:
        entry = by_reason.setdefault(t.reason, [0, 0])
        entry[0] += 1
        entry[1] += t.size
    reasons = sorted(by_reason.items(), key=lambda item: (-item[1][1], item[0]))
    listed = "; ".join(f"{reason}: {count} tensors, {values:,} values" for reason, (count, values) in reasons[:3])
    if len(reasons) > 3:
        listed += f"; {len(reasons) - 3} more reasons"
    head = ("clustered nothing" if not clustered else
            f"left {kept_values:,} of {total:,} float values ({100 * kept_values / max(total, 1):.0f}%) as they are")
    if not floating:
        return "clustered nothing: the model holds no float weights"
    return f"{head}: {listed} (--report FILE lists every tensor's reason)"
