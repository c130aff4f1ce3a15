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

from . import channels
from . import device as devices
from . import engine
from .errors import OptionsError
from .kernels import compiled, fixedpoint, histogram
from .kernels.optimal import exact_fits
from .importance import UNIFORM, WEIGHTED, resolve_importance, weighted_sse
from .models.weights import ROLE_VARIABLE, Weight
from .options import CompressOptions
from .select import CLUSTER, Decision, check_whitelist, decide_finite, decide_without_values

log = logging.getLogger(__name__)

# Weights known to hold at most this many distinct values (Weight.distinct_bound)
# are offered to the engine's exact DP on distinct values.
EXACT_MAX_DISTINCT = 1 << 16

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
    Per-channel and grouped codebooks: codebook is (rows, k), row r serving
    channels [r * group_size, (r + 1) * group_size) along channel_axis
    (channels.Layout); channel_axis None: one codebook (k,). axis_source says
    where the axis came from ("layer kind", "name", "last axis (layer kind
    unknown)", "option"). kept_zeros: exact zeros kept exactly (0.0 is in every
    codebook row, the other values had k - 1 centroids); zero_share: the
    share of exact zeros among the values.
    exact: the optimal method's DP ran on the tensor's distinct values (the
    exact optimum: float16, bfloat16, int8/int16 integers), in every
    codebook row. importance: importance.WEIGHTED or importance.UNIFORM when
    the run had importances (None otherwise); weighted_sse: sum w * (x - c)**2
    with them (float64; exact zeros kept have no error). scale_weighted: an
    int8/int16 tensor with per-channel scales whose squared integer errors
    weighed their channels' scales squared (its dequantized error was the
    objective; sse stays the integers' own).
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
    channel_axis: int | None = None
    group_size: int | None = None
    axis_source: str | None = None
    kept_zeros: bool = False
    zero_share: float = 0.0
    exact: bool = False
    importance: str | None = None
    weighted_sse: float | None = None
    scale_weighted: bool = False

    @property
    def size(self) -> int:
        """Return the number of values of the tensor."""
        return int(numpy.prod(self.shape, dtype=numpy.int64))

    def values(self) -> numpy.ndarray:
        """Return the clustered tensor (its shape and dtype): codebook[labels], non-finite values kept."""
        if self.channel_axis is None:
            flat = self.codebook[self.labels]
        else:
            flat = self.layout().expand(self.codebook, self.labels).reshape(-1)
        if self.nonfinite_index is not None and self.nonfinite_index.size:
            flat[self.nonfinite_index] = self.nonfinite_values
        return flat.reshape(self.shape)

    def layout(self) -> channels.Layout | None:
        """Return the channel Layout of per-channel or grouped codebooks, None for one codebook."""
        if self.channel_axis is None:
            return None
        return channels.Layout(tuple(self.shape), self.channel_axis, self.group_size)


@dataclass
class ClusteringRun:
    """The outcome of clustering a model: one TensorOutcome per weight, and phase times (s)."""

    tensors: list[TensorOutcome]
    seconds: dict[str, float] = field(default_factory=dict)

    def clustered(self) -> list[TensorOutcome]:
        """Return the outcomes of the tensors whose values changed."""
        return [t for t in self.tensors if t.clustered]


# keep_zeros=None (auto) keeps the exact zeros of a tensor with more than this share of them.
AUTO_ZEROS_SHARE = 0.3


