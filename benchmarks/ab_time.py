"""Time the CLI of two checkouts on the same graph, interleaved, so a busy machine hurts both alike.

    python benchmarks/ab_time.py --before /tmp/main --after . --repeats 5
    python benchmarks/ab_time.py --before /tmp/main --after . --command compress --n-clusters 256

Builds benchmarks/pack.py's FaceNet-sized frozen graph once (~23M weights,
94 MB), then runs `python -m gpucompress COMMAND graph.pb -o OUT -q
--n_clusters K` (pack adds --no-zip-sizes) with PYTHONPATH set to each
checkout in turn, before/after/before/after ..., and prints each checkout's
wall times, minimum and median, and whether both wrote the same bytes.
"""
from __future__ import annotations

import argparse
import hashlib
import os
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
    parser.add_argument("--before", required=True, help="checkout of the old code")
    parser.add_argument("--after", default=str(Path(__file__).resolve().parents[1]), help="checkout of the new code")
    parser.add_argument("--command", choices=("pack", "compress"), default="pack")
    parser.add_argument("--n-clusters", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--width", type=float, default=1.0, help="graph width (1.0: FaceNet-sized)")
    arguments = parser.parse_args()
    checkouts = {"before": Path(arguments.before).resolve(), "after": Path(arguments.after).resolve()}
    times = {name: [] for name in checkouts}
    digests = {name: set() for name in checkouts}
    with tempfile.TemporaryDirectory(prefix="gpucompress-ab-") as folder:
        folder = Path(folder)
        graph = folder / "facenet_like.pb"
        graph.write_bytes(facenet_like_graph(arguments.width))
        for _ in range(arguments.repeats):
            for name, checkout in checkouts.items():
                output = folder / f"{name}.out"
                command = [sys.executable, "-m", "gpucompress", arguments.command, str(graph), "-o", str(output),
                           "-q", "--overwrite", "--n_clusters", str(arguments.n_clusters)]
                if arguments.command == "pack":
                    command.append("--no-zip-sizes")
                started = time.perf_counter()
                subprocess.run(command, check=True, env={**os.environ, "PYTHONPATH": str(checkout)})
                times[name].append(time.perf_counter() - started)
                digests[name].add(hashlib.sha256(output.read_bytes()).hexdigest())
    print(f"{arguments.command} of the FaceNet-sized graph ({graph.name}, width {arguments.width}), "
          f"k={arguments.n_clusters}, {arguments.repeats} interleaved runs each, load average "
          f"{os.getloadavg()[0]:.1f}")
    for name, values in times.items():
        print(f"  {name:6} min {min(values):6.2f} s  median {statistics.median(values):6.2f} s  "
              f"({', '.join(f'{v:.2f}' for v in values)})  {checkouts[name]}")
    same = len(digests["before"] | digests["after"]) == 1
    print(f"  outputs identical across runs and checkouts: {'yes' if same else 'NO'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
