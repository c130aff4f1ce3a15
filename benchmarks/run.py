"""Benchmark gpucompress as users run it, against the 2016 baseline and the tools people would pick instead.

    python benchmarks/run.py            # FaceNet-sized graph, all parts (about 15-20 min on 2 cores)
    python benchmarks/run.py --quick    # tiny graph, seconds (the test suite runs this)
    python benchmarks/run.py --parts user --python before=/work/main/.venv/bin/python \
        --python after=.venv/bin/python    # the user path of two checkouts, same machine, same run

The user path (userpath.py): the CLI in fresh processes next to the floor,
the first call after `pip install` into a new venv, a tiny graph's fixed
cost, import time and peak RSS (VmHWM) of compress and pack at 100 and 400 MB.

Writes benchmarks/results/DATE-cpuN[-gpu][-quick].{json,md,png}. See benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy  # noqa: E402

import baseline2016  # noqa: E402
import facenet  # noqa: E402
import machine  # noqa: E402
import peers  # noqa: E402
import report  # noqa: E402
import userpath  # noqa: E402
from gpucompress import engine  # noqa: E402
from gpucompress.api import compress_file  # noqa: E402
from gpucompress.device import gpu_available  # noqa: E402
from gpucompress.models import read_model  # noqa: E402
from gpucompress.options import CompressOptions  # noqa: E402
from gpucompress.select import decide_with_values, decide_without_values  # noqa: E402

FULL = {"width": 1, "size_widths": (8, 2, 1), "peer_sizes": (2e3, 1e4, 4e4, 1.5e5, 6e5, 4e6),
        "baseline_sizes": (1e4, 3e4, 1e5), "replace_sample": 2000, "peer_budget": 20.0, "epochs": 8}
QUICK = {"width": 16, "size_widths": (32, 16), "peer_sizes": (1e3,),
         "baseline_sizes": (1e3,), "replace_sample": 100, "peer_budget": 0.3, "epochs": 1}
KS = (256, 16)
PARTS = ("user", "inprocess", "peers", "fidelity")
# Graphs whose compress and pack peaks are measured: label -> facenet width.
RSS_WIDTHS = {"full": {"100 MB": 0.957, "400 MB": 0.478}, "quick": {"quick": 16}}


def model_path(cache: Path, width: int) -> Path:
    """Return the cached FaceNet-shaped graph of `width`, building it (atomically) when missing."""
    return facenet.cached_graph(cache, width)


def selected_arrays(path: Path, k: int) -> dict[str, numpy.ndarray]:
    """Return name -> float64 values of the tensors gpucompress would cluster with k (same rules)."""
    options = CompressOptions(n_clusters=k)
    arrays = {}
    for weight in read_model(path).weights():
        if decide_without_values(weight, options) is not None:
            continue
        values = weight.load()
        if decide_with_values(values, options).cluster:
            arrays[weight.name] = values.reshape(-1).astype(numpy.float64)
    return arrays


def nearest_sizes(arrays: dict, sizes) -> dict:
    """Return the arrays whose sizes are nearest (in log) to each target size, without repeats."""
    names = sorted(arrays, key=lambda n: arrays[n].size)
    chosen = {}
    for target in sizes:
        name = min(names, key=lambda n: abs(numpy.log(arrays[n].size / target)))
        chosen[name] = arrays[name]
    return chosen


def time_compress(path: Path, devices, workdir: Path) -> list[dict]:
    """Run compress_file for each device, k, per-tensor/global and method; return rows of phase times."""
    rows = []
    output = workdir / "out.pb"
    compress_file(path, output, CompressOptions(device=devices[0]), overwrite=True)  # warm-up
    for device in devices:
        for k in KS:
            for global_clusters in (False, True):
                for method in engine.METHODS:
                    options = CompressOptions(n_clusters=k, global_clusters=global_clusters,
                                              device=device, method=method)
                    summary = compress_file(path, output, options, overwrite=True)
                    rows.append({"device": device, "k": k, "global": global_clusters, "method": method,
                                 "clustered_tensors": len(summary.run.clustered()),
                                 "clustered_weights": sum(t.size for t in summary.run.clustered()),
                                 "sse": sum(t.sse for t in summary.run.clustered()),
                                 "output_bytes": summary.output_bytes, **summary.seconds})
    return rows


def time_io_floor(path: Path, workdir: Path, runs: int = 3) -> dict:
    """Time what no compressor can avoid: parse the graph, sort every floating tensor, re-serialize, write.

    The weights are sorted as stored (float32 here), the cheapest sort there
    is; the best of `runs` runs is kept, so the floor is as low as this
    machine allows (compress itself is timed once, after a warm-up).
    """
    best = None
    for _ in range(runs):
        started = time.perf_counter()
        model = read_model(path)
        parsed = time.perf_counter()
        for weight in model.weights():
            if weight.floating:
                numpy.sort(weight.load().reshape(-1))
        sorted_ = time.perf_counter()
        model.save(workdir / "floor.pb")
        written = time.perf_counter()
        run = {"parse": parsed - started, "sort": sorted_ - parsed, "write": written - sorted_,
               "total": written - started}
        if best is None or run["total"] < best["total"]:
            best = run
        del model
    return best


# VmHWM, not getrusage: Linux carries ru_maxrss across fork and exec, so a
# child of this (large) process would report the parent's peak. VmHWM is the
# peak of the child's own address space.
PEAK_RSS_SCRIPT = """
import resource, sys
from gpucompress.cli import main
code = main(sys.argv[1:])
try:
    peak = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmHWM:"))
