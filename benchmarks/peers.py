"""The algorithms people would pick instead, run on the same arrays: timing and SSE.

Every runner takes a float64 1-D array and k and returns (codebook, labels); the
caller times it and computes the SSE the same way for all. kmeans1d is the exact
optimum (dynamic programming) and sets the reference SSE where it fits.
"""
from __future__ import annotations

import time

import numpy

from gpucompress import engine, faiss_engine

# kmeans1d needs about 16*k*n bytes and k*n*log(n) time: run it only below these.
KMEANS1D_MAX_BYTES = 1 << 30
KMEANS1D_MAX_WORK = 3e7  # k * n
# scikit-learn's Lloyd costs k*n per iteration: past this, minutes per tensor.
SKLEARN_MAX_WORK = 5e7  # k * n


def sse(values: numpy.ndarray, codebook: numpy.ndarray, labels: numpy.ndarray) -> float:
    """Return the sum of squared errors of values replaced by codebook[labels] (float64)."""
    errors = values - numpy.asarray(codebook, dtype=numpy.float64)[labels]
    return float(numpy.dot(errors, errors))


def ours(method: str, device: str = "cpu"):
    """Return a runner for gpucompress' engine with `method` (default init) on `device`."""
    def run(values, k):
        (result,) = engine.cluster_arrays([values], k, method=method, device=device)
        return result.codebook, result.labels
    return run


def faiss_runner(device: str):
    """Return a runner for faiss.Kmeans with its defaults (25 iterations, 256 points per centroid)."""
    def run(values, k):
        (result,) = faiss_engine.cluster_arrays([values], k, device=device)
        return result.codebook, result.labels
    return run


def sklearn_kmeans(values, k):
    """scikit-learn KMeans with its defaults (k-means++, n_init=1 for it, max_iter=300)."""
    from sklearn.cluster import KMeans

    model = KMeans(n_clusters=k, random_state=0).fit(values.reshape(-1, 1))
    return model.cluster_centers_.reshape(-1), model.labels_


def flash1dkmeans_runner(values, k):
    """flash1dkmeans.kmeans_1d (sorted-data Lloyd with a k-means++ start, numba)."""
    import flash1dkmeans

    centroids, labels = flash1dkmeans.kmeans_1d(values, k, max_iter=300, random_state=0)
    return numpy.asarray(centroids), numpy.asarray(labels)


def kmeans1d_runner(values, k):
    """kmeans1d.cluster: the exact optimum of 1-D k-means."""
    import kmeans1d

    labels, centroids = kmeans1d.cluster(values, k)
    return numpy.asarray(centroids), numpy.asarray(labels)


def warm_up() -> None:
    """Compile flash1dkmeans' numba kernels and load faiss so first calls are not timed."""
    values = numpy.random.default_rng(0).laplace(size=4096)
    flash1dkmeans_runner(values, 16)
    faiss_runner("cpu")(values, 16)


def runners(gpu: bool, faiss_gpu: bool) -> dict:
    """Return name -> (runner, fits(n, k)) for every peer and every gpucompress method."""
    always = lambda n, k: True  # noqa: E731
    table = {f"gpucompress {m} (cpu)": (ours(m, "cpu"), always) for m in engine.METHODS}
    if gpu:
        table.update({f"gpucompress {m} (gpu)": (ours(m, "gpu"), always) for m in engine.METHODS})
    table["faiss (cpu)"] = (faiss_runner("cpu"), always)
    if faiss_gpu:
        table["faiss (gpu)"] = (faiss_runner("gpu"), always)
    table["scikit-learn KMeans"] = (sklearn_kmeans, lambda n, k: n * k <= SKLEARN_MAX_WORK)
    table["flash1dkmeans"] = (flash1dkmeans_runner, always)
    table["kmeans1d (exact)"] = (kmeans1d_runner, lambda n, k: 16 * k * n <= KMEANS1D_MAX_BYTES
                                 and n * k <= KMEANS1D_MAX_WORK)
    return table


