"""The Python API: compress a GraphDef message or a model file."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import device as devices
from .clustering import ClusteringRun, cluster_weights
from .errors import InputError, OptionsError
from .files import check_output_path, overwriting
from .importance import gather_importance
from .models import GraphDefModel, apply_clustered, default_output, model_format, read_model, write_model
from .options import CompressOptions


@dataclass
class CompressionSummary:
    """What `compress_file` did: paths, sizes (bytes), the per-tensor run and phase times (s).

    seconds has "parse", "select", "cluster", "write" and "total". zip_bytes
    holds {"input": n, "output": n} when zip sizes were asked for.
    """

    input_path: Path
    output_path: Path
    device: str
    run: ClusteringRun
    input_bytes: int
    output_bytes: int
    seconds: dict[str, float] = field(default_factory=dict)
    zip_bytes: dict[str, int] = field(default_factory=dict)


def compress_graphdef(graph_def, options: CompressOptions | None = None):
    """Return a clustered copy of a GraphDef message (tensorboard or TensorFlow GraphDef).

    The caller's message is not modified. options: a CompressOptions (defaults
    if None). Returns a new GraphDef of the same class as the tensorboard proto.
    """
    options = options or CompressOptions()
    model = GraphDefModel.from_proto(graph_def)
    importance, source = gather_importance(options, model)
    cluster_weights(model.weights(), options, on_tensor=lambda t: model.replace_values({t.name: t.values()}),
                    importance=importance, importance_source=source)
    if type(graph_def) is not type(model.graph_def):
        # A TensorFlow GraphDef in, a TensorFlow GraphDef out.
        converted = type(graph_def)()
        converted.ParseFromString(model.to_bytes())
        return converted
    return model.graph_def


class _SizeSink:
    """A seekable write-only stream that keeps no bytes, only how many were written (for zip sizes)."""

    def __init__(self):
        self.position = self.size = 0

    def write(self, data) -> int:
        self.position += len(data)
        self.size = max(self.size, self.position)
        return len(data)

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = 0) -> int:
        self.position = offset if whence == 0 else self.position + offset if whence == 1 else self.size + offset
        return self.position

    def seekable(self) -> bool:
        return True

    def flush(self) -> None:
        pass

    def truncate(self, size: int | None = None) -> int:
        self.size = self.position if size is None else size
        return self.size


def _zipped_size(members) -> int:
    """Return the size in bytes of a deflate zip archive of members: (name, size, iterable of pieces).

    Streams: the same bytes as ZipFile.writestr(name, b"".join(pieces)) would
    write (writestr also opens the member with its size known), none kept.
    """
    import zipfile  # here: only zip sizes need it

    sink = _SizeSink()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, size, pieces in members:
            info = zipfile.ZipInfo(name, date_time=time.localtime(time.time())[:6])
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o600 << 16
            info.file_size = size
            with archive.open(info, "w") as member:
                for piece in pieces:
                    member.write(piece)
    return sink.tell()


def zip_size(data: bytes, name: str) -> int:
    """Return the size in bytes of a zip archive (deflate) holding `data` as one file."""
    return _zipped_size([(name, len(data), [data])])


def pieces_zip_size(pieces_factory, name: str) -> tuple[int, int]:
    """Return (bytes, zip bytes) of the data that pieces_factory() yields in pieces, holding none of it.

    pieces_factory is called twice (once to count, once to zip).
    """
    size = sum(len(piece) for piece in pieces_factory())
    return size, _zipped_size([(name, size, pieces_factory())])


def _file_chunks(path: Path, chunk: int = 1 << 20):
    with open(path, "rb") as stream:
        while data := stream.read(chunk):
            yield data


def path_bytes(path: Path) -> int:
    """Return the size in bytes of a file, or of all files under a folder (a SavedModel)."""
    if path.is_dir():
        return sum(item.stat().st_size for item in path.rglob("*") if item.is_file())
    return path.stat().st_size


def path_zip_size(path: Path) -> int:
    """Return the size in bytes of a zip archive (deflate) of a file or of a folder's files (read in chunks)."""
    if not path.is_dir():
        return _zipped_size([(path.name, path.stat().st_size, _file_chunks(path))])
    files = [item for item in sorted(path.rglob("*")) if item.is_file()]
    return _zipped_size([(item.relative_to(path).as_posix(), item.stat().st_size, _file_chunks(item))
                         for item in files])


