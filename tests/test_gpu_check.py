"""benchmarks/gpu_check.sh: its CPU dry run, every step of the device job, on a tiny graph.

The dry run installs gpucompress from a copy of this tree into a scratch folder, runs the gpu
tests against that install (they skip here), and compares the CLI's output files between two
fresh processes per configuration. GPUCOMPRESS_COMPILED=0 keeps it short: both sides run the array
code (the code CuPy runs) on NumPy against itself, the dry run's cheapest form.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def _gpu_check_module():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return gpu_check


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """Run the dry mode once; return (exit status, OUTDIR, the report JSON)."""
    out = tmp_path_factory.mktemp("gpu_check_out")
    work = tmp_path_factory.mktemp("gpu_check_work")
    no_wheels = tmp_path_factory.mktemp("no_wheels")  # .whl/ may hold the device's cp312 wheels
    environment = {**os.environ, "PYTHON": sys.executable, "GPU_CHECK_WORK": str(work),
                   "GPU_CHECK_WHEELS": str(no_wheels), "GPUCOMPRESS_COMPILED": "0"}
    environment.pop("PYTHONPATH", None)
    done = subprocess.run(["bash", str(SCRIPT), str(out), "--device", "cpu", "--width", "32", "--repeats", "0",
                           "--ks", "16"], env=environment, capture_output=True, text=True, timeout=600, cwd=ROOT)
    reports = sorted(out.glob("*-cpu-dryrun.json"))
    report = json.loads(reports[0].read_text()) if reports else None
    return done, out, report


def test_dry_run_passes_every_step(dry_run):
    done, out, report = dry_run
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    log = (out / "gpu_check.log").read_text()
    for step in ("build and install gpucompress: exit 0", "the installed package is the one imported: exit 0",
                 "pytest -m gpu: exit 0", "parity and timings (benchmarks/gpu_check.py): exit 0"):
        assert step in log, step
    # The gpu tests ran against the scratch install and skipped (no CUDA here), none errored.
    lines = (out / "pytest-gpu.txt").read_text().splitlines()
    assert any("test_cupy_parity.py::test_optimal_method" in line and "SKIPPED" in line for line in lines)
    assert "skipped" in lines[-1] and "error" not in lines[-1] and "failed" not in lines[-1], lines[-1]
    assert report["machine"]["gpucompress_path"].startswith(report["graph"]["path"].rsplit("/run/", 1)[0])


def test_dry_run_compares_every_configuration_byte_for_byte(dry_run):
    _, out, report = dry_run
    from gpucompress.engine import METHODS

    rows = report["end_to_end"]
    assert {(row["k"], row["global"], row["method"]) for row in rows} == {
        (16, mode, method) for mode in (False, True) for method in METHODS}
    for row in rows:
        candidate, cpu = row["runs"]["candidate"], row["runs"]["cpu"]
        assert candidate["ok"] and cpu["ok"], row
        assert candidate["environment"] == {"GPUCOMPRESS_COMPILED": "0"}
        assert row["identical"] and candidate["sha256"] == cpu["sha256"]
        assert Path(candidate["output"]).stat().st_size > 0
    assert {row["side"] for row in report["cluster_only"]} == {"candidate", "cpu"}
    assert all(row["best_seconds"] >= 0 for row in report["cluster_only"])
    markdown = next(out.glob("*-cpu-dryrun.md")).read_text()
    assert f"## Parity: {len(rows)} of {len(rows)} output files byte-identical" in markdown
    assert "(dry run, not a GPU figure)" in markdown


def test_out_folder_fits_what_a_device_call_brings_back(dry_run):
    _, out, _ = dry_run
    entries = list(out.iterdir())
    assert len(entries) <= 8 and all(entry.is_file() for entry in entries)
    assert all(entry.stat().st_size < 16 << 20 for entry in entries)


def test_gpu_names_become_file_tags():
    gpu_check = _gpu_check_module()
    assert gpu_check.short_gpu_name("NVIDIA H200") == "h200"
    assert gpu_check.short_gpu_name("Tesla K80") == "k80"
    assert gpu_check.short_gpu_name("NVIDIA H100 80GB HBM3") == "h100-80gb"
    assert gpu_check.short_gpu_name(None) == "cpu-dryrun"


def test_first_difference_names_the_offset(tmp_path):
    gpu_check = _gpu_check_module()
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    a.write_bytes(b"abcdef")
    b.write_bytes(b"abcXef")
    c.write_bytes(b"abc")
    assert gpu_check.first_difference(a, a) is None
    assert gpu_check.first_difference(a, b) == 3
    assert gpu_check.first_difference(a, c) == 3


def test_bad_arguments_exit_2(tmp_path):
    done = subprocess.run(["bash", str(SCRIPT), str(tmp_path), "--device", "tpu"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2 and "usage:" in done.stderr
