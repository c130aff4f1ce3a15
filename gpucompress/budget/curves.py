"""Per-tensor rate-distortion curves: SSE and archive bytes at each codebook size, and kept exact.

How the SSE is measured: one batched engine run per k (cluster_weights at
that k for every tensor), not the optimal method's DP layers. The DP's
layers would be nearly free but are not the numbers a run produces: the bins
depend on k (bin_count(n, k)), the banded DP (k >= 128) keeps each layer only
near k's own borders, and Lloyd then refines the DP's answer. One run per k
gives the SSE and the labels (so the index entropy) that compress and pack
will produce with that k, exactly: a tensor's result depends on its own
values only, never on its batch. The runs cost sum over k of a run at k: on
the FaceNet-shaped graph about 2x one k=256 run (benchmarks/budget.py).

Archive bytes follow codec/archive.py: the index stream as the archive's
coders write it (entropy.encode_indices with pack's default speed tolerance:
exact, for about one encode per k; the entropy bound plus ans's count table,
or bit-packed where smaller, without encode), the codebook (k x itemsize),
non-finite positions and values, and a manifest entry. A tensor kept exact
stays in the zstd-compressed skeleton (its bytes compressed with zstd alone),
or, with no more distinct values than n_clusters, is indexed exactly.
Plan.measure (plan.py) checks the prediction by encoding the archive.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy

from ..clustering import TensorOutcome, cluster_weights
from ..codec import bitpack, entropy
from ..codec import codebooks as codebook_sections
from ..options import CompressOptions

# Bytes a coded tensor adds to the zstd-compressed manifest (its entry and section list rows),
# and the manifest's own: measured on FaceNet-shaped archives (about 18 bytes a tensor there).
MANIFEST_ENTRY_BYTES = 20
MANIFEST_BYTES = 100
# zstd level of the kept-exact estimate: the skeleton's own level (19) runs at a few MB/s,
# too slow to run on every tensor; on float weights level 9 is within about 1% of it.
EXACT_ZSTD_LEVEL = 9
# A zstd frame's own bytes (magic, header, block header), which a tensor inside the skeleton's one
# frame does not pay: a tiny tensor's estimate is its bytes compressed, less this, at most its bytes.
ZSTD_FRAME_BYTES = 9
# Kept-exact tensors up to this size are priced as compressed together (_share_skeleton).
SMALL_BYTES = 1 << 16


def skeleton_bytes(data: bytes) -> float:
    """Return the predicted bytes that data adds to the zstd-compressed skeleton."""
    return float(min(len(data), len(entropy.zstd_compress(data, EXACT_ZSTD_LEVEL)) - ZSTD_FRAME_BYTES))


@dataclass(frozen=True)
class TensorCurve:
    """One tensor's rate-distortion curve.

    ks: codebook sizes, ascending (those below the tensor's distinct values).
    sse[i], bytes[i]: float64 SSE of the finite
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


def _share_skeleton(curves: list[TensorCurve], small: list[tuple[int, bytes]]) -> None:
    """Scale the kept-exact bytes of small skeleton tensors to what they take compressed together.

    In the skeleton's one zstd frame (level 19) small tensors of like values
    (batch-norm vectors) share context; compressed one by one each looks
    larger. The joint size of all of them, split in proportion to the single
    estimates, is what a plan keeping many of them exact pays.
    """
    from ..codec.archive import SKELETON_ZSTD_LEVEL

    if len(small) < 2:
        return
    single = sum(curves[i].exact_bytes for i, _ in small)
    joint = len(entropy.zstd_compress(b"".join(data for _, data in small), SKELETON_ZSTD_LEVEL)) - ZSTD_FRAME_BYTES
    if single <= 0 or joint >= single:
        return
    for i, _ in small:
        curves[i] = replace(curves[i], exact_bytes=curves[i].exact_bytes * joint / single)


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


def coded_bytes(outcome: TensorOutcome, *, encode: bool = True,
                speed_tolerance: float = entropy.SPEED_TOLERANCE) -> float:
    """Return the predicted archive bytes of a clustered tensor (see the module's docstring).

    encode: measure the index stream by encoding it as the archive will
    (exact; costs an ans and a zstd pass); else its entropy bound.
    """
    k = outcome.codebook.shape[-1]  # the index alphabet (per-channel codebooks: a row's size)
    counts = numpy.bincount(outcome.labels.reshape(-1), minlength=k)
    itemsize = outcome.codebook.dtype.itemsize
    nonfinite = 0 if outcome.nonfinite_index is None else outcome.nonfinite_index.size
    if encode:
        # The stream the archive will hold: the same coders and the same choice among them.
        stream = float(len(entropy.encode_indices(outcome.labels.reshape(-1), k, speed_tolerance)[1]))
    else:
        table = 4 + _varint_bytes(counts)  # ans: u32 length, then one varint per codebook entry
        # The archive takes the smallest coder: bit-packing wins on small tensors, where ans's table weighs.
        stream = min(entropy.entropy_bytes(outcome.labels, k) + table,
                     float(bitpack.packed_size(outcome.size, bitpack.bits_for(k))))
    # pack leaves a tensor whose coding would not pay in the skeleton, clustered (packing._worth_coding).
    codebook = codebook_sections.coded_size(outcome.codebook)
    if not _worth_coding(outcome, itemsize, nonfinite, codebook):
        return skeleton_bytes(outcome.values().tobytes())
    return stream + codebook + nonfinite * (8 + itemsize) + MANIFEST_ENTRY_BYTES


def _worth_coding(outcome: TensorOutcome, itemsize: int, nonfinite: int, codebook_bytes: int) -> bool:
    """Return packing._worth_coding's answer for a clustered tensor with its own codebook (of
    codebook_bytes in the archive)."""
    from ..codec.archive import CodedTensor
    from ..packing import _worth_coding as worth

    k = outcome.codebook.shape[-1]
    if (entropy.entropy_bytes(outcome.labels, k) + 3 * outcome.codebook.nbytes + 96) < outcome.size * itemsize / 2:
        return True  # far from the line: skip building the record
    tensor = CodedTensor(outcome.name, outcome.dtype, outcome.shape, outcome.codebook, outcome.labels,
                         numpy.zeros(nonfinite, numpy.int64), None, outcome.channel_axis, outcome.group_size)
    return worth(tensor, outcome.size * itemsize, codebook_bytes)


def exact_bytes(values: numpy.ndarray, n_clusters: int, max_distinct: int | None = None) -> float:
    """Return the predicted archive bytes of a tensor kept exact.

    As pack does: a tensor with no more distinct values than n_clusters is
    indexed exactly (its distinct values as the codebook, packing.index_exactly)
    when packing._worth_coding says it pays, its stream measured by encoding;
    any other stays in the skeleton (its bytes, zstd-compressed).
    max_distinct: the weight's bound on distinct values (default its size).
    """
    from ..packing import _worth_coding, index_exactly

    raw = skeleton_bytes(numpy.ascontiguousarray(values).tobytes())
    flat = values.reshape(-1)
    distinct = numpy.unique(flat.view(f"<u{flat.dtype.itemsize}")).size
    if distinct > n_clusters:
        return raw
    tensor = index_exactly("exact", str(values.dtype), values)
    stored = (flat.size if max_distinct is None else max_distinct) * flat.dtype.itemsize
    if tensor is None:
        return raw
    codebook = codebook_sections.coded_size(tensor.codebook)
    if not _worth_coding(tensor, stored, codebook):
        return raw
    stream = len(entropy.encode_indices(tensor.indices.reshape(-1), tensor.codebook.size)[1])
    itemsize = flat.dtype.itemsize
    return float(stream + codebook + tensor.nonfinite_index.size * (8 + itemsize)
                 + MANIFEST_ENTRY_BYTES)


def fixed_archive_bytes(model, names: list[str]) -> float:
    """Return the predicted bytes of an archive holding none of `names`' values: header, an empty
    manifest's share, and the skeleton without them (zstd at the archive's level)."""
    from ..codec.archive import HEADER, SKELETON_ZSTD_LEVEL

    skeleton = model.to_skeleton(names)
    return float(HEADER.size + MANIFEST_BYTES + len(entropy.zstd_compress(skeleton, SKELETON_ZSTD_LEVEL)))


def measure_curves(model, options: CompressOptions, *, on_progress=None, weighing: dict | None = None) -> CurveSet:
    """Return the curves of every tensor that options would cluster at k=2, for k up to options.n_clusters.

    Each k is one uniform run (options with n_clusters=k): a tensor with no
    more distinct values than k has no point at k (it is exact there: its
    "kept exact" point covers it). model: a read model (gpucompress.models);
    its values are not changed. options: per-tensor codebooks (global_clusters
    is refused by the caller). on_progress(finished, total, what): called per
    k. weighing: cluster_weights' importance and importance_source (the
    run's importances): every run clusters as the final one will, and a
    point's distortion is the tensor's importance-weighted SSE. Raises what
    cluster_weights raises.
    """
    ks = curve_ks(options.n_clusters)
    weights = model.weights()
    started = time.perf_counter()
    progress = on_progress or (lambda finished, total, what: None)
    rows: dict[str, dict] = {}
    names: list[str] = []
    for step, k in enumerate(ks):  # k=2 first: it decides which tensors are candidates
        progress(step, len(ks), f"curves: k={k}")
        run = cluster_weights(weights, replace(options, n_clusters=k), **(weighing or {}))
        for outcome in run.clustered():
            row = rows.setdefault(outcome.name, {"outcome": outcome, "points": []})
            distortion = outcome.sse if outcome.weighted_sse is None else outcome.weighted_sse
            row["points"].append((k, float(coded_bytes(outcome)), float(distortion)))
        if not names:
            names = [t.name for t in run.clustered()]
        del run
    runs = time.perf_counter()
    by_name = {w.name: w for w in weights}
    curves, small = [], []
    for name in names:
        row = rows[name]
        outcome = row["outcome"]
        ks_t, bytes_t, sse_t = zip(*row["points"])
        values = by_name[name].load()
        exact = exact_bytes(values, options.n_clusters, by_name[name].max_distinct)
        if values.nbytes <= SMALL_BYTES and exact == skeleton_bytes(values.tobytes()):
            small.append((len(curves), values.tobytes()))
        curves.append(TensorCurve(
            name=name, dtype=outcome.dtype, size=outcome.size, sum_squares=outcome.sum_squares, ks=ks_t,
            sse=sse_t, bytes=bytes_t, exact_bytes=exact))
    _share_skeleton(curves, small)
    progress(len(ks), len(ks), "curves: done")
    fixed = fixed_archive_bytes(model, names)
    done = time.perf_counter()
    return CurveSet(curves, fixed, ks, {"runs": runs - started, "exact": done - runs})
