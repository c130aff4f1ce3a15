"""What compression did, per tensor: the JSON report of `--report` and the summary table.

The report's layout is specified by `report.schema.json` (JSON Schema, next to
this module) and described in docs/report.md. Errors are measured on the finite
values, in float64: relative_error = sqrt(SSE / sum x^2), snr_db =
10 log10(sum x^2 / SSE) (null when SSE is 0: no error, infinite SNR).
"""
from __future__ import annotations

import json
import math
import os
import time
from importlib import resources
from pathlib import Path
from typing import Callable

import numpy

from .clustering import ClusteringRun, TensorOutcome
from .files import write_atomic
from .importance import importance_source
from .options import CompressOptions

SCHEMA_ID = "gpucompress/compress-report/1"


class BatchTimer:
    """An `on_batch` callback that remembers when each engine batch finished.

    then: another on_batch callback to call after recording (a progress bar).
    """

    def __init__(self, then: Callable[[int], None] | None = None):
        self.batches: list[tuple[int, float]] = []
        self._then = then

    def __call__(self, finished: int) -> None:
        self.batches.append((finished, time.perf_counter()))
        if self._then is not None:
            self._then(finished)

    def tensor_seconds(self, run: ClusteringRun) -> dict[str, float]:
        """Return each clustered tensor's share of its batch's time (split by values), by name.

        The engine runs many tensors per batch, so a tensor has no time of its
        own; the first batch's time is what the cluster phase spent beyond the
        later batches.
        """
        clustered = run.clustered()
        if not self.batches or sum(n for n, _ in self.batches) != len(clustered):
            total = sum(t.size for t in clustered) or 1
            return {t.name: run.seconds.get("cluster", 0.0) * t.size / total for t in clustered}
        stamps = [stamp for _, stamp in self.batches]
        durations = [b - a for a, b in zip(stamps, stamps[1:])]
        durations.insert(0, max(run.seconds.get("cluster", 0.0) - sum(durations), 0.0))
        result, start = {}, 0
        for (count, _), seconds in zip(self.batches, durations):
            members = clustered[start:start + count]
            values = sum(t.size for t in members) or 1
            result.update({t.name: seconds * t.size / values for t in members})
            start += count
        return result