@dataclass
class _Pending:
    weight: Weight
    values: numpy.ndarray
    finite_mask: numpy.ndarray | None  # None when all values are finite
    finite: numpy.ndarray  # flat finite values, the tensor's dtype (C order, global mode)
    layout: channels.Layout | None = None
    axis_source: str | None = None
    keep_zeros: bool = False
    zero_share: float = 0.0
    sent: numpy.ndarray | None = None  # the values the engine clusters (channel-major with a layout)
    sent_mask: numpy.ndarray | None = None  # which positions of the (channel-major) tensor they are; None: all
    sent_sizes: numpy.ndarray | None = None  # int64 (rows,) sent values per codebook row
    # float64 importances (None: no entry): `importance` at the finite values in C order (global
    # mode); `major_importance` at every position of the channel-major tensor, `sent_importance`
    # at the values sent (the same permutation and mask as the values).
    importance: numpy.ndarray | None = None
    major_importance: numpy.ndarray | None = None
    sent_importance: numpy.ndarray | None = None
    # Integer weights clustered by their histograms (_prepare_levels; None: by their values): the
    # stored integers in channel-major order, and int64 (rows, L) the counts of the values sent.
    level_values: numpy.ndarray | None = None
    level_counts: numpy.ndarray | None = None
    # Its integer errors weigh its channels' squared scales (_channel_weighting).
    scale_weighted: bool = False


def _axis_for(weight: Weight, options: CompressOptions) -> tuple[int | None, str]:
    """Return (default channel axis or None for the last, where it came from) of a weight."""
    if options.channel_axis is not None:
        return options.channel_axis, "option"
    rank = len(weight.shape)
    axis = channels.kind_axis(weight.layer_kind, rank)
    if axis is not None:
        return axis, f"layer kind {weight.layer_kind}"
    # Names are the rule of variables (Keras, SavedModel), whose readers see no layer class;
    # a frozen graph's Consts get their kind from the ops that use them, or none.
    for name in (weight.name, *weight.aliases) if weight.role == ROLE_VARIABLE else ():
        kind = channels.kind_from_name(name, rank)
        if kind is not None:
            return channels.kind_axis(kind, rank), f"name ({kind})"
    return None, "last axis (layer kind unknown)"


def _prepare(weight: Weight, options: CompressOptions, importance=None) -> tuple[Decision, _Pending | None]:
    decision = decide_without_values(weight, options)
    if decision is not None:
        return decision, None
    axis, source = _axis_for(weight, options) if options.granularity != "per-tensor" else (None, None)
    # Decided (and the options checked against the shape) before the values are read.
    layout = channels.layout_for(weight.name, tuple(weight.shape), options.granularity, options.group_size,
                                 axis, None)
    scaling = _channel_weighting(weight, options, layout)
    if _by_levels(weight, options, layout, importance, scaling):
        prepared = _prepare_levels(weight, options, layout, source, scaling)
        if prepared is not None:
            return prepared
    if scaling is not None:
        importance = _scaled_importance(importance, tuple(weight.shape), scaling)
    values = weight.load()
    # The tensor's own dtype: the engine widens one batch at a time (peak memory).
    flat = values.reshape(-1)
    mask = numpy.isfinite(flat)
    all_finite = bool(mask.all())
    finite = flat if all_finite else flat[mask]
    decision = decide_finite(finite, options)
    if not decision.cluster:
        return decision, None
    pending = _Pending(weight, values, None if all_finite else mask, finite,
                       layout, source if layout is not None else None, scale_weighted=scaling is not None)
    if options.global_clusters:
        if importance is not None:
            pending.importance = importance.reshape(-1) if all_finite else importance.reshape(-1)[mask]
        return decision, pending
    zeros = int(numpy.count_nonzero(flat == 0))
    pending.zero_share = zeros / flat.size
    # A tensor without zeros keeps all k centroids for its values, whatever keep_zeros says.
    pending.keep_zeros = zeros > 0 and bool(options.keep_zeros if options.keep_zeros is not None else
                                            pending.zero_share > AUTO_ZEROS_SHARE and options.n_clusters >= 3)
    major = flat if layout is None else layout.to_channel_major(values)
    sent_mask = None
    if pending.keep_zeros:
        sent_mask = numpy.isfinite(major) & (major != 0)
    elif not all_finite:
        sent_mask = mask if layout is None else numpy.isfinite(major)
    pending.sent_mask = sent_mask
    pending.sent = major if sent_mask is None else major[sent_mask]
    if importance is not None:
        # Importances follow their values: the same channel-major order, the same mask (kept zeros
        # and non-finite values are not clustered, so their importances are not sent either).
        pending.major_importance = (importance.reshape(-1) if layout is None
                                    else layout.to_channel_major(importance))
        pending.sent_importance = (pending.major_importance if sent_mask is None
                                   else pending.major_importance[sent_mask])
    full_sizes = layout.segment_sizes() if layout is not None else numpy.array([flat.size], numpy.int64)
    if sent_mask is None:
        pending.sent_sizes = full_sizes
    else:
        starts = numpy.concatenate([[0], numpy.cumsum(full_sizes)[:-1]])
        pending.sent_sizes = numpy.add.reduceat(sent_mask, starts).astype(numpy.int64)
    return decision, pending


