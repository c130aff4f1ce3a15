"""The benchmark's --quick mode runs end to end and writes its report (figures are never asserted)."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytest.importorskip("sklearn")
pytest.importorskip("faiss")
pytest.importorskip("flash1dkmeans")
pytest.importorskip("kmeans1d")


@pytest.mark.slow
def test_quick_benchmark_writes_json_markdown_and_plot(tmp_path):
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
    assert report.with_suffix(".md").read_text().startswith("# gpucompress benchmark (quick)")
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