def compare(arrays: dict[str, numpy.ndarray], ks, table: dict) -> list[dict]:
    """Run every runner on every array and k; return one row per (array, k, runner).

    Rows: tensor, n, k, tool, seconds, sse, and sse_ratio (to kmeans1d's optimum
    when it ran, else to the best SSE of that array and k, with reference="best").
    Runners whose fits(n, k) is False get a row with skipped=True.
    """
    rows = []
    for name, values in arrays.items():
        for k in ks:
            group = []
            for tool, (run, fits) in table.items():
                row = {"tensor": name, "n": int(values.size), "k": k, "tool": tool}
                if not fits(values.size, k):
                    row["skipped"] = True
                else:
                    started = time.perf_counter()
                    codebook, labels = run(values, k)
                    row["seconds"] = time.perf_counter() - started
                    row["sse"] = sse(values, codebook, labels)
                group.append(row)
            exact = [r["sse"] for r in group if r["tool"].startswith("kmeans1d") and "sse" in r]
            reference = exact[0] if exact else min(r["sse"] for r in group if "sse" in r)
            for row in group:
                row["reference"] = "optimum" if exact else "best"
                if "sse" in row:
                    row["sse_ratio"] = row["sse"] / reference if reference > 0 else 1.0
            rows.extend(group)
    return rows


def whole_model(arrays: list[numpy.ndarray], k: int, tools: dict, budget: float) -> dict:
    """Cluster all arrays (one codebook each) with each tool; return tool -> figures.

    tools: name -> function(list of arrays, k) -> list of (codebook, labels).
    Tools other than gpucompress run array by array in a fixed shuffled order
    and stop after `budget` seconds; their time is then extrapolated by the
    number of arrays (extrapolated=True, done=arrays run) and their SSE
    by the SSE ratio to gpucompress' first tool on the same arrays.
    """
    out, reference = {}, None
    order = numpy.random.default_rng(0).permutation(len(arrays))
    for tool, run in tools.items():
        started, done, results = time.perf_counter(), [], []
        if tool.startswith("gpucompress"):
            results, done = run(arrays, k), list(range(len(arrays)))
        else:
            for index in order:
                results += run([arrays[index]], k)
                done.append(int(index))
                if time.perf_counter() - started > budget:
                    break
        seconds = time.perf_counter() - started
        errors = {i: sse(arrays[i], c, l) for i, (c, l) in zip(done, results)}
        total = sum(errors.values())
        row = {"seconds": seconds * len(arrays) / len(done), "sse": total,
               "extrapolated": len(done) < len(arrays), "done": len(done),
               "measured_seconds": seconds}
        if reference is None:
            reference = errors
        elif row["extrapolated"]:
            ratio = total / sum(reference[i] for i in done)
            row["sse"] = ratio * sum(reference.values())
        out[tool] = row
    return out


def whole_model_tools(gpu: bool, faiss_gpu: bool) -> dict:
    """Return the tools fast enough to cluster a whole FaceNet: ours (one batched call), faiss, flash1dkmeans."""
    def batched(method, device):
        def run(arrays, k):
            return [(r.codebook, r.labels) for r in engine.cluster_arrays(arrays, k, method=method, device=device)]
        return run

    def each(runner):
        return lambda arrays, k: [runner(a, k) for a in arrays]

    tools = {f"gpucompress {m} (cpu)": batched(m, "cpu") for m in engine.METHODS}
    if gpu:
        tools.update({f"gpucompress {m} (gpu)": batched(m, "gpu") for m in engine.METHODS})
    tools["faiss (cpu)"] = each(faiss_runner("cpu"))
    if faiss_gpu:
        tools["faiss (gpu)"] = each(faiss_runner("gpu"))
    tools["flash1dkmeans"] = each(flash1dkmeans_runner)
    return tools
