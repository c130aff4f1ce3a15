"""The 2016 algorithm, reimplemented faithfully, timed on a sample and extrapolated.

The Deep Compression script of 2016 fitted scikit-learn
KMeans(init="random", n_init=2, max_iter=300) on each tensor, then replaced
every weight with `np.vectorize` over a per-element `km.predict` call. We run
exactly that on a few tensors (the per-element replacement on a prefix of
each, since it costs the same per element), measure seconds per weight, and
extrapolate to the whole graph. The extrapolation is linear in weights, which
flatters the baseline: k-means on a larger tensor needs more, not fewer,
iterations per weight.
"""
from __future__ import annotations

import time

import numpy

REPORTED_SECONDS = 8 * 3600  # "about 8 hours on a p2.xlarge", as reported for FaceNet


def fit_2016(values: numpy.ndarray, k: int, seed: int = 0):
    """Return the fitted scikit-learn KMeans of the 2016 script for a 1-D float array."""
    from sklearn.cluster import KMeans

    return KMeans(n_clusters=k, init="random", n_init=2, max_iter=300, random_state=seed).fit(
        values.reshape(-1, 1))


def replace_2016(values: numpy.ndarray, model) -> numpy.ndarray:
    """Return values replaced by their centroid, one `predict` call per element (the 2016 way)."""
    centers = model.cluster_centers_.reshape(-1)
    per_element = numpy.vectorize(lambda w: centers[model.predict(numpy.array([[w]]))[0]])
    return per_element(values)


def measure(arrays: dict[str, numpy.ndarray], k: int, replace_sample: int = 2000) -> dict:
    """Time the 2016 algorithm on `arrays`; return per-tensor rows and seconds per weight.

    replace_sample: elements per tensor replaced one by one (the rest are
    extrapolated at the measured cost per element).
    """
    rows, fit_seconds, fit_weights, replace_seconds, replaced = [], 0.0, 0, 0.0, 0
    for name, values in arrays.items():
        started = time.perf_counter()
        model = fit_2016(values, k)
        fitted = time.perf_counter()
        prefix = values[:replace_sample]
        replace_2016(prefix, model)
        done = time.perf_counter()
        rows.append({"tensor": name, "n": int(values.size), "k": k, "fit_seconds": fitted - started,
                     "replace_seconds_per_element": (done - fitted) / prefix.size,
                     "iterations": int(model.n_iter_)})
        fit_seconds += fitted - started
        fit_weights += values.size
        replace_seconds += done - fitted
        replaced += prefix.size
    per_weight = fit_seconds / fit_weights + replace_seconds / replaced
    return {"rows": rows, "seconds_per_weight": per_weight,
            "fit_seconds_per_weight": fit_seconds / fit_weights,
            "replace_seconds_per_weight": replace_seconds / replaced}
