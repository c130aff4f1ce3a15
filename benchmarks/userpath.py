"""Time gpucompress as users meet it: the CLI in fresh processes, in a fresh virtual environment, and its memory.

Every figure here comes from a child process of the interpreter under test
(`--python`, default this one), so the same script measures another checkout
(main, say) on the same machine in the same session:

- the CLI (`gpucompress compress`, the console script next to that python),
  each call a new process, median of several;
- the same job three times inside one process (`api.compress_file`), the third
  call kept: the in-process warm figure, a second column;
- a one-tensor graph of 4,096 weights: the fixed cost of a call;
- `import gpucompress` in a fresh process (timed inside it);
- the first CLI call after `pip install` of the checkout (non-editable, so
  whatever setup.py builds is built) into a new virtual environment, against
  the warm calls that follow it there;
- peak RSS of `compress` and `pack` from the child's own VmHWM, read by a tiny
  wrapper as it exits (not getrusage: Linux carries ru_maxrss across fork and
  exec, so a child of a large parent reports the parent's peak).
"""
from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Runs the CLI and writes the process's VmHWM (bytes) to the file named first.
PEAK_WRAPPER = """
import atexit, sys
_path = sys.argv.pop(1)
def _report():
    with open("/proc/self/status") as status:
        peak = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))
    with open(_path, "w") as out:
        out.write(str(peak))
atexit.register(_report)
from gpucompress.cli import main
sys.exit(main(sys.argv[1:]))
"""

IMPORT_TIMER = """
import time
started = time.perf_counter()
import gpucompress
print(time.perf_counter() - started)
"""

IN_PROCESS = """
import json, sys, time
from gpucompress.api import compress_file
from gpucompress.options import CompressOptions
seconds = []
for _ in range(int(sys.argv[3])):
    started = time.perf_counter()
    compress_file(sys.argv[1], sys.argv[2], CompressOptions(), overwrite=True)
    seconds.append(time.perf_counter() - started)
print(json.dumps(seconds))
"""

# Targets of issue 16 (printed against the figures, never asserted).
TARGET_FLOOR_RATIO = 2.0
TARGET_FIRST_RATIO = 1.5
TARGET_TINY_SECONDS = 0.5
TARGET_IMPORT_SECONDS = 0.2
TARGET_RSS_RATIO = 2.5


def cli_command(python: Path) -> list[str]:
    """Return the command users type: the `gpucompress` script beside python, else `python -m gpucompress`."""
    script = python.parent / "gpucompress"
    return [str(script)] if script.exists() else [str(python), "-m", "gpucompress"]


def _run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    # A neutral folder: `python -c` puts the working folder first on sys.path,
    # and a checkout there would be imported instead of the installed package.
    kwargs.setdefault("cwd", tempfile.gettempdir())
    done = subprocess.run(command, capture_output=True, text=True, **kwargs)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return done


def timed_cli(command: list[str], arguments: list[str], runs: int) -> list[float]:
    """Return the wall seconds of `runs` fresh processes of command + arguments (each checked to succeed)."""
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        _run(command + arguments)
        seconds.append(time.perf_counter() - started)
    return seconds


def compress_arguments(model: Path, output: Path) -> list[str]:
    """Return the CLI arguments of the timed job: defaults (k=256 per tensor, optimal), quiet, CPU."""
    return ["compress", str(model), "-o", str(output), "--overwrite", "-q", "--device", "cpu"]


def import_seconds(python: Path, runs: int) -> list[float]:
    """Return how long `import gpucompress` takes in each of `runs` fresh processes (timed inside them)."""
    return [float(_run([str(python), "-c", IMPORT_TIMER]).stdout.split()[-1]) for _ in range(runs)]


def in_process_seconds(python: Path, model: Path, output: Path, calls: int = 3) -> list[float]:
    """Return the seconds of `calls` compress_file calls made one after the other inside one process."""
    done = _run([str(python), "-c", IN_PROCESS, str(model), str(output), str(calls)])
    return json.loads(done.stdout.splitlines()[-1])


def peak_rss(python: Path, arguments: list[str], workdir: Path) -> int:
    """Return the peak RSS (bytes, VmHWM) of one CLI call in a fresh process of python."""
    report = workdir / "vmhwm"
    report.unlink(missing_ok=True)
    _run([str(python), "-c", PEAK_WRAPPER, str(report), *arguments])
    return int(report.read_text())


def write_tiny_graph(path: Path, values: int = 4096) -> Path:
    """Write a frozen GraphDef holding one float32 Const of `values` weights (64 x 64) and an Identity."""
    import numpy
    from tensorboard.compat.proto import graph_pb2

    side = int(round(values ** 0.5))
    weights = numpy.random.default_rng(0).laplace(0.0, 0.05, (side, side)).astype(numpy.float32)
    graph = graph_pb2.GraphDef()
    const = graph.node.add(name="weights", op="Const")
    const.attr["dtype"].type = 1
    tensor = const.attr["value"].tensor
    tensor.dtype = 1
    for size in weights.shape:
        tensor.tensor_shape.dim.add(size=size)
    tensor.tensor_content = weights.tobytes()
    identity = graph.node.add(name="output", op="Identity", input=["weights"])
    identity.attr["T"].type = 1
    path.write_bytes(graph.SerializeToString(deterministic=True))
    return path


