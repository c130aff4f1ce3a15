"""Pack a model into a `.gpcz` archive (cluster, index, entropy-code) and unpack it again.

`pack_file` clusters exactly as `compress_file` does; `unpack_file` and
`read_archive` give back the model that `compress` would have written with the
same options, byte for byte (pack checks this before it writes anything): the
same file for a GraphDef, `.keras` or `.h5`; for a SavedModel folder, the same
file names with the same bytes in each.
"""
from __future__ import annotations

import io
import os
import tarfile
import time
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy

from . import device as devices
from .api import path_bytes, path_zip_size, pieces_zip_size
from .clustering import ClusteringRun, TensorOutcome, cluster_weights
from .importance import gather_importance
from .codec import archive as archives
from .codec import codebooks as codebook_sections
from .codec import entropy
from .errors import FormatError, GpucompressError, InputError, OptionsError
from .files import check_output_path, overwriting, read_input_file, write_atomic
from .models import HDF5_SUFFIXES, apply_clustered, default_output, defer_values, model_class, model_pieces, read_model
from .options import CompressOptions
from .select import CLUSTER

ARCHIVE_SUFFIX = ".gpcz"
# Tensors that clustering left alone because they already have few values are
# indexed exactly: their distinct values (bit patterns) become the codebook.
ALREADY_FEW = "no more distinct values than the codebook"
MAX_ARCHIVE_BYTES = 1 << 32


@dataclass
class PackSummary:
    """What `pack_file` did. sizes (bytes): "original", "original_zip", "min", "min_zip", "archive",
    "bound" (entropy bound of the indexed tensors plus their codebooks), "rest" (zstd of the
    model without them). coders: how many tensors each coder took (and "kept": left in the
    skeleton because coding them would not pay). seconds: "parse", "cluster", "encode",
    "verify", "zip", "total"."""

    input_path: Path
    output_path: Path
    device: str
    run: ClusteringRun
    coded: int
    coders: Counter
    sizes: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def default_archive_output(path: str | os.PathLike) -> Path:
    """Return the default archive path: `model.pb` -> `model.pb.gpcz`."""
    path = Path(path)
    return path.with_name(path.name + ARCHIVE_SUFFIX)


def default_unpack_output(path: str | os.PathLike, format_name: str = "graphdef") -> Path:
    """Return the default unpack path, the name `compress` gives the archived model.

    `model.pb.gpcz` -> `model.pb.min`; `model.keras.gpcz` -> `model.min.keras`;
    `model.h5.gpcz` -> `model.min.h5`; `model.tflite.gpcz` -> `model.min.tflite`;
    a SavedModel's `saved.gpcz` -> `saved.min`.
    format_name: the archive's model format.
    """
    path = Path(path)
    stem = path.name[: -len(ARCHIVE_SUFFIX)] if path.name.endswith(ARCHIVE_SUFFIX) else path.name
    return default_output(path.with_name(stem), folder=format_name not in ("keras", "h5", "tflite"))


def _suffix_format(path: Path) -> str | None:
    """Return the format a file name's ending claims ("keras", "h5"), or None."""
    lower = path.name.lower()
    if lower.endswith(".keras"):
        return "keras"
    if lower.endswith(HDF5_SUFFIXES):
        return "h5"
    return None


def check_unpack_output(output_path: Path, format_name: str) -> None:
    """Raise InputError when an output name would hide the archived model's format.

    A Keras archive unpacks to `*.keras`, an HDF5 one to `*.h5` / `*.hdf5`; a
    GraphDef or a SavedModel folder never to a name with those endings.
    """
    claimed = _suffix_format(output_path)
    if claimed == format_name or (claimed is None and format_name not in ("keras", "h5")):
        return
    wanted = {"keras": "a name ending in .keras", "h5": "a name ending in .h5 or .hdf5"}
    names = {"keras": "a Keras (.keras) model", "h5": "a Keras HDF5 (.h5) model", "savedmodel": "a SavedModel",
             "graphdef": "a frozen GraphDef"}
    hint = wanted.get(format_name, "a name without a .keras, .h5 or .hdf5 ending")
    raise InputError(f"{output_path}: the archive holds {names.get(format_name, format_name)}, "
                     f"the output needs {hint}")


