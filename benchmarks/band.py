"""Measure what the optimal method's banded DP costs in error and saves in time.

    python benchmarks/band.py

On the Inception-ResNet-v1-shaped tensors of benchmarks/optimal.py, at k=128
and 256, one call per tensor: the SSE of each band width (kernels/optimal.py
BAND_WIDTH) relative to the full DP's (median and worst over the tensors the
band applies to), and the time spent in the compiled DP calls (the full DP,
or the coarse pass plus the banded pass). Writes Markdown under
benchmarks/results/ named with the date.
"""
from __future__ import annotations

import datetime
import importlib
import statistics
import sys
import time
from pathlib import Path

import numpy

sys.path.insert(0, str(Path(__file__).resolve().parent))
from weights import inception_resnet_v1_weights  # noqa: E402

from gpucompress.engine import cluster_arrays  # noqa: E402

optimal = importlib.import_module("gpucompress.kernels.optimal")
RESULTS = Path(__file__).resolve().parent / "results"
WIDTHS = (128, 64, 32)


def sse(values, codebook):
    codebook = numpy.sort(codebook)
    labels = numpy.searchsorted((codebook[1:] + codebook[:-1]) / 2, values)
    return float(((values - codebook[labels]) ** 2).sum())


def timed(seconds: dict, name: str):
    """Wrap optimal.<name> so that its calls add their time to seconds[name]."""
    function = getattr(optimal, name)

    def wrapper(*args, **kwargs):
        begin = time.perf_counter()
        result = function(*args, **kwargs)
        seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - begin
        return result

    setattr(optimal, name, wrapper)


def run(stored, k: int, width: int | None, seconds: dict) -> list:
    """Return per-tensor SSE with the band width `width` (None: the full DP), adding DP times to seconds."""
    defaults = optimal.banded, optimal.BAND_WIDTH
    if width is None:
        optimal.banded = lambda n_bins, k: False
    else:
        optimal.BAND_WIDTH = width
    try:
        seconds.clear()
        return [sse(v.astype(numpy.float64), cluster_arrays([v], k, method="optimal", device="cpu")[0].codebook)
                for v in stored]
    finally:
        optimal.banded, optimal.BAND_WIDTH = defaults


def main() -> int:
    stored = [array.ravel() for _, array in inception_resnet_v1_weights()]
    seconds: dict = {}
    # All DP time, and the part in full DPs (the coarse passes of banded DPs
    # included): the banded passes take the rest.
    timed(seconds, "_compiled_borders")
    timed(seconds, "_compiled_full_borders")
    cluster_arrays([stored[0]], 256, method="optimal", device="cpu")  # Numba loads its kernels once
    lines = [f"# Banded DP of the optimal method ({datetime.date.today().isoformat()})", "",
             "Command: `python benchmarks/band.py`. One call per tensor on the 32 tensors of "
             "benchmarks/optimal.py; SSE relative to the full DP over the tensors whose DP is banded; "
             "DP seconds: the compiled DP calls (the full DP, or the coarse pass and the banded pass; "
             "a banded DP's two halves run on the two cores).", "",
             "| k | band width | banded tensors | SSE / full DP median | worst | DP s (full or coarse) | DP s (band) |",
             "|---|---|---|---|---|---|---|"]
    for k in (128, 256):
        full = run(stored, k, None, seconds)
        full_seconds = seconds.get("_compiled_borders", 0.0)
        lines.append(f"| {k} | full DP | | 1 | 1 | {full_seconds:.3f} | |")
        banded = [i for i, v in enumerate(stored) if optimal.banded(optimal.bin_count(v.size, k), k)]
        for width in WIDTHS:
            result = run(stored, k, width, seconds)
            ratios = [result[i] / full[i] for i in banded]
            lines.append(f"| {k} | {width} | {len(banded)} | {statistics.median(ratios):.5f} | {max(ratios):.5f} | "
                         f"{seconds.get('_compiled_full_borders', 0.0):.3f} | "
                         f"{seconds.get('_compiled_borders', 0.0) - seconds.get('_compiled_full_borders', 0.0):.3f} |")
            print(lines[-1], flush=True)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"band-{datetime.date.today().isoformat()}.md"
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