except (OSError, StopIteration):
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(peak)
sys.exit(code)
"""


def peak_rss(path: Path, workdir: Path, device: str) -> int:
    """Return the peak RSS in bytes of `gpucompress compress` (k=256, per tensor) in a fresh process."""
    command = [sys.executable, "-c", PEAK_RSS_SCRIPT, "compress", str(path), "-o", str(workdir / "rss.pb"),
               "--overwrite", "-q", "--device", device]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return int(done.stdout.split()[-1])


def size_sweep(cache: Path, widths, tools, budget: float) -> list[dict]:
    """Cluster whole FaceNet-shaped graphs of several widths with each tool; rows of time and SSE."""
    rows = []
    for width in widths:
        path = model_path(cache, width)
        for k in KS:
            arrays = list(selected_arrays(path, k).values())
            weights = int(sum(a.size for a in arrays))
            for tool, result in peers.whole_model(arrays, k, tools, budget).items():
                rows.append({"width": width, "k": k, "tensors": len(arrays), "weights": weights,
                             "tool": tool, **result})
    return rows


def check_targets(results: dict) -> list[dict]:
    """Return the issue's targets, each with the measured figures, met (bool) and a note."""
    default = CompressOptions()
    e2e = next(r for r in results["compress"] if r["device"] == "cpu" and r["k"] == default.n_clusters
               and not r["global"] and r["method"] == default.method)
    floor = results["io_floor"]["total"]
    targets = [{"target": "end-to-end compress within 3x (parse + sort weights + re-serialize)",
                "measured": f"{e2e['total']:.2f} s vs 3 x {floor:.2f} s = {3 * floor:.2f} s",
                "met": e2e["total"] <= 3 * floor}]
    full = min(r["width"] for r in results["size_sweep"]) if results["size_sweep"] else None
    for k in KS:
        rows = {r["tool"]: r for r in results["size_sweep"] if r["k"] == k and r["width"] == full}
        ours, flash = rows.get(f"gpucompress {default.method} (cpu)"), rows.get("flash1dkmeans")
        if ours and flash:
            targets.append({"target": f"k={k}: >= 3x faster than flash1dkmeans at no worse SSE",
                            "measured": f"{flash['seconds'] / ours['seconds']:.2f}x faster, "
                                        f"SSE ratio ours/flash {ours['sse'] / flash['sse']:.4f}",
                            "met": flash["seconds"] >= 3 * ours["seconds"] and ours["sse"] <= flash["sse"]})
    pb = results["model"]["pb_bytes"]
    rss = results["peak_rss_bytes"]
    targets.append({"target": "peak memory (RSS) under 3x the .pb size",
                    "measured": f"{rss / 1e6:.0f} MB vs 3 x {pb / 1e6:.0f} MB = {3 * pb / 1e6:.0f} MB",
                    "met": rss < 3 * pb})
    gpu_rows = [r for r in results["compress"] if r["device"] == "gpu" and r["k"] == default.n_clusters
                and not r["global"] and r["method"] == default.method]
    if gpu_rows:
        targets.append({"target": "GPU: end-to-end under 1 s, clustering under 50 ms",
                        "measured": f"{gpu_rows[0]['total']:.3f} s, cluster {gpu_rows[0]['cluster'] * 1e3:.0f} ms",
                        "met": gpu_rows[0]["total"] < 1 and gpu_rows[0]["cluster"] < 0.05})
    return targets


