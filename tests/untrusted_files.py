"""Hostile inputs crafted as real files: archives, models and folders that try to write outside
the output, read outside the input, or make a few bytes allocate gigabytes.

Shared by tests/test_untrusted.py and benchmarks/untrusted.py. Every helper
writes into `folder` and returns the path of the crafted input. Nothing here
allocates what the crafted file declares: big zstd frames are written by hand
as RLE blocks, big zip entries are deflated in chunks.
"""
from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy

from gpucompress.codec import archive as archives

ZSTD_MAGIC = 0xFD2FB528
ZSTD_BLOCK = 1 << 17  # the largest zstd block (128 KiB)


def zstd_rle_frame(size: int, byte: int = 0) -> bytes:
    """Return a valid zstd frame declaring and holding `size` copies of `byte`, built from RLE blocks
    (4 bytes per 128 KiB), without ever holding the content."""
    header = struct.pack("<IB", ZSTD_MAGIC, 0xE0) + struct.pack("<Q", size)  # single segment, 8-byte size
    blocks = []
    left = size
    while True:
        piece = min(left, ZSTD_BLOCK)
        left -= piece
        last = left == 0
        blocks.append((int(last) | (1 << 1) | (piece << 3)).to_bytes(3, "little") + bytes([byte]))
        if last:
            return header + b"".join(blocks)


def _h5py():
    import h5py

    return h5py


def hdf5_bytes(build) -> bytes:
    """Return the bytes of an in-memory HDF5 file after build(h5py.File) filled it."""
    h5py = _h5py()
    buffer = io.BytesIO()
    with h5py.File(buffer, "w", **getattr(build, "file_options", {})) as handle:
        build(handle)
    return buffer.getvalue()


def _external(outside: Path, name: str, shape):
    def build(handle):
        h5py = _h5py()
        handle.create_dataset(name, shape=shape, dtype="<f4", external=[(str(outside), 0, h5py.h5f.UNLIMITED)])
    return build


def _write_archive(path: Path, format_name: str, skeleton: bytes, tensors) -> Path:
    path.write_bytes(archives.write_archive(archives.Archive(format_name, skeleton, tensors, {})))
    return path


def _one_value_tensor(name: str, shape, value=1.5, dtype="float32"):
    n = int(numpy.prod(shape))
    return archives.CodedTensor(name, dtype, tuple(shape), numpy.array([value], dtype=dtype),
                                numpy.zeros(n, numpy.uint8))


def h5_archive_external_storage(folder: Path, outside: Path) -> Path:
    """An h5-kind archive whose skeleton keeps dataset `w` in the file `outside`: unpack writes there."""
    skeleton = hdf5_bytes(_external(outside, "w", (16,)))
    return _write_archive(folder / "external.h5.gpcz", "h5", skeleton, [_one_value_tensor("w", (16,))])


