"""Fixed costs of the CLI as users meet it: each call a fresh process, in one or more environments.

For every environment given (`--env NAME=PYTHON`, the Python of a virtual
environment where gpucompress is installed; default: this one), in
interleaved rounds so a shared machine's slow spells hit all alike:
- import: seconds of `import gpucompress`, timed inside a fresh process;
- tiny: wall seconds of `gpucompress compress` on a one-tensor graph of 4,096 weights;
- facenet: wall seconds of `gpucompress compress` on the FaceNet-shaped graph (benchmarks/facenet.py);
- in-process: the third of three `compress_file` calls on the FaceNet graph
  inside one process (kernels loaded, caches warm): the work itself;
- peak RSS: VmHWM of one FaceNet CLI call (the child's own peak; see benchmarks/run.py);
- first: the same FaceNet call with an empty JIT cache (NUMBA_CACHE_DIR a new
  folder): what the first call after `pip install` pays where kernels compile
  at first use; ahead-of-time kernels pay nothing here.
Medians of --runs calls, next to the floor (parse + sort every weight +
serialize, best of 3, in this process). Prints a Markdown table and writes it,
with the machine and date, to benchmarks/results/startup-DATE.md.

    python benchmarks/startup.py --env before=/work/main/.venv/bin/python --env after=.venv/bin/python
"""
from __future__ import annotations

import argparse
import datetime
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import facenet  # noqa: E402
import machine  # noqa: E402

IMPORT_SCRIPT = "import time; t = time.perf_counter(); import gpucompress; print(time.perf_counter() - t)"
TINY_WEIGHTS = 4096
IN_PROCESS_SCRIPT = """
import sys, time
from gpucompress import CompressOptions, compress_file
for _ in range(3):
    started = time.perf_counter()
    compress_file(sys.argv[1], sys.argv[2], CompressOptions(), overwrite=True)
print(time.perf_counter() - started)
"""

# VmHWM, not getrusage: Linux carries ru_maxrss across fork and exec.
PEAK_RSS_SCRIPT = """
import sys
from gpucompress.cli import main
code = main(sys.argv[1:])
print(next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmHWM:")))
sys.exit(code)
"""


def write_tiny_graph(path: Path) -> None:
    """Write a frozen GraphDef holding one float32 Const of TINY_WEIGHTS values (and an Identity reading it)."""
    from tensorboard.compat.proto import graph_pb2

    graph = graph_pb2.GraphDef()
    node = graph.node.add()
    node.name, node.op = "weights", "Const"
    node.attr["dtype"].type = 1
    tensor = node.attr["value"].tensor
    tensor.dtype = 1
    tensor.tensor_shape.dim.add().size = TINY_WEIGHTS
    values = numpy.random.default_rng(0).laplace(scale=0.05, size=TINY_WEIGHTS).astype("<f4")
    tensor.tensor_content = values.tobytes()
    output = graph.node.add()
    output.name, output.op = "output", "Identity"
    output.input.append("weights")
    output.attr["T"].type = 1
    path.write_bytes(graph.SerializeToString())


def facenet_graph(cache: Path, width: int = 1) -> Path:
    """Return the cached FaceNet-shaped graph of `width` (the file benchmarks/run.py caches), building it if missing."""
    return facenet.cached_graph(cache, width)


def floor_seconds(path: Path, workdir: Path, runs: int = 3) -> float:
    """Return the best of `runs` times to parse the graph, sort every floating tensor and write it back."""
    from gpucompress.models import read_model

    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        model = read_model(path)
        for weight in model.weights():
            if weight.floating:
                numpy.sort(weight.load().reshape(-1))
        model.save(workdir / "floor.pb")
        best = min(best, time.perf_counter() - started)
        del model
    return best


def cli(python: str) -> list[str]:
    """Return the command that runs the gpucompress CLI installed beside `python`."""
    script = Path(python).parent / "gpucompress"
    return [str(script)] if script.exists() else [python, "-m", "gpucompress"]


def wall(command: list[str], env: dict, cwd: Path | None = None) -> float:
    """Return the wall seconds of running command to completion (in folder cwd); raise if it fails."""
    started = time.perf_counter()
    completed = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               cwd=cwd)
    seconds = time.perf_counter() - started
    if completed.returncode != 0:
        raise SystemExit(f"startup.py: {' '.join(command)} failed: {completed.stderr.strip()[-500:]}")
    return seconds


