"""Cluster a model's weights: selection, one engine call, and the new tensors.

Decides first, then writes new arrays: a weight is never edited before we know
it will be clustered, and the caller's arrays are never modified.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy

from . import device as devices
from . import engine
from .kernels import compiled
from .errors import OptionsError
from .importance import UNIFORM, WEIGHTED, resolve_importance, weighted_sse
from .models.weights import Weight
from .options import CompressOptions
from .select import CLUSTER, Decision, check_whitelist, decide_with_values, decide_without_values

log = logging.getLogger(__name__)

# Weights known to hold at most this many distinct values (Weight.max_distinct)
# are offered to the engine's exact DP on distinct values.
EXACT_MAX_DISTINCT = 1 << 16


@dataclass(frozen=True)
class TensorOutcome:
    """What clustering did to one weight.

    clustered: whether its values changed; reason says why not (or "clustered").
    codebook: the centroids in the tensor's dtype (k,), labels: (size,) indices
    into it in C order (0 at non-finite positions), nonfinite_index /
    nonfinite_values: where the NaN/Inf values sit and what they are (kept
    exactly). sse: sum of squared errors of the finite values, in float64.
    codebook_id: which codebook (0..) this tensor uses; tensors of a global
    run share codebook 0. sum_squares: sum of the squared finite original
    values, in float64 (the signal energy that relative error and SNR divide by).
    exact: the optimal method's DP ran on the tensor's distinct values (the
    exact optimum: float16, bfloat16, int8/int16 integers). importance:
    importance.WEIGHTED or importance.UNIFORM when the run had importances
    (None otherwise); weighted_sse: sum w * (x - c)**2 with them (float64).
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    clustered: bool
    reason: str
    codebook: numpy.ndarray | None = None
    labels: numpy.ndarray | None = None
    nonfinite_index: numpy.ndarray | None = None
    nonfinite_values: numpy.ndarray | None = None
    iterations: int = 0
    converged: bool = True
    sse: float = 0.0
    codebook_id: int | None = None
    sum_squares: float = 0.0
    exact: bool = False
    importance: str | None = None
    weighted_sse: float | None = None

    @property
    def size(self) -> int:
        """Return the number of values of the tensor."""
        return int(numpy.prod(self.shape, dtype=numpy.int64))

    def values(self) -> numpy.ndarray:
        """Return the clustered tensor (its shape and dtype): codebook[labels], non-finite values kept."""
        flat = self.codebook[self.labels]
        if self.nonfinite_index is not None and self.nonfinite_index.size:
            flat[self.nonfinite_index] = self.nonfinite_values
        return flat.reshape(self.shape)


@dataclass
class ClusteringRun:
    """The outcome of clustering a model: one TensorOutcome per weight, and phase times (s)."""

    tensors: list[TensorOutcome]
    seconds: dict[str, float] = field(default_factory=dict)

    def clustered(self) -> list[TensorOutcome]:
        """Return the outcomes of the tensors whose values changed."""
        return [t for t in self.tensors if t.clustered]


@dataclass
class _Pending:
    weight: Weight
    values: numpy.ndarray
    finite_mask: numpy.ndarray | None  # None when all values are finite
    finite: numpy.ndarray  # flat finite values, the tensor's dtype
    importance: numpy.ndarray | None = None  # flat float64, at the finite values


def _prepare(weight: Weight, options: CompressOptions, importance=None) -> tuple[Decision, _Pending | None]:
    decision = decide_without_values(weight, options)
    if decision is not None:
        return decision, None
    values = weight.load()
    decision = decide_with_values(values, options)
    if not decision.cluster:
        return decision, None
    # The tensor's own dtype: the engine widens one batch at a time (peak memory).
    flat = values.reshape(-1)
    mask = numpy.isfinite(flat)
    all_finite = bool(mask.all())
    weights = None
    if importance is not None:
        weights = importance.reshape(-1) if all_finite else importance.reshape(-1)[mask]
    return decision, _Pending(weight, values, None if all_finite else mask, flat if all_finite else flat[mask],
                              weights)