def _source_files(checkout: Path) -> list[str]:
    """Return the checkout's files as git sees them: tracked and untracked-but-not-ignored."""
    done = _run(["git", "-C", str(checkout), "ls-files", "--cached", "--others", "--exclude-standard", "-z"])
    return [name for name in done.stdout.split("\0") if name and (checkout / name).is_file()]


def _dependency_dirs(python: Path, checkout: Path) -> list[str]:
    """Return the site-packages folders python imports from, except anything inside the checkout."""
    code = "import json, sys; print(json.dumps(sys.path))"
    paths = json.loads(_run([str(python), "-c", code]).stdout)
    inside = str(checkout.resolve())
    return [p for p in paths if p.rstrip("/").endswith(("site-packages", "dist-packages"))
            and not str(Path(p).resolve()).startswith(inside)]


def fresh_venv(python: Path, checkout: Path, model: Path, workdir: Path, warm_runs: int) -> dict:
    """pip install a copy of the checkout (non-editable) into a new venv; time its first and warm CLI calls.

    The new venv sees python's installed packages (a .pth file names their
    folders), so only gpucompress itself is built and installed, with build
    isolation, as `pip install` does for a user; its compiled parts and
    caches start empty. The checkout is copied first (pip builds in the source
    tree, and the checkout must stay untouched). Returns seconds of
    "install", "first" and the list "warm".
    """
    source, venv = workdir / "source", workdir / "venv"
    shutil.rmtree(source, ignore_errors=True)
    shutil.rmtree(venv, ignore_errors=True)
    for name in _source_files(checkout):
        target = source / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(checkout / name, target)
    _run([str(python), "-m", "venv", str(venv)])
    new_python = venv / "bin" / "python"
    site = _run([str(new_python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    Path(site, "benchmark_dependencies.pth").write_text("\n".join(_dependency_dirs(python, checkout)) + "\n")
    started = time.perf_counter()
    _run([str(new_python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(source)],
         cwd=workdir)
    installed = time.perf_counter() - started
    command = cli_command(new_python)
    arguments = compress_arguments(model, workdir / "venv-out.pb")
    first = timed_cli(command, arguments, 1)[0]
    warm = timed_cli(command, arguments, warm_runs)
    location = _run([str(new_python), "-c", "import gpucompress; print(gpucompress.__file__)"], cwd=workdir)
    return {"install": installed, "first": first, "warm": warm, "imported_from": location.stdout.strip()}


def measure(python: Path, checkout: Path, model: Path, rss_models: dict[str, Path], workdir: Path,
            runs: int, venv: bool, log=lambda text: None) -> dict:
    """Return every user-path figure for the interpreter python (see the module docstring).

    model: the FaceNet-shaped graph; rss_models: label -> graph whose compress
    and pack peaks are measured; runs: fresh processes per timed figure.
    """
    command = cli_command(python)
    version = _run([str(python), "-c", "import gpucompress, sys; print(gpucompress.__file__); "
                    "print(sys.version.split()[0])"]).stdout.split()
    results = {"python": str(python), "checkout": str(checkout), "command": command,
               "gpucompress": version[0], "python_version": version[1]}
    timed_cli(command, compress_arguments(model, workdir / "out.pb"), 1)  # warm caches (the page cache too)
    results["cli"] = timed_cli(command, compress_arguments(model, workdir / "out.pb"), runs)
    log(f"CLI fresh process: median {statistics.median(results['cli']):.2f} s")
    results["in_process"] = in_process_seconds(python, model, workdir / "out.pb")
    tiny = write_tiny_graph(workdir / "tiny.pb")
    results["tiny"] = timed_cli(command, compress_arguments(tiny, workdir / "tiny.pb.min"), runs)
    results["import"] = import_seconds(python, runs)
    log(f"tiny graph {statistics.median(results['tiny']):.2f} s, import {statistics.median(results['import']):.3f} s")
    results["rss"] = []
    for label, path in rss_models.items():
        for verb in ("compress", "pack"):
            arguments = [verb, str(path), "-o", str(workdir / f"rss-{verb}"), "--overwrite", "-q", "--device", "cpu"]
            started = time.perf_counter()
            peak = peak_rss(python, arguments, workdir)
            results["rss"].append({"graph": label, "command": verb, "input_bytes": path.stat().st_size,
                                   "peak_bytes": peak, "seconds": time.perf_counter() - started})
            log(f"peak RSS {verb} {label}: {peak / 1e6:.0f} MB")
    if venv:
        results["venv"] = fresh_venv(python, checkout, model, workdir / "fresh", max(2, runs - 1))
        log(f"fresh venv: first {results['venv']['first']:.2f} s, warm {statistics.median(results['venv']['warm']):.2f} s")
    return results


def rows(results: dict, floor: float) -> list[dict]:
    """Return the table rows: measure, figure, target, ratio to it and whether it is met (None: not measured)."""
    median = statistics.median
    cli = median(results["cli"])
    out = [{"measure": "CLI `compress`, FaceNet-shaped graph, each call a new process (median)",
            "figure": f"{cli:.2f} s", "target": f"<= {TARGET_FLOOR_RATIO:g}x floor ({floor:.2f} s)",
            "ratio": f"{cli / floor:.2f}x floor", "met": cli <= TARGET_FLOOR_RATIO * floor},
           {"measure": "same job, third call inside one process (in-process warm, second column)",
            "figure": f"{results['in_process'][-1]:.2f} s", "target": "-",
            "ratio": f"{results['in_process'][-1] / floor:.2f}x floor", "met": None}]
    if "venv" in results:
        first, warm = results["venv"]["first"], median(results["venv"]["warm"])
        out.append({"measure": "first CLI call after `pip install` in a new venv / warm calls there",
                    "figure": f"{first:.2f} s / {warm:.2f} s", "target": f"<= {TARGET_FIRST_RATIO:g}x warm",
                    "ratio": f"{first / warm:.2f}x warm", "met": first <= TARGET_FIRST_RATIO * warm})
    tiny = median(results["tiny"])
    out.append({"measure": "one-tensor graph of 4,096 weights, per call (median)", "figure": f"{tiny:.2f} s",
                "target": f"< {TARGET_TINY_SECONDS:g} s", "ratio": f"{tiny / TARGET_TINY_SECONDS:.2f}x target",
                "met": tiny < TARGET_TINY_SECONDS})
    imported = median(results["import"])
    out.append({"measure": "`import gpucompress`, fresh process (median)", "figure": f"{imported:.3f} s",
                "target": f"< {TARGET_IMPORT_SECONDS:g} s", "ratio": f"{imported / TARGET_IMPORT_SECONDS:.2f}x target",
                "met": imported < TARGET_IMPORT_SECONDS})
    for row in results["rss"]:
        ratio = row["peak_bytes"] / row["input_bytes"]
        out.append({"measure": f"peak RSS `{row['command']}`, {row['graph']} graph "
                               f"({row['input_bytes'] / 1e6:.0f} MB)",
                    "figure": f"{row['peak_bytes'] / 1e6:.0f} MB", "target": f"<= {TARGET_RSS_RATIO:g}x input",
                    "ratio": f"{ratio:.2f}x input", "met": ratio <= TARGET_RSS_RATIO})
    return out


def markdown(runs: dict[str, dict], floor: dict, machine: dict, command: str) -> str:
    """Return the user-path report: one table, a column per interpreter measured (label -> results)."""
    labels = list(runs)
    tables = {label: rows(results, floor["total"]) for label, results in runs.items()}
    first = tables[labels[0]]
    header = ["measure", *[f"{label}" for label in labels], "target"]
    lines = [f"# gpucompress as users run it ({machine['date']})", "",
             f"machine: {machine['cpu']}, {machine['cores']} cores; command: `{command}`", "",
             f"load average (1, 5, 15 min) at the start: {machine.get('load_average')}, at the end: "
             f"{machine.get('load_average_end')} (above {machine['cores']}: other jobs shared the cores)", "",
             f"floor (parse + sort every weight as stored + re-serialize + write, best of 3, this run): "
             f"{floor['total']:.2f} s (parse {floor['parse']:.2f}, sort {floor['sort']:.2f}, "
             f"write {floor['write']:.2f})", ""]
    for label, results in runs.items():
        lines.append(f"- {label}: `{results['python']}` (gpucompress from {results['gpucompress']}, "
                     f"Python {results['python_version']})")
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for index, row in enumerate(first):
        cells = []
        for label in labels:
            other = tables[label][index] if index < len(tables[label]) else None
            if other is None or other["measure"] != row["measure"]:
                cells.append("not measured")
                continue
            verdict = "" if other["met"] is None else (" **met**" if other["met"] else " missed")
            cells.append(f"{other['figure']} ({other['ratio']}){verdict}")
        lines.append("| " + " | ".join([row["measure"], *cells, row["target"]]) + " |")
    return "\n".join(lines) + "\n"


def checkout_of(python: Path, default: Path) -> Path:
    """Return the checkout an interpreter's gpucompress comes from (the folder above the package), else default."""
    done = subprocess.run([str(python), "-c", "import gpucompress; print(gpucompress.__file__)"],
                          capture_output=True, text=True, cwd=tempfile.gettempdir())
    if done.returncode == 0:
        root = Path(done.stdout.strip()).resolve().parent.parent
        if (root / "setup.py").exists():
            return root
    return default


if __name__ == "__main__":
    sys.exit("run benchmarks/run.py (--parts user) instead")
