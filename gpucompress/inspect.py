"""Look inside a model: its weight tensors, their statistics and their share of the file.

Works through `models.read_model` and `Weight` only, so every format the
project reads is inspected the same way. A format may offer
`stored_bytes() -> {name: bytes}` (what each weight takes in the file); without
it a weight's share is estimated as values x itemsize.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy

from .models import read_model
from .models.weights import Weight

# A tensor with more values than this, but at most this many distinct values,
# looks clustered (8-bit codebooks, the default of `compress`).
DEFAULT_MAX_CENTROIDS = 256


@dataclass(frozen=True)
class TensorStats:
    """What one weight tensor holds.

    values: number of values; stored_bytes: bytes it takes in the file (exact
    when the format says, else values x itemsize); share: stored_bytes / file
    bytes. For floating tensors: distinct (distinct finite values), minimum,
    maximum, mean, std (of the finite values, float64), nonfinite (NaN/Inf
    count); None for other dtypes. looks_clustered: more values than
    max_centroids but at most max_centroids distinct ones (centroids then holds
    the sorted distinct values, float64), or at most max_centroids per channel
    or group of channels along one axis (per-channel or grouped codebooks:
    channel_axis, group_size and codebooks say how; centroids None).
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    values: int
    stored_bytes: int
    share: float
    distinct: int | None = None
    minimum: float | None = None
    maximum: float | None = None
    mean: float | None = None
    std: float | None = None
    nonfinite: int | None = None
    looks_clustered: bool = False
    centroids: numpy.ndarray | None = field(default=None, repr=False, compare=False)
    channel_axis: int | None = None
    group_size: int | None = None
    codebooks: int | None = None

    def to_dict(self) -> dict:
        """Return the statistics as JSON-ready values (centroids left out)."""
        return {
            "name": self.name, "dtype": self.dtype, "shape": list(self.shape), "values": self.values,
            "stored_bytes": self.stored_bytes, "share": self.share, "distinct": self.distinct,
            "min": self.minimum, "max": self.maximum, "mean": self.mean, "std": self.std,
            "nonfinite": self.nonfinite, "looks_clustered": self.looks_clustered,
            "codebooks": self.codebooks, "channel_axis": self.channel_axis, "group_size": self.group_size,
        }


@dataclass
class ModelInspection:
    """A model's weight tensors and where its bytes go.

    file_bytes: size of the model on disk (a folder: all its files);
    weight_bytes: bytes of all weight tensors; other_bytes: the model without
    its weights (graph structure, names, metadata).
    """

    path: Path
    format_name: str
    file_bytes: int
    tensors: list[TensorStats]
    max_centroids: int = DEFAULT_MAX_CENTROIDS

    @property
    def weight_bytes(self) -> int:
        """Return the bytes the weight tensors take in the file."""
        return sum(t.stored_bytes for t in self.tensors)

    @property
    def other_bytes(self) -> int:
        """Return the bytes of the model without its weights (never negative)."""
        return max(self.file_bytes - self.weight_bytes, 0)

    @property
    def looks_clustered(self) -> bool:
        """Return whether every floating tensor large enough to cluster looks clustered (and one does)."""
        floating = [t for t in self.tensors if t.distinct is not None and t.values > self.max_centroids]
        return bool(floating) and all(t.looks_clustered for t in floating)

    def to_dict(self) -> dict:
        """Return the inspection as JSON-ready values."""
        return {
            "path": str(self.path), "format": self.format_name, "max_centroids": self.max_centroids,
            "file_bytes": self.file_bytes,
            "weight_bytes": self.weight_bytes, "other_bytes": self.other_bytes,
            "values": sum(t.values for t in self.tensors), "tensors": [t.to_dict() for t in self.tensors],
        }