def _outcome(pending: _Pending, codebook64, labels_finite, result, codebook_id, weighted_run=False) -> TensorOutcome:
    weight, mask = pending.weight, pending.finite_mask
    codebook = codebook64.astype(pending.values.dtype)
    sse, sum_squares = _error_sums(pending.finite, codebook, labels_finite)
    importance_state = weighted = None
    if weighted_run:
        importance_state = UNIFORM if pending.importance is None else WEIGHTED
        weighted = sse if pending.importance is None else weighted_sse(pending.finite, codebook, labels_finite,
                                                                       pending.importance)
    if mask is None:
        labels, nonfinite_index, nonfinite_values = labels_finite, None, None
    else:
        labels = numpy.zeros(weight.size, dtype=labels_finite.dtype)
        labels[mask] = labels_finite
        nonfinite_index = numpy.flatnonzero(~mask)
        nonfinite_values = pending.values.reshape(-1)[nonfinite_index].copy()
    return TensorOutcome(
        name=weight.name, dtype=weight.dtype, shape=weight.shape, clustered=True, reason=CLUSTER,
        codebook=codebook, labels=labels, nonfinite_index=nonfinite_index,
        nonfinite_values=nonfinite_values, iterations=result.iterations,
        converged=result.converged, sse=sse, codebook_id=codebook_id, sum_squares=sum_squares,
        exact=bool(getattr(result, "exact", False)), importance=importance_state, weighted_sse=weighted,
    )


def _error_sums(finite: numpy.ndarray, codebook: numpy.ndarray, labels: numpy.ndarray) -> tuple[float, float]:
    """Return float64 (SSE of finite against codebook[labels], sum of finite**2).

    One compiled pass for float32/float64 (the float64 temporaries of the
    array version cost a quarter of a second on a 23 M-weight model).
    """
    if finite.dtype in (numpy.float32, numpy.float64) and compiled.available():
        return compiled.error_sums(finite, codebook, labels)
    wide = finite.astype(numpy.float64)
    errors = wide - codebook[labels].astype(numpy.float64)
    return float(numpy.dot(errors, errors)), float(numpy.dot(wide, wide))


def _exact_common_dtype(pending: list[_Pending]) -> numpy.dtype:
    """Return the narrowest float dtype that holds every pending tensor's values exactly.

    float16 and bfloat16 have no common NumPy dtype, but both widen exactly to float32.
    """
    dtypes = {p.finite.dtype for p in pending}
    if len(dtypes) == 1:
        return dtypes.pop()
    if all(d.itemsize <= 4 for d in dtypes):
        return numpy.dtype(numpy.float32)
    return numpy.dtype(numpy.float64)


