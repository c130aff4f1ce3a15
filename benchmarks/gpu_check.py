"""The measuring half of benchmarks/gpu_check.sh: CPU/GPU byte parity and timings on the FaceNet-shaped graph.

    python benchmarks/gpu_check.py --device gpu --work DIR --out OUTDIR [--width 1] [--repeats 3]
    python benchmarks/gpu_check.py --device cpu ...   # the dry run: the "GPU" side is the CPU running the
                                                     # array code (GPUCOMPRESS_COMPILED=0), CuPy's code

Run by gpu_check.sh after it has installed gpucompress (the script checks that the installed copy is
the one imported). For every k in (16, 256), per-tensor and global codebooks, and every method of
gpucompress.engine.METHODS, it runs `python -m gpucompress compress` in a fresh process on the
device under test and on the CPU, compares the two output files byte for byte, times each run end to
end (wall clock around the process; the first pass, whose files are compared, is the warm-up that
fills CuPy's kernel cache; then best of --repeats more) and reads its phase times from
the --report JSON. Then, in one process per device, it times the cluster phase alone
(cluster_weights, best of --repeats after a warm-up). --budget bounds the step: the timed repeats
and the clustering-alone runs are cut to fit it (the report says which), the first pass never. Writes DATE-NAME.json and DATE-NAME.md (NAME: the GPU's short name, e.g. h200, or
cpu-dryrun) into --out, and into --results-dir when given. Exits 1 when an output differs between
the devices or between repeats, or when a run fails.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
KS = (16, 256)
# A CLI run that takes longer than this is recorded as timed out, and the check goes on.
RUN_TIMEOUT = 90.0
# The first pass may compile (CuPy compiles its kernels on first use per device and caches them):
# its runs get longer.
FIRST_PASS_TIMEOUT = 240.0


def gpu_facts() -> dict:
    """Return the GPU's name, driver, CUDA runtime and CuPy versions (None each without a usable GPU)."""
    facts = {"gpu": None, "driver": None, "cuda_runtime": None, "cuda_driver_api": None, "cupy": None,
             "memory_bytes": None, "compute_capability": None}
    from gpucompress.device import gpu_available

    try:
        import cupy

        facts["cupy"] = cupy.__version__
    except Exception:  # no CuPy, or a broken CUDA install raising at import
        return facts
    if not gpu_available():
        return facts
    properties = cupy.cuda.runtime.getDeviceProperties(0)
    facts.update(gpu=properties["name"].decode(), memory_bytes=int(properties["totalGlobalMem"]),
                 compute_capability=f"{properties['major']}.{properties['minor']}",
                 cuda_runtime=_cuda_version(cupy.cuda.runtime.runtimeGetVersion()),
                 cuda_driver_api=_cuda_version(cupy.cuda.runtime.driverGetVersion()))
    smi = shutil.which("nvidia-smi")
    if smi:
        done = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30)
        if done.returncode == 0 and done.stdout.strip():
            facts["driver"] = done.stdout.strip().splitlines()[0]
    return facts


def _cuda_version(number: int) -> str:
    return f"{number // 1000}.{number % 1000 // 10}"


def describe(device: str) -> dict:
    """Return the machine and software this check ran with."""
    import numpy

    import gpucompress
    from gpucompress.kernels import compiled

    sys.path.insert(0, str(HERE))
    import machine

    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "device_under_test": device, "cpu": machine.cpu_model(), "cores": machine.usable_cores(),
            "platform": platform.platform(), "python": platform.python_version(), "numpy": numpy.__version__,
            "gpucompress": gpucompress.__version__, "gpucompress_path": str(Path(gpucompress.__file__).parent),
            "compiled_cpu_twins": compiled.available(),
            compiled.DISABLE_VARIABLE: os.environ.get(compiled.DISABLE_VARIABLE), **gpu_facts()}


def short_gpu_name(name: str | None) -> str:
    """Return a filename tag for a GPU name: "NVIDIA H200" -> "h200", "Tesla K80" -> "k80"."""
    if not name:
        return "cpu-dryrun"
    words = [w for w in re.split(r"[^0-9A-Za-z]+", name.lower()) if w and w not in ("nvidia", "tesla", "geforce")]
    return "-".join(words[:2]) or "gpu"


