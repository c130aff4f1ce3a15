"""Build tests/data/archive_v1.gpcz: a tiny version-1 archive (written by the version-1 writer, at commit 70df64a).

Kept to pin that archives written before per-channel codebooks still read
(tests/test_granularity.py). Run: python tests/data/make_archive_v1.py
"""
from pathlib import Path

import numpy

from gpucompress.clustering import cluster_weights
from gpucompress.models.graphdef import GraphDefModel
from gpucompress.options import CompressOptions
from gpucompress.packing import encode_model
from tests.conftest import const_node, graphdef_of


def tiny_graph():
    """Return the GraphDefModel the fixture was packed from: two float32 Consts with NaN and zeros."""
    rng = numpy.random.default_rng(17)
    weights = rng.normal(size=(6, 40)).astype(numpy.float32)
    weights[0, :3] = [numpy.nan, 0.0, -numpy.inf]
    other = rng.laplace(size=(30, 10)).astype(numpy.float32)
    return GraphDefModel(graphdef_of(const_node("w", weights), const_node("v", other)))


if __name__ == "__main__":
    model = tiny_graph()
    run = cluster_weights(model.weights(), CompressOptions(n_clusters=8, device="cpu"))
    model.replace_values({t.name: t.values() for t in run.clustered()})
    data, _ = encode_model(model, run, {"producer": "gpucompress, archive version 1"})
    Path(__file__).with_name("archive_v1.gpcz").write_bytes(data)