def cluster_weights(
    weights: list[Weight],
    options: CompressOptions,
    on_batch: Callable[[int], None] | None = None,
    on_tensor: Callable[[TensorOutcome], None] | None = None,
    on_progress: Callable[[int, int, str], None] | None = None,
    importance: dict | None = None,
    importance_source: str = "",
) -> ClusteringRun:
    """Select and cluster a model's weights.

    weights: from a model reader; options: a CompressOptions. on_batch: called
    with the number of tensors finished after each engine batch. on_tensor:
    called with each clustered tensor's TensorOutcome, in model order, as soon
    as its batch is done (a writer stores the new values then). on_progress:
    called with (tensors decided, number of weights, name of the tensor in
    work) as each weight is read and as each clustered one is done. Returns a
    ClusteringRun with one TensorOutcome per weight, in order, and the seconds
    spent selecting ("select") and clustering ("cluster").

    Per-tensor codebooks stream: weights are loaded one engine batch at a
    time and their loaded values dropped once clustered, so peak memory holds
    one batch, not the model twice. Results do not depend on the batching.
    importance: None, or {name or alias: importances} (from
    importance.gather_importance; checked here against the weights before
    anything is clustered); importance_source names it in messages. Raises
    OptionsError when a `whitelisted` name matches no weight, or for a bad
    importance entry (naming the weight); in global mode every clustered
    weight needs an entry when any has one.
    """
    check_whitelist(weights, options)
    resolved = None if importance is None else resolve_importance(importance, weights, importance_source)
    kwargs = dict(init=options.init, method=options.method, max_iter=options.max_iter,
                  device=options.device, seed=options.seed, batch_values=options.batch_values)
    cluster_arrays = engine.cluster_arrays
    if options.engine == "faiss":
        from . import faiss_engine

        cluster_arrays = faiss_engine.cluster_arrays
    seconds = {"select": 0.0, "cluster": 0.0}
    outcomes: dict[str, TensorOutcome] = {}

    total, decided = len(weights), 0

    def progress(name: str) -> None:
        if on_progress is not None:
            on_progress(decided, total, name)

    def finish(outcome: TensorOutcome) -> None:
        nonlocal decided
        outcomes[outcome.name] = outcome
        if on_tensor is not None:
            on_tensor(outcome)
        decided += 1
        progress(outcome.name)

    decisions, pending = [], []
    pending_values = finished = 0
    batch_values = options.batch_values or engine.DEFAULT_BATCH_VALUES[devices.resolve_device(options.device)]
    for weight in weights:
        progress(weight.name)
        started = time.perf_counter()
        decision, prepared = _prepare(weight, options, None if resolved is None else resolved.get(weight.name))
        decisions.append(decision)
        seconds["select"] += time.perf_counter() - started
        if prepared is None:
            decided += 1
            continue
        full = pending and pending_values + prepared.finite.size > batch_values
        if full and not options.global_clusters:
            started = time.perf_counter()
            for outcome in _cluster_batch(cluster_arrays, pending, finished, options, kwargs, on_batch,
                                          resolved is not None):
                finish(outcome)
            finished += len(pending)
            pending, pending_values = [], 0
            seconds["cluster"] += time.perf_counter() - started
        pending.append(prepared)
        pending_values += prepared.finite.size
    started = time.perf_counter()
    if pending and options.global_clusters:
        together = numpy.concatenate([p.finite.astype(_exact_common_dtype(pending), copy=False) for p in pending])
        extra = {}
        if resolved is not None:
            missing = [p.weight.name for p in pending if p.importance is None]
            if missing:
                raise OptionsError(f"importance {importance_source}: {missing[0]!r} has no entry; with "
                                   "global_clusters every clustered weight needs one (one codebook weighs "
                                   f"them together; {len(missing)} missing)")
            extra["weights"] = [numpy.concatenate([p.importance for p in pending])]
        (result,) = cluster_arrays([together], options.n_clusters, **kwargs, **extra)
        del together, extra
        start = 0
        for p in pending:
            stop = start + p.finite.size
            finish(_outcome(p, result.codebook, result.labels[start:stop], result, 0, resolved is not None))
            start = stop
        if on_batch:
            on_batch(len(pending))
    elif pending:
        for outcome in _cluster_batch(cluster_arrays, pending, finished, options, kwargs, on_batch,
                                      resolved is not None):
            finish(outcome)
    del pending
    seconds["cluster"] += time.perf_counter() - started
    if resolved:
        unused = sorted(set(resolved) - set(outcomes))
        if unused:
            # Said out loud: an importance that changed nothing (its weight was left as it is).
            log.warning("importance: %d entries are for weights left as they are (not clustered), unused: %s%s",
                        len(unused), ", ".join(unused[:3]), " ..." if len(unused) > 3 else "")
    tensors = [
        outcomes.get(w.name) or TensorOutcome(name=w.name, dtype=w.dtype, shape=w.shape,
                                              clustered=False, reason=d.reason)
        for w, d in zip(weights, decisions)
    ]
    return ClusteringRun(tensors, seconds)


def _cluster_batch(cluster_arrays, pending: list[_Pending], first_id: int, options, kwargs, on_batch,
                   weighted_run: bool = False):
    """Yield the TensorOutcome of each pending tensor, clustered in one engine call.

    first_id: how many tensors earlier calls clustered (their codebook ids and
    random streams come first). weighted_run: the run has importances (each
    pending tensor's, or None for uniform).
    """
    extra = {}
    if weighted_run:
        extra["weights"] = [p.importance for p in pending]
    if options.engine == "gpucompress":
        # Integers of int8/int16 TFLite weights (float32 here): the format bounds
        # their distinct values below their count, and the DP on them is exact.
        extra["exact_candidates"] = [p.weight.max_distinct <= EXACT_MAX_DISTINCT and
                                     p.weight.max_distinct < p.weight.size for p in pending]
    results = cluster_arrays([p.finite for p in pending], options.n_clusters, on_batch=on_batch,
                             first_id=first_id, **kwargs, **extra)
    for index, (p, result) in enumerate(zip(pending, results)):
        yield _outcome(p, result.codebook, result.labels, result, first_id + index, weighted_run)
