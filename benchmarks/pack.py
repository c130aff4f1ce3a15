"""Benchmark pack / unpack on a FaceNet-sized synthetic frozen GraphDef.

    python benchmarks/pack.py                 # ~23M weights, k = 256 and 16
    python benchmarks/pack.py --quick         # a small graph: a smoke run (seconds)

The graph has Inception-ResNet-v1's weight shapes (stem, 5 x block35,
reduction A, 10 x block17, reduction B, 6 x block8, bottleneck; 3x3 / 1x7
convolutions, batch-norm vectors), Laplace-distributed weights scaled by
fan-in, plus Conv2D / FusedBatchNormV3 / Relu nodes so the rest of the graph has
a realistic size. Prints a table and writes it, with the machine and the
date, under benchmarks/results/.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpucompress import CompressOptions, compress_file, pack_file, read_archive  # noqa: E402


def inception_resnet_v1_convolutions(width: float = 1.0) -> list[tuple[str, tuple[int, ...], bool]]:
    """Return (scope, kernel shape, has bias) of Inception-ResNet-v1's convolutions, channels times width."""
    def c(n):
        return max(1, int(round(n * width)))

    layers = [("Conv2d_1a_3x3", (3, 3, 3, c(32)), False), ("Conv2d_2a_3x3", (3, 3, c(32), c(32)), False),
              ("Conv2d_2b_3x3", (3, 3, c(32), c(64)), False), ("Conv2d_3b_1x1", (1, 1, c(64), c(80)), False),
              ("Conv2d_4a_3x3", (3, 3, c(80), c(192)), False), ("Conv2d_4b_3x3", (3, 3, c(192), c(256)), False)]
    for i in range(1, 6):
        s = f"Repeat/block35_{i}"
        layers += [(f"{s}/Branch_0/Conv2d_1x1", (1, 1, c(256), c(32)), False),
                   (f"{s}/Branch_1/Conv2d_0a_1x1", (1, 1, c(256), c(32)), False),
                   (f"{s}/Branch_1/Conv2d_0b_3x3", (3, 3, c(32), c(32)), False),
                   (f"{s}/Branch_2/Conv2d_0a_1x1", (1, 1, c(256), c(32)), False),
                   (f"{s}/Branch_2/Conv2d_0b_3x3", (3, 3, c(32), c(32)), False),
                   (f"{s}/Branch_2/Conv2d_0c_3x3", (3, 3, c(32), c(32)), False),
                   (f"{s}/Conv2d_1x1", (1, 1, c(96), c(256)), True)]
    layers += [("Mixed_6a/Branch_0/Conv2d_1a_3x3", (3, 3, c(256), c(384)), False),
               ("Mixed_6a/Branch_1/Conv2d_0a_1x1", (1, 1, c(256), c(192)), False),
               ("Mixed_6a/Branch_1/Conv2d_0b_3x3", (3, 3, c(192), c(192)), False),
               ("Mixed_6a/Branch_1/Conv2d_1a_3x3", (3, 3, c(192), c(256)), False)]
    for i in range(1, 11):
        s = f"Repeat_1/block17_{i}"
        layers += [(f"{s}/Branch_0/Conv2d_1x1", (1, 1, c(896), c(128)), False),
                   (f"{s}/Branch_1/Conv2d_0a_1x1", (1, 1, c(896), c(128)), False),
                   (f"{s}/Branch_1/Conv2d_0b_1x7", (1, 7, c(128), c(128)), False),
                   (f"{s}/Branch_1/Conv2d_0c_7x1", (7, 1, c(128), c(128)), False),
                   (f"{s}/Conv2d_1x1", (1, 1, c(256), c(896)), True)]
    layers += [("Mixed_7a/Branch_0/Conv2d_0a_1x1", (1, 1, c(896), c(256)), False),
               ("Mixed_7a/Branch_0/Conv2d_1a_3x3", (3, 3, c(256), c(384)), False),
               ("Mixed_7a/Branch_1/Conv2d_0a_1x1", (1, 1, c(896), c(256)), False),
               ("Mixed_7a/Branch_1/Conv2d_1a_3x3", (3, 3, c(256), c(256)), False),
               ("Mixed_7a/Branch_2/Conv2d_0a_1x1", (1, 1, c(896), c(256)), False),
               ("Mixed_7a/Branch_2/Conv2d_0b_3x3", (3, 3, c(256), c(256)), False),
               ("Mixed_7a/Branch_2/Conv2d_1a_3x3", (3, 3, c(256), c(256)), False)]
    for i in range(1, 7):
        s = f"Repeat_2/block8_{i}" if i < 6 else "Block8"
        layers += [(f"{s}/Branch_0/Conv2d_1x1", (1, 1, c(1792), c(192)), False),
                   (f"{s}/Branch_1/Conv2d_0a_1x1", (1, 1, c(1792), c(192)), False),
                   (f"{s}/Branch_1/Conv2d_0b_1x3", (1, 3, c(192), c(192)), False),
                   (f"{s}/Branch_1/Conv2d_0c_3x1", (3, 1, c(192), c(192)), False),
                   (f"{s}/Conv2d_1x1", (1, 1, c(384), c(1792)), True)]
    layers.append(("Bottleneck", (c(1792), c(512)), False))
    return layers