def keras_zip(entries: dict[str, bytes]) -> bytes:
    """Return a zip holding `entries` (name -> bytes), deflated."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data,
                             compress_type=zipfile.ZIP_DEFLATED)
    return buffer.getvalue()


def small_weights_h5(shape=(32, 32), seed=0) -> bytes:
    """Return a Keras-like model.weights.h5 with one random float32 kernel `layers/dense/vars/0`."""
    values = numpy.random.default_rng(seed).normal(size=shape).astype("<f4")
    return hdf5_bytes(lambda handle: handle.create_dataset("layers/dense/vars/0", data=values))


def keras_archive_external_storage(folder: Path, outside: Path) -> Path:
    """A keras-kind archive whose model.weights.h5 keeps dataset `w` in `outside`."""
    skeleton = keras_zip({"config.json": b"{}", "model.weights.h5": hdf5_bytes(_external(outside, "w", (16,)))})
    return _write_archive(folder / "external.keras.gpcz", "keras", skeleton, [_one_value_tensor("w", (16,))])


def h5_model_external_storage(folder: Path, outside: Path) -> Path:
    """A legacy-looking .h5 model whose kernel (64 x 64 float32) lives in `outside` (4096 random floats):
    compress would read it as weights and write clustered values back into it."""
    if not outside.exists():
        outside.write_bytes(numpy.random.default_rng(1).normal(size=4096).astype("<f4").tobytes())
    data = hdf5_bytes(_external(outside, "model_weights/dense/dense/kernel", (64, 64)))
    path = folder / "external.h5"
    path.write_bytes(data)
    return path


def h5_model_external_link(folder: Path, outside: Path) -> Path:
    """An .h5 model with an external link to a dataset of another HDF5 file."""
    outside.write_bytes(hdf5_bytes(lambda handle: handle.create_dataset("secret", data=numpy.ones((8, 8), "f4"))))
    h5py = _h5py()

    def build(handle):
        handle.create_dataset("model_weights/dense/dense/kernel", data=numpy.ones((8, 8), "f4"))
        handle["model_weights/dense/dense/leak"] = h5py.ExternalLink(str(outside), "secret")

    path = folder / "link.h5"
    path.write_bytes(hdf5_bytes(build))
    return path


def h5_model_virtual(folder: Path, outside: Path) -> Path:
    """An .h5 model with a virtual dataset mapping a dataset of another HDF5 file."""
    outside.write_bytes(hdf5_bytes(lambda handle: handle.create_dataset("secret", data=numpy.ones((8, 8), "f4"))))
    h5py = _h5py()

    def build(handle):
        layout = h5py.VirtualLayout(shape=(8, 8), dtype="f4")
        layout[...] = h5py.VirtualSource(str(outside), "secret", shape=(8, 8))
        handle.create_virtual_dataset("model_weights/dense/dense/kernel", layout)

    path = folder / "virtual.h5"
    path.write_bytes(hdf5_bytes(build))
    return path


def h5_model_userblock(folder: Path) -> Path:
    """An .h5 model with a 512-byte user block in front of its HDF5 data."""
    def build(handle):
        handle.create_dataset("model_weights/dense/dense/kernel", data=numpy.ones((8, 8), "f4"))
    build.file_options = {"userblock_size": 512}
    data = bytearray(hdf5_bytes(build))
    path = folder / "userblock.h5"
    path.write_bytes(bytes(data))
    return path


def _graphdef_skeleton(name: str, shape, dtype_enum: int) -> bytes:
    from tensorboard.compat.proto import graph_pb2

    graph = graph_pb2.GraphDef()
    node = graph.node.add(name=name, op="Const")
    node.attr["dtype"].type = dtype_enum
    tensor = node.attr["value"].tensor
    tensor.dtype = dtype_enum
    for size in shape:
        tensor.tensor_shape.dim.add(size=size)
    header = json.dumps([[name, "values", 0]]).encode()
    return b"GDSK" + struct.pack("<I", len(header)) + header + graph.SerializeToString()


def _manifest_archive(path: Path, format_name: str, skeleton_frame: bytes, skeleton_bytes: int,
                      codebooks: list[tuple[str, bytes]], tensors: list[dict], streams: list[bytes]) -> Path:
    """Write an archive from hand-made sections (the writer would refuse nothing, but would allocate)."""
    import zlib

    sections = [skeleton_frame]
    manifest_codebooks = []
    for dtype, data in codebooks:
        manifest_codebooks.append({"dtype": dtype, "size": len(data) // archives.numpy_dtype(dtype).itemsize,
                                   "rows": 1, "coding": "raw", "section": len(sections)})
        sections.append(data)
    manifest_tensors = []
    for entry, stream in zip(tensors, streams):
        manifest_tensors.append({**entry, "section": len(sections), "nonfinite": 0, "nonfinite_section": None,
                                 "channels": None})
        sections.append(stream)
    manifest = {"info": {}, "skeleton": {"section": 0, "bytes": skeleton_bytes}, "codebooks": manifest_codebooks,
                "tensors": manifest_tensors, "sections": [[len(s), zlib.crc32(s)] for s in sections]}
    from gpucompress.codec import entropy

    raw = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    stored = entropy.zstd_compress(raw, 19)
    header = archives.HEADER.pack(archives.MAGIC, archives.VERSION, 0, format_name.encode(), len(stored), len(raw),
                                  zlib.crc32(stored), 0)
    header = header[:-4] + struct.pack("<I", zlib.crc32(header[:-4]))
    path.write_bytes(b"".join([header, stored, *sections]))
    return path


def small_pb(folder: Path, name: str = "small.pb") -> Path:
    """A valid frozen GraphDef: one random 32 x 32 float32 Const and an Identity of it."""
    from tensorboard.compat.proto import graph_pb2

    graph = graph_pb2.GraphDef()
    node = graph.node.add(name="kernel", op="Const")
    node.attr["dtype"].type = 1
    tensor = node.attr["value"].tensor
    tensor.dtype = 1
    tensor.tensor_shape.dim.add(size=32)
    tensor.tensor_shape.dim.add(size=32)
    tensor.tensor_content = numpy.random.default_rng(2).normal(size=(32, 32)).astype("<f4").tobytes()
    graph.node.add(name="out", op="Identity", input=["kernel"]).attr["T"].type = 1
    path = folder / name
    path.write_bytes(graph.SerializeToString())
    return path


# Just under the format's 2^32 decoded bytes (the archives passed that limit).
HUGE32 = (1 << 30) - (1 << 20)
HUGE16 = (1 << 31) - (1 << 21)


def archive_float32_one_codebook(folder: Path, n: int = HUGE32) -> Path:
    """A few-hundred-byte graphdef archive: one float32 tensor of n values, a 1-entry codebook."""
    from gpucompress.codec import entropy

    skeleton = _graphdef_skeleton("w", (n,), 1)
    return _manifest_archive(folder / "huge32.pb.gpcz", "graphdef", entropy.zstd_compress(skeleton), len(skeleton),
                             [("float32", numpy.array([1.5], "<f4").tobytes())],
                             [{"name": "w", "dtype": "float32", "shape": [n], "codebook": 0, "coder": "packed"}],
                             [b""])


def archive_float16_zstd(folder: Path, n: int = HUGE16) -> Path:
    """A graphdef archive: one float16 tensor of n values, 2-entry codebook, a zstd index stream of
    n bits given as RLE blocks (n / 2^17 / 8 blocks of 4 bytes: 8 KB for 2^31)."""
    from gpucompress.codec import entropy

    skeleton = _graphdef_skeleton("w", (n,), 19)
    return _manifest_archive(folder / "huge16.pb.gpcz", "graphdef", entropy.zstd_compress(skeleton), len(skeleton),
                             [("float16", numpy.array([0.5, 1.5], "<f2").tobytes())],
                             [{"name": "w", "dtype": "float16", "shape": [n], "codebook": 0, "coder": "zstd"}],
                             [zstd_rle_frame((n + 7) // 8)])


def archive_zstd_bomb(folder: Path, size: int = (1 << 32) - 64) -> Path:
    """A graphdef archive whose skeleton is a ~131 KB zstd frame declaring `size` bytes (4 GiB)."""
    return _manifest_archive(folder / "bomb.pb.gpcz", "graphdef", zstd_rle_frame(size), size, [], [], [])


def pb_fill(folder: Path, n: int = 1 << 30) -> Path:
    """A ~40-byte frozen GraphDef: one float32 Const of shape [n] stored as a single float_val (a fill)."""
    from tensorboard.compat.proto import graph_pb2

    graph = graph_pb2.GraphDef()
    node = graph.node.add(name="fill", op="Const")
    node.attr["dtype"].type = 1
    tensor = node.attr["value"].tensor
    tensor.dtype = 1
    tensor.tensor_shape.dim.add(size=n)
    tensor.float_val.append(1.0)
    path = folder / "fill.pb"
    path.write_bytes(graph.SerializeToString())
    return path


def keras_zip_bomb(folder: Path, size: int = 1 << 31) -> Path:
    """A .keras zip whose assets/blob entry inflates from about size / 1000 bytes to `size` zeros."""
    path = folder / "bomb.keras"
    chunk = bytes(1 << 22)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        archive.writestr("config.json", b"{}")
        archive.writestr("model.weights.h5", small_weights_h5())
        with archive.open("assets/blob", "w", force_zip64=True) as stream:
            for _ in range(size // len(chunk)):
                stream.write(chunk)
            stream.write(bytes(size % len(chunk)))
    return path


def keras_dotdot_entry(folder: Path) -> Path:
    """A .keras zip with an entry named ../escaped.txt next to a valid config and weights."""
    path = folder / "dotdot.keras"
    path.write_bytes(keras_zip({"config.json": b"{}", "model.weights.h5": small_weights_h5(),
                                "../escaped.txt": b"written outside"}))
    return path


def tiny_saved_model(folder: Path) -> Path:
    """A real SavedModel (one 32 x 32 float32 variable, a serving signature) in folder/saved."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    class Tiny(tf.Module):
        def __init__(self):
            super().__init__()
            self.kernel = tf.Variable(numpy.random.default_rng(0).normal(size=(32, 32)).astype("f4"))

        @tf.function(input_signature=[tf.TensorSpec((None, 32), tf.float32)])
        def __call__(self, x):
            return tf.matmul(x, self.kernel)

    model = Tiny()
    path = folder / "saved"
    tf.saved_model.save(model, str(path), signatures=model.__call__)
    (path / "assets").mkdir(exist_ok=True)
    return path