def _content_sizes(model, zipped: bool) -> tuple[int, int | None]:
    """Return (bytes, zip bytes or None) of what `model.to_bytes()` gives.

    A SavedModel's bytes are a tar of its files: count the files, not the tar.
    A GraphDef streams (serialized twice, never held whole).
    """
    if model.format_name != "savedmodel":
        if not zipped:
            return sum(len(piece) for piece in model_pieces(model)), None
        return pieces_zip_size(lambda: model_pieces(model), "model")
    data = model.to_bytes()
    total, buffer = 0, io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar, \
            zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for member in tar.getmembers():
            if member.isfile():
                content = tar.extractfile(member).read()
                total += len(content)
                if zipped:
                    archive.writestr(member.name, content)
    return total, (buffer.tell() if zipped else None)


def same_bytes(first, second) -> bool:
    """Return whether two iterables of byte pieces hold the same bytes (pieces may split differently).

    Compares as it goes: holds at most one piece of each side.
    """
    first = (memoryview(piece) for piece in first if len(piece))
    second = (memoryview(piece) for piece in second if len(piece))
    left = right = memoryview(b"")
    while True:
        if not left:
            left = next(first, None)
        if not right:
            right = next(second, None)
        if left is None or right is None:
            return left is None and right is None
        n = min(len(left), len(right))
        if left[:n] != right[:n]:
            return False
        left, right = left[n:], right[n:]


def index_exactly(name: str, dtype: str, values: numpy.ndarray) -> archives.CodedTensor | None:
    """Return a tensor as its exact distinct values (by bit pattern, so -0.0 and NaN payloads
    survive) and indices; non-finite values go to the exceptions. None when it has no finite
    value or more than 65536 distinct ones."""
    flat = values.reshape(-1)
    unsigned = flat.view(f"<u{flat.dtype.itemsize}")
    finite = numpy.isfinite(flat.astype(numpy.float64))
    codebook_bits, inverse = numpy.unique(unsigned[finite], return_inverse=True)
    if not 1 <= codebook_bits.size <= archives.MAX_CODEBOOK:
        return None
    indices = numpy.zeros(flat.size, dtype=numpy.uint8 if codebook_bits.size <= 256 else numpy.uint16)
    indices[finite] = inverse.reshape(-1)
    nonfinite_index = numpy.flatnonzero(~finite)
    return archives.CodedTensor(name, dtype, tuple(values.shape), codebook_bits.view(flat.dtype), indices,
                                nonfinite_index, flat[nonfinite_index].copy())


def _from_outcome(outcome: TensorOutcome) -> archives.CodedTensor:
    nonfinite_index = outcome.nonfinite_index if outcome.nonfinite_index is not None else numpy.zeros(0, numpy.int64)
    return archives.CodedTensor(outcome.name, outcome.dtype, outcome.shape, outcome.codebook, outcome.labels,
                                nonfinite_index, outcome.nonfinite_values, outcome.channel_axis, outcome.group_size)


def _worth_coding(tensor: archives.CodedTensor, stored_bytes: int, codebook_share: float) -> bool:
    # Coded cost estimate: entropy of the indices, the ans count table, the codebook
    # (shared ones split between their users), the exceptions and the manifest entry.
    itemsize = tensor.codebook.dtype.itemsize
    k = tensor.codebook.shape[-1]
    estimate = (entropy.entropy_bytes(tensor.indices, k) + 2 * k
                + codebook_share + tensor.nonfinite_index.size * (8 + itemsize) + 96)
    return estimate < stored_bytes


