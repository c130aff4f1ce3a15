"""Build tests/data/archive_v2.gpcz: a tiny version-2 archive (written by the version-2 writer, at commit 54e0a57).

Kept to pin that archives written before codebook sections could be delta-coded
(version 3) still read (tests/test_codec.py). It holds a per-channel float32
kernel and a per-tensor float16 matrix. Run (with a version-2 writer):
python tests/data/make_archive_v2.py
"""
from pathlib import Path

import numpy

from gpucompress.clustering import cluster_weights
from gpucompress.models.graphdef import GraphDefModel
from gpucompress.options import CompressOptions
from gpucompress.packing import encode_model
from tests.conftest import const_node, graphdef_of

# sha256 of the GraphDef the archive unpacks to (the clustered model it was packed from).
UNPACKED_SHA256 = "8dad9e29f77e7f6ebcff66c08de90804921cae16d42f754457f7fe4377b8167d"


def tiny_graph():
    """Return the GraphDefModel the fixture was packed from: a channel-scaled kernel and a float16 matrix."""
    rng = numpy.random.default_rng(23)
    kernel = (rng.normal(size=(3, 3, 4, 24)) * numpy.exp(rng.uniform(0, 2, 24))).astype(numpy.float32)
    half = rng.laplace(size=(40, 30)).astype(numpy.float16)
    return GraphDefModel(graphdef_of(const_node("kernel", kernel), const_node("half", half)))


if __name__ == "__main__":
    model = tiny_graph()
    run = cluster_weights(model.weights(), CompressOptions(n_clusters=8, granularity="per-channel", device="cpu"))
    model.replace_values({t.name: t.values() for t in run.clustered()})
    data, _ = encode_model(model, run, {"producer": "gpucompress, archive version 2"})
    Path(__file__).with_name("archive_v2.gpcz").write_bytes(data)