# The histograms of a tensor clustered by levels take at most this many entries per value (int64
# each: 32 bytes a value, below the ~60 of the engine's batches); past it (int16 per channel, or
# channels of few values) its values are clustered instead. Same results either way.
LEVEL_ENTRIES_PER_VALUE = 4


def _channel_weighting(weight: Weight, options: CompressOptions, layout) -> tuple[int, numpy.ndarray] | None:
    """Return (axis, float64 squared scales along it) when a weight's squared integer errors are weighed
    by their channels' scales squared, its dequantized error being the objective; None when it has no
    per-channel scales, when each codebook serves one channel of the scales' axis (one scale: the integer
    error is the dequantized one up to a factor), with integer_objective "integer", or with an engine or
    mode that takes no weights (faiss, global_clusters: cluster_weights says so)."""
    if (weight.channel_scales is None or options.integer_objective != "dequantized"
            or options.engine != "gpucompress" or options.global_clusters):
        return None
    axis, scales = weight.channel_scales()
    if layout is not None and layout.axis == axis and layout.group_size == 1:
        return None
    return axis, scales * scales


def _scaled_importance(importance, shape: tuple[int, ...], scaling) -> numpy.ndarray:
    """Return float64 importances of a weight of this shape: the user's (None: ones) times the squared
    scale of each value's channel."""
    axis, squares = scaling
    along = [1] * len(shape)
    along[axis] = squares.size
    squares = squares.reshape(along)
    if importance is None:
        return numpy.broadcast_to(squares, shape).copy()
    return numpy.asarray(importance, dtype=numpy.float64).reshape(shape) * squares


def _by_levels(weight: Weight, options: CompressOptions, layout, importance, scaling=None) -> bool:
    """Return whether an integer weight is clustered from its histograms (same results, no sort).

    The engine's exact DP on distinct values depends on their counts (their
    total weights) alone: int8/int16 weights it takes (the bound of
    _cluster_batch's exact_candidates), without user importances, per
    tensor or per channel, with our engine's optimal method (whose
    initializer plays no part). Weighed by their scales (scaling, from
    _channel_weighting), a weight's histograms are counted per channel of the
    scales' axis first, so its codebooks must span whole channels of it.
    """
    if weight.load_integers is None or importance is not None or options.global_clusters:
        return False
    if options.engine != "gpucompress" or options.method != "optimal":
        return False
    if not (weight.distinct_bound <= EXACT_MAX_DISTINCT and weight.distinct_bound < weight.size):
        return False
    rows = 1 if layout is None else layout.rows
    if scaling is not None:
        if layout is not None and layout.axis != scaling[0]:
            return False
        rows = scaling[1].size
    return rows * weight.integer_levels <= LEVEL_ENTRIES_PER_VALUE * weight.size


