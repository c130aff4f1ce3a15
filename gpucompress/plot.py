"""Histograms of a model's weights, with the centroids marked when it is clustered.

matplotlib is imported here only, and only its object-oriented API (a Figure
drawn by the Agg canvas): no pyplot state, no display needed.
"""
from __future__ import annotations

import io
import os

import numpy

from .errors import GpucompressError
from .files import write_atomic
from .inspect import ModelInspection, TensorStats, clustered_share, share_text

BAR_COLOR = "#4C72B0"
CENTROID_COLOR = "#C44E52"


def _figure_class():
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise GpucompressError("plots need matplotlib: pip install 'gpucompress[plot]'") from None
    return Figure


def _finite(weight) -> numpy.ndarray:
    flat = weight.load().reshape(-1).astype(numpy.float64)
    return flat[numpy.isfinite(flat)]


def _edges(low: float, high: float, bins: int) -> numpy.ndarray:
    if high <= low:
        low, high = low - 0.5, high + 0.5
    return numpy.linspace(low, high, bins + 1)


def _si(n: int) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(n)


def _short(name: str, width: int = 52) -> str:
    """Return the name, or its last path components that fit in width characters after an ellipsis."""
    if len(name) <= width:
        return name
    tail = name[-(width - 2):]
    return "\u2026" + (tail[tail.index("/"):] if "/" in tail else tail)


def _draw(ax, counts, edges, centroids, title: str) -> None:
    ax.stairs(counts, edges, fill=True, color=BAR_COLOR, alpha=0.85, baseline=0.7)
    ax.set_yscale("log")
    # Headroom above the tallest bar for the centroid rug along the top edge.
    ax.set_ylim(0.7, max(float(counts.max()), 1.0) * 12)
    ax.set_xlim(edges[0], edges[-1])
    if centroids is not None:
        # A rug of ticks hanging from the top edge: every centroid visible,
        # even where few values sit, and never hidden by the bars.
        ax.plot(centroids, numpy.full(centroids.size, 0.965), linestyle="none", marker="|",
                markersize=9, markeredgewidth=0.9, color=CENTROID_COLOR, alpha=0.8,
                transform=ax.get_xaxis_transform(), clip_on=False)
    ax.set_title(title, fontsize=10.5, loc="left")
    ax.set_xlabel("weight value", fontsize=9.5)
    ax.set_ylabel("count (log scale)", fontsize=9.5)
    ax.tick_params(labelsize=8.5)
    ax.grid(axis="y", which="major", alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)


def _draw_centroids(ax, values: numpy.ndarray, centroids: numpy.ndarray, title: str) -> None:
    """Draw a clustered tensor exactly: one stem per centroid, as tall as the values it holds."""
    positions, counts = numpy.unique(values, return_counts=True)
    ax.vlines(positions, 0.7, counts, color=CENTROID_COLOR, linewidth=0.6 if centroids.size > 64 else 1.0,
              alpha=0.75)
    ax.plot(positions, counts, linestyle="none", marker="o", markersize=3 if centroids.size > 64 else 4.5,
            color=CENTROID_COLOR)
    ax.set_yscale("log")
    ax.set_ylim(0.7, max(float(counts.max()), 1.0) * 3)
    margin = 0.02 * max(float(positions[-1] - positions[0]), 1e-12)
    ax.set_xlim(positions[0] - margin, positions[-1] + margin)
    ax.set_title(title, fontsize=10.5, loc="left")
    ax.set_xlabel("weight value (centroid)", fontsize=9.5)
    ax.set_ylabel("values per centroid (log scale)", fontsize=9.5)
    ax.tick_params(labelsize=8.5)
    ax.grid(axis="y", which="major", alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)


