"""Turn a benchmark result dict into a Markdown report and a PNG plot (time vs model size)."""
from __future__ import annotations

from pathlib import Path

from gpucompress.options import CompressOptions

# The method `gpucompress compress` uses unless told otherwise: the headline and
# the "SSE / ours" column speak of it.
DEFAULT_METHOD = CompressOptions().method


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.3f} s" if seconds < 10 else f"{seconds:.1f} s"


def summary(results: dict) -> str:
    """Return the one-paragraph headline: our time vs 8 h, and speed/error vs faiss (k=256, full width)."""
    m = results["machine"]
    e2e = next(r for r in results["compress"] if r["device"] == "cpu" and r["k"] == 256
               and not r["global"] and r["method"] == DEFAULT_METHOD)
    base = results["baseline2016"]
    text = (f"FaceNet-shaped graph ({results['model']['float32_values'] / 1e6:.1f} M float32 values, "
            f"{results['model']['pb_bytes'] / 1e6:.0f} MB .pb): gpucompress compresses it end to end "
            f"(k=256 per tensor, default method {DEFAULT_METHOD}) in {e2e['total']:.1f} s on {m['cores']} CPU cores ({m['cpu']}), vs about "
            f"8 h reported for the 2016 script on a p2.xlarge and {_duration(base['extrapolated_seconds'])} "
            f"for our faithful reimplementation of it on this machine (extrapolated from a sample).")
    full = min(r["width"] for r in results["size_sweep"])
    rows = {r["tool"]: r for r in results["size_sweep"] if r["k"] == 256 and r["width"] == full}
    ours, faiss = rows.get(f"gpucompress {DEFAULT_METHOD} (cpu)"), rows.get("faiss (cpu)")
    if ours and faiss:
        speed = faiss["seconds"] / ours["seconds"]
        error = faiss["sse"] / ours["sse"]
        text += (f" Clustering alone: {speed:.1f}x {'faster than' if speed >= 1 else 'the speed of'} faiss-cpu "
                 f"at {error:.2f}x {'lower' if error >= 1 else 'higher'} error (SSE)"
                 f" ({ours['seconds']:.2f} s vs {faiss['seconds']:.2f} s).")
    return text