def _prepare_levels(weight: Weight, options: CompressOptions, layout, source,
                    scaling=None) -> tuple[Decision, _Pending] | None:
    """Return _prepare's (decision, pending) of an integer weight from its histograms, or None when a
    row has too many distinct values for the exact DP (the caller then clusters its values).

    scaling: None, or _channel_weighting's (axis, squared scales): the histograms then count each value
    with its channel's integer weight, which the values' own path (_scaled_importance) would give it.
    """
    integers = weight.load_integers()
    flat = integers.reshape(-1)
    by_channel = None if scaling is None else channels.Layout(tuple(weight.shape), scaling[0], 1)
    if by_channel is not None:
        channel_major = by_channel.to_channel_major(integers)  # no copy for axis 0
        counts = histogram.segment_histograms(channel_major, _offsets(by_channel.segment_sizes()))
        # One codebook: its lookups need no channel order. Grouped: the groups' order is the channels'.
        major = flat if layout is None else channel_major
        del channel_major
    else:
        major = flat if layout is None else layout.to_channel_major(integers)
        full_sizes = layout.segment_sizes() if layout is not None else numpy.array([flat.size], numpy.int64)
        counts = histogram.segment_histograms(major, _offsets(full_sizes))
    low, _ = histogram.level_range(major.dtype)
    totals = counts.sum(axis=0)
    if int(numpy.count_nonzero(totals)) <= options.n_clusters:
        return Decision(False, "no more distinct values than the codebook"), None
    zeros = int(totals[-low])
    zero_share = zeros / flat.size
    keep_zeros = zeros > 0 and bool(options.keep_zeros if options.keep_zeros is not None else
                                    zero_share > AUTO_ZEROS_SHARE and options.n_clusters >= 3)
    if keep_zeros:
        counts[:, -low] = 0
    if by_channel is not None:
        group = by_channel.channels if layout is None else layout.group_size
        counts, sent_sizes = _weighted_rows(counts, scaling[1], group)
    else:
        sent_sizes = counts.sum(axis=1)
    distinct = numpy.count_nonzero(counts, axis=1)[sent_sizes > 0]
    if not exact_fits(distinct, options.n_clusters - keep_zeros).all():
        return None
    pending = _Pending(weight, integers, None, flat, layout, source if layout is not None else None,
                       keep_zeros=keep_zeros, zero_share=zero_share, sent=major, sent_sizes=sent_sizes,
                       level_values=major, level_counts=counts, scale_weighted=scaling is not None)
    return Decision(True, CLUSTER), pending


def _weighted_rows(channel_counts: numpy.ndarray, squares: numpy.ndarray, group: int):
    """Return (int64 (rows, L) weighted histograms, int64 (rows,) values sent) of codebooks that serve
    `group` consecutive channels each, from int64 (C, L) per-channel counts of the values sent.

    Each channel's values weigh the integer its squared scale becomes in the engine
    (fixedpoint.quantize_weights per codebook, over the channels with values sent, as the engine
    quantizes the same importances value by value: one weight repeated changes no maximum, integrality
    or divisor), so the histograms give the weighted batch of the values themselves.
    """
    n_channels = channel_counts.shape[0]
    starts = numpy.arange(0, n_channels, group, dtype=numpy.int64)
    per_channel = channel_counts.sum(axis=1)
    live = per_channel > 0
    row_of = numpy.arange(n_channels, dtype=numpy.int64) // group
    live_per_row = numpy.bincount(row_of[live], minlength=starts.size)
    if starts.size == 1:
        quantized = fixedpoint.quantize_weights(squares[live])
    else:
        quantized = fixedpoint.quantize_segment_weights(squares[live], live_per_row[live_per_row > 0])
    integer = numpy.ones(n_channels, dtype=numpy.int64)
    if quantized is not None:
        integer[live] = quantized
    # Integer einsums (exact), whole groups at once, then the smaller last one: a tenth of reduceat's time.
    n_levels, whole = channel_counts.shape[1], n_channels // group
    weighted = numpy.empty((starts.size, n_levels), dtype=numpy.int64)
    sent = numpy.empty(starts.size, dtype=numpy.int64)
    if whole:
        weighted[:whole] = numpy.einsum("rg,rgl->rl", integer[: whole * group].reshape(whole, group),
                                        channel_counts[: whole * group].reshape(whole, group, n_levels))
        sent[:whole] = per_channel[: whole * group].reshape(whole, group).sum(axis=1)
    if whole < starts.size:
        weighted[whole] = numpy.einsum("g,gl->l", integer[whole * group :], channel_counts[whole * group :])
        sent[whole] = per_channel[whole * group :].sum()
    return weighted, sent


