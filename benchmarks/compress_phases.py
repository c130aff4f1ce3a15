"""Time `gpucompress compress` by phase (parse / select / cluster / write) on a frozen graph.

    python benchmarks/compress_phases.py [MODEL.pb] [--million-weights 5] [--k 256] [--device cpu]

Without MODEL.pb it builds (and caches under benchmarks/.cache/) a synthetic frozen GraphDef of
Const tensors with trained-looking weights (Laplace core, heavy tail, per-tensor scale), shaped like
conv kernels. Prints one line per run and a comparison with parsing + re-serializing + sorting alone.
"""
from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy

CACHE = Path(__file__).resolve().parent / ".cache"

SHAPES = [(3, 3, 32, 32), (1, 1, 256, 32), (3, 3, 192, 256), (1, 1, 1792, 192), (3, 3, 384, 384),
          (1, 1, 896, 128), (1, 7, 128, 128), (7, 1, 128, 128), (3, 3, 256, 256), (1, 1, 384, 1792)]


def synthetic_graph(million_weights: float, path: Path) -> Path:
    """Write a GraphDef of Const tensors totalling about `million_weights` million float32 weights."""
    from tensorboard.compat.proto import graph_pb2

    rng = numpy.random.default_rng(2016)
    graph_def, total, index = graph_pb2.GraphDef(), 0, 0
    while total < million_weights * 1e6:
        shape = SHAPES[index % len(SHAPES)]
        size = int(numpy.prod(shape))
        scale = 0.02 * float(rng.uniform(0.5, 2.0))
        values = rng.laplace(scale=scale, size=size)
        tail = rng.random(size) < 0.01
        values[tail] *= rng.uniform(3, 10, size=int(tail.sum()))
        node = graph_def.node.add(name=f"layer{index}/weights", op="Const")
        node.attr["dtype"].type = 1
        tensor = node.attr["value"].tensor
        tensor.dtype = 1
        for dim in shape:
            tensor.tensor_shape.dim.add().size = dim
        tensor.tensor_content = values.astype("<f4").tobytes()
        total += size
        index += 1
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(graph_def.SerializeToString())
    return path


def baseline_seconds(path: Path) -> float:
    """Return the seconds to parse, re-serialize and sort every float Const of a GraphDef (the floor)."""
    from gpucompress.models import read_model

    started = time.perf_counter()
    model = read_model(path)
    for weight in model.weights():
        if weight.floating:
            numpy.sort(weight.load().reshape(-1))
    model.to_bytes()
    return time.perf_counter() - started


def main() -> None:
    from gpucompress import CompressOptions, compress_file

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", help="a frozen GraphDef; default: a synthetic one")
    parser.add_argument("--million-weights", type=float, default=5.0)
    parser.add_argument("--k", type=int, nargs="+", default=[256, 16])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=2)
    arguments = parser.parse_args()
    path = Path(arguments.model) if arguments.model else CACHE / f"synthetic_{arguments.million_weights:g}M.pb"
    if not path.exists():
        synthetic_graph(arguments.million_weights, path)
    print(f"# {path.name}: {path.stat().st_size / 1e6:.1f} MB, {platform.processor() or platform.machine()}, "
          f"{time.strftime('%Y-%m-%d')}")
    floor = min(baseline_seconds(path) for _ in range(arguments.repeat))
    print(f"parse + serialize + sort weights: {floor:.2f} s")
    with tempfile.TemporaryDirectory() as folder:
        for k in arguments.k:
            for global_clusters in (False, True):
                runs = [compress_file(path, Path(folder) / "out.pb.min", CompressOptions(
                    n_clusters=k, device=arguments.device, global_clusters=global_clusters), overwrite=True)
                    for _ in range(arguments.repeat)]
                best = min(runs, key=lambda s: s.seconds["total"])
                s = best.seconds
                weights = sum(t.size for t in best.run.clustered())
                print(f"k={k:<4} {'global    ' if global_clusters else 'per-tensor'} on {best.device}: "
                      f"total {s['total']:.2f} s = parse {s['parse']:.2f} + select {s['select']:.2f} + "
                      f"cluster {s['cluster']:.2f} + write {s['write']:.2f}  "
                      f"({weights / 1e6:.1f} M weights, {s['total'] / floor:.1f}x the floor)")


if __name__ == "__main__":
    main()
