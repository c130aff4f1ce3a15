"""The benchmark's --quick mode runs end to end and writes its report (figures are never asserted)."""
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy
import pytest

ROOT = Path(__file__).resolve().parent.parent


def _user_path(tmp_path, *extra):
    command = [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--parts", "user", "--runs", "1",
               "--output-dir", str(tmp_path / "results"), "--cache-dir", str(tmp_path / "cache"), *extra]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    (report,) = (tmp_path / "results").glob("*-quick-user.json")
    return done, json.loads(report.read_text()), report


def test_quick_user_path_times_fresh_processes_and_reads_their_peaks(tmp_path):
    done, results, report = _user_path(tmp_path)
    (user,) = results["user"].values()
    assert user["gpucompress"].startswith(str(ROOT))
    assert len(user["cli"]) == 1 and len(user["tiny"]) == 1 and len(user["import"]) == 1
    assert len(user["in_process"]) == 3 and all(s > 0 for s in user["in_process"])
    assert {(r["command"], r["graph"]) for r in user["rss"]} == {("compress", "quick"), ("pack", "quick")}
    # VmHWM of a Python process holding NumPy is tens of MB at least
    assert all(r["peak_bytes"] > 20e6 for r in user["rss"])
    assert "venv" not in user
    table = report.with_suffix(".md").read_text()
    assert "each call a new process" in table and "peak RSS `pack`" in table and "floor" in table
    assert table in done.stdout


@pytest.mark.slow
def test_user_path_installs_the_checkout_into_a_fresh_venv(tmp_path):
    _, results, _ = _user_path(tmp_path, "--venv", "yes")
    (user,) = results["user"].values()
    assert "/site-packages/gpucompress/" in user["venv"]["imported_from"]
    assert user["venv"]["first"] > 0 and len(user["venv"]["warm"]) >= 2


def _needs_peers():
    for name in ("sklearn", "faiss", "flash1dkmeans", "kmeans1d"):
        pytest.importorskip(name)


@pytest.mark.slow
def test_quick_benchmark_writes_json_markdown_and_plot(tmp_path):
    _needs_peers()
    command = [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--no-fidelity",
               "--device", "cpu", "--output-dir", str(tmp_path / "results"),
               "--cache-dir", str(tmp_path / "cache")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    (report,) = (tmp_path / "results").glob("*-quick.json")
    results = json.loads(report.read_text())
    assert results["machine"]["cores"] >= 1 and results["machine"]["cpu"]
    assert {r["k"] for r in results["compress"]} == {256, 16}
    assert {r["global"] for r in results["compress"]} == {False, True}
    tools = {r["tool"] for r in results["peers"]}
    assert {"faiss (cpu)", "flash1dkmeans", "scikit-learn KMeans", "kmeans1d (exact)"} <= tools
    assert any(r["reference"] == "optimum" for r in results["peers"])
    assert results["baseline2016"]["extrapolated_seconds"] > 0
    assert {t["target"].split(":")[0] for t in results["targets"]} >= {"peak memory (RSS) under 3x the .pb size"}
    assert "# gpucompress benchmark (quick)" in report.with_suffix(".md").read_text()
    assert report.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((tmp_path / "cache").glob("facenet-w*.pb"))


def test_facenet_graph_is_deterministic_and_shaped_like_facenet():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import facenet
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    first, count = facenet.build_facenet(width=32)
    second, _ = facenet.build_facenet(width=32)
    assert first.SerializeToString(deterministic=True) == second.SerializeToString(deterministic=True)
    names = {node.name for node in first.node}
    assert "input" in names and "embeddings" in names
    # the residual 1x1 convolution of each of the ten Block17s (not their Branch_0 ones)
    assert sum(bool(re.fullmatch(r".*/block17_\d+/Conv2d_1x1/weights", name)) for name in names) == 10
    assert 0 < count < 200_000


@pytest.mark.slow
def test_importance_benchmark_quick_run_writes_its_tables(tmp_path):
    pytest.importorskip("tensorflow")
    pytest.importorskip("sklearn")
    output = tmp_path / "importance.md"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "importance.py"), "--quick", "--output",
                           str(output)], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    text = output.read_text()
    for heading in ("Weighted optimal SSE", "weighted / unweighted", "float16", "Accuracy of two models"):
        assert heading in text
    assert "python benchmarks/importance.py --quick" in text


@pytest.mark.slow
def test_quick_budget_benchmark_writes_its_tables(tmp_path):
    # About a minute on 2 cores (curves on a 0.4 M-weight graph, three budgets): slow-marked.
    command = [sys.executable, str(ROOT / "benchmarks" / "budget.py"), "--quick", "--results", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    (table,) = tmp_path.glob("*-budget-quick.md")
    assert "achieved / target" in table.read_text()
    results = json.loads(table.with_suffix(".json").read_text())
    assert {(r["k"], r["largest_k"]) for r in results["facenet"]} == {(16, 256), (256, 256), (256, 512)}


def test_tflite_training_data_is_bundled_deterministic_and_shaped_for_the_models():
    # benchmarks/tflite.py trains its models on these before conversion: no download, same arrays each call.
    pytest.importorskip("sklearn")
    from benchmarks import tflite

    pictures, labels = tflite.digits(12, 3)
    assert pictures.shape == (1797, 12, 12, 3) and labels.shape == (1797,)
    assert pictures.dtype == numpy.float32 and 0 <= pictures.min() < pictures.max() <= 1
    assert set(labels.tolist()) == set(range(10))
    flat, _ = tflite.digits(32, None)
    assert flat.shape == (1797, 1024)
    # nearest-neighbour resizing keeps the 8x8 pixels: each is a 4x4 block of the 32x32 picture
    assert numpy.array_equal(flat.reshape(-1, 32, 32)[:, ::4, ::4], tflite.digits(8, None)[0].reshape(-1, 8, 8))
    tokens, targets = tflite.token_task(64, seed=0)
    again, same = tflite.token_task(64, seed=0)
    assert tokens.shape == (64, 6) and targets.shape == (64, 5)
    assert numpy.array_equal(tokens, again) and numpy.array_equal(targets, same)



def test_granularity_label_entropy_counts_each_codebook_on_its_own():
    # The archive bound of benchmarks/granularity.py: labels at their entropy within each codebook row.
    from benchmarks import granularity
    from gpucompress import CompressOptions
    from gpucompress.clustering import cluster_weights
    from gpucompress.models.graphdef import GraphDefModel

    from .conftest import const_node, graphdef_of

    rng = numpy.random.default_rng(0)
    values = (rng.normal(size=(3, 3, 4, 6)) * numpy.arange(1, 7)).astype(numpy.float32)
    data = graphdef_of(const_node("kernel", values)).SerializeToString()
    for option, rows in (("per-tensor", 1), ("per-channel", 6)):
        run = cluster_weights(GraphDefModel.from_bytes(data).weights(),
                              CompressOptions(n_clusters=4, device="cpu", granularity=option))
        (outcome,) = run.clustered()
        labels = numpy.asarray(outcome.labels).reshape(values.shape)
        columns = [labels.reshape(-1)] if rows == 1 else [labels[..., c].reshape(-1) for c in range(rows)]
        expected = 0.0
        for column in columns:
            counts = numpy.bincount(column, minlength=4).astype(float)
            counts = counts[counts > 0]
            expected -= float((counts * numpy.log2(counts / counts.sum())).sum())
        assert expected > 0
        assert granularity.index_entropy_bits(outcome) == pytest.approx(expected, rel=1e-12)
