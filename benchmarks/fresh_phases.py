"""Time `gpucompress compress` as a fresh process, phase by phase (where a call's time goes).

    python benchmarks/fresh_phases.py benchmarks/.cache/facenet-w1.pb --n-clusters 256 --repeats 5

Each run is a new interpreter that wraps the pipeline's functions with
timers, then runs the CLI (`compress GRAPH -o OUT -q --overwrite
--n_clusters K`) in the same way `python -m gpucompress` does. Prints the
median over the runs of each phase's wall time, the child's whole wall time
(measured by this process, interpreter start-up included) and its CPU time
(user + system, all threads). Phases nest as printed (sort and keys are part
of the batch); "rest" is the whole call less import, parse, select + cluster
and write. The wrappers cost microseconds per call (a few hundred calls).
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# (label, module, attribute, depth): the functions timed, where the pipeline looks them up.
PHASES = [
    ("parse (read_model)", "gpucompress.api", "read_model", 0),
    ("select + cluster (cluster_weights)", "gpucompress.api", "cluster_weights", 0),
    ("select + load (_prepare)", "gpucompress.clustering", "_prepare", 1),
    ("engine (cluster_arrays)", "gpucompress.engine", "_cluster", 1),
    ("batch: sort + keys (_cpu_batch)", "gpucompress.engine", "_cpu_batch", 2),
    ("sort (sort_values)", "gpucompress.engine", "sort_values", 3),
    ("keys + prefix sums", "gpucompress.engine", "batch_from_sorted", 3),
    ("DP bin tables", "gpucompress.kernels.optimal", "_bin_tables", 2),
    ("DP borders", "gpucompress.kernels.optimal", "_compiled_borders", 2),
    ("Lloyd", "gpucompress.kernels.optimal", "lloyd", 2),
    ("labels (assign_labels)", "gpucompress.engine", "assign_labels", 2),
    ("outcomes (error sums, labels)", "gpucompress.clustering", "_segmented_outcome", 1),
    ("write (values, serialize, fsync)", "gpucompress.api", "write_model", 0),
]


def _child(graph: str, output: str, k: int) -> None:
    started = time.perf_counter()
    import gpucompress.cli

    imported = time.perf_counter()
    totals = {label: 0.0 for label, *_ in PHASES}
    for label, module_name, attribute, _ in PHASES:
        module = importlib.import_module(module_name)
        function = getattr(module, attribute)

        def timed(*args, _function=function, _label=label, **kwargs):
            begun = time.perf_counter()
            try:
                return _function(*args, **kwargs)
            finally:
                totals[_label] += time.perf_counter() - begun

        setattr(module, attribute, timed)
    code = gpucompress.cli.main(["compress", graph, "-o", output, "-q", "--overwrite", "--n_clusters", str(k)])
    totals["import gpucompress.cli"] = imported - started
    totals["main"] = time.perf_counter() - imported
    print(json.dumps(totals))
    sys.exit(code)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("graph", type=Path, nargs="?", help="a frozen GraphDef (.pb)")
    parser.add_argument("--n-clusters", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--python", default=sys.executable, help="interpreter whose gpucompress is timed")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.child:
        _child(arguments.child[0], arguments.child[1], int(arguments.child[2]))
    if arguments.graph is None:
        parser.error("give the graph to time")
    runs, walls, cpus = [], [], []
    with tempfile.TemporaryDirectory(prefix="gpucompress-phases-") as folder:
        for _ in range(arguments.repeats):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            begun = time.perf_counter()
            done = subprocess.run([arguments.python, str(Path(__file__).resolve()), "--child",
                                   str(arguments.graph.resolve()), str(Path(folder) / "out.pb"),
                                   str(arguments.n_clusters)], check=True, capture_output=True, text=True)
            walls.append(time.perf_counter() - begun)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpus.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
            runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    median = {label: statistics.median(run[label] for run in runs) for label in runs[0]}
    wall = statistics.median(walls)
    print(f"compress {arguments.graph.name}, k={arguments.n_clusters}, fresh process, median of "
          f"{arguments.repeats}, load average {os.getloadavg()[0]:.1f}, {arguments.python}")
    print("| phase | median s | share of the call |\n|---|---|---|")
    print(f"| whole call (wall, from this process) | {wall:.3f} | 100% |")
    print(f"| CPU (user + system, all threads) | {statistics.median(cpus):.3f} | - |")
    top = ["import gpucompress.cli"] + [label for label, _, _, depth in PHASES if depth == 0]
    for label, _, _, depth in [("import gpucompress.cli", None, None, 0)] + PHASES:
        indent = "&nbsp;&nbsp;" * depth
        print(f"| {indent}{label} | {median[label]:.3f} | {100 * median[label] / wall:.0f}% |")
    rest = wall - sum(median[label] for label in top)
    print(f"| rest (interpreter start and exit, CLI, freeing) | {rest:.3f} | {100 * rest / wall:.0f}% |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