def measure(envs: dict[str, str], graphs: dict[str, Path], workdir: Path, runs: int, first_runs: int) -> dict:
    """Return {env: {measure: [seconds...]}} from interleaved fresh-process runs."""
    results = {name: {"import": [], "tiny": [], "facenet": [], "in-process": [], "peak RSS": [], "first": []}
               for name in envs}
    base = dict(os.environ)
    # Every child runs in workdir: started in a checkout, `python -c` and `-m` would import that checkout's
    # package instead of the interpreter's own (the before and after trees mixed).
    warm_caches = {name: workdir / f"numba-{name}" for name in envs}
    for name, python in envs.items():  # fill each JIT cache once, untimed
        env = {**base, "NUMBA_CACHE_DIR": str(warm_caches[name])}
        wall(cli(python) + ["compress", str(graphs["facenet"]), "-o", str(workdir / f"{name}.pb"),
                            "--overwrite", "-q"], env, workdir)
    for round_ in range(max(runs, first_runs)):
        for name, python in envs.items():
            env = {**base, "NUMBA_CACHE_DIR": str(warm_caches[name])}
            compress = cli(python) + ["compress"]
            if round_ < runs:
                imported = subprocess.run([python, "-c", IMPORT_SCRIPT], env=env, capture_output=True, text=True,
                                          check=True, cwd=workdir)
                results[name]["import"].append(float(imported.stdout.strip()))
                results[name]["tiny"].append(wall(compress + [str(graphs["tiny"]), "-o", str(workdir / "t.pb"),
                                                              "--overwrite", "-q"], env, workdir))
                results[name]["facenet"].append(wall(compress + [str(graphs["facenet"]), "-o",
                                                                 str(workdir / f"{name}.pb"), "--overwrite", "-q"],
                                                     env, workdir))
                in_process = subprocess.run([python, "-c", IN_PROCESS_SCRIPT, str(graphs["facenet"]),
                                             str(workdir / f"{name}.pb")], env=env, capture_output=True, text=True,
                                            check=True, cwd=workdir)
                results[name]["in-process"].append(float(in_process.stdout.strip().splitlines()[-1]))
            if round_ == 0:
                peak = subprocess.run([python, "-c", PEAK_RSS_SCRIPT, "compress", str(graphs["facenet"]), "-o",
                                       str(workdir / f"{name}.pb"), "--overwrite", "-q"], env=env,
                                      capture_output=True, text=True, check=True, cwd=workdir)
                results[name]["peak RSS"].append(int(peak.stdout.strip().splitlines()[-1]) / 1e6)
            if round_ < first_runs:
                fresh = {**base, "NUMBA_CACHE_DIR": tempfile.mkdtemp(dir=workdir, prefix="numba-empty-")}
                results[name]["first"].append(wall(compress + [str(graphs["facenet"]), "-o",
                                                               str(workdir / f"{name}.pb"), "--overwrite", "-q"],
                                                   fresh, workdir))
    return results


def table(results: dict, floor: float) -> list[str]:
    """Return the Markdown table of medians (and each facenet median over the floor)."""
    lines = ["| environment | import gpucompress (s) | one-tensor graph, CLI (s) | FaceNet-shaped, CLI (s) | "
             "x floor | FaceNet, 3rd call in one process (s) | FaceNet CLI peak RSS (MB) | "
             "FaceNet, empty JIT cache (s) |", "|---|---|---|---|---|---|---|---|"]
    for name, figures in results.items():
        median = {key: statistics.median(values) if values else float("nan") for key, values in figures.items()}
        lines.append(f"| {name} | {median['import']:.3f} | {median['tiny']:.2f} | {median['facenet']:.2f} | "
                     f"{median['facenet'] / floor:.1f}x | {median['in-process']:.2f} | {median['peak RSS']:.0f} | {median['first']:.2f} |")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", action="append", default=[], metavar="NAME=PYTHON",
                        help="an environment to time (repeatable; default: this Python)")
    parser.add_argument("--runs", type=int, default=5, help="fresh-process calls per measure (median; default 5)")
    parser.add_argument("--first-runs", type=int, default=1,
                        help="FaceNet calls with an empty JIT cache per environment (default 1)")
    parser.add_argument("--width", type=int, default=1,
                        help="FaceNet width divisor (1 = FaceNet, 22.8 M weights; 8: a quick ~0.4 M-weight run)")
    parser.add_argument("--cache", type=Path, default=HERE / ".cache", help="where the FaceNet graph is cached")
    parser.add_argument("--no-write", action="store_true", help="print only; write no results file")
    arguments = parser.parse_args(argv)
    # absolute (the children run in a temporary folder), not resolved: a venv's python is a symlink
    envs = ({name: os.path.abspath(python) for name, python in (item.split("=", 1) for item in arguments.env)}
            or {"this": sys.executable})
    with tempfile.TemporaryDirectory() as folder:
        workdir = Path(folder)
        graphs = {"tiny": workdir / "tiny.pb", "facenet": facenet_graph(arguments.cache, arguments.width)}
        write_tiny_graph(graphs["tiny"])
        floor = floor_seconds(graphs["facenet"], workdir)
        results = measure(envs, graphs, workdir, arguments.runs, arguments.first_runs)
    described = machine.describe()
    lines = [f"# CLI fixed costs, fresh processes ({described['date']})", "",
             f"Command: `python benchmarks/startup.py {' '.join(argv if argv is not None else sys.argv[1:])}`", "",
             f"Machine: {described['cpu']}, {described['cores']} usable cores. Medians of {arguments.runs} calls "
             f"each ({arguments.first_runs} with an empty JIT cache); environments interleaved.", "",
             f"Floor (parse + sort every weight + serialize, best of 3, in-process): {floor:.2f} s.", "",
             *table(results, floor), ""]
    for name, figures in results.items():
        lines.append(f"- {name} ({envs[name]}): " + "; ".join(
            f"{key} " + ", ".join(f"{value:.2f}" for value in values) for key, values in figures.items()))
    text = "\n".join(lines) + "\n"
    print(text)
    if not arguments.no_write:
        day = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
        (HERE / "results" / f"startup-{day}.md").write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
