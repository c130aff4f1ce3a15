"""Measure how far outliers move the optimal method's error from the optimum.

    python benchmarks/outliers.py

A trained-looking core (30,000 Laplace values, scale 0.02, 1% of them 20x
wider) plus far outliers (a value 1,000 sits ~400x beyond the core's range),
at k = 16 and 256: SSE of `optimal` over the exact optimum (kmeans1d). Writes
Markdown under benchmarks/results/ named with the date.
"""
from __future__ import annotations

import datetime
import sys
from pathlib import Path

import numpy

from gpucompress.engine import cluster_arrays

RESULTS = Path(__file__).resolve().parent / "results"
CASES = {
    "no outlier": [],
    "one at 1e3": [1e3],
    "one at 1e6": [1e6],
    "one at each end, -1e6 and 1e6": [-1e6, 1e6],
    "5 equal at 1e3": [1e3] * 5,
    "20 spread over 100..1000": list(numpy.linspace(100.0, 1000.0, 20)),
    "40 equal at 1e3": [1e3] * 40,
}


def sse(values, codebook):
    codebook = numpy.sort(numpy.asarray(codebook, dtype=numpy.float64))
    labels = numpy.searchsorted((codebook[1:] + codebook[:-1]) / 2, values)
    return float(((values - codebook[labels]) ** 2).sum())


def main() -> int:
    import kmeans1d

    rng = numpy.random.default_rng(4)
    core = rng.laplace(scale=0.02, size=30000) * numpy.where(rng.random(30000) < 0.01, 20.0, 1.0)
    lines = [f"# Far outliers and the optimal method ({datetime.date.today().isoformat()})", "",
             "Command: `python benchmarks/outliers.py`. Core: 30,000 Laplace values (scale 0.02, 1% of them "
             f"20x wider; largest |x| {numpy.abs(core).max():.2f}). SSE of `optimal` / the optimum (kmeans1d).",
             "", "| outliers | k=16 | k=256 |", "|---|---|---|"]
    for name, outliers in CASES.items():
        values = numpy.concatenate([core, outliers])
        ratios = []
        for k in (16, 256):
            ours = sse(values, cluster_arrays([values], k, method="optimal", device="cpu")[0].codebook)
            ratios.append(ours / sse(values, kmeans1d.cluster(values, k)[1]))
        lines.append(f"| {name} | {ratios[0]:.4f} | {ratios[1]:.4f} |")
        print(lines[-1], flush=True)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"outliers-{datetime.date.today().isoformat()}.md"
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