def _offsets(sizes: numpy.ndarray) -> numpy.ndarray:
    """Return int64 (S + 1,) offsets of consecutive segments of the given sizes."""
    offsets = numpy.zeros(sizes.size + 1, dtype=numpy.int64)
    numpy.cumsum(sizes, out=offsets[1:])
    return offsets


def _level_outcome(pending: _Pending, result, codebook_id, n_clusters: int, weighted_run: bool) -> TensorOutcome:
    """Return the TensorOutcome of a tensor clustered by levels: _segmented_outcome's, every number the same.

    result: the engine.LevelResult of its rows with values sent. Labels come
    from a table with one entry per level and row, and the errors from
    level - centroid, each looked up once per value.
    """
    weight, layout, major = pending.weight, pending.layout, pending.level_values
    rows = pending.sent_sizes.size
    low, n_levels = histogram.level_range(major.dtype)
    sent_rows = pending.sent_sizes > 0
    full = numpy.zeros((rows, result.codebooks.shape[1]), dtype=numpy.float64)
    full[sent_rows] = result.codebooks
    dtype = engine.label_dtype(n_clusters)
    table = numpy.zeros((rows, n_levels), dtype=dtype)
    table[sent_rows] = result.level_labels
    if pending.keep_zeros:
        full, zero_column = _with_zero(full)
        table = (table + (table >= zero_column[:, None])).astype(dtype)
        table[:, -low] = zero_column.astype(dtype)
    codebooks = full.astype(numpy.dtype(weight.dtype))
    offsets = _offsets(layout.segment_sizes() if layout is not None else numpy.array([major.size], numpy.int64))
    major_labels = histogram.segment_lookup(major, offsets, table)
    # errors[r, j]: level j's value against its centroid, as _error_sums takes them (float64 of both).
    levels = numpy.arange(low, low + n_levels, dtype=numpy.float64)
    errors = levels[None, :] - numpy.take_along_axis(codebooks, table.astype(numpy.int64), axis=1).astype(numpy.float64)
    sse, sum_squares = histogram.segment_error_sums(major, offsets, errors)
    return TensorOutcome(
        name=weight.name, dtype=weight.dtype, shape=weight.shape, clustered=True, reason=CLUSTER,
        codebook=codebooks if layout is not None else codebooks[0],
        labels=major_labels if layout is None else layout.from_channel_major(major_labels),
        iterations=int(result.iterations.max()), converged=result.converged, sse=sse, codebook_id=codebook_id,
        sum_squares=sum_squares, channel_axis=None if layout is None else layout.axis,
        group_size=None if layout is None else layout.group_size, axis_source=pending.axis_source,
        kept_zeros=pending.keep_zeros, zero_share=pending.zero_share, exact=bool(result.exact.all()),
        importance=UNIFORM if weighted_run else None, weighted_sse=sse if weighted_run else None,
        scale_weighted=pending.scale_weighted,
    )


def _outcome(pending: _Pending, codebook64, labels_finite, result, codebook_id, weighted_run=False) -> TensorOutcome:
    """Return the TensorOutcome of a tensor of a global run (one shared codebook (k,))."""
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


