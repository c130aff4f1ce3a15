"""The `faiss` engine: the same job as engine.cluster_arrays, done by faiss' k-means.

Offered because it is what many users would reach for. It is not the default:
faiss clusters float32 copies of the values, subsamples to
max_points_per_centroid=256 points per centroid before training (its default),
runs a fixed number of iterations without a convergence test, and its results
differ between faiss-cpu and faiss-gpu and between faiss versions (floating-point
reductions in a different order), so they are not bit-identical across devices.
faiss is imported only when this engine is used (the `faiss` extra installs
faiss-cpu; install faiss-gpu yourself for the GPU).
"""
from __future__ import annotations

import logging
import time
from typing import Callable, Sequence

import numpy

from .engine import ClusterResult, _check_arrays, label_dtype
from .errors import DeviceError, OptionsError

log = logging.getLogger(__name__)

# faiss.Kmeans' own defaults, kept so the engine behaves as faiss does out of the box.
FAISS_ITERATIONS = 25
FAISS_POINTS_PER_CENTROID = 256


def import_faiss():
    """Return the faiss module; raises OptionsError with the install line when it is missing."""
    try:
        import faiss
    except ImportError:
        raise OptionsError("engine='faiss' needs faiss: pip install 'gpucompress[faiss]' "
                           "(faiss-cpu) or faiss-gpu") from None
    return faiss


def faiss_device(faiss, device: str) -> str:
    """Return "gpu" when faiss should train on a GPU for a device option ("auto", "cpu", "gpu").

    Raises DeviceError for "gpu" when this faiss build sees no GPU.
    """
    gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if device == "gpu" and gpus == 0:
        raise DeviceError("--engine faiss --device gpu: this faiss build sees no GPU (install faiss-gpu)")
    return "gpu" if device != "cpu" and gpus > 0 else "cpu"


def cluster_arrays(
    arrays: Sequence[numpy.ndarray],
    n_clusters: int = 256,
    *,
    max_iter: int = 300,
    device: str = "auto",
    seed: int = 0,
    on_batch: Callable[[int], None] | None = None,
    **_ignored,
) -> list[ClusterResult]:
    """Cluster the values of each array with faiss.Kmeans (d=1), one call per array.

    arrays: floating NumPy arrays, finite values, flattened. n_clusters: k >= 2.
    max_iter: caps faiss' iterations (min(max_iter, 25); faiss always runs all
    of them). device: "auto" (GPU when faiss sees one), "cpu" or "gpu". seed:
    faiss' sampling and init seed. Other engine arguments (init, method,
    batch_values) do not apply and are ignored. Returns one ClusterResult per
    array (sorted codebook, float64; labels by nearest centroid;
    converged=False since faiss never tests convergence). Raises OptionsError
    when faiss is missing or arguments are bad, DeviceError as faiss_device.
    """
    if not isinstance(n_clusters, int) or n_clusters < 2:
        raise OptionsError(f"n_clusters={n_clusters!r} should be an integer >= 2.")
    if not isinstance(max_iter, int) or max_iter < 0:
        raise OptionsError(f"max_iter={max_iter!r} should be an integer >= 0.")
    faiss = import_faiss()
    on_gpu = faiss_device(faiss, device) == "gpu"
    iterations = max(min(max_iter, FAISS_ITERATIONS), 1)
    dtype = label_dtype(n_clusters)
    results = []
    for values in _check_arrays(arrays):
        started = time.perf_counter()
        points = values.astype(numpy.float32).reshape(-1, 1)
        kmeans = faiss.Kmeans(1, n_clusters, niter=iterations, seed=seed, gpu=on_gpu, verbose=False,
                              max_points_per_centroid=FAISS_POINTS_PER_CENTROID,
                              min_points_per_centroid=1)  # 1: no stderr warning on small tensors
        kmeans.train(points)
        codebook = numpy.sort(kmeans.centroids.reshape(-1).astype(numpy.float64))
        results.append(ClusterResult(codebook=codebook, labels=nearest(values, codebook).astype(dtype),
                                     iterations=iterations, converged=False))
        log.debug("faiss k-means of %d values: %.3f s", values.size, time.perf_counter() - started)
        if on_batch is not None:
            on_batch(1)
    return results


def nearest(values: numpy.ndarray, codebook: numpy.ndarray) -> numpy.ndarray:
    """Return the index of the nearest codebook entry for each value (codebook sorted ascending).

    Ties go to the lower index. values: float64 (n,); returns int64 (n,).
    """
    midpoints = (codebook[1:] + codebook[:-1]) / 2
    return numpy.searchsorted(midpoints, values, side="left")
