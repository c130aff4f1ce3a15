"""Time `gpucompress compress` as a fresh process, phase by phase (where a call's time goes).

    python benchmarks/fresh_phases.py benchmarks/.cache/facenet-w1.pb --n-clusters 256 --repeats 5 \
        --python before=/work/main/.venv/bin/python --python after=.venv/bin/python

Each call is a new interpreter that wraps the pipeline's functions with
timers, then runs the CLI (`compress GRAPH -o OUT -q --overwrite
--n_clusters K`) in the same way `python -m gpucompress` does. Prints the
median over the calls of each phase's wall time, the child's whole wall time
(measured by this process, interpreter start-up included) and its CPU time
(user + system, all threads). Phases nest as printed (sort and keys are part
of the batch); "rest" is the whole call less the import of gpucompress.cli,
parse, select + cluster and write (so it holds the modules imported on first
use, NumPy among them where the package imports it lazily). The wrappers cost microseconds per call (a few hundred calls).
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
    parser.add_argument("--python", action="append", default=[], metavar="NAME=PYTHON",
                        help="an interpreter whose gpucompress is timed (repeatable: rounds interleave them, "
                        "so a busy machine's slow spells hit all alike; default: this one)")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.child:
        _child(arguments.child[0], arguments.child[1], int(arguments.child[2]))
    if arguments.graph is None:
        parser.error("give the graph to time")
    pythons = dict(entry.split("=", 1) if "=" in entry else (entry, entry) for entry in arguments.python)
    # absolute, not resolved: a venv's python is a symlink to the base interpreter, and only its own path is the venv
    pythons = {name: os.path.abspath(python) for name, python in pythons.items()} or {"this": sys.executable}
    runs = {name: [] for name in pythons}
    walls = {name: [] for name in pythons}
    cpus = {name: [] for name in pythons}
    loads = []
    with tempfile.TemporaryDirectory(prefix="gpucompress-phases-") as folder:
        for _ in range(arguments.repeats):
            for name, python in pythons.items():
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                begun = time.perf_counter()
                # cwd: the temporary folder, so no checkout's package shadows the interpreter's own
                done = subprocess.run([python, str(Path(__file__).resolve()), "--child",
                                       str(arguments.graph.resolve()), str(Path(folder) / "out.pb"),
                                       str(arguments.n_clusters)], capture_output=True, text=True, cwd=folder)
                if done.returncode != 0:
                    raise SystemExit(f"{python}: the timed call failed:\n{done.stderr}")
                walls[name].append(time.perf_counter() - begun)
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                cpus[name].append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
                runs[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
                loads.append(os.getloadavg()[0])
    print(f"compress {arguments.graph.name}, k={arguments.n_clusters}, each call a fresh process, median of "
          f"{arguments.repeats} interleaved rounds, load average {min(loads):.1f}-{max(loads):.1f}")
    for name, python in pythons.items():
        print(f"- {name}: {python}")
    names = list(pythons)
    print("\n| phase (s, median) | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")
    median = {name: {label: statistics.median(run[label] for run in runs[name]) for label in runs[name][0]}
              for name in names}
    wall = {name: statistics.median(walls[name]) for name in names}
    print("| whole call (wall, from this process) | " + " | ".join(f"{wall[n]:.3f}" for n in names) + " |")
    print("| CPU (user + system, all threads) | "
          + " | ".join(f"{statistics.median(cpus[n]):.3f}" for n in names) + " |")
    top = ["import gpucompress.cli"] + [label for label, _, _, depth in PHASES if depth == 0]
    for label, _, _, depth in [("import gpucompress.cli", None, None, 0)] + PHASES:
        indent = "&nbsp;&nbsp;" * depth
        print(f"| {indent}{label} | " + " | ".join(f"{median[n][label]:.3f}" for n in names) + " |")
    rest = {n: wall[n] - sum(median[n][label] for label in top) for n in names}
    print("| rest (interpreter start and exit, imports made on first use, CLI, freeing) | " + " | ".join(f"{rest[n]:.3f}" for n in names)
          + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