def path_bytes(path: str | os.PathLike) -> int:
    """Return the size in bytes of a file, or of every file under a folder."""
    path = Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def _estimated_bytes(weight: Weight) -> int:
    try:
        return weight.size * numpy.dtype(weight.dtype).itemsize
    except TypeError:  # "string", "bfloat16" (no NumPy name) ...
        return weight.size * (2 if weight.dtype == "bfloat16" else 0)


# Group sizes tried, after per channel, to tell grouped codebooks from per-channel ones.
GROUP_SIZES = (2, 4, 8, 16, 32, 64, 128)


def _most_distinct(values: numpy.ndarray, axis: int, group_size: int) -> int:
    """Return the most distinct finite values any group of group_size channels along axis holds."""
    channels = values.shape[axis]
    moved = numpy.moveaxis(values, axis, 0).reshape(channels, -1)
    rows = -(-channels // group_size)
    padded = numpy.full((rows * group_size, moved.shape[1]), numpy.nan)
    padded[:channels] = moved
    ordered = numpy.sort(padded.reshape(rows, -1), axis=1)  # NaN (padding, non-finite) sorts last
    finite = numpy.isfinite(ordered)
    distinct = finite[:, :1].sum(axis=1) + ((numpy.diff(ordered, axis=1) != 0) & finite[:, 1:]).sum(axis=1)
    return int(distinct.max())


def channel_codebooks(values: numpy.ndarray, distinct: int, max_centroids: int) -> tuple[int, int] | None:
    """Return (axis, group size) when every channel (or group of channels) along one axis of a float64
    tensor holds at most max_centroids distinct finite values, the largest group size that does
    (GROUP_SIZES); None when no axis does. Axes are tried last first (the usual output channels);
    an axis with too few channels to hold `distinct` values, or whose channels hold no more than
    max_centroids values each (they would fit any codebook), is skipped unsorted."""
    for axis in reversed(range(values.ndim)):
        channels = values.shape[axis]
        if (channels < 2 or values.size // channels <= max_centroids or distinct > channels * max_centroids
                or _most_distinct(values, axis, 1) > max_centroids):
            continue
        size = 1
        for candidate in GROUP_SIZES:
            if candidate >= channels or _most_distinct(values, axis, candidate) > max_centroids:
                break
            size = candidate
        return axis, size
    return None


def tensor_stats(weight: Weight, stored_bytes: int, file_bytes: int,
                 max_centroids: int = DEFAULT_MAX_CENTROIDS) -> TensorStats:
    """Return the TensorStats of one weight (decodes floating weights once)."""
    common = dict(name=weight.name, dtype=weight.dtype, shape=tuple(weight.shape), values=weight.size,
                  stored_bytes=int(stored_bytes), share=stored_bytes / file_bytes if file_bytes else 0.0)
    if not weight.floating:
        return TensorStats(**common)
    flat = weight.load().reshape(-1).astype(numpy.float64)
    finite = flat[numpy.isfinite(flat)]
    if finite.size == 0:
        return TensorStats(**common, distinct=0, nonfinite=int(flat.size))
    distinct_values = numpy.unique(finite)
    looks_clustered = weight.size > max_centroids and distinct_values.size <= max_centroids
    split = {}
    if weight.size > max_centroids and not looks_clustered and len(weight.shape) >= 2:
        found = channel_codebooks(flat.reshape(weight.shape), distinct_values.size, max_centroids)
        if found is not None:
            axis, size = found
            looks_clustered = True
            split = dict(channel_axis=axis, group_size=size, codebooks=-(-weight.shape[axis] // size))
    return TensorStats(
        **common, distinct=int(distinct_values.size), minimum=float(distinct_values[0]),
        maximum=float(distinct_values[-1]), mean=float(finite.mean()), std=float(finite.std()),
        nonfinite=int(flat.size - finite.size), looks_clustered=looks_clustered,
        centroids=distinct_values if looks_clustered and not split else None, **split,
    )


def inspect_model(path: str | os.PathLike, *, max_centroids: int = DEFAULT_MAX_CENTROIDS,
                  model=None) -> ModelInspection:
    """Read a model and return its ModelInspection.

    path: any model read_model accepts. max_centroids: the codebook size under
    which a tensor counts as clustered. model: an already read model of that
    path (skips reading it again). Raises InputError or FormatError.
    """
    model = model if model is not None else read_model(path)
    file_bytes = path_bytes(path)
    weights = model.weights()
    exact = model.stored_bytes() if hasattr(model, "stored_bytes") else {}
    tensors = [tensor_stats(w, exact.get(w.name, _estimated_bytes(w)), file_bytes, max_centroids)
               for w in weights]
    return ModelInspection(Path(path), model.format_name, file_bytes, tensors, max_centroids)


def clustered_share(inspection: ModelInspection) -> tuple[int, int, float]:
    """Return (tensors that look clustered, floating tensors with finite values, share of their values
    in clustered-looking tensors); the table's legend line and the plot's title both say these."""
    floating = [t for t in inspection.tensors if t.distinct]
    clustered = [t for t in floating if t.looks_clustered]
    values = sum(t.values for t in floating)
    return len(clustered), len(floating), (sum(t.values for t in clustered) / values if values else 0.0)


def share_text(share: float) -> str:
    """Return a share as the percentage both the table and the plot print (rounded down to 0.1%)."""
    return f"{math.floor(1000 * share) / 10:g}%"


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _shorten(name: str, width: int) -> str:
    return name if len(name) <= width else "..." + name[-(width - 3):]


def format_table(inspection: ModelInspection, *, limit: int | None = None, name_width: int = 48) -> str:
    """Return the inspection as a plain-text table, largest tensors first.

    limit: show at most this many tensors (the rest summed on one line).
    """
    rows = sorted(inspection.tensors, key=lambda t: (-t.stored_bytes, t.name))
    shown = rows if limit is None else rows[:limit]
    header = ("tensor", "dtype", "shape", "values", "distinct", "min", "max", "std", "file %")
    table = [header]
    for t in shown:
        marker = "" if not t.looks_clustered else "**" if t.codebooks else "*"
        table.append((_shorten(t.name, name_width), t.dtype, "x".join(map(str, t.shape)) or "scalar",
                      f"{t.values:,}", "-" if t.distinct is None else f"{t.distinct:,}{marker}",
                      _number(t.minimum), _number(t.maximum), _number(t.std), f"{100 * t.share:.1f}"))
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if i < 3 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if len(shown) < len(rows):
        rest = rows[len(shown):]
        lines.append(f"... {len(rest)} more tensors, {sum(t.values for t in rest):,} values, "
                     f"{100 * sum(t.share for t in rest):.1f}% of the file")
    total_values = sum(t.values for t in inspection.tensors)
    lines.append("")
    lines.append(f"{inspection.path} ({inspection.format_name}): {inspection.file_bytes:,} bytes, "
                 f"{len(inspection.tensors)} weight tensors, {total_values:,} values")
    lines.append(f"weights {inspection.weight_bytes:,} bytes "
                 f"({100 * inspection.weight_bytes / max(inspection.file_bytes, 1):.1f}%), "
                 f"model without its weights {inspection.other_bytes:,} bytes")
    clustered, floating, share = clustered_share(inspection)
    if clustered:
        lines.append(f"* more than {inspection.max_centroids} values but at most {inspection.max_centroids} "
                     f"distinct: looks clustered ({clustered} of {floating} floating tensors, "
                     f"{share_text(share)} of their values)")
        split = [t for t in inspection.tensors if t.codebooks]
        if split:
            grouped = sum(1 for t in split if t.group_size > 1)
            lines.append(f"** at most {inspection.max_centroids} distinct per channel or group: {len(split)} "
                         f"tensors with per-channel{' or grouped' if grouped else ''} codebooks, "
                         f"{sum(t.codebooks for t in split):,} codebooks in all")
    return "\n".join(lines)
