"""Cluster a model's weights: selection, one engine call, and the new tensors.

Decides first, then writes new arrays: a weight is never edited before we know
it will be clustered, and the caller's arrays are never modified.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy

from . import device as devices
from . import engine
from .errors import OptionsError
from .kernels import compiled
from .models.weights import Weight
from .options import CompressOptions
from .select import CLUSTER, Decision, check_whitelist, decide_finite, decide_without_values

log = logging.getLogger(__name__)

# Why a tensor the selection would cluster stayed exact: a budget's plan keeps it.
KEPT_BY_BUDGET = "kept exact by the budget"


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


def _prepare(weight: Weight, options: CompressOptions) -> tuple[Decision, _Pending | None]:
    decision = decide_without_values(weight, options)
    if decision is not None:
        return decision, None
    values = weight.load()
    # The tensor's own dtype: the engine widens one batch at a time (peak memory).
    flat = values.reshape(-1)
    mask = numpy.isfinite(flat)
    all_finite = bool(mask.all())
    finite = flat if all_finite else flat[mask]
    decision = decide_finite(finite, options)
    if not decision.cluster:
        return decision, None
    return decision, _Pending(weight, values, None if all_finite else mask, finite)


def _outcome(pending: _Pending, codebook64, labels_finite, result, codebook_id) -> TensorOutcome:
    weight, mask = pending.weight, pending.finite_mask
    codebook = codebook64.astype(pending.values.dtype)
    sse, sum_squares = _error_sums(pending.finite, codebook, labels_finite)
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
    clusters: dict[str, int] | None = None,
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
    clusters: a per-tensor codebook size (a budget's plan, gpucompress.budget):
    {name: k} with 2 <= k <= options.n_clusters; a named tensor is selected
    with its own k (no more distinct values than k: left as it is); one the
    mapping leaves out that the selection would cluster is kept exact (reason
    KEPT_BY_BUDGET). None: options.n_clusters for every tensor. Not with
    global_clusters (one codebook has one k).
    Raises OptionsError when a `whitelisted` name matches no weight.
    """
    check_whitelist(weights, options)
    if clusters is not None:
        _check_clusters(clusters, options)
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
        if clusters is not None and weight.name in clusters:
            # The plan's k decides: a tensor with no more distinct values than its k is indexed exactly.
            decision, prepared = _prepare(weight, replace(options, n_clusters=clusters[weight.name]))
        else:
            decision, prepared = _prepare(weight, options)
            if prepared is not None and clusters is not None:
                decision, prepared = Decision(False, KEPT_BY_BUDGET), None
        decisions.append(decision)
        seconds["select"] += time.perf_counter() - started
        if prepared is None:
            decided += 1
            continue
        full = pending and pending_values + prepared.finite.size > batch_values
        if full and not options.global_clusters:
            started = time.perf_counter()
            for outcome in _cluster_batch(cluster_arrays, pending, finished, options, kwargs, on_batch, clusters):
                finish(outcome)
            finished += len(pending)
            pending, pending_values = [], 0
            seconds["cluster"] += time.perf_counter() - started
        pending.append(prepared)
        pending_values += prepared.finite.size
    started = time.perf_counter()
    if pending and options.global_clusters:
        together = numpy.concatenate([p.finite.astype(_exact_common_dtype(pending), copy=False) for p in pending])
        (result,) = cluster_arrays([together], options.n_clusters, **kwargs)
        del together
        start = 0
        for p in pending:
            stop = start + p.finite.size
            finish(_outcome(p, result.codebook, result.labels[start:stop], result, 0))
            start = stop
        if on_batch:
            on_batch(len(pending))
    elif pending:
        for outcome in _cluster_batch(cluster_arrays, pending, finished, options, kwargs, on_batch, clusters):
            finish(outcome)
    del pending
    seconds["cluster"] += time.perf_counter() - started
    tensors = [
        outcomes.get(w.name) or TensorOutcome(name=w.name, dtype=w.dtype, shape=w.shape,
                                              clustered=False, reason=d.reason)
        for w, d in zip(weights, decisions)
    ]
    return ClusteringRun(tensors, seconds)


def _check_clusters(clusters: dict[str, int], options: CompressOptions) -> None:
    """Raise OptionsError for a per-tensor plan that options cannot honour."""
    if options.global_clusters:
        raise OptionsError("a per-tensor codebook size (a budget) does not apply with global_clusters "
                           "(--global_clusters: one codebook, one k)")
    for name, k in clusters.items():
        if isinstance(k, bool) or not isinstance(k, int) or not 2 <= k <= options.n_clusters:
            raise OptionsError(f"clusters[{name!r}]={k!r} should be an integer in [2, n_clusters={options.n_clusters}].")


def _cluster_batch(cluster_arrays, pending: list[_Pending], first_id: int, options, kwargs, on_batch,
                   clusters: dict[str, int] | None = None):
    """Yield the TensorOutcome of each pending tensor, clustered in one engine call per k.

    first_id: how many tensors earlier calls clustered (their codebook ids and
    random streams come first). clusters: per-tensor k (None: options.n_clusters);
    each run of consecutive tensors sharing a k is one engine call, so array i
    still draws from random stream first_id + i.
    """
    ks = [options.n_clusters if clusters is None else clusters[p.weight.name] for p in pending]
    start = 0
    while start < len(pending):
        stop = start
        while stop < len(pending) and ks[stop] == ks[start]:
            stop += 1
        group = pending[start:stop]
        results = cluster_arrays([p.finite for p in group], ks[start], on_batch=on_batch,
                                 first_id=first_id + start, **kwargs)
        for index, (p, result) in enumerate(zip(group, results)):
            yield _outcome(p, result.codebook, result.labels, result, first_id + start + index)
        start = stop