def _with_zero(codebooks: numpy.ndarray) -> tuple[numpy.ndarray, numpy.ndarray]:
    """Return (codebooks (rows, k + 1) with 0.0 inserted in sorted place, int64 (rows,) its column)."""
    rows, k = codebooks.shape
    column = numpy.count_nonzero(codebooks < 0, axis=1).astype(numpy.int64)
    j = numpy.arange(k + 1)[None, :]
    before = numpy.take_along_axis(codebooks, numpy.minimum(j, k - 1).repeat(rows, 0), axis=1)
    after = numpy.take_along_axis(codebooks, numpy.maximum(j - 1, 0).repeat(rows, 0), axis=1)
    col = column[:, None]
    return numpy.where(j < col, before, numpy.where(j == col, 0.0, after)), column


def _segmented_outcome(pending: _Pending, codebooks64, sent_labels, iterations, converged, codebook_id,
                       n_clusters: int, exact: bool = False, weighted_run: bool = False) -> TensorOutcome:
    """Return the TensorOutcome of a tensor clustered per tensor, per channel or per group.

    codebooks64: float64 (rows, k') of the rows with values sent (empty rows
    are filled here); sent_labels: the engine's labels of pending.sent.
    exact: every row ran the exact DP; weighted_run: the run had importances
    (the outcome then says this tensor's and its weighted SSE).
    """
    weight, layout = pending.weight, pending.layout
    rows = pending.sent_sizes.size
    full = numpy.zeros((rows, codebooks64.shape[1]), dtype=numpy.float64)
    # A row with no value sent (a channel of zeros or non-finite values only) keeps a codebook of zeros.
    full[pending.sent_sizes > 0] = codebooks64
    dtype = engine.label_dtype(n_clusters)
    # No copy when the engine's labels have the dtype already (k - 1 for kept zeros may need a narrower one).
    labels = sent_labels.astype(dtype, copy=False)
    zero_column = None
    if pending.keep_zeros:
        full, zero_column = _with_zero(full)
        row_of_sent = numpy.repeat(numpy.arange(rows, dtype=numpy.int64), pending.sent_sizes)
        labels = (labels + (labels >= zero_column[row_of_sent])).astype(dtype)
    codebooks = full.astype(pending.values.dtype)
    n = weight.size
    if pending.sent_mask is None:
        major_labels = labels
    else:
        full_sizes = layout.segment_sizes() if layout is not None else numpy.array([n], numpy.int64)
        row_of_position = numpy.repeat(numpy.arange(rows, dtype=numpy.int64), full_sizes)
        major_labels = (zero_column[row_of_position].astype(dtype) if zero_column is not None
                        else numpy.zeros(n, dtype=dtype))
        major_labels[pending.sent_mask] = labels
    major = pending.sent if pending.sent_mask is None else None
    if major is None:
        flat = pending.values.reshape(-1)
        major = flat if layout is None else layout.to_channel_major(pending.values)
    finite = None if pending.finite_mask is None else numpy.isfinite(major)
    k = codebooks.shape[1]
    major_importance = pending.major_importance
    if layout is None:
        flat_codebook, flat_labels = codebooks[0], major_labels
    elif finite is None and major_importance is None and _rows_compiled(major, codebooks):
        # Each row's codebook found from the row sizes: the same sums as on flat labels.
        flat_codebook = flat_labels = None
    else:
        full_sizes = layout.segment_sizes()
        flat_codebook = codebooks.reshape(-1)
        flat_labels = numpy.repeat(numpy.arange(rows, dtype=numpy.int64) * k, full_sizes) + major_labels
    if finite is not None:
        major, flat_labels = major[finite], flat_labels[finite]
        if major_importance is not None:
            major_importance = major_importance[finite]
    if flat_labels is None:
        sse, sum_squares = compiled.rows_error_sums(major, codebooks, major_labels, layout.segment_sizes())
    else:
        sse, sum_squares = _error_sums(major, flat_codebook, flat_labels)
    importance_state = weighted = None
    if weighted_run:
        importance_state = UNIFORM if major_importance is None else WEIGHTED
        weighted = sse if major_importance is None else weighted_sse(major, flat_codebook, flat_labels,
                                                                     major_importance)
    out_labels = major_labels if layout is None else layout.from_channel_major(major_labels)
    nonfinite_index = nonfinite_values = None
    if pending.finite_mask is not None:
        nonfinite_index = numpy.flatnonzero(~pending.finite_mask)
        nonfinite_values = pending.values.reshape(-1)[nonfinite_index].copy()
    return TensorOutcome(
        name=weight.name, dtype=weight.dtype, shape=weight.shape, clustered=True, reason=CLUSTER,
        codebook=codebooks if layout is not None else codebooks[0], labels=out_labels,
        nonfinite_index=nonfinite_index, nonfinite_values=nonfinite_values, iterations=iterations,
        converged=converged, sse=sse, codebook_id=codebook_id, sum_squares=sum_squares,
        channel_axis=None if layout is None else layout.axis,
        group_size=None if layout is None else layout.group_size,
        axis_source=pending.axis_source, kept_zeros=pending.keep_zeros, zero_share=pending.zero_share,
        exact=exact, importance=importance_state, weighted_sse=weighted, scale_weighted=pending.scale_weighted,
    )