def build_graph(work: Path, width: int) -> tuple[Path, dict]:
    """Write the FaceNet-shaped graph of `width` into work (TensorBoard protos, no TensorFlow)."""
    sys.path.insert(0, str(HERE))
    import facenet

    path = work / f"facenet-w{width}.pb"
    started = time.perf_counter()
    values = facenet.write_facenet(path, width=width)
    return path, {"path": str(path), "width": width, "float32_values": values, "bytes": path.stat().st_size,
                  "build_seconds": round(time.perf_counter() - started, 3)}


def configurations(ks, methods, fused: bool) -> list[dict]:
    """Return every (k, global, method, fused) the check covers.

    fused: also each k with --method lloyd per tensor and the opt-in fused Lloyd kernel on the
    candidate side (GPUCOMPRESS_FUSED=1, kernels/fused.py; it has never run on a GPU before this
    check). Lloyd alone: the optimal method's time is its DP's, which has no fused kernel yet.
    """
    plain = [{"k": k, "global": mode, "method": method, "fused": False}
             for k in ks for mode in (False, True) for method in methods]
    return plain + ([{"k": k, "global": False, "method": "lloyd", "fused": True} for k in ks] if fused else [])


def _tag(config: dict) -> str:
    fused = "-fused" if config.get("fused") else ""
    return f"k{config['k']}-{'global' if config['global'] else 'tensor'}-{config['method']}{fused}"


def _method(config: dict) -> str:
    return f"{config['method']} (fused)" if config.get("fused") else config["method"]


def _environment(side: dict, config: dict) -> dict:
    """Return the variables of one run: the side's, and GPUCOMPRESS_FUSED=1 for a fused candidate run."""
    if config.get("fused") and side["label"] == "candidate":
        return {**side["environment"], "GPUCOMPRESS_FUSED": "1"}
    return side["environment"]


def run_cli(model: Path, output: Path, report: Path, device: str, config: dict, environment=None,
            timeout: float = RUN_TIMEOUT) -> dict:
    """Run `python -m gpucompress compress` in a fresh process; return its wall time, phases and output hash.

    environment: variables to set for this run on top of ours (e.g. GPUCOMPRESS_COMPILED=0).
    """
    command = [sys.executable, "-m", "gpucompress", "compress", str(model), "-o", str(output), "--overwrite",
               "-q", "--device", device, "--n_clusters", str(config["k"]), "--method", config["method"],
               "--report", str(report)]
    if config["global"]:
        command.append("--global_clusters")
    started = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=model.parent,
                              env={**os.environ, **(environment or {})})
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timed out after {timeout:.0f} s", "seconds": None}
    wall = time.perf_counter() - started
    if done.returncode != 0:
        return {"ok": False, "error": (done.stderr or done.stdout).strip()[-500:], "seconds": wall}
    phases = json.loads(report.read_text(encoding="utf-8"))["seconds"]
    return {"ok": True, "seconds": wall, "phases": phases,
            "sha256": hashlib.sha256(output.read_bytes()).hexdigest()}


def first_difference(a: Path, b: Path) -> int | None:
    """Return the first byte offset where two files differ (None when identical)."""
    left, right = a.read_bytes(), b.read_bytes()
    if left == right:
        return None
    for offset, (x, y) in enumerate(zip(left, right)):
        if x != y:
            return offset
    return min(len(left), len(right))


def sides_of(device: str) -> list[dict]:
    """Return the two sides compared: the device under test ("candidate") and the CPU as it runs by default.

    The dry run's candidate is the CPU running the array code (GPUCOMPRESS_COMPILED=0): the code
    CuPy runs, on NumPy. Where the caller has set GPUCOMPRESS_COMPILED=0 already, both sides run it.
    """
    candidate = {"label": "candidate", "device": device, "environment": {}}
    if device == "cpu":
        candidate["environment"] = {compiled_variable(): "0"}
    return [candidate, {"label": "cpu", "device": "cpu", "environment": {}}]


def compiled_variable() -> str:
    from gpucompress.kernels import compiled

    return compiled.DISABLE_VARIABLE


