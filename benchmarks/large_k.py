"""Peak memory and time of one 1 M-value tensor at large codebook sizes, per method.

The bound on --n_clusters (options.MAX_OPTIMAL_CLUSTERS) comes from this: the
optimal method's dynamic program grows as k squared, Lloyd's memory as n + k.
Each case runs in a fresh process, which reports its own peak RSS; the
seconds include its start (NumPy and gpucompress imports).

    python benchmarks/large_k.py                       # optimal 1024, 4096; lloyd 65536
    python benchmarks/large_k.py --case optimal:16384  # 8-9 GB: only with the memory
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time

CHILD = """
import numpy as np
from gpucompress.engine import cluster_arrays
x = np.random.default_rng(0).normal(size=1 << 20).astype('float32')
cluster_arrays([x], {k}, device='cpu', method='{method}')
import resource
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", action="append", metavar="METHOD:K",
                        help="default: optimal:1024 optimal:4096 lloyd:65536")
    cases = parser.parse_args(argv).case or ["optimal:1024", "optimal:4096", "lloyd:65536"]
    print("| method | k | seconds | peak RSS MB |")
    print("|---|---|---|---|")
    for case in cases:
        method, k = case.split(":")
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", CHILD.format(k=int(k), method=method)], check=True,
                              capture_output=True, text=True)
        seconds = time.perf_counter() - started
        peak = int(done.stdout.split()[-1]) / 1024
        print(f"| {method} | {k} | {seconds:.1f} | {peak:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