def _rows_compiled(values: numpy.ndarray, codebooks: numpy.ndarray) -> bool:
    """Return whether compiled.rows_error_sums takes these values and codebooks (float32/float64, built)."""
    return (values.dtype in (numpy.float32, numpy.float64) and codebooks.dtype == values.dtype
            and compiled.available())


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
    importance: None, or {name or alias: importances} (from
    importance.gather_importance; checked here against the weights before
    anything is clustered); importance_source names it in messages.
    clusters: a per-tensor codebook size (a budget's plan, gpucompress.budget):
    {name: k} with 2 <= k <= options.n_clusters; a named tensor is selected
    with its own k (no more distinct values than k: left as it is); one the
    mapping leaves out that the selection would cluster is kept exact (reason
    KEPT_BY_BUDGET). None: options.n_clusters for every tensor. Not with
    global_clusters (one codebook has one k).
    Raises OptionsError when a `whitelisted` name matches no weight, or for a
    bad importance entry (naming the weight); in global mode every clustered
    weight needs an entry when any has one.
    """
    check_whitelist(weights, options)
    scaled = sum(1 for w in weights if w.channel_scales is not None)
    if options.integer_objective != "dequantized" and not scaled:
        log.warning("integer_objective=%r changes nothing here: no weight is int8/int16 with per-channel scales",
                    options.integer_objective)
    elif scaled and options.integer_objective == "dequantized" and (options.engine != "gpucompress"
                                                                     or options.global_clusters):
        # Said out loud: the objective these weights would have had is not the one they get.
        log.warning("%d int8/int16 weights have per-channel scales; with %s their integers are clustered "
                    "unweighted (the integer error, not the dequantized one)", scaled,
                    "global_clusters" if options.global_clusters else f"engine={options.engine!r}")
    if clusters is not None:
        _check_clusters(clusters, options)
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
        weight_importance = None if resolved is None else resolved.get(weight.name)
        if clusters is not None and weight.name in clusters:
            # The plan's k decides: a tensor with no more distinct values than its k is indexed exactly.
            decision, prepared = _prepare(weight, replace(options, n_clusters=clusters[weight.name]),
                                          weight_importance)
        else:
            decision, prepared = _prepare(weight, options, weight_importance)
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
            for outcome in _cluster_batch(cluster_arrays, pending, finished, options, kwargs, on_batch,
                                          resolved is not None, clusters):
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
                                      resolved is not None, clusters):
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


def _check_clusters(clusters: dict[str, int], options: CompressOptions) -> None:
    """Raise OptionsError for a per-tensor plan that options cannot honour."""
    if options.global_clusters:
        raise OptionsError("a per-tensor codebook size (a budget) does not apply with global_clusters "
                           "(--global_clusters: one codebook, one k)")
    for name, k in clusters.items():
        if isinstance(k, bool) or not isinstance(k, int) or not 2 <= k <= options.n_clusters:
            raise OptionsError(f"clusters[{name!r}]={k!r} should be an integer in [2, n_clusters={options.n_clusters}].")


def _cluster_batch(cluster_arrays, pending: list[_Pending], first_id: int, options, kwargs, on_batch,
                   weighted_run: bool = False, clusters: dict[str, int] | None = None):
    """Yield the TensorOutcome of each pending tensor, clustered in as few engine calls as there
    are runs of tensors with the same codebook size (the tensor's k, or k - 1 where zeros are kept).

    first_id: how many tensors earlier calls clustered (their codebook ids and
    random streams come first, so array i still draws from stream first_id + i).
    Per-tensor codebooks go through cluster_arrays (ours or faiss'), per-channel
    and grouped ones through engine.cluster_segments, every channel a segment of
    the same batch. weighted_run: the run has importances (each pending tensor's,
    or None for uniform), sent with the values. clusters: per-tensor k (a
    budget's plan; None: options.n_clusters).
    """
    ks = [(options.n_clusters if clusters is None else clusters[p.weight.name]) - (1 if p.keep_zeros else 0)
          for p in pending]
    start = 0
    while start < len(pending):
        stop = start
        while stop < len(pending) and ks[stop] == ks[start]:
            stop += 1
        run = pending[start:stop]
        k = ks[start]
        by_levels = [p for p in run if p.level_counts is not None]
        level_results = iter(engine.cluster_histograms(
            [p.level_counts[p.sent_sizes > 0] for p in by_levels],
            [histogram.level_range(p.level_values.dtype)[0] for p in by_levels], k, max_iter=options.max_iter,
            device=options.device, on_batch=on_batch) if by_levels else ())
        # A tensor whose every value is an exact zero kept is never sent (the selection left
        # tensors of <= k distinct values, so this is a tensor of zeros and a few values only).
        sent = [p for p in run if p.sent.size and p.level_counts is None]
        extra = {}
        # Integer weights weighed by their scales have importances without a user's.
        if weighted_run or any(p.sent_importance is not None for p in sent):
            extra["weights"] = [p.sent_importance for p in sent]
        if options.engine == "gpucompress":
            # Integers of int8/int16 TFLite weights (float32 here): the format bounds
            # their distinct values below their count, and the DP on them is exact.
            extra["exact_candidates"] = [p.weight.distinct_bound <= EXACT_MAX_DISTINCT and
                                         p.weight.distinct_bound < p.weight.size for p in sent]
        if not sent:
            results = iter(())
        elif options.granularity == "per-tensor":
            results = iter(cluster_arrays([p.sent for p in sent], k, on_batch=on_batch,
                                          first_id=first_id + start, **kwargs, **extra))
        else:
            results = iter(engine.cluster_segments([p.sent for p in sent],
                                                   [p.sent_sizes[p.sent_sizes > 0] for p in sent], k,
                                                   on_batch=on_batch, first_id=first_id + start, **kwargs,
                                                   **extra))
        for index, p in enumerate(run):
            exact = False
            if p.level_counts is not None:
                yield _level_outcome(p, next(level_results), first_id + start + index, options.n_clusters,
                                     weighted_run)
                continue
            if not p.sent.size:
                codebooks, labels, iterations, converged = numpy.zeros((0, k)), numpy.zeros(0, numpy.uint8), 0, True
            elif options.granularity == "per-tensor":
                result = next(results)
                codebooks, labels = result.codebook[None, :], result.labels
                iterations, converged = result.iterations, result.converged
                exact = bool(getattr(result, "exact", False))
            else:
                result = next(results)
                codebooks, labels = result.codebooks, result.labels
                iterations, converged = int(result.iterations.max()), result.converged
                exact = bool(result.exact.all())
            yield _segmented_outcome(p, codebooks, labels, iterations, converged, first_id + start + index,
                                     options.n_clusters, exact, weighted_run)
        start = stop