def _finite_or_none(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def relative_error(sse: float, sum_squares: float) -> float:
    """Return sqrt(SSE / sum x^2): the error's L2 norm relative to the tensor's (0 when both are 0)."""
    if sse == 0:
        return 0.0
    return math.sqrt(sse / sum_squares) if sum_squares > 0 else math.inf


def snr_db(sse: float, sum_squares: float) -> float:
    """Return the signal-to-noise ratio 10 log10(sum x^2 / SSE) in dB (inf when SSE is 0)."""
    if sse == 0:
        return math.inf
    return 10 * math.log10(sum_squares / sse) if sum_squares > 0 else -math.inf


def _k_used(outcome: TensorOutcome) -> int:
    """Return the distinct centroids the values use: of the one codebook, or the most of any row."""
    k = outcome.codebook.shape[-1]
    layout = outcome.layout()
    if layout is None:
        return int(numpy.unique(outcome.codebook[numpy.bincount(outcome.labels, minlength=k) > 0]).size)
    moved = numpy.moveaxis(outcome.labels.reshape(outcome.shape), layout.axis, 0).reshape(layout.channels, -1)
    cells = (layout.row_of_channel()[:, None] * k + moved).reshape(-1)
    used = numpy.bincount(cells, minlength=layout.rows * k).reshape(layout.rows, k) > 0
    # Repeated centroids (a row with fewer distinct values than k) count once.
    ordered = numpy.sort(numpy.where(used, outcome.codebook.astype(numpy.float64), numpy.nan), axis=1)
    distinct = numpy.isfinite(ordered[:, :1]).astype(numpy.int64).sum(axis=1) + (
        (numpy.diff(ordered, axis=1) != 0) & numpy.isfinite(ordered[:, 1:])).sum(axis=1)
    return int(distinct.max())


def _granularity_fields(outcome: TensorOutcome) -> dict:
    layout = outcome.layout()
    if layout is None:
        return {"granularity": "per-tensor", "codebooks": 1, "channel_axis": None, "axis_source": None,
                "group_size": None, "last_group_channels": None}
    return {"granularity": "per-channel" if layout.group_size == 1 else "grouped", "codebooks": layout.rows,
            "channel_axis": layout.axis, "axis_source": outcome.axis_source, "group_size": layout.group_size,
            # The last group is smaller when group_size does not divide the channels: said here.
            "last_group_channels": (layout.channels - (layout.rows - 1) * layout.group_size
                                    if layout.ragged else None)}


def tensor_entry(outcome: TensorOutcome, seconds: float | None = None) -> dict:
    """Return the report entry of one tensor (see report.schema.json)."""
    entry = {"name": outcome.name, "dtype": outcome.dtype, "shape": list(outcome.shape),
             "values": outcome.size, "clustered": outcome.clustered, "reason": outcome.reason,
             "k": None, "k_used": None, "codebook_id": None, "sse": None, "relative_error": None,
             "snr_db": None, "iterations": None, "converged": None, "seconds": None,
             "granularity": None, "codebooks": None, "channel_axis": None, "axis_source": None,
             "group_size": None, "last_group_channels": None, "kept_zeros": None, "zero_share": None,
             "exact": None, "importance": None, "weighted_sse": None, "scale_weighted": None}
    if outcome.clustered:
        entry.update(_granularity_fields(outcome))
        entry.update(
            k=int(outcome.codebook.shape[-1]),
            k_used=_k_used(outcome), kept_zeros=outcome.kept_zeros, zero_share=float(outcome.zero_share),
            codebook_id=outcome.codebook_id, sse=outcome.sse,
            relative_error=_finite_or_none(relative_error(outcome.sse, outcome.sum_squares)),
            snr_db=_finite_or_none(snr_db(outcome.sse, outcome.sum_squares)),
            iterations=outcome.iterations, converged=outcome.converged,
            seconds=None if seconds is None else float(seconds),
            exact=outcome.exact, importance=outcome.importance, weighted_sse=outcome.weighted_sse,
            scale_weighted=outcome.scale_weighted,
        )
    return entry


def build_report(run: ClusteringRun, *, options: CompressOptions, input_path, output_path,
                 input_bytes: int, output_bytes: int, device: str, seconds: dict[str, float],
                 zip_bytes: dict[str, int] | None = None, tensor_seconds: dict[str, float] | None = None,
                 command: str = "compress") -> dict:
    """Return the report of one run as JSON-ready values (the layout of report.schema.json).

    run: the ClusteringRun; sizes in bytes; seconds: phase times; tensor_seconds:
    per clustered tensor (BatchTimer.tensor_seconds). Usable by any command
    that clusters (`compress`, `pack`).
    """
    from . import __version__

    tensor_seconds = tensor_seconds or {}
    clustered = run.clustered()
    sse = sum(t.sse for t in clustered)
    energy = sum(t.sum_squares for t in clustered)
    options_dict = {**options.__dict__, "whitelisted": list(options.whitelisted),
                    "importance": None if options.importance is None else importance_source(options.importance),
                    "importance_from_data": None if options.importance_from_data is None
                    else str(options.importance_from_data)}
    return {
        "schema": SCHEMA_ID,
        "gpucompress_version": __version__,
        "command": command,
        "input": {"path": str(input_path), "bytes": int(input_bytes)},
        "output": {"path": str(output_path), "bytes": int(output_bytes)},
        "device": device,
        "options": options_dict,
        "seconds": {name: float(value) for name, value in seconds.items()},
        "totals": {
            "tensors": len(run.tensors),
            "clustered_tensors": len(clustered),
            "values": sum(t.size for t in run.tensors),
            "clustered_values": sum(t.size for t in clustered),
            "sse": sse,
            "relative_error": _finite_or_none(relative_error(sse, energy)) if clustered else None,
            "snr_db": _finite_or_none(snr_db(sse, energy)) if clustered else None,
            "size_ratio": input_bytes / output_bytes if output_bytes else None,
            "zip_bytes": dict(zip_bytes) if zip_bytes else None,
            "codebooks": sum(1 if t.layout() is None else t.layout().rows for t in clustered),
            "kept_zeros_tensors": sum(1 for t in clustered if t.kept_zeros),
        },
        "tensors": [tensor_entry(t, tensor_seconds.get(t.name)) for t in run.tensors],
    }


def report_from_summary(summary, options: CompressOptions, timer: BatchTimer | None = None) -> dict:
    """Return the report of a CompressionSummary (what `compress_file` returns)."""
    return build_report(
        summary.run, options=options, input_path=summary.input_path, output_path=summary.output_path,
        input_bytes=summary.input_bytes, output_bytes=summary.output_bytes, device=summary.device,
        seconds=summary.seconds, zip_bytes=summary.zip_bytes,
        tensor_seconds=timer.tensor_seconds(summary.run) if timer else None,
    )


def write_report(report: dict, path: str | os.PathLike) -> None:
    """Write a report as JSON, atomically (strict JSON: no NaN or Infinity)."""
    write_atomic(Path(path), (dumps_report(report) + "\n").encode())


def dumps_report(report: dict) -> str:
    """Return a report as strict JSON text (no NaN or Infinity): indented, one line per tensor."""
    head = json.dumps({**report, "tensors": []}, indent=1, allow_nan=False)
    rows = ",\n".join("  " + json.dumps(t, allow_nan=False) for t in report["tensors"])
    before, after = head.rsplit('"tensors": []', 1)  # the last key: never inside a name
    return before + ('"tensors": [\n' + rows + "\n ]" if rows else '"tensors": []') + after


def load_schema() -> dict:
    """Return the JSON Schema of the report (gpucompress/report.schema.json)."""
    return json.loads(resources.files(__package__).joinpath("report.schema.json").read_text(encoding="utf-8"))


def _short(name: str, width: int) -> str:
    return name if len(name) <= width else "..." + name[-(width - 3):]


def _granularity_lines(clustered: list[dict], totals: dict) -> list[str]:
    """Return the summary lines on codebooks per channel or group, ragged groups and kept zeros."""
    lines = []
    split = [t for t in clustered if t.get("codebooks", 1) and t.get("granularity") not in (None, "per-tensor")]
    if split:
        unknown = sum(1 for t in split if (t["axis_source"] or "").startswith("last axis"))
        lines.append(f"{totals['codebooks']:,} codebooks (SSE {totals['sse']:.4g} in all): {len(split)} tensors "
                     f"{split[0]['granularity']}"
                     + (f" ({unknown} on their last axis, layer kind unknown)" if unknown else "")
                     + (f", {len(clustered) - len(split)} of rank <= 1 per tensor" if len(split) < len(clustered) else ""))
    ragged = [t for t in split if t["last_group_channels"] is not None]
    if ragged:
        lines.append(f"last group smaller (group size does not divide the channels) in {len(ragged)} tensors, e.g. "
                     f"{ragged[0]['name']}: {ragged[0]['last_group_channels']} of {ragged[0]['group_size']}")
    kept = [t for t in clustered if t.get("kept_zeros")]
    if kept:
        lines.append(f"exact zeros kept (0.0 in every codebook, k - 1 centroids for the rest) in {len(kept)} tensors"
                     f", e.g. {kept[0]['name']} ({kept[0]['zero_share']:.0%} zeros)")
    return lines


def format_summary(report: dict, *, top: int = 8, name_width: int = 44) -> str:
    """Return a compact table of the largest clustered tensors and the totals of a report."""
    clustered = sorted((t for t in report["tensors"] if t["clustered"]), key=lambda t: (-t["values"], t["name"]))
    header = ("tensor", "shape", "values", "k", "rel. error", "SNR dB", "iters")
    rows = [header]
    for t in clustered[:top]:
        rows.append((_short(t["name"], name_width), "x".join(map(str, t["shape"])), f"{t['values']:,}",
                     str(t["k_used"]), f"{t['relative_error']:.2%}",
                     "inf" if t["snr_db"] is None else f"{t['snr_db']:.1f}",
                     f"{t['iterations']}{'' if t['converged'] else '+'}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if len(clustered) > top:
        lines.append(f"... {len(clustered) - top} smaller clustered tensors (all of them in --report)")
    totals = report["totals"]
    if clustered:
        snr = "inf" if totals["snr_db"] is None else f"{totals['snr_db']:.1f}"
        lines.append(f"all clustered weights: relative error {totals['relative_error']:.2%}, SNR {snr} dB")
        lines.extend(_granularity_lines(clustered, totals))
    reasons: dict[str, int] = {}
    for t in report["tensors"]:
        if not t["clustered"]:
            reasons[t["reason"]] = reasons.get(t["reason"], 0) + 1
    if reasons:
        lines.append("left as they are: " + ", ".join(f"{n} {reason}" for reason, n in sorted(reasons.items())))
    exact = sum(1 for t in clustered if t.get("exact"))
    if exact:
        lines.append("exact optimum (DP on the distinct values: float16, bfloat16, int8/int16, or at most 256 values): "
                     f"{exact} tensors")
    scaled = sum(1 for t in clustered if t.get("scale_weighted"))
    if scaled:
        lines.append("int8/int16 weights with per-channel scales, their integer errors weighed by the scales "
                     f"squared (the dequantized error): {scaled} tensors")
    weighted = sum(1 for t in clustered if t.get("importance") == "weighted")
    if any(t.get("importance") for t in clustered):
        lines.append(f"importance-weighted: {weighted} tensors; {len(clustered) - weighted} without an entry "
                     "clustered unweighted")
    if any(t["converged"] is False for t in clustered):
        lines.append("+ stopped by --max_iter before converging")
    return "\n".join(lines)