def compress_file(
    input_path: str | os.PathLike,
    output_path: str | os.PathLike | None = None,
    options: CompressOptions | None = None,
    *,
    overwrite: bool = False,
    zip_sizes: bool = False,
    on_batch=None,
    to_graphdef: bool = False,
    tflm: bool = False,
    on_progress=None,
    clusters: dict[str, int] | None = None,
) -> CompressionSummary:
    """Cluster the weights of a model file and write the result.

    input_path: a frozen GraphDef (.pb), a SavedModel folder, a `.keras` or
    `.h5` file (models.model_format). output_path: defaults to
    models.default_output(input_path) (model.pb.min, model.min.keras, saved.min).
    overwrite: replace an existing output (never the input). zip_sizes: also
    measure zip sizes of input and output. on_batch: progress callback (tensors
    finished per engine batch). on_progress: per-tensor progress callback
    (finished, total, what), what naming the tensor in work or the phase
    ("reading PATH", "writing PATH"). to_graphdef: freeze a SavedModel's serving
    signature into a frozen GraphDef (models.freeze) and cluster and write that
    (default output saved.min.pb). tflm: a .tflite input is written in TFLite
    Micro's compressed form (models.tflm; n_clusters <= 128; default output
    model.tflm.tflite). Returns a CompressionSummary. Raises InputError,
    FormatError, OptionsError or DeviceError; no output file exists after an error.
    """
    options = options or CompressOptions()
    started = time.perf_counter()
    input_path = Path(input_path)
    if not input_path.exists():
        raise InputError(f"{input_path}: no such file or directory")
    kind = model_format(input_path)
    if to_graphdef and kind != "savedmodel":
        raise OptionsError(f"to_graphdef=True (--to-graphdef) needs a SavedModel folder; "
                           f"{input_path} is a {kind} model.")
    if tflm:
        from .models.tflm import check_tflm_clusters, tflm_output

        if kind != "tflite":
            raise OptionsError(f"tflm=True (--tflm) needs a .tflite model; {input_path} is a {kind} model.")
        check_tflm_clusters(options.n_clusters)
        if options.granularity != "per-tensor":
            raise OptionsError(f"tflm=True (--tflm) writes one lookup table per tensor; granularity="
                               f"{options.granularity!r} makes one codebook per channel or group.")
        if clusters is not None:
            raise OptionsError("tflm=True (--tflm) writes one k for the whole model; a per-tensor budget "
                               "does not apply to it")
        output_path = tflm_output(input_path) if output_path is None else output_path
    if output_path is None:
        from .models.freeze import frozen_output

        output_path = frozen_output(input_path) if to_graphdef else default_output(input_path)
    output_path = Path(output_path)
    check_output_path(output_path, [input_path], overwrite=overwrite,
                      directory=kind == "savedmodel" and not to_graphdef)
    device = devices.resolve_device(options.device)
    options_on_device = CompressOptions(**{**options.__dict__, "device": device})
    progress = on_progress or (lambda finished, total, what: None)
    progress(0, 0, f"reading {input_path.name}")
    if to_graphdef:
        from .models.freeze import freeze_saved_model

        model = freeze_saved_model(input_path)
    else:
        model = read_model(input_path)
    parsed = time.perf_counter()
    # Each tensor's new values are made from its codebook and labels (which
    # the run keeps anyway) while the model is written, one tensor at a time:
    # the loaded weights never all exist at once, nor old and new contents.
    importance, source = gather_importance(options, model)
    weighed = time.perf_counter()
    run = cluster_weights(model.weights(), options_on_device, on_batch=on_batch,
                          on_tensor=lambda t: apply_clustered(model, t),
                          on_progress=progress, importance=importance, importance_source=source,
                          clusters=clusters)
    progress(len(run.tensors), len(run.tensors), f"writing {output_path.name}")
    with overwriting(overwrite):
        if tflm:
            from .models.tflm import write_tflm

            output_bytes = write_tflm(model, [t.name for t in run.clustered()], options.n_clusters, output_path)
        else:
            output_bytes = write_model(model, output_path)
    written = time.perf_counter()
    summary = CompressionSummary(
        input_path=input_path, output_path=output_path, device=device, run=run,
        input_bytes=path_bytes(input_path), output_bytes=output_bytes,
        seconds={"parse": parsed - started, "select": run.seconds["select"],
                 "cluster": run.seconds["cluster"],
                 "importance": weighed - parsed,
                 # replacing values in the model counts as writing
                 "write": written - weighed - run.seconds["select"] - run.seconds["cluster"],
                 "total": written - started},
    )
    if zip_sizes:
        summary.zip_bytes = {
            "input": path_zip_size(input_path),
            "output": path_zip_size(output_path),
        }
    return summary