def _const(graph, name, array):
    node = graph.node.add()
    node.name, node.op = name, "Const"
    dtype_enum = {numpy.dtype("float32"): 1, numpy.dtype("int32"): 3}[array.dtype]
    node.attr["dtype"].type = dtype_enum
    tensor = node.attr["value"].tensor
    tensor.dtype = dtype_enum
    for size in array.shape:
        tensor.tensor_shape.dim.add().size = size
    tensor.tensor_content = numpy.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()
    return node


def facenet_like_graph(width: float = 1.0, seed: int = 0) -> bytes:
    """Return a serialized frozen GraphDef with Inception-ResNet-v1's weight shapes (~23M float32 at width 1)."""
    from tensorboard.compat.proto import graph_pb2

    rng = numpy.random.default_rng(seed)
    graph = graph_pb2.GraphDef()
    previous = graph.node.add()
    previous.name, previous.op = "input", "Placeholder"
    previous.attr["dtype"].type = 1
    for scope, shape, has_bias in inception_resnet_v1_convolutions(width):
        prefix = f"InceptionResnetV1/{scope}"
        fan_in = int(numpy.prod(shape[:-1]))
        kernel = rng.laplace(0.0, 0.7 / numpy.sqrt(fan_in), size=shape).astype(numpy.float32)
        _const(graph, f"{prefix}/weights", kernel)
        op = graph.node.add()
        op.name, op.op = f"{prefix}/{'MatMul' if len(shape) == 2 else 'Conv2D'}", "MatMul" if len(shape) == 2 else "Conv2D"
        op.input.extend([previous.name, f"{prefix}/weights"])
        op.attr["T"].type = 1
        if len(shape) == 4:
            op.attr["strides"].list.i.extend([1, 1, 1, 1])
            op.attr["padding"].s = b"SAME"
            op.attr["data_format"].s = b"NHWC"
        channels = shape[-1]
        if has_bias:
            _const(graph, f"{prefix}/biases", rng.normal(0, 0.02, channels).astype(numpy.float32))
            bias = graph.node.add()
            bias.name, bias.op = f"{prefix}/BiasAdd", "BiasAdd"
            bias.input.extend([op.name, f"{prefix}/biases"])
            previous = bias
            continue
        bn = f"{prefix}/BatchNorm"
        _const(graph, f"{bn}/beta", rng.normal(0, 0.1, channels).astype(numpy.float32))
        _const(graph, f"{bn}/moving_mean", rng.normal(0, 0.5, channels).astype(numpy.float32))
        _const(graph, f"{bn}/moving_variance", rng.lognormal(-1, 0.5, channels).astype(numpy.float32))
        norm = graph.node.add()
        norm.name, norm.op = f"{bn}/FusedBatchNormV3", "FusedBatchNormV3"
        norm.input.extend([op.name, f"{bn}/beta", f"{bn}/beta", f"{bn}/moving_mean", f"{bn}/moving_variance"])
        norm.attr["epsilon"].f = 0.001
        norm.attr["is_training"].b = False
        relu = graph.node.add()
        relu.name, relu.op = f"{prefix}/Relu", "Relu"
        relu.input.append(norm.name)
        previous = relu
    output = graph.node.add()
    output.name, output.op = "embeddings", "Identity"
    output.input.append(previous.name)
    return graph.SerializeToString()


def _best_of(repeats: int, function):
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return min(times)