def _interpreters(entries: list[str]) -> dict[str, Path]:
    """Return label -> python of --python entries ("LABEL=PATH" or "PATH"); this interpreter by default."""
    if not entries:
        return {"this checkout": Path(sys.executable)}
    out = {}
    for entry in entries:
        label, _, path = entry.rpartition("=")
        out[label or path] = Path(path).absolute()
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny graph and few runs (seconds)")
    parser.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto",
                        help="auto: CPU, plus the GPU when present; cpu: CPU only; gpu: both, GPU required")
    parser.add_argument("--output-dir", type=Path, default=HERE / "results")
    parser.add_argument("--cache-dir", type=Path, default=HERE / ".cache")
    parser.add_argument("--no-fidelity", action="store_true", help="skip the trained-model fidelity part")
    parser.add_argument("--parts", default=",".join(PARTS),
                        help=f"comma-separated parts to run, of {', '.join(PARTS)} (default all)")
    parser.add_argument("--python", action="append", default=[], metavar="[LABEL=]PATH",
                        help="user path: the interpreter whose gpucompress is measured (repeatable, one "
                        "column each, e.g. before=/work/main/.venv/bin/python; default this one)")
    parser.add_argument("--checkout", action="append", default=[], metavar="[LABEL=]DIR",
                        help="user path: the source a --python of that label is pip-installed from in the "
                        "fresh-venv part (default: the checkout its gpucompress imports from, else this one)")
    parser.add_argument("--runs", type=int, default=None, help="fresh processes per timed figure (default 5, quick 2)")
    parser.add_argument("--venv", choices=("yes", "no"), default=None,
                        help="user path: time the first call in a new venv (default yes; no with --quick)")
    arguments = parser.parse_args(argv)
    parts = [part for part in arguments.parts.split(",") if part]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        print(f"benchmarks/run.py: --parts: unknown {', '.join(unknown)} (known: {', '.join(PARTS)})", file=sys.stderr)
        return 1
    if arguments.no_fidelity and "fidelity" in parts:
        parts.remove("fidelity")
    if arguments.device == "gpu" and not gpu_available():
        print("benchmarks/run.py: --device gpu: no usable CUDA device", file=sys.stderr)
        return 1
    config = QUICK if arguments.quick else FULL
    devices = ["cpu"] + (["gpu"] if arguments.device != "cpu" and gpu_available() else [])
    faiss_gpu = "gpu" in devices and _faiss_gpus() > 0
    info = machine.describe()
    results = {"machine": info, "mode": "quick" if arguments.quick else "full", "config": config, "parts": parts}
    log = lambda text: print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)  # noqa: E731
    path = model_path(arguments.cache_dir, config["width"])
    with tempfile.TemporaryDirectory() as temporary:
        workdir = Path(temporary)
        results["model"] = {"path": str(path), "width": config["width"], "pb_bytes": path.stat().st_size,
                            "float32_values": int(sum(w.size for w in read_model(path).weights()
                                                      if w.floating))}
        log(f"model {path.name}: {results['model']['float32_values']:,} values, "
            f"{results['model']['pb_bytes']:,} bytes; devices {devices}; parts {parts}")
        results["io_floor"] = time_io_floor(path, workdir)
        log(f"floor {results['io_floor']['total']:.2f} s")
        if "user" in parts:
            results["user"] = _user_path(arguments, path, workdir, log)
            info["load_average_end"] = machine.load_average()
        if "inprocess" in parts:
            results["compress"] = time_compress(path, devices, workdir)
            results["peak_rss_bytes"] = peak_rss(path, workdir, "cpu")
            log("compress timed (in process)")
        if "peers" in parts:
            peers.warm_up()
            results["size_sweep"] = size_sweep(arguments.cache_dir, config["size_widths"],
                                               peers.whole_model_tools("gpu" in devices, faiss_gpu),
                                               config["peer_budget"])
            log("size sweep done")
            arrays = selected_arrays(path, max(KS))
            results["peers"] = peers.compare(nearest_sizes(arrays, config["peer_sizes"]), KS,
                                             peers.runners("gpu" in devices, faiss_gpu))
            log("peer comparison done")
            measured = baseline2016.measure(nearest_sizes(arrays, config["baseline_sizes"]), 256,
                                            config["replace_sample"])
            measured["graph_weights"] = int(sum(a.size for a in arrays.values()))
            measured["extrapolated_seconds"] = measured["seconds_per_weight"] * measured["graph_weights"]
            measured["reported_seconds"] = baseline2016.REPORTED_SECONDS
            results["baseline2016"] = measured
            log("2016 baseline measured")
        if "fidelity" in parts:
            import fidelity

            results["fidelity"] = fidelity.measure(workdir, quick=arguments.quick, epochs=config["epochs"])
            log("fidelity measured")
    complete = {"inprocess", "peers"} <= set(parts)
    if complete:
        results["targets"] = check_targets(results)
    suffix = ("-quick" if arguments.quick else "") + ("" if complete else "-" + "-".join(parts))
    stem = arguments.output_dir / f"{machine.short_name(info)}{suffix}"
    arguments.output_dir.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    markdown = ""
    if "user" in parts:
        command = "python benchmarks/run.py " + " ".join(argv if argv is not None else sys.argv[1:])
        markdown += userpath.markdown(results["user"], results["io_floor"], info, command.strip()) + "\n"
    if complete:
        markdown += report.markdown(results)
        report.plot(results, stem.with_suffix(".png"))
    stem.with_suffix(".md").write_text(markdown)
    print(markdown)
    print(f"wrote {stem}.json, .md{', .png' if complete else ''}")
    return 0


def _user_path(arguments, path: Path, workdir: Path, log) -> dict[str, dict]:
    """Return label -> userpath.measure results for every --python interpreter."""
    mode = "quick" if arguments.quick else "full"
    rss_models = {label: model_path(arguments.cache_dir, width) for label, width in RSS_WIDTHS[mode].items()}
    runs = arguments.runs or (2 if arguments.quick else 5)
    venv = (arguments.venv or ("no" if arguments.quick else "yes")) == "yes"
    measured = {}
    checkouts = {label: Path(path) for label, _, path in (entry.rpartition("=") for entry in arguments.checkout)}
    for label, python in _interpreters(arguments.python).items():
        checkout = checkouts.get(label) or userpath.checkout_of(python, HERE.parent)
        log(f"user path of {label}: {python} (checkout {checkout})")
        folder = workdir / f"user-{len(measured)}"
        folder.mkdir()
        measured[label] = userpath.measure(python, checkout, path, rss_models, folder, runs, venv,
                                           log=lambda text, label=label: log(f"{label}: {text}"))
    return measured


def _faiss_gpus() -> int:
    try:
        import faiss
    except ImportError:
        return 0
    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


if __name__ == "__main__":
    sys.exit(main())
