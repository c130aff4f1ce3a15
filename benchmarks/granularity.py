"""Per-tensor vs per-channel vs grouped codebooks on the FaceNet-shaped graph with channel-scaled weights.

    python benchmarks/granularity.py                 # the full graph (~23 M weights), k = 16
    python benchmarks/granularity.py --quick         # a small graph: a smoke run (seconds)

The graph is benchmarks/facenet.py's with channel_gains: every output channel
of every kernel scaled by its own gain, log-uniform over 10x, as trained nets'
channels differ. For each granularity it measures, in one process and
interleaved (rounds x configurations, medians): the clustering time of
`cluster_weights` (selection included), the total SSE of the clustered
weights, and the bytes of the `.gpcz` archive `pack` writes. Targets (issue
17), as ratios to per-tensor: per-channel SSE <= 0.5x, clustering time <= 2x,
archive <= 1.3x. Prints a table; writes it, with the machine and the command,
to benchmarks/results/<date>-granularity.md (or --output).
"""
from __future__ import annotations

import argparse
import datetime
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy  # noqa: E402
from facenet import build_facenet  # noqa: E402
from machine import describe, load_average  # noqa: E402

from gpucompress import CompressOptions  # noqa: E402
from gpucompress.clustering import cluster_weights  # noqa: E402
from gpucompress.models.graphdef import GraphDefModel  # noqa: E402
from gpucompress.packing import encode_model  # noqa: E402

TARGETS = {"sse": 0.5, "seconds": 2.0, "archive": 1.3}


def configurations(group_size: int) -> dict[str, dict]:
    """Return {label: CompressOptions fields} of the configurations compared (per-tensor first)."""
    return {"per-tensor": {}, "per-channel": {"granularity": "per-channel"},
            f"grouped G={group_size}": {"granularity": "grouped", "group_size": group_size}}


def index_entropy_bits(outcome) -> float:
    """Return the bits of a clustered tensor's labels at their empirical entropy within each codebook.

    Takes a TensorOutcome; each codebook row's labels are counted on their own
    (per-channel rows in channel-major order). The generator's values are
    i.i.d. within a channel, so no lossless coder of the labels averages below
    this (it is the bound the archive's index streams meet or exceed).
    """
    labels = numpy.asarray(outcome.labels).reshape(-1).astype(numpy.int64)
    k = int(numpy.asarray(outcome.codebook).shape[-1])
    layout = outcome.layout()
    if layout is None:
        rows = numpy.zeros(labels.size, dtype=numpy.int64)
    else:
        labels = layout.to_channel_major(labels.reshape(outcome.shape))
        rows = numpy.repeat(numpy.arange(layout.rows, dtype=numpy.int64), layout.segment_sizes())
    counts = numpy.bincount(rows * k + labels, minlength=int(rows[-1] + 1) * k if rows.size else 0).reshape(-1, k)
    totals = counts.sum(axis=1, keepdims=True)
    present = counts > 0
    return float(-(counts[present] * numpy.log2((counts / numpy.maximum(totals, 1))[present])).sum())


def measure(data: bytes, fields: dict, k: int, archive: bool, method: str = "optimal", init: str = "linear") -> dict:
    """Cluster a fresh model of the graph bytes once; return its seconds, SSE, codebooks and archive bytes."""
    model = GraphDefModel.from_bytes(data)
    options = CompressOptions(n_clusters=k, device="cpu", method=method, init=init, **fields)
    started = time.perf_counter()
    run = cluster_weights(model.weights(), options)
    seconds = time.perf_counter() - started
    clustered = run.clustered()
    result = {"seconds": seconds, "sse": sum(t.sse for t in clustered),
              "energy": sum(t.sum_squares for t in clustered),
              "codebooks": sum(1 if t.layout() is None else t.layout().rows for t in clustered),
              "tensors": len(clustered)}
    if archive:
        result["index_bytes"] = sum(index_entropy_bits(t) for t in clustered) / 8
        result["centroids"] = sum(int(numpy.asarray(t.codebook).size) for t in clustered)
        result["codebook_bytes"] = sum(int(numpy.asarray(t.codebook).nbytes) for t in clustered)
        model.replace_values({t.name: t.values() for t in clustered})
        result["archive"] = len(encode_model(model, run)[0])
    return result


