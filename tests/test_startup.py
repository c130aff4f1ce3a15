"""benchmarks/startup.py runs end to end and prints its table (figures are never asserted)."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quick_startup_benchmark_prints_its_table(tmp_path):
    command = [sys.executable, str(ROOT / "benchmarks" / "startup.py"), "--runs", "1", "--first-runs", "1",
               "--width", "8", "--cache", str(tmp_path), "--no-write"]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    (row,) = [line for line in completed.stdout.splitlines() if line.startswith("| this |")]
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert len(cells) == 8 and all(float(cell.rstrip("x")) > 0 for cell in cells[1:])
