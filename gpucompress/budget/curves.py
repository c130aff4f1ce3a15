"""Per-tensor rate-distortion curves: SSE and archive bytes at each codebook size, and kept exact.

How the SSE is measured: one batched engine run per k (cluster_weights with
every candidate at that k), not the optimal method's DP layers. The DP's
layers would be nearly free but are not the numbers a run produces: the bins
depend on k (bin_count(n, k)), the banded DP (k >= 128) keeps each layer only
near k's own borders, and Lloyd then refines the DP's answer. One run per k
gives the SSE and the labels (so the index entropy) that compress and pack
will produce with that k, exactly: a tensor's result depends on its own
values only, never on its batch. The runs cost sum over k of a run at k: on
the FaceNet-shaped graph about 2x one k=256 run (benchmarks/budget.py).

Archive bytes follow codec/archive.py: the index stream at its entropy bound
(n x entropy; the ans coder is within 0.3% of it) plus ans's count table (4
bytes and a LEB128 varint per codebook entry), or bit-packed when that is
smaller (small tensors), the codebook (k x itemsize),
non-finite positions and values, and a manifest entry. A tensor kept exact
stays in the zstd-compressed skeleton: its bytes compressed with zstd alone.
Plan.measure (plan.py) checks the prediction by encoding the archive.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy

from ..clustering import TensorOutcome, cluster_weights
from ..codec import bitpack, entropy
from ..options import CompressOptions

# Bytes a coded tensor adds to the zstd-compressed manifest (its entry and section list rows),
# and the manifest's own: measured on FaceNet-shaped archives (about 18 bytes a tensor there).
MANIFEST_ENTRY_BYTES = 20
MANIFEST_BYTES = 100
# zstd level of the kept-exact estimate: the skeleton's own level (19) runs at a few MB/s,
# too slow to run on every tensor; on float weights level 9 is within about 1% of it.
EXACT_ZSTD_LEVEL = 9


@dataclass(frozen=True)
class TensorCurve:
    """One tensor's rate-distortion curve.

    ks: codebook sizes, ascending. sse[i], bytes[i]: float64 SSE of the finite
    values and predicted archive bytes with codebook size ks[i]. exact_bytes:
    predicted bytes when kept exact (SSE 0). size: values; sum_squares: float64
    sum of the squared finite values (relative errors divide by it).
    """

    name: str
    dtype: str
    size: int
    sum_squares: float
    ks: tuple[int, ...]
    sse: tuple[float, ...]
    bytes: tuple[float, ...]
    exact_bytes: float

    def points(self) -> list[tuple[int | None, float, float]]:
        """Return every choice as (k or None for kept exact, bytes, SSE), cheapest k first, exact last."""
        return [*zip(self.ks, self.bytes, self.sse), (None, self.exact_bytes, 0.0)]


@dataclass
class CurveSet:
    """The curves of a model's clustered tensors, in model order.

    fixed_bytes: predicted archive bytes that no choice changes (header,
    manifest, the skeleton without the candidate tensors). seconds: "runs"
    (the per-k engine runs) and "exact" (the kept-exact estimates).
    """

    curves: list[TensorCurve]
    fixed_bytes: float
    ks: tuple[int, ...]
    seconds: dict[str, float] = field(default_factory=dict)


def curve_ks(n_clusters: int) -> tuple[int, ...]:
    """Return the codebook sizes of a curve: 2, 4, 8, ... below n_clusters, then n_clusters itself."""
    ks, k = [], 2
    while k < n_clusters:
        ks.append(k)
        k *= 2
    return tuple(ks + [n_clusters])


def _varint_bytes(counts: numpy.ndarray) -> int:
    counts = numpy.maximum(counts.astype(numpy.int64), 1)
    return int(numpy.sum(numpy.floor(numpy.log2(counts) / 7).astype(numpy.int64) + 1))


def coded_bytes(outcome: TensorOutcome) -> float:
    """Return the predicted archive bytes of a clustered tensor (see the module's docstring)."""
    k = outcome.codebook.size
    counts = numpy.bincount(outcome.labels.reshape(-1), minlength=k)
    itemsize = outcome.codebook.dtype.itemsize
    nonfinite = 0 if outcome.nonfinite_index is None else outcome.nonfinite_index.size
    table = 4 + _varint_bytes(counts)  # ans: u32 length, then one varint per codebook entry
    # The archive takes the smallest coder: bit-packing wins on small tensors, where ans's table weighs.
    stream = min(entropy.entropy_bytes(outcome.labels, k) + table,
                 float(bitpack.packed_size(outcome.size, bitpack.bits_for(k))))
    return stream + k * itemsize + nonfinite * (8 + itemsize) + MANIFEST_ENTRY_BYTES


def exact_bytes(values: numpy.ndarray) -> float:
    """Return the predicted archive bytes of a tensor kept exact: its bytes, zstd-compressed."""
    return float(len(entropy.zstd_compress(numpy.ascontiguousarray(values).tobytes(), EXACT_ZSTD_LEVEL)))


def fixed_archive_bytes(model, names: list[str]) -> float:
    """Return the predicted bytes of an archive holding none of `names`' values: header, an empty
    manifest's share, and the skeleton without them (zstd at the archive's level)."""
    from ..codec.archive import HEADER, SKELETON_ZSTD_LEVEL

    skeleton = model.to_skeleton(names)
    return float(HEADER.size + MANIFEST_BYTES + len(entropy.zstd_compress(skeleton, SKELETON_ZSTD_LEVEL)))


def measure_curves(model, options: CompressOptions, *, on_progress=None) -> CurveSet:
    """Return the curves of every tensor that options would cluster, for k up to options.n_clusters.

    model: a read model (gpucompress.models); its values are not changed.
    options: per-tensor codebooks (global_clusters is refused by the caller).
    on_progress(finished, total, what): called per k. Raises what cluster_weights raises.
    """
    ks = curve_ks(options.n_clusters)
    weights = model.weights()
    started = time.perf_counter()
    progress = on_progress or (lambda finished, total, what: None)
    rows: dict[str, dict] = {}
    names: list[str] = []
    for step, k in enumerate(reversed(ks)):  # the largest k first: it decides which tensors are candidates
        progress(step, len(ks), f"curves: k={k}")
        clusters = None if not names else {name: k for name in names}
        run = cluster_weights(weights, options, clusters=clusters)
        for outcome in run.clustered():
            row = rows.setdefault(outcome.name, {"outcome": outcome, "sse": {}, "bytes": {}})
            row["sse"][k] = outcome.sse
            row["bytes"][k] = coded_bytes(outcome)
        if not names:
            names = [t.name for t in run.clustered()]
        del run
    runs = time.perf_counter()
    by_name = {w.name: w for w in weights}
    curves = []
    for name in names:
        row, weight = rows[name], by_name[name]
        outcome = row["outcome"]
        curves.append(TensorCurve(
            name=name, dtype=outcome.dtype, size=outcome.size, sum_squares=outcome.sum_squares, ks=ks,
            sse=tuple(float(row["sse"][k]) for k in ks), bytes=tuple(float(row["bytes"][k]) for k in ks),
            exact_bytes=exact_bytes(weight.load())))
    progress(len(ks), len(ks), "curves: done")
    fixed = fixed_archive_bytes(model, names) if names else fixed_archive_bytes(model, [])
    done = time.perf_counter()
    return CurveSet(curves, fixed, ks, {"runs": runs - started, "exact": done - runs})