def archive_bound_lines(rows: dict, base: dict, limit: float) -> list[str]:
    """Return markdown lines: each granularity's label entropy, and what an archive of `limit` x per-tensor's leaves.

    rows: {label: row} with archive, index_bytes, centroids, codebook_bytes;
    base: the per-tensor row. The rest of the model (graph, small tensors) is
    estimated from per-tensor's archive: its bytes less its labels' entropy
    and its raw codebooks (an overestimate of that archive's own overhead is
    an underestimate of the rest, so the room left below is generous).
    """
    rest = max(0.0, base["archive"] - base["index_bytes"] - base["codebook_bytes"])
    lines = ["Where a per-channel archive's bytes must go: the labels at their entropy within each codebook "
             "(the generator's values are i.i.d. within a channel, so no lossless coder averages below it), "
             f"and what an archive of {limit}x per-tensor's leaves for the codebooks once the labels and the rest "
             f"of the model ({rest:,.0f} bytes, per-tensor's archive less its label entropy and raw codebooks) "
             "are paid:", "",
             "| granularity | label entropy bytes | / per-tensor archive | centroids | archive bytes | "
             f"room for codebooks at {limit}x | bits per centroid |",
             "|---|---|---|---|---|---|---|"]
    for label, row in rows.items():
        room = limit * base["archive"] - row["index_bytes"] - rest
        bits = 8 * room / row["centroids"] if row["centroids"] else math.nan
        lines.append(f"| {label} | {row['index_bytes']:,.0f} | {row['index_bytes'] / base['archive']:.3f} "
                     f"| {row['centroids']:,} | {row['archive']:,} | {room:,.0f} | {bits:.1f} |")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a graph with channels / 8 (smoke run)")
    parser.add_argument("-k", type=int, default=16, help="codebook size (default %(default)s)")
    parser.add_argument("--group-size", type=int, default=None,
                        help="channels per grouped codebook (default 8; 4 with --quick, whose first conv has 4)")
    parser.add_argument("--method", default="optimal", help="clustering method (default %(default)s)")
    parser.add_argument("--init", default="linear", help="init of --method lloyd (default %(default)s)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per configuration (default 3)")
    parser.add_argument("--output", help="markdown file (default benchmarks/results/<date>-granularity.md)")
    arguments = parser.parse_args(argv)
    width = 8 if arguments.quick else 1
    if arguments.group_size is None:
        arguments.group_size = 4 if arguments.quick else 8
    graph_def, count = build_facenet(width=width, channel_gains=True)
    data = graph_def.SerializeToString(deterministic=True)
    configs = configurations(arguments.group_size)
    results = {label: [] for label in configs}
    load_before = load_average()
    for round_index in range(arguments.rounds):
        for label, fields in configs.items():  # interleaved: a slow moment hits every configuration
            results[label].append(measure(data, fields, arguments.k, archive=round_index == 0,
                                          method=arguments.method, init=arguments.init))
            print(f"round {round_index + 1} {label}: {results[label][-1]['seconds']:.2f} s", file=sys.stderr)
    rows = {}
    for label, runs in results.items():
        rows[label] = {"seconds": statistics.median(r["seconds"] for r in runs), "sse": runs[0]["sse"],
                       "energy": runs[0]["energy"], "archive": runs[0]["archive"],
                       "codebooks": runs[0]["codebooks"], "tensors": runs[0]["tensors"],
                       "index_bytes": runs[0]["index_bytes"], "centroids": runs[0]["centroids"],
                       "codebook_bytes": runs[0]["codebook_bytes"],
                       "all_seconds": [r["seconds"] for r in runs]}
    base = rows["per-tensor"]
    command = "python benchmarks/granularity.py" + (" " + " ".join(sys.argv[1:]) if argv is None and sys.argv[1:]
                                                    else "")
    load_after = load_average()
    machine = describe()
    lines = [f"# Codebook granularity on the FaceNet-shaped graph, channel-scaled weights "
             f"({datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')})", "",
             f"Command: `{command}`", "",
             f"Machine: {machine.get('cpu')}, {machine.get('cores')} usable cores; CPU engine (no GPU figures); "
             f"load average (1, 5, 15 min) {load_before} before the rounds, {load_after} after. "
             f"Graph: width {width}, {count:,} float32 values, {len(data):,} bytes; every kernel's output "
             f"channels scaled by log-uniform gains over 10x (facenet.build_facenet(channel_gains=True)). "
             f"k = {arguments.k}, method {arguments.method}"
             f"{f' (init {arguments.init})' if arguments.method == 'lloyd' else ''}. Clustering time: median of {arguments.rounds} interleaved "
             f"rounds of `cluster_weights` (selection and reading the values included).", "",
             "| granularity | codebooks | total SSE | SSE / per-tensor | cluster s | time / per-tensor "
             "| archive bytes | archive / per-tensor |",
             "|---|---|---|---|---|---|---|---|"]
    for label, row in rows.items():
        lines.append(f"| {label} | {row['codebooks']:,} | {row['sse']:.6g} | {row['sse'] / base['sse']:.3f} "
                     f"| {row['seconds']:.2f} | {row['seconds'] / base['seconds']:.2f} | {row['archive']:,} "
                     f"| {row['archive'] / base['archive']:.3f} |")
    channel = rows["per-channel"]
    verdicts = []
    for key, limit in TARGETS.items():
        ratio = channel[key] / base[key]
        verdicts.append(f"- per-channel {key} / per-tensor = {ratio:.3f} (target <= {limit}): "
                        f"{'met' if ratio <= limit else 'MISSED'}")
    lines += ["", "Targets (issue 17):", *verdicts]
    lines += ["", *archive_bound_lines(rows, base, TARGETS["archive"])]
    lines += ["",
              "All rounds (s): " + "; ".join(f"{label} " + ", ".join(f"{s:.2f}" for s in row["all_seconds"])
                                             for label, row in rows.items())]
    text = "\n".join(lines) + "\n"
    print(text)
    if not arguments.quick or arguments.output:
        day = datetime.date.today().isoformat()
        output = Path(arguments.output) if arguments.output else (
            Path(__file__).resolve().parent / "results" / f"{day}-granularity.md")
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text)
        print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