def encode_model(model, run: ClusteringRun, info: dict | None = None,
                 speed_tolerance: float = entropy.SPEED_TOLERANCE) -> tuple[bytes, dict]:
    """Return (archive bytes, report) for a model whose clustered values are already in place.

    run: the ClusteringRun that produced them. speed_tolerance: see
    entropy.encode_indices (0 = smallest streams, slower unpack). The report holds "coders"
    (a Counter), "coded" (tensors indexed), "bound" and "rest" (bytes, see PackSummary).
    """
    weights = {w.name: w for w in model.weights()}
    candidates, fills = [], 0
    for outcome in run.tensors:
        weight = weights[outcome.name]
        if outcome.reason == CLUSTER:
            candidates.append(_from_outcome(outcome))
        elif outcome.reason == ALREADY_FEW and weight.floating and weight.max_distinct < weight.size:
            fills += 1  # a fill (few values repeated to the shape) stays a fill: never expanded
        elif outcome.reason == ALREADY_FEW and weight.floating:
            tensor = index_exactly(outcome.name, outcome.dtype, weights[outcome.name].load())
            if tensor is not None:
                candidates.append(tensor)
    users = Counter((t.dtype, t.codebook.tobytes()) for t in candidates)
    # What a codebook takes in the archive: raw or delta-coded, the smaller (codec.codebooks).
    codebook_bytes = {}
    for t in candidates:
        key = (t.dtype, t.codebook.tobytes())
        if key not in codebook_bytes:
            codebook_bytes[key] = codebook_sections.coded_size(t.codebook)
    # What each tensor takes in the model file: a format that knows says (an int8 TFLite weight is
    # clustered as float32 but stores one byte a value); else its stored values in the codebook's dtype.
    stored = model.stored_bytes() if hasattr(model, "stored_bytes") else {}
    coded = [t for t in candidates
             if _worth_coding(t, stored.get(t.name, weights[t.name].max_distinct * t.codebook.dtype.itemsize),
                              codebook_bytes[(t.dtype, t.codebook.tobytes())] / users[(t.dtype, t.codebook.tobytes())])]
    archive = archives.Archive(model.format_name, model.to_skeleton([t.name for t in coded]), coded, info or {})
    data = archives.write_archive(archive, speed_tolerance)
    # The rest: the skeleton without every candidate; the archive's own when all were coded (its
    # zstd section is already made: level 19 on a FaceNet skeleton takes ~0.2 s).
    rest = (archive.skeleton_section_bytes if len(coded) == len(candidates)
            else len(entropy.zstd_compress(model.to_skeleton([t.name for t in candidates]),
                                           archives.SKELETON_ZSTD_LEVEL)))
    bound = sum(entropy.entropy_bytes(t.indices, t.codebook.shape[-1]) for t in candidates)
    bound += sum(codebook_bytes.values())
    coders = Counter(archive.coders.values())
    coders["kept"] = len(candidates) - len(coded) + fills
    return data, {"coders": coders, "coded": len(coded), "bound": int(round(bound)), "rest": rest}


def decode_archive(data: bytes, *, source: str = "archive", lazy: bool = False):
    """Return the model stored in archive bytes (for a GraphDef: a GraphDefModel, `.graph_def`).

    lazy: see model_from_archive; the index streams are then also decoded one
    tensor at a time as the model is written (codec.archive.read_archive), and
    a stream that does not decode raises FormatError there.
    Raises FormatError for anything that is not a valid archive.
    """
    return model_from_archive(archives.read_archive(data, source=source, lazy=lazy), source=source, lazy=lazy)


def model_from_archive(archive: archives.Archive, *, source: str = "archive", lazy: bool = False):
    """Return the model an Archive (codec.archive.read_archive) holds. Raises FormatError.

    lazy: the tensors' values are made from their codebooks and indices only
    while the model is written (models.defer_values; `.graph_def` then lacks
    them), so the decoded values never all exist at once.
    """
    try:
        model = model_class(archive.format_name).from_skeleton(archive.skeleton)
    except FormatError as error:
        raise FormatError(f"{source}: {error}") from None
    weights = {w.name: w for w in model.weights()}
    for tensor in archive.tensors:
        weight = weights.get(tensor.name)
        if weight is None or weight.dtype != tensor.dtype or tuple(weight.shape) != tensor.shape:
            raise FormatError(f"{source}: tensor {tensor.name!r} does not match the model's weight")
    try:
        if lazy:
            for tensor in archive.tensors:
                defer_values(model, tensor.name, tensor.shape, tensor.values)
        else:
            model.replace_values({t.name: t.values() for t in archive.tensors})
    except (KeyError, ValueError) as error:
        raise FormatError(f"{source}: archive tensors do not fit the model ({error})") from None
    return model