def markdown(results: dict) -> str:
    """Return the Markdown report of one benchmark run."""
    m = results["machine"]
    out = [f"# gpucompress benchmark ({results['mode']}), {m['date']}\n",
           f"Machine: {m['cpu']}, {m['cores']} cores usable, GPU: {m['gpu'] or 'none'}; "
           f"{m['platform']}. Versions: "
           + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v) + ".\n",
           f"Model: {Path(results['model']['path']).name}, {results['model']['float32_values']:,} float32 "
           f"values, {results['model']['pb_bytes']:,} bytes.\n", summary(results) + "\n",
           "## Targets\n"]
    out.append(_table(["target", "measured", "met"],
                      [[t["target"], t["measured"], "yes" if t["met"] else "**no**"] for t in results["targets"]]))
    floor = results["io_floor"]
    out.append("\n## gpucompress compress, by phase (seconds)\n")
    out.append(f"Floor, best of 3 (parse {floor['parse']:.2f} + sort every float tensor as stored {floor['sort']:.2f} + "
               f"re-serialize and write {floor['write']:.2f}) = {floor['total']:.2f} s. "
               f"Peak RSS of `gpucompress compress` (k=256): {results['peak_rss_bytes'] / 1e6:.0f} MB.\n\n")
    out.append(_table(["device", "k", "codebooks", "method", "tensors", "weights", "parse", "select",
                       "cluster", "write", "total"],
                      [[r["device"], r["k"], "global" if r["global"] else "per tensor", r["method"],
                        r["clustered_tensors"], f"{r['clustered_weights']:,}", f"{r['parse']:.2f}",
                        f"{r['select']:.2f}", f"{r['cluster']:.2f}", f"{r['write']:.2f}", f"{r['total']:.2f}"]
                       for r in results["compress"]]))
    base = results["baseline2016"]
    out.append("\n## The 2016 algorithm (scikit-learn KMeans init=random, n_init=2, max_iter=300 + "
               "per-element predict), k=256\n")
    out.append(_table(["tensor", "n", "fit (s)", "iterations", "predict per element (µs)"],
                      [[r["tensor"], f"{r['n']:,}", f"{r['fit_seconds']:.2f}", r["iterations"],
                        f"{r['replace_seconds_per_element'] * 1e6:.0f}"] for r in base["rows"]]))
    out.append(f"\n{base['seconds_per_weight'] * 1e6:.1f} µs per weight (fit "
               f"{base['fit_seconds_per_weight'] * 1e6:.1f} + replace {base['replace_seconds_per_weight'] * 1e6:.1f})"
               f" x {base['graph_weights']:,} weights = **{_duration(base['extrapolated_seconds'])} "
               f"(extrapolated)** on this machine; reported: about 8 h on a p2.xlarge.\n")
    out.append("\n## Whole graph, clustering only (no I/O), by model size\n")
    out.append(_table(["width divisor", "k", "tensors", "weights", "tool", "seconds", "SSE", "SSE / ours"],
                      _sweep_rows(results["size_sweep"])))
    out.append("\n## Same tensors, every tool (SSE relative to kmeans1d's exact optimum, or to the best "
               "result where kmeans1d does not fit)\n")
    out.append("faiss runs with its defaults: 25 iterations on a subsample of 256 points per centroid "
               "(k=256: 65,536 points), then every value goes to its nearest centroid.\n\n")
    out.append(_table(["tensor", "n", "k", "tool", "seconds", "SSE ratio", "reference"],
                      [[r["tensor"].split("/")[-2], f"{r['n']:,}", r["k"], r["tool"],
                        "skipped" if r.get("skipped") else f"{r['seconds']:.3f}",
                        "" if r.get("skipped") else f"{r['sse_ratio']:.4f}", r["reference"]]
                       for r in results["peers"]]))
    if "fidelity" in results:
        fid = results["fidelity"]
        out.append(f"\n## Fidelity on a trained model: {fid['model']['name']}, {fid['model']['weights']:,} "
                   f"weights, test accuracy {fid['model']['accuracy']:.4f} on {fid['model']['test_images']} "
                   "images\n")
        out.append(_table(["engine", "method", "init", "k", "accuracy", "agreement", "max |Δp|"],
                          [[r["engine"], r["method"] if r["engine"] == "gpucompress" else "-",
                            r["init"] if r["engine"] == "gpucompress" else "-", r["k"],
                            f"{r['accuracy']:.4f}", f"{r['agreement']:.4f}",
                            f"{r['max_abs_probability_change']:.4f}"] for r in fid["rows"]]))
    out.append("\nThe machine may have been shared with other jobs: compare ratios within this run.\n")
    return "".join(out)


def _sweep_rows(rows):
    out = []
    for r in rows:
        ours = next((o for o in rows if o["width"] == r["width"] and o["k"] == r["k"]
                     and o["tool"] == f"gpucompress {DEFAULT_METHOD} (cpu)"), None)
        ratio = f"{r['sse'] / ours['sse']:.4f}" if ours and ours["sse"] > 0 else ""
        seconds = f"{r['seconds']:.3f}" + (f" (extrapolated from {r['done']} tensors)" if r["extrapolated"] else "")
        out.append([r["width"], r["k"], r["tensors"], f"{r['weights']:,}", r["tool"], seconds,
                    f"{r['sse']:.4g}", ratio])
    return out


def plot(results: dict, path: Path) -> None:
    """Write a PNG: clustering time vs model size per tool (k=256 and k=16), 2016 extrapolated."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = sorted({r["k"] for r in results["size_sweep"]}, reverse=True)
    figure, axes = plt.subplots(1, len(ks), figsize=(6 * len(ks), 4.5), squeeze=False)
    for axis, k in zip(axes[0], ks):
        rows = [r for r in results["size_sweep"] if r["k"] == k]
        for tool in dict.fromkeys(r["tool"] for r in rows):
            points = sorted((r["weights"], r["seconds"]) for r in rows if r["tool"] == tool)
            axis.plot(*zip(*points), marker="o", label=tool)
        if k == 256:
            sizes = sorted({r["weights"] for r in rows})
            per_weight = results["baseline2016"]["seconds_per_weight"]
            axis.plot(sizes, [s * per_weight for s in sizes], "k--", label="2016 script (extrapolated)")
            axis.axhline(8 * 3600, color="grey", linestyle=":", label="8 h reported (p2.xlarge)")
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("weights clustered (FaceNet-shaped graph, width varied)")
        axis.set_ylabel("seconds (clustering only)")
        axis.set_title(f"k={k}, {results['machine']['cores']} CPU cores, {results['machine']['date'][:10]}")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
