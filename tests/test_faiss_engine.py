"""The faiss engine (--engine faiss): same result shape as ours, nearest-centroid labels, clear errors."""
import sys

import numpy
import pytest

from gpucompress import faiss_engine
from gpucompress.errors import OptionsError
from gpucompress.options import CompressOptions

pytest.importorskip("faiss")


def test_labels_point_to_the_nearest_centroid_of_a_sorted_codebook():
    rng = numpy.random.default_rng(0)
    arrays = [rng.laplace(size=5000).astype(numpy.float32), rng.normal(size=(30, 40))]
    results = faiss_engine.cluster_arrays(arrays, 16, device="cpu")
    for array, result in zip(arrays, results):
        values = array.reshape(-1).astype(numpy.float64)
        assert result.codebook.shape == (16,) and result.labels.dtype == numpy.uint8
        assert numpy.all(numpy.diff(result.codebook) >= 0)
        distances = numpy.abs(values[:, None] - result.codebook[None, :])
        chosen = distances[numpy.arange(values.size), result.labels]
        assert numpy.array_equal(chosen, distances.min(axis=1))


def test_same_seed_same_result_on_cpu():
    values = numpy.random.default_rng(1).laplace(size=20000)
    first, second = (faiss_engine.cluster_arrays([values], 256, device="cpu", seed=3)[0] for _ in range(2))
    assert numpy.array_equal(first.codebook, second.codebook)
    assert numpy.array_equal(first.labels, second.labels)


def test_missing_faiss_is_one_clear_options_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # makes `import faiss` raise ImportError
    with pytest.raises(OptionsError, match=r"pip install 'gpucompress\[faiss\]'"):
        faiss_engine.cluster_arrays([numpy.arange(100.0)], 4)


def test_engine_option_is_validated():
    assert CompressOptions(engine="faiss").engine == "faiss"
    with pytest.raises(OptionsError, match="engine='sklearn' should be one of gpucompress, faiss"):
        CompressOptions(engine="sklearn")
