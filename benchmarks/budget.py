"""Benchmark compressing to a budget: per-tensor k against one k for every tensor.

    python benchmarks/budget.py            # FaceNet-shaped graph (23 M weights) + three trained digits models
    python benchmarks/budget.py --quick    # a small FaceNet-shaped graph only (width 8): a smoke run

1. FaceNet-shaped graph (benchmarks/facenet.py): pack at uniform k=16 and
   k=256, then `pack --target-size` at each of those archive sizes, with
   largest k 256 (and 512 at k=256's size: with 256 as the ceiling the only
   trades left there are exact against smaller k): total SSE, achieved size against the target, and the time of the
   budgeted run (plan + pack) against the uniform one.
2. Trained models (benchmarks/budget_models.py: a CNN frozen to a GraphDef,
   a Keras MLP, and a frozen graph whose fixed Gabor filter bank feeds trained
   layers): `pack --max-output-error E --inputs digits_inputs.npz` for E =
   0.02 and 0.005, unpacked and checked with `gpucompress verify` (the
   verify_models API) on the same inputs, against uniform k=256's archive.

Prints tables and writes them, with the machine and the date, to
benchmarks/results/DATE-budget.md (and .json).
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpucompress import CompressOptions, pack_file  # noqa: E402
from gpucompress.budget.plan import plan_budget  # noqa: E402
from gpucompress.options import BudgetOptions  # noqa: E402

ERRORS = (0.02, 0.005)


def _sse(summary) -> float:
    return float(sum(t.sse for t in summary.run.clustered()))


def _histogram(plan) -> str:
    counts = Counter("exact" if r.k is None else r.k for r in plan.rows)
    return " ".join(f"{k}:{n}" for k, n in sorted(counts.items(), key=lambda i: (i[0] == "exact", str(i[0]).zfill(5))))


def facenet_rows(folder: Path, width: float) -> list[dict]:
    """Return one row per uniform k (16, 256): uniform and budgeted sizes, SSE and times."""
    from facenet import write_facenet

    graph = folder / "facenet.pb"
    write_facenet(graph, width=width)
    rows, uniforms = [], {}
    for k, largest in ((16, 256), (256, 256), (256, 512)):
        if k not in uniforms:
            started = time.perf_counter()
            uniforms[k] = (pack_file(graph, folder / f"u{k}.gpcz", CompressOptions(n_clusters=k), zip_sizes=False,
                                     overwrite=True), time.perf_counter() - started)
        uniform, uniform_seconds = uniforms[k]
        target = uniform.sizes["archive"]
        started = time.perf_counter()
        options = CompressOptions(n_clusters=largest)
        plan = plan_budget(graph, options, BudgetOptions(target_size=target))
        planned = time.perf_counter()
        budgeted = pack_file(graph, folder / f"b{k}.gpcz", options, zip_sizes=False, overwrite=True,
                             clusters=plan.clusters)
        done = time.perf_counter()
        rows.append({"k": k, "largest_k": largest, "graph_bytes": graph.stat().st_size, "target": target,
                     "achieved": budgeted.sizes["archive"], "predicted": plan.predicted_bytes,
                     "uniform_sse": _sse(uniform), "budget_sse": _sse(budgeted),
                     "uniform_seconds": uniform_seconds, "plan_seconds": planned - started,
                     "curve_seconds": plan.seconds["curve_runs"], "budget_seconds": done - started,
                     "tries": plan.tries, "exact": plan.exact, "ks": _histogram(plan)})
        print(f"k={k}: target {target:,}, achieved {budgeted.sizes['archive']:,}, SSE {_sse(uniform):.6g} -> "
              f"{_sse(budgeted):.6g}, {uniform_seconds:.1f} s -> {done - started:.1f} s", flush=True)
    return rows


def model_rows(folder: Path) -> list[dict]:
    """Return one row per (trained model, E) and one per model at uniform k=256."""
    from budget_models import write_models

    from gpucompress import unpack_file
    from gpucompress.verify import verify_models

    write_models(folder)
    inputs = folder / "digits_inputs.npz"
    rows = []
    for name in ("digits_cnn.pb", "digits_mlp.keras", "digits_spectrum.pb"):
        model = folder / name
        started = time.perf_counter()
        uniform = pack_file(model, folder / f"{name}.u256.gpcz", CompressOptions(), zip_sizes=False, overwrite=True)
        uniform_seconds = time.perf_counter() - started
        back, _ = unpack_file(folder / f"{name}.u256.gpcz", folder / f"u256.{name}", overwrite=True)
        uniform_error = verify_models(model, back, inputs=inputs).worst_relative_error
        rows.append({"model": name, "budget": "uniform k=256", "archive": uniform.sizes["archive"],
                     "verify_error": uniform_error, "seconds": uniform_seconds, "runs": 0, "ks": "256: all"})
        for error in ERRORS:
            started = time.perf_counter()
            options = CompressOptions()
            plan = plan_budget(model, options, BudgetOptions(max_output_error=error, inputs=str(inputs)))
            archive = folder / f"{name}.e{error}.gpcz"
            summary = pack_file(model, archive, options, zip_sizes=False, overwrite=True, clusters=plan.clusters)
            seconds = time.perf_counter() - started
            back, _ = unpack_file(archive, folder / f"e{error}.{name}", overwrite=True)
            measured = verify_models(model, back, inputs=inputs).worst_relative_error
            rows.append({"model": name, "budget": f"--max-output-error {error}", "archive": summary.sizes["archive"],
                         "verify_error": measured, "plan_error": plan.output_error, "seconds": seconds,
                         "runs": plan.runs, "tries": plan.tries, "ks": _histogram(plan),
                         "within": measured <= error, "smaller": summary.sizes["archive"] < uniform.sizes["archive"]})
            print(f"{name} E={error}: archive {summary.sizes['archive']:,} (uniform {uniform.sizes['archive']:,}), "
                  f"verify {measured:.4g}, {plan.runs} runs, {seconds:.1f} s", flush=True)
    return rows


def facenet_table(rows) -> str:
    lines = ["| uniform k | largest k (--n_clusters) | target (its archive) | budgeted archive | achieved / target | total SSE uniform "
             "| total SSE budgeted | SSE ratio | uniform pack s | budgeted s (plan; of which curves) | size tries "
             "| k per tensor (budgeted) |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['k']} | {r['largest_k']} | {r['target']:,} | {r['achieved']:,} | {r['achieved'] / r['target']:.4f} "
                     f"| {r['uniform_sse']:.6g} | {r['budget_sse']:.6g} | {r['budget_sse'] / r['uniform_sse']:.3f} "
                     f"| {r['uniform_seconds']:.1f} | {r['budget_seconds']:.1f} ({r['plan_seconds']:.1f}; "
                     f"{r['curve_seconds']:.1f}) | {r['tries']} | {r['ks']} |")
    return "\n".join(lines)


def model_table(rows) -> str:
    lines = ["| model | budget | archive bytes | verify error (relative L2, worst output) | model runs (tries) "
             "| seconds | k per tensor |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        runs = "-" if not r["runs"] else f"{r['runs']} ({r['tries']})"
        lines.append(f"| {r['model']} | {r['budget']} | {r['archive']:,} | {r['verify_error']:.4g} | {runs} "
                     f"| {r['seconds']:.1f} | {r['ks']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a width-8 FaceNet-shaped graph only")
    parser.add_argument("--results", default=str(Path(__file__).parent / "results"))
    arguments = parser.parse_args(argv)
    from machine import describe

    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        facenet = facenet_rows(folder, 8 if arguments.quick else 1)
        models = [] if arguments.quick else model_rows(folder / "models")
    command = "python benchmarks/budget.py" + (" --quick" if arguments.quick else "")
    text = [f"# Compress to a budget ({datetime.date.today().isoformat()})", "", f"Command: `{command}`", "",
            f"Machine: {json.dumps(describe())}", "",
            f"FaceNet-shaped graph ({facenet[0]['graph_bytes']:,} bytes), `pack --target-size` at uniform k's "
            "archive size:", "", facenet_table(facenet)]
    if models:
        text += ["", "Trained digits models, `pack --max-output-error E --inputs digits_inputs.npz`, unpacked and "
                 "checked by verify on the same 360 held-out images:", "", model_table(models)]
    text = "\n".join(text) + "\n"
    print(text)
    results = Path(arguments.results)
    results.mkdir(parents=True, exist_ok=True)
    name = f"{datetime.date.today().isoformat()}-budget{'-quick' if arguments.quick else ''}"
    (results / f"{name}.md").write_text(text)
    (results / f"{name}.json").write_text(json.dumps({"facenet": facenet, "models": models}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
