"""Time the CLI of two checkouts on the same graph, interleaved, so a busy machine hurts both alike.

    python benchmarks/ab_time.py --before /tmp/main --after . --repeats 5
    python benchmarks/ab_time.py --before /tmp/main --after . --command compress --n-clusters 256
    python benchmarks/ab_time.py --python-before OLD/.venv/bin/python --python-after .venv/bin/python \
        --command compress --n-clusters 256 --graph benchmarks/.cache/facenet-w1.pb --floor --repeats 7

Builds benchmarks/pack.py's FaceNet-sized frozen graph once (~23M weights,
94 MB), then runs `python -m gpucompress COMMAND graph.pb -o OUT -q
--n_clusters K` (pack adds --no-zip-sizes) with PYTHONPATH set to each
checkout in turn, before/after/before/after ..., and prints each checkout's
wall times, minimum and median, and whether both wrote the same bytes.
--python-before/--python-after run two installed interpreters instead (their
own gpucompress, compiled kernels included; no PYTHONPATH). --graph uses a
graph file as it is. --floor also times, in each round, this process's floor
(read the graph, sort every floating tensor as stored, write it: run.py's
time_io_floor), so each CLI figure has a floor measured next to it, and prints
the median of the per-round ratios: on shared cores, the ratio of times taken
seconds apart is what the load moves least. Each call's CPU seconds (user +
system, of the child and its threads, from getrusage) are printed too: other
processes on the cores stretch the wall time of a call far more than its CPU time.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pack import facenet_like_graph  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", help="checkout of the old code (or --python-before)")
    parser.add_argument("--after", default=str(Path(__file__).resolve().parents[1]), help="checkout of the new code")
    parser.add_argument("--command", choices=("pack", "compress"), default="pack")
    parser.add_argument("--n-clusters", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--width", type=float, default=1.0, help="graph width (1.0: FaceNet-sized)")
    parser.add_argument("--python-before", help="interpreter of the old code (instead of --before's PYTHONPATH)")
    parser.add_argument("--python-after", help="interpreter of the new code (instead of --after's PYTHONPATH)")
    parser.add_argument("--graph", type=Path, help="time this graph (default: pack.py's FaceNet-sized one)")
    parser.add_argument("--floor", action="store_true", help="time the I/O floor in each round too")
    arguments = parser.parse_args()
    if not (arguments.before or arguments.python_before):
        parser.error("give --before (a checkout) or --python-before (an interpreter)")
    # absolute, not resolved: a venv's python is a symlink to the base interpreter, and only its own path is the venv
    pythons = {name: str(Path(path).absolute()) if path else None
               for name, path in (("before", arguments.python_before), ("after", arguments.python_after))}
    checkouts = {name: (Path(pythons[name]) if pythons[name] else Path(getattr(arguments, name)).resolve())
                 for name in ("before", "after")}
    floors, ratios = [], {name: [] for name in checkouts}
    times = {name: [] for name in checkouts}
    cpu = {name: [] for name in checkouts}
    digests = {name: set() for name in checkouts}
    with tempfile.TemporaryDirectory(prefix="gpucompress-ab-") as folder:
        folder = Path(folder)
        graph = arguments.graph.resolve() if arguments.graph else None
        if graph is None:
            graph = folder / "facenet_like.pb"
            graph.write_bytes(facenet_like_graph(arguments.width))
        for _ in range(arguments.repeats):
            if arguments.floor:
                floors.append(floor_seconds(graph, folder))
            for name, checkout in checkouts.items():
                output = folder / f"{name}.out"
                python = pythons[name] or sys.executable
                command = [python, "-m", "gpucompress", arguments.command, str(graph), "-o", str(output),
                           "-q", "--overwrite", "--n_clusters", str(arguments.n_clusters)]
                if arguments.command == "pack":
                    command.append("--no-zip-sizes")
                environment = dict(os.environ) if pythons[name] else {**os.environ, "PYTHONPATH": str(checkout)}
                used = _children_cpu_seconds()
                started = time.perf_counter()
                subprocess.run(command, check=True, env=environment, cwd=folder)
                times[name].append(time.perf_counter() - started)
                cpu[name].append(_children_cpu_seconds() - used)
                if arguments.floor:
                    ratios[name].append(times[name][-1] / floors[-1])
                digests[name].add(hashlib.sha256(output.read_bytes()).hexdigest())
    described = f"the graph {graph.name}" if arguments.graph else f"the FaceNet-sized graph (width {arguments.width})"
    print(f"{arguments.command} of {described}, "
          f"k={arguments.n_clusters}, {arguments.repeats} interleaved runs each, load average "
          f"{os.getloadavg()[0]:.1f}")
    for name, values in times.items():
        print(f"  {name:6} min {min(values):6.2f} s  median {statistics.median(values):6.2f} s  "
              f"({', '.join(f'{v:.2f}' for v in values)})  {checkouts[name]}")
    for name, values in cpu.items():
        print(f"  {name:6} CPU (user + system) median {statistics.median(values):6.2f} s  "
              f"({', '.join(f'{v:.2f}' for v in values)})")
    if floors:
        print(f"  floor  min {min(floors):6.2f} s  median {statistics.median(floors):6.2f} s  "
              f"({', '.join(f'{v:.2f}' for v in floors)})")
        for name, values in ratios.items():
            print(f"  {name:6} CLI / floor of the same round: median {statistics.median(values):.2f}x "
                  f"({', '.join(f'{v:.2f}' for v in values)})")
    same = len(digests["before"] | digests["after"]) == 1
    print(f"  outputs identical across runs and checkouts: {'yes' if same else 'NO'}")
    return 0


def _children_cpu_seconds() -> float:
    """Return the user + system CPU seconds of this process's finished children so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def floor_seconds(graph: Path, folder: Path) -> float:
    """Return one run of run.py's I/O floor on graph (read, sort every floating tensor as stored, write)."""
    import numpy

    from gpucompress.models import read_model

    started = time.perf_counter()
    model = read_model(graph)
    for weight in model.weights():
        if weight.floating:
            numpy.sort(weight.load().reshape(-1))
    model.save(folder / "floor.pb")
    return time.perf_counter() - started


if __name__ == "__main__":
    sys.exit(main())