def measure(pb: Path, k: int, folder: Path, method: str) -> dict:
    """Pack and unpack one model at k clusters per tensor; returns sizes (bytes) and times (s)."""
    options = CompressOptions(n_clusters=k, device="cpu", method=method)
    archive = folder / f"model_k{k}.gpcz"
    summary = pack_file(pb, archive, options, overwrite=True)
    compressed = compress_file(pb, folder / f"model_k{k}.min", options, overwrite=True)
    data = archive.read_bytes()
    decode = _best_of(3, lambda: read_archive(data))
    unpack = _best_of(3, lambda: read_archive(data).to_bytes())
    assert read_archive(data).to_bytes() == (folder / f"model_k{k}.min").read_bytes()
    smallest = folder / f"model_k{k}_smallest.gpcz"
    pack_file(pb, smallest, options, overwrite=True, zip_sizes=False, speed_tolerance=0.0)
    smallest_data = smallest.read_bytes()
    smallest_unpack = _best_of(3, lambda: read_archive(smallest_data).to_bytes())
    sizes = summary.sizes
    bound = sizes["bound"] + sizes["rest"]
    return {"smallest_archive": len(smallest_data), "smallest_vs_bound": len(smallest_data) / bound,
            "smallest_unpack_to_bytes_seconds": smallest_unpack, "k": k, "weights": sum(t.size for t in summary.run.clustered()), "sizes": sizes,
            "archive_vs_pb": sizes["original"] / sizes["archive"],
            "archive_vs_zip_min": sizes["min_zip"] / sizes["archive"],
            "archive_vs_bound": sizes["archive"] / bound, "coders": dict(summary.coders),
            "pack_seconds": summary.seconds, "compress_seconds": compressed.seconds["total"],
            "unpack_decode_seconds": decode, "unpack_to_bytes_seconds": unpack}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small graph (width 0.1), k = 16 only")
    parser.add_argument("--results", default=str(Path(__file__).parent / "results"),
                        help="folder of the results file (default %(default)s)")
    parser.add_argument("--method", default=CompressOptions().method,
                        help="clustering method (default %(default)s); results of another method are "
                        "written under a name that carries it")
    arguments = parser.parse_args(argv)
    width, ks = (0.1, (16,)) if arguments.quick else (1.0, (256, 16))
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        started = time.perf_counter()
        pb = folder / "facenet_like.pb"
        pb.write_bytes(facenet_like_graph(width))
        print(f"graph: {pb.stat().st_size:,} bytes, built in {time.perf_counter() - started:.1f} s")
        for k in ks:
            rows.append(measure(pb, k, folder, arguments.method))
    lines = ["| k | .pb | zip(.pb) | .min | zip(.min) | archive | bound + rest | archive/bound "
             "| .pb/archive | zip(.min)/archive | pack s (cluster, encode) | unpack s (decode, +serialize) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    smallest = ["", "Smallest archive (`--speed-tolerance 0`, ans wherever it is smallest):", "",
                "| k | archive | archive/bound | unpack s (+serialize) |", "|---|---|---|---|"]
    for row in rows:
        s, t = row["sizes"], row["pack_seconds"]
        lines.append(f"| {row['k']} | {s['original']:,} | {s['original_zip']:,} | {s['min']:,} | {s['min_zip']:,} "
                     f"| {s['archive']:,} | {s['bound'] + s['rest']:,} ({s['bound']:,} + {s['rest']:,}) "
                     f"| {row['archive_vs_bound']:.4f} | {row['archive_vs_pb']:.2f}x | {row['archive_vs_zip_min']:.2f}x "
                     f"| {t['total']:.1f} ({t['cluster']:.1f}, {t['encode']:.1f}) "
                     f"| {row['unpack_decode_seconds']:.2f}, {row['unpack_to_bytes_seconds']:.2f} |")
        smallest.append(f"| {row['k']} | {row['smallest_archive']:,} | {row['smallest_vs_bound']:.4f} "
                        f"| {row['smallest_unpack_to_bytes_seconds']:.2f} |")
    table = "\n".join(lines + smallest)
    print(table)
    machine = f"{platform.node()} {platform.machine()} {platform.processor() or ''} {os.cpu_count()} cpus".strip()
    date = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    results = Path(arguments.results)
    results.mkdir(parents=True, exist_ok=True)
    method = "" if arguments.method == CompressOptions().method else f"_{arguments.method}"
    name = f"pack{'_quick' if arguments.quick else ''}{method}_{datetime.date.today().isoformat()}"
    command = " ".join(["python benchmarks/pack.py"] + (["--quick"] if arguments.quick else [])
                       + ([f"--method {arguments.method}"] if method else []))
    (results / f"{name}.md").write_text(
        f"# pack / unpack, FaceNet-shaped synthetic GraphDef (width {width})\n\nmachine: {machine}, "
        f"python {platform.python_version()}, numpy {numpy.__version__}\nmethod: {arguments.method}\n"
        f"date: {date}\ncommand: {command}\n\n{table}\n")
    (results / f"{name}.json").write_text(json.dumps({"machine": machine, "date": date, "width": width,
                                                      "method": arguments.method,
                                                      "rows": rows}, indent=1, default=str))
    print(f"wrote {results / name}.md and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
