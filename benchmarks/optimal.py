"""Benchmark 1-D k-means methods on Inception-ResNet-v1-shaped weights.

    python benchmarks/optimal.py [--quick]

Per k and method: total time of one call per tensor (best of REPEATS runs), SSE / optimal (median and
worst over the tensors whose optimum kmeans1d can compute within MEMORY_LIMIT
bytes, ~16 k n), and the peak traced memory of one call on the largest tensor.
For our methods also the time of one batched call on all tensors, the way
`compress` runs them (it parallelizes over tensors; the sort is one thread). Writes Markdown and JSON
under benchmarks/results/ named with the date.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

import numpy

sys.path.insert(0, str(Path(__file__).resolve().parent))
from weights import inception_resnet_v1_weights  # noqa: E402

from gpucompress.engine import cluster_arrays  # noqa: E402

MEMORY_LIMIT = 2 << 30  # bytes kmeans1d may take (it needs about 16 * k * n)
RESULTS = Path(__file__).resolve().parent / "results"


def sse(values, codebook):
    codebook = numpy.sort(numpy.asarray(codebook, dtype=numpy.float64))
    labels = numpy.searchsorted((codebook[1:] + codebook[:-1]) / 2, values)
    return float(((values - codebook[labels]) ** 2).sum())


def run_ours(method):
    def run(values, k):
        return cluster_arrays([values], k, method=method, init="linear", device="cpu")[0].codebook
    return run


def best_time(function, repeats: int):
    """Return (least seconds over `repeats` calls of function(), its last result): the machine is noisy."""
    times = []
    for _ in range(repeats):
        begin = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - begin)
    return min(times), result


def interleaved_seconds(function, stored, k):
    """Return (method seconds, sort seconds), each the sum over tensors of the best of REPEATS calls.

    Each tensor's float32 sort and method call are timed back to back, so a
    drift of the machine's speed (a third within minutes here) moves both.
    """
    method_total = sort_total = 0.0
    for values in stored:
        sort_total += best_time(lambda: numpy.sort(values), REPEATS)[0]
        method_total += best_time(lambda: function(values, k), REPEATS)[0]
    return method_total, sort_total


def batched_seconds(method, stored, k, codebooks):
    """Return the best time of one engine call on all tensors (as `compress` batches them).

    Results do not depend on batching: the codebooks must equal the per-tensor
    ones, which this checks.
    """
    seconds, results = best_time(
        lambda: cluster_arrays(stored, k, method=method, init="linear", device="cpu"), REPEATS)
    for result, codebook in zip(results, codebooks):
        assert numpy.array_equal(result.codebook, codebook), "batched and per-tensor results differ"
    return seconds


def run_flash(values, k):
    import flash1dkmeans

    centroids, _ = flash1dkmeans.kmeans_1d(values.astype(numpy.float64), k)
    return centroids


def run_kmeans1d(values, k):
    import kmeans1d

    return kmeans1d.cluster(values, k)[1]


# kmeans1d first: its results are the optimum the others are compared with.
METHODS = {"kmeans1d": run_kmeans1d, "lloyd": run_ours("lloyd"), "optimal": run_ours("optimal"),
           "flash1dkmeans": run_flash}
# Timed runs per measurement (the least is kept); kmeans1d runs once.
REPEATS = 3


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def peak_memory(function, values, k) -> int:
    tracemalloc.start()
    try:
        function(values, k)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def benchmark(tensors, ks):
    rows = []
    run_flash(numpy.linspace(0.0, 1.0, 64), 4)  # Numba compiles on first use: not timed
    # Every method gets the weights as stored (float32, as `compress` reads
    # them); errors are measured in float64 on the same values.
    stored = [array.ravel() for _, array in tensors]
    flat = [values.astype(numpy.float64) for values in stored]
    sort_seconds, _ = best_time(lambda: [numpy.sort(values) for values in stored], REPEATS)
    for k in ks:
        fits = [i for i, v in enumerate(flat) if 16 * k * v.size <= MEMORY_LIMIT]
        for name, function in METHODS.items():
            indices = fits if name == "kmeans1d" else range(len(flat))
            function(numpy.linspace(-1.0, 1.0, 4096, dtype=numpy.float32) ** 3, k)  # warm-up: Numba loads its kernels once
            # kmeans1d takes minutes and gives the optimum: it runs once, first.
            seconds, codebooks = best_time(lambda: [function(stored[i], k) for i in indices],
                                           1 if name == "kmeans1d" else REPEATS)
            if name == "kmeans1d":
                optimum = {i: sse(flat[i], codebook) for i, codebook in zip(indices, codebooks)}
            ratios = [sse(flat[i], codebook) / optimum[i] for i, codebook in zip(indices, codebooks) if i in optimum]
            ours = name in ("lloyd", "optimal")
            batched = batched_seconds(name, stored, k, codebooks) if ours else None
            interleaved = interleaved_seconds(function, stored, k) if ours else None
            largest = max(indices, key=lambda i: flat[i].size)
            rows.append({
                "k": k, "method": name, "tensors": len(indices),
                "values": int(sum(flat[i].size for i in indices)),
                "seconds": seconds, "seconds_per_sort": seconds / sort_seconds if name != "kmeans1d" else None,
                "batched_seconds": batched, "batched_per_sort": None if batched is None else batched / sort_seconds,
                "interleaved_seconds": None if interleaved is None else interleaved[0],
                "interleaved_sort_seconds": None if interleaved is None else interleaved[1],
                "interleaved_per_sort": None if interleaved is None else interleaved[0] / interleaved[1],
                "sse_ratio_median": statistics.median(ratios), "sse_ratio_worst": max(ratios),
                "compared_tensors": len(ratios),
                "peak_bytes_largest": peak_memory(function, stored[largest], k), "largest_n": int(flat[largest].size),
            })
            batch_note = "" if batched is None else (
                f" (one batched call {batched:.2f} s; tensor by tensor beside its sort: "
                f"{rows[-1]['interleaved_per_sort']:.2f}x)")
            print(f"k={k:3d} {name:14s} {seconds:8.2f} s{batch_note}  SSE/opt median {rows[-1]['sse_ratio_median']:.4f} "
                  f"worst {rows[-1]['sse_ratio_worst']:.4f} ({len(ratios)} tensors)  "
                  f"peak {rows[-1]['peak_bytes_largest'] / 2**20:8.1f} MiB at n={flat[largest].size}", flush=True)
    return rows, sort_seconds


def markdown(meta, rows) -> str:
    lines = [f"# 1-D k-means methods on Inception-ResNet-v1-shaped weights ({meta['date']})", "",
             f"Machine: {meta['cpu']}, {meta['cores']} cores (shared with other jobs: timings are noisy). "
             f"{meta['tensors']} tensors, {meta['values']} float32 weights, given to every method as stored; "
             "float32 NumPy sort of all of them (one call per tensor): "
             f"{meta['sort_seconds']:.3f} s. Times are the best of {REPEATS} runs (kmeans1d: one run). "
             "SSE/optimal over the tensors where kmeans1d fits in "
             f"{MEMORY_LIMIT >> 30} GiB (16 k n bytes); kmeans1d times cover only those. "
             "Peak: tracemalloc peak of one call on the largest tensor it ran (Python and NumPy "
             "allocations; kmeans1d's C++ buffers, about 16 k n bytes, are not traced). "
             "Batched: one engine call on all tensors, as `compress` runs them (tensors in parallel on "
             "every core; the sort baseline runs on one thread), with the same codebooks. "
             "Beside sort: each tensor's method call and float32 sort timed back to back (best of "
             f"{REPEATS} each), summed over the tensors: the ratio least moved by the machine's drift.", "",
             f"Command: `{meta['command']}`", "",
             "| k | method | time (s) | time / sort | beside sort | batched (s) | batched / sort | SSE/opt median "
             "| SSE/opt worst | compared | peak MiB (n) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        ratio = "" if row["seconds_per_sort"] is None else f"{row['seconds_per_sort']:.1f}x"
        batched = "" if row["batched_seconds"] is None else f"{row['batched_seconds']:.2f}"
        batched_ratio = "" if row["batched_per_sort"] is None else f"{row['batched_per_sort']:.1f}x"
        beside = "" if row.get("interleaved_per_sort") is None else f"{row['interleaved_per_sort']:.2f}x"
        lines.append(f"| {row['k']} | {row['method']} | {row['seconds']:.2f} | {ratio} | {beside} | {batched} | "
                     f"{batched_ratio} | "
                     f"{row['sse_ratio_median']:.4f} | {row['sse_ratio_worst']:.4f} | {row['compared_tensors']} | "
                     f"{row['peak_bytes_largest'] / 2**20:.1f} ({row['largest_n']}) |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="6 small tensors, k=16 only (a smoke run)")
    arguments = parser.parse_args(argv)
    tensors = inception_resnet_v1_weights(6) if arguments.quick else inception_resnet_v1_weights()
    ks = (16,) if arguments.quick else (16, 32, 256)
    rows, sort_seconds = benchmark(tensors, ks)
    today = datetime.date.today().isoformat()
    meta = {"date": today, "cpu": cpu_model(), "cores": os.cpu_count(), "tensors": len(tensors),
            "values": int(sum(a.size for _, a in tensors)), "sort_seconds": sort_seconds,
            "command": "python benchmarks/optimal.py" + (" --quick" if arguments.quick else "")}
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"optimal-{today}{'-quick' if arguments.quick else ''}"
    stem.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    stem.with_suffix(".md").write_text(markdown(meta, rows))
    print(f"wrote {stem}.md and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