def read_archive(source: str | os.PathLike | bytes | bytearray | memoryview):
    """Return the model stored in an archive, given its path or its bytes; nothing is written.

    Raises InputError (path) or FormatError (contents).
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        return decode_archive(bytes(source))
    path, data = read_input_file(source, max_bytes=MAX_ARCHIVE_BYTES)
    return decode_archive(data, source=str(path))


def pack_file(
    input_path: str | os.PathLike,
    output_path: str | os.PathLike | None = None,
    options: CompressOptions | None = None,
    *,
    overwrite: bool = False,
    zip_sizes: bool = True,
    speed_tolerance: float = entropy.SPEED_TOLERANCE,
    on_batch=None,
    on_progress=None,
    clusters: dict[str, int] | None = None,
) -> PackSummary:
    """Cluster a model file as `compress_file` does and write it as one archive.

    output_path: defaults to INPUT.gpcz. overwrite: replace an existing output
    (never the input). zip_sizes: also measure zip(original) and zip(.min).
    speed_tolerance: a faster-decoding index coder is picked when its stream is
    at most this fraction larger than the smallest (0: always the smallest).
    on_batch, on_progress: progress callbacks as compress_file's (phases
    "reading", "encoding", "verifying", "zip sizes"). clusters: a per-tensor k
    (a budget's Plan.clusters; see cluster_weights). Returns a PackSummary. Raises InputError, FormatError, OptionsError or
    DeviceError; no output file exists after an error.
    """
    options = options or CompressOptions()
    if not (isinstance(speed_tolerance, (int, float)) and 0.0 <= speed_tolerance <= 1.0):
        raise OptionsError(f"speed_tolerance={speed_tolerance!r} should be a fraction in [0, 1].")
    started = time.perf_counter()
    input_path = Path(input_path)
    if not input_path.exists():
        raise InputError(f"{input_path}: no such file or directory")
    output_path = Path(output_path) if output_path is not None else default_archive_output(input_path)
    check_output_path(output_path, [input_path], overwrite=overwrite)
    device = devices.resolve_device(options.device)
    options = CompressOptions(**{**options.__dict__, "device": device})
    progress = on_progress or (lambda finished, total, what: None)
    progress(0, 0, f"reading {input_path.name}")
    model = read_model(input_path)
    parsed = time.perf_counter()
    # New values are made per tensor while serializing (models.defer_values):
    # the model never holds every clustered tensor at once, nor old and new contents.
    importance, source = gather_importance(options, model)
    weighed = time.perf_counter()
    run = cluster_weights(model.weights(), options, on_batch=on_batch,
                          on_tensor=lambda t: apply_clustered(model, t),
                          on_progress=progress, importance=importance, importance_source=source,
                          clusters=clusters)
    clustered = time.perf_counter()
    count = len(run.tensors)
    progress(count, count, "encoding")
    info = {"producer": "gpucompress", "n_clusters": options.n_clusters,
            "global_clusters": options.global_clusters, "init": options.init, "method": options.method}
    data, report = encode_model(model, run, info, speed_tolerance)
    encoded = time.perf_counter()
    progress(count, count, "verifying")
    decoded = decode_archive(data, source=str(output_path), lazy=True)
    if not same_bytes(model_pieces(decoded), model_pieces(model)):
        raise GpucompressError(f"{output_path}: the archive does not decode to the compressed model (a bug)")
    del decoded
    write_atomic(output_path, data, overwrite=overwrite)
    verified = time.perf_counter()
    if zip_sizes:
        progress(count, count, "zip sizes")
    min_bytes, min_zip = _content_sizes(model, zip_sizes)
    sizes = {"original": path_bytes(input_path), "min": min_bytes, "archive": len(data),
             "bound": report["bound"], "rest": report["rest"]}
    if zip_sizes:
        sizes["original_zip"] = path_zip_size(input_path)
        sizes["min_zip"] = min_zip
    done = time.perf_counter()
    return PackSummary(input_path, output_path, device, run, report["coded"], report["coders"], sizes,
                       {"parse": parsed - started, "importance": weighed - parsed, "cluster": clustered - weighed, "encode": encoded - clustered,
                        "verify": verified - encoded, "zip": done - verified, "total": done - started})


def unpack_file(
    archive_path: str | os.PathLike,
    output_path: str | os.PathLike | None = None,
    *,
    overwrite: bool = False,
) -> tuple[Path, int]:
    """Restore the model of an archive to a file, or a folder for a SavedModel.

    output_path: defaults to default_unpack_output (the name `compress` gives:
    model.pb.min, model.min.keras, model.min.h5, saved.min); a Keras archive
    needs a `.keras` name, an HDF5 one `.h5`/`.hdf5`, others neither.
    Returns (output path, bytes written). Raises InputError or FormatError; no
    output file exists after an error.
    """
    archive_path, data = read_input_file(archive_path, max_bytes=MAX_ARCHIVE_BYTES)
    archive = archives.read_archive(data, source=str(archive_path))
    try:
        model_class(archive.format_name)
    except FormatError as error:
        raise FormatError(f"{archive_path}: {error}") from None
    output_path = (Path(output_path) if output_path is not None
                   else default_unpack_output(archive_path, archive.format_name))
    check_unpack_output(output_path, archive.format_name)
    check_output_path(output_path, [archive_path], overwrite=overwrite,
                      directory=archive.format_name == "savedmodel")
    model = model_from_archive(archive, source=str(archive_path), lazy=True)
    with overwriting(overwrite):
        return output_path, model.save(output_path)