def plot_weight_histograms(model, inspection: ModelInspection, path: str | os.PathLike | None = None, *,
                           largest: int = 4, bins: int = 120):
    """Draw the histogram of all floating weights and of the `largest` largest tensors.

    model: the model `inspection` was made from (its weights are decoded again).
    A tensor that looks clustered is drawn exactly, one stem per centroid (its
    distinct values) as tall as the values it holds; the overall histogram marks
    the centroids with a rug when all clustered tensors share one codebook. path: where to write the image (atomically), in the format its extension names (plot_format); None draws only.
    Returns the matplotlib Figure: one axes for all weights plus one per tensor
    shown. Raises GpucompressError without matplotlib or floating weights.
    """
    figure_class = _figure_class()
    stats = {t.name: t for t in inspection.tensors if t.distinct}
    weights = [w for w in model.weights() if w.name in stats]
    if not weights:
        raise GpucompressError(f"{inspection.path}: no floating weights to plot")
    shown = sorted(weights, key=lambda w: (-w.size, w.name))[:largest]
    low = min(stats[w.name].minimum for w in weights)
    high = max(stats[w.name].maximum for w in weights)
    edges = _edges(low, high, bins)
    total = numpy.zeros(bins, dtype=numpy.int64)
    for weight in weights:
        total += numpy.histogram(_finite(weight), edges)[0]
    clustered: list[TensorStats] = [stats[w.name] for w in weights if stats[w.name].looks_clustered]
    one_book = [t for t in clustered if t.centroids is not None]
    shared = numpy.unique(numpy.concatenate([t.centroids for t in one_book])) if one_book else None
    if shared is not None and (shared.size > max(t.distinct for t in one_book) or len(one_book) < len(clustered)):
        shared = None  # one codebook per tensor (or channel): each is drawn in its tensor's panel

    columns = 2
    rows = (len(shown) + columns - 1) // columns
    figure = figure_class(figsize=(11, 3.3 + 2.9 * rows), dpi=110, layout="constrained")
    grid = figure.add_gridspec(1 + rows, columns, height_ratios=[1.15] + [1] * rows)
    n_values = sum(w.size for w in weights)
    _, _, share = clustered_share(inspection)
    state = ("not clustered" if not clustered else
             f"{share_text(share)} of values clustered, "
             + ("one shared codebook" if shared is not None else f"{len(clustered)} clustered tensors"))
    figure.suptitle(f"Weights of {inspection.path.name} ({inspection.format_name}, "
                    f"{inspection.file_bytes / 1e6:.3g} MB, {state})", fontsize=13, fontweight="bold")
    _draw(figure.add_subplot(grid[0, :]), total, edges, shared,
          f"All floating weights: {n_values:,} values in {len(weights)} tensors, {bins} bins"
          + (f", {shared.size} shared centroids (red ticks)" if shared is not None else
             ", each tensor's centroids in its panel" if clustered else ""))
    for index, weight in enumerate(shown):
        t = stats[weight.name]
        ax = figure.add_subplot(grid[1 + index // columns, index % columns])
        shape = "\u00d7".join(map(str, t.shape)) or "scalar"
        if t.looks_clustered and t.codebooks:
            # Per-channel codebooks: a histogram, and how many codebooks (not thousands of stems).
            counts = numpy.histogram(_finite(weight), _edges(t.minimum, t.maximum, bins))[0]
            _draw(ax, counts, _edges(t.minimum, t.maximum, bins), None,
                  f"{_short(t.name)}\n{shape}, {_si(t.values)} values, std {t.std:.3g}\n{t.codebooks} codebooks "
                  f"({'per channel' if t.group_size == 1 else f'groups of {t.group_size}'}, axis {t.channel_axis}), "
                  f"<= {inspection.max_centroids} values each")
            continue
        if t.looks_clustered:
            _draw_centroids(ax, _finite(weight), t.centroids,
                            f"{_short(t.name)}\n{shape}, {_si(t.values)} values, std {t.std:.3g}, "
                            f"{t.distinct} centroids")
            continue
        tensor_bins = min(bins, t.distinct, max(10, int(2 * numpy.sqrt(t.values))))
        tensor_edges = _edges(t.minimum, t.maximum, max(tensor_bins, 1))
        counts = numpy.histogram(_finite(weight), tensor_edges)[0]
        _draw(ax, counts, tensor_edges, None, f"{_short(t.name)}\n{shape}, {_si(t.values)} values, "
              f"std {t.std:.3g}, {_si(t.distinct)} distinct, {len(counts)} bins")
    if path is not None:
        buffer = io.BytesIO()
        figure.savefig(buffer, format=plot_format(path))
        write_atomic(path, buffer.getvalue())
    return figure


def plot_format(path: str | os.PathLike) -> str:
    """Return the image format a plot path's extension names ("png", "pdf", "svg", ...).

    Raises OptionsError for an extension matplotlib cannot write, listing those it can.
    """
    from .errors import OptionsError

    figure_class = _figure_class()
    formats = figure_class().canvas.get_supported_filetypes()
    suffix = os.path.splitext(os.fspath(path))[1].lower().lstrip(".")
    if suffix not in formats:
        raise OptionsError(f"plot={os.fspath(path)!r} (--plot): the extension should name an image format "
                           f"matplotlib writes: {', '.join('.' + name for name in sorted(formats))}")
    return suffix