def end_to_end(model: Path, work: Path, sides: list[dict], configs, repeats: int, deadline: float,
               log) -> tuple[list, dict]:
    """Run every configuration on both sides; return (rows, first pass).

    First pass: each configuration once per side, in order; its files are the ones compared, and
    it is the warm-up (the first process per device fills CuPy's kernel
    cache). Then the timed passes: `repeats` more runs of each, while time.monotonic() < deadline
    (a configuration left out keeps its first-pass time, marked cold).
    """
    rows, first_pass = [], {side["label"]: [] for side in sides}
    for config in configs:
        row = {**config, "runs": {}}
        for side in sides:
            label = side["label"]
            output = work / f"out-{label}-{_tag(config)}.pb"
            environment = _environment(side, config)
            run = run_cli(model, output, work / "report.json", side["device"], config, environment,
                          FIRST_PASS_TIMEOUT)
            first_pass[label].append(run["seconds"])
            row["runs"][label] = {"device": side["device"], "environment": environment,
                                  "ok": run["ok"], "error": run.get("error"),
                                  "output": str(output), "sha256": run.get("sha256"), "cold_seconds": run["seconds"],
                                  "cold_phases": run.get("phases"), "timed": [], "repeats_identical": True}
        both = row["runs"]["candidate"]["ok"] and row["runs"]["cpu"]["ok"]
        row["identical"] = both and row["runs"]["candidate"]["sha256"] == row["runs"]["cpu"]["sha256"]
        row["first_difference"] = None if row["identical"] or not both else first_difference(
            Path(row["runs"]["candidate"]["output"]), Path(row["runs"]["cpu"]["output"]))
        log(f"{_tag(config)}: identical={row['identical']} "
            + " ".join(f"{label}={_seconds(run['cold_seconds'])} s" for label, run in row["runs"].items()))
        rows.append(row)
    for _ in range(repeats):
        for row in rows:
            for run in row["runs"].values():
                if not run["ok"] or time.monotonic() > deadline:
                    continue
                again = run_cli(model, work / "again.pb", work / "report.json", run["device"], row,
                                run["environment"])
                if again["ok"]:
                    run["timed"].append({"seconds": again["seconds"], "phases": again["phases"]})
                    run["repeats_identical"] &= again["sha256"] == run["sha256"]
                else:
                    run["ok"], run["error"] = False, again["error"]
    for row in rows:
        for run in row["runs"].values():
            best = min(run["timed"], key=lambda timed: timed["seconds"]) if run["timed"] else None
            run["best_seconds"] = best["seconds"] if best else run["cold_seconds"]
            run["phases_of_best"] = best["phases"] if best else run["cold_phases"]
            run["only_cold"] = best is None
    return rows, {side: {"seconds": sum(filter(None, times)), "first_seconds": times[0] if times else None}
                  for side, times in first_pass.items()}


CLUSTER_ONLY = r"""
import json, os, sys, time
from gpucompress.clustering import cluster_weights
from gpucompress.models import read_model
from gpucompress.options import CompressOptions
model, device, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3])
configs, deadline, label = json.loads(sys.argv[4]), float(sys.argv[5]), sys.argv[6]
weights = read_model(model).weights()
rows = []
for config in configs:
    os.environ.pop("GPUCOMPRESS_FUSED", None)
    if config.get("fused") and label == "candidate":
        os.environ["GPUCOMPRESS_FUSED"] = "1"
    if time.time() > deadline:
        rows.append({**config, "device": device, "error": "skipped: time budget spent"})
        continue
    options = CompressOptions(n_clusters=config["k"], global_clusters=config["global"],
                              method=config["method"], device=device)
    warm_up = cluster_weights(weights, options).seconds["cluster"]
    seconds = [cluster_weights(weights, options).seconds["cluster"] for _ in range(max(repeats, 1))]
    rows.append({**config, "device": device, "best_seconds": min(seconds), "all_seconds": seconds,
                 "warm_up_seconds": warm_up})
print(json.dumps(rows))
"""


def cluster_only(model: Path, side: dict, configs, repeats: int, deadline: float) -> list[dict]:
    """Return the cluster phase's best time per configuration, in one process on `device` after a warm-up.

    Skipped (rows say so) when time.monotonic() is past the deadline.
    """
    device = side["device"]
    if time.monotonic() > deadline:
        return [{**config, "device": device, "error": "skipped: time budget spent"} for config in configs]
    wall_deadline = time.time() + (deadline - time.monotonic())
    command = [sys.executable, "-c", CLUSTER_ONLY, str(model), device, str(repeats), json.dumps(configs),
               repr(wall_deadline), side["label"]]
    try:
        done = subprocess.run(command, capture_output=True, text=True, cwd=model.parent,
                              timeout=deadline - time.monotonic() + 2 * RUN_TIMEOUT,
                              env={**os.environ, **side["environment"]})
    except subprocess.TimeoutExpired:
        return [{**config, "device": device, "error": "timed out"} for config in configs]
    if done.returncode != 0:
        return [{**config, "device": device, "error": done.stderr.strip()[-500:]} for config in configs]
    return [{**row, "side": side["label"]} for row in json.loads(done.stdout.strip().splitlines()[-1])]