def saved_model_with(saved: Path, folder: Path, kind: str, outside: Path) -> Path:
    """A copy of SavedModel `saved` in folder/KIND holding assets/x of a hostile kind: "symlink" (to
    `outside`), "loop" (a symlink to itself), "hardlink" (to `outside`), "fifo" or "device" (/dev/null's)."""
    import shutil

    path = folder / kind
    shutil.copytree(saved, path)
    target = path / "assets" / "x"
    if kind == "symlink":
        os.symlink(outside, target)
    elif kind == "loop":
        os.symlink(target, target)
    elif kind == "hardlink":
        os.link(outside, target)
    elif kind == "fifo":
        os.mkfifo(target)
    elif kind == "device":
        os.mknod(target, 0o600 | 0o020000, os.stat("/dev/null").st_rdev)
    else:
        raise ValueError(kind)
    return path


def savedmodel_archive_exec_bits(archive_path: Path, folder: Path) -> Path:
    """A copy of a SavedModel archive whose skeleton tar marks every file 0755 (and one 04755)."""
    import tarfile

    original = archives.read_archive(archive_path.read_bytes())
    source = tarfile.open(fileobj=io.BytesIO(original.skeleton), mode="r:")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as target:
        for member in source.getmembers():
            member.mode = 0o755 if member.isfile() else 0o777
            target.addfile(member, source.extractfile(member) if member.isfile() else None)
    original.skeleton = buffer.getvalue()
    path = folder / "exec.gpcz"
    path.write_bytes(archives.write_archive(original))
    return path