DRY_RUN_GPU = "none (dry run: the candidate side is the CPU running the array code, CuPy's code, on NumPy)"


def _side_name(run: dict) -> str:
    extra = " ".join(f"{name}={value}" for name, value in run.get("environment", {}).items())
    return f"{run['device']}{' ' + extra if extra else ''}"


def _verdict(value, limit) -> str:
    return "not measured" if value is None else "met" if value < limit else "missed"


def _seconds(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def markdown(results: dict) -> str:
    """Return the report as Markdown: machine, parity table, timing tables."""
    info, graph = results["machine"], results["graph"]
    dry = info["device_under_test"] == "cpu"
    lines = [f"# gpucompress GPU check{' (CPU dry run)' if dry else ''}, {info['date'][:10]}", "",
             "Written by `benchmarks/gpu_check.sh` (see benchmarks/README.md).", "",
             "| | |", "|---|---|",
             f"| GPU | {info['gpu'] or DRY_RUN_GPU} |",
             f"| driver / CUDA runtime / CUDA driver API | {info['driver']} / {info['cuda_runtime']} / "
             f"{info['cuda_driver_api']} |",
             f"| CuPy / NumPy / Python | {info['cupy']} / {info['numpy']} / {info['python']} |",
             f"| CPU | {info['cpu']}, {info['cores']} usable cores; compiled twins: {info['compiled_cpu_twins']} "
             f"(GPUCOMPRESS_COMPILED={info.get('GPUCOMPRESS_COMPILED')}) |",
             f"| graph | FaceNet-shaped (benchmarks/facenet.py) width {graph['width']}: "
             f"{graph['float32_values']:,} float32 values, {graph['bytes']:,} bytes |", ""]
    rows = results["end_to_end"]
    same = sum(row["identical"] for row in rows)
    lines += [f"## Parity: {same} of {len(rows)} output files byte-identical "
              f"({'candidate' if dry else 'GPU'} vs CPU, fresh processes)", "",
              "| k | codebooks | method | identical | first differing byte | repeats identical |",
              "|---|---|---|---|---|---|"]
    for row in rows:
        repeats = all(run["repeats_identical"] for run in row["runs"].values())
        compared = all(run["ok"] for run in row["runs"].values())
        verdict = "yes" if row["identical"] else "NO" if compared else "not compared: a run failed"
        lines.append(f"| {row['k']} | {'global' if row['global'] else 'per tensor'} | {_method(row)} | "
                     f"{verdict} | {row['first_difference'] or '-'} | "
                     f"{'yes' if repeats else 'NO'} |")
    lines += ["", f"## End to end (`python -m gpucompress compress` in a fresh process, wall clock, best of "
              f"{results['repeats']} after the first pass)", "",
              "| k | codebooks | method | device | total s | parse | select | cluster | write |",
              "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        for run in row["runs"].values():
            phases = run["phases_of_best"] or {}
            error = f" ({run['error']})" if run["error"] else (" (cold only)" if run["only_cold"] else "")
            lines.append(f"| {row['k']} | {'global' if row['global'] else 'per tensor'} | {_method(row)} | "
                         f"{_side_name(run)}{error} | {_seconds(run['best_seconds'])} | "
                         + " | ".join(_seconds(phases.get(p)) for p in ("parse", "select", "cluster", "write")) + " |")
    lines += ["", "First pass (the compared files; every configuration once per device before the timed runs, "
              "so it holds the kernel compilation and cache filling): "
              + ", ".join(f"{side} {_seconds(run['seconds'])} s in all, its first process "
                          f"{_seconds(run['first_seconds'])} s" for side, run in results["warm_up"].items()), "",
              f"## Clustering alone (cluster phase in one process, after a warm-up, best of {max(results['repeats'], 1)})", "",
              "| k | codebooks | method | device | seconds |", "|---|---|---|---|---|"]
    for row in results["cluster_only"]:
        value = row.get("error") or _seconds(row.get("best_seconds"))
        lines.append(f"| {row['k']} | {'global' if row['global'] else 'per tensor'} | {_method(row)} | "
                     f"{row['device']} ({row.get('side', '?')}) | {value} |")
    lines += ["", "## Targets", ""] + [f"- {target}" for target in results["targets"]] + [""]
    return "\n".join(lines)


def targets(results: dict) -> list[str]:
    """Return the issue's targets with what this run measured (GPU runs only say met or missed)."""
    rows = results["end_to_end"]
    default = [row for row in rows if row["k"] == 256 and not row["global"] and row["method"] == "optimal"
               and not row.get("fused")]
    candidate = default[0]["runs"]["candidate"] if default else None
    total = candidate["best_seconds"] if candidate else None
    cluster = next((row.get("best_seconds") for row in results["cluster_only"]
                    if row["k"] == 256 and not row["global"] and row["method"] == "optimal"
                    and row.get("side") == "candidate" and not row.get("fused")), None)
    parity = all(row["identical"] for row in rows)
    prefix = "(dry run, not a GPU figure) " if results["machine"]["device_under_test"] == "cpu" else ""
    return [f"{prefix}end to end under 1 s (k=256 per tensor, optimal): {_seconds(total)} s -> "
            f"{_verdict(total, 1.0)}",
            f"{prefix}clustering under 50 ms (same): {_seconds(cluster)} s -> "
            f"{_verdict(cluster, 0.05)}",
            f"{prefix}byte-identical outputs for every method, k and mode: {'met' if parity else 'MISSED'}",
            f"{prefix}cost per model: {_seconds(total)} s of the device end to end (no hourly price is known "
            "here; multiply by it)"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("gpu", "cpu"), required=True,
                        help="the device under test; cpu is the dry run (both sides on the CPU)")
    parser.add_argument("--work", type=Path, required=True, help="scratch folder (graph, outputs)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the report (JSON + Markdown)")
    parser.add_argument("--results-dir", type=Path, help="also copy the report here (benchmarks/results)")
    parser.add_argument("--width", type=int, default=1, help="FaceNet width divisor (1 = full graph)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-fused", action="store_true",
                        help="leave out the runs with the opt-in fused kernels (GPUCOMPRESS_FUSED=1)")
    parser.add_argument("--budget", type=float, default=240.0,
                        help="seconds this step may take (timed repeats and clustering alone are cut to fit)")
    parser.add_argument("--ks", default=",".join(map(str, KS)), help="comma-separated codebook sizes (default 16,256)")
    arguments = parser.parse_args(argv)
    from gpucompress.device import gpu_available
    from gpucompress.engine import METHODS

    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    if arguments.device == "gpu" and not gpu_available():
        print("gpu_check: --device gpu but CuPy sees no usable CUDA device", file=sys.stderr)
        return 2
    arguments.work.mkdir(parents=True, exist_ok=True)
    arguments.out.mkdir(parents=True, exist_ok=True)
    results = {"machine": describe(arguments.device), "repeats": arguments.repeats}
    log(f"machine: {results['machine']}")
    model, results["graph"] = build_graph(arguments.work, arguments.width)
    log(f"graph: {results['graph']}")
    # The fused kernels run only on CuPy: the dry run has nothing to fuse.
    configs = configurations([int(k) for k in arguments.ks.split(",")], sorted(METHODS),
                             fused=arguments.device == "gpu" and not arguments.no_fused)
    # The timed repeats stop at 60% of the budget, clustering alone is skipped past 80%: the
    # first pass (the parity check) always runs in full.
    start = time.monotonic()
    deadline = start + 0.6 * arguments.budget
    sides = sides_of(arguments.device)
    results["end_to_end"], results["warm_up"] = end_to_end(model, arguments.work, sides, configs,
                                                           arguments.repeats, deadline, log)
    deadline = start + 0.8 * arguments.budget
    results["cluster_only"] = []
    for side in sides:
        results["cluster_only"] += cluster_only(model, side, configs, arguments.repeats, deadline)
        log(f"clustering alone, {side['label']} ({side['device']}) done")
    results["targets"] = targets(results)
    name = f"{results['machine']['date'][:10]}-{short_gpu_name(results['machine']['gpu'])}"
    for folder in filter(None, (arguments.out, arguments.results_dir)):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{name}.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
        (folder / f"{name}.md").write_text(markdown(results), encoding="utf-8")
    log(f"wrote {arguments.out / name}.{{json,md}}")
    for target in results["targets"]:
        log(target)
    failed = [row for row in results["end_to_end"] if not row["identical"]
              or not all(run["ok"] and run["repeats_identical"] for run in row["runs"].values())]
    failed += [row for row in results["cluster_only"] if "error" in row and not row["error"].startswith("skipped")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