# Runs the CLI with RLIMIT_AS from the environment and writes its VmHWM (peak RSS since exec) at exit.
LAUNCHER = """
import atexit, os, resource, runpy, sys
limit = int(os.environ.pop("UNTRUSTED_AS_LIMIT", "0"))
if limit:
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
size = int(os.environ.pop("UNTRUSTED_FSIZE_LIMIT", "0"))
if size:  # writes past `size` bytes fail with EFBIG (a full disk without needing one)
    import signal
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
def report(path=os.environ.pop("UNTRUSTED_HWM_FILE")):
    with open("/proc/self/status") as status, open(path, "w") as out:
        out.write(next(line for line in status if line.startswith("VmHWM")).split()[1])
atexit.register(report)
sys.argv = ["gpucompress", *sys.argv[1:]]
runpy.run_module("gpucompress", run_name="__main__")
"""


def run_cli(arguments: list[str], checkout: Path, as_limit: int | None, cwd: Path,
            stdout=None, file_size_limit: int = 0) -> tuple[int, str, int]:
    """Run `python -m gpucompress ARGUMENTS`; returns (exit code, first stderr line, peak RSS bytes).

    The first line is the first of gpucompress's own, else the first at all
    (a traceback's last line). See run_cli_lines.
    """
    code, lines, peak = run_cli_lines(arguments, checkout, as_limit, cwd, stdout, file_size_limit)
    ours = [line for line in lines if line.startswith("gpucompress")]
    first = (ours or lines or [""])[0]
    if "Traceback" in first or (not ours and len(lines) > 1 and "Traceback" in "".join(lines)):
        first = f"{lines[-1]} (a traceback, {len(lines)} lines)"
    return code, first, peak


def run_cli_lines(arguments: list[str], checkout: Path, as_limit: int | None, cwd: Path,
                  stdout=None, file_size_limit: int = 0) -> tuple[int, list[str], int]:
    """Run `python -m gpucompress ARGUMENTS` from `checkout` under RLIMIT_AS `as_limit` (None: none),
    stdout to `stdout` (default /dev/null), files it writes cut at `file_size_limit` bytes
    (RLIMIT_FSIZE; 0: no limit); returns (exit code, non-blank stderr lines, peak RSS bytes).

    Peak RSS is the process's VmHWM at exit (ru_maxrss when it died before writing it).
    """
    with tempfile.TemporaryDirectory() as folder:
        hwm = Path(folder) / "hwm"
        environment = {**os.environ, "PYTHONPATH": str(checkout), "TF_CPP_MIN_LOG_LEVEL": "3",
                       "UNTRUSTED_AS_LIMIT": str(as_limit or 0),
                       "UNTRUSTED_FSIZE_LIMIT": str(file_size_limit), "UNTRUSTED_HWM_FILE": str(hwm)}
        errors = Path(folder) / "stderr"
        with open(errors, "wb") as stream:
            process = subprocess.Popen([sys.executable, "-c", LAUNCHER, *arguments], cwd=cwd, env=environment,
                                       stdout=stdout if stdout is not None else subprocess.DEVNULL, stderr=stream)
            _, status, usage = os.wait4(process.pid, 0)
        code = os.waitstatus_to_exitcode(status)
        lines = [line for line in errors.read_text("utf-8", "replace").splitlines() if line.strip()]
        peak = int(hwm.read_text()) * 1024 if hwm.exists() and hwm.read_text() else usage.ru_maxrss * 1024
    return code, lines, peak
