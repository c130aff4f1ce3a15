"""The save-path matrix: every Keras 3 / TensorFlow way of saving a model, compressed and verified.

Builds three small models (functional, Sequential, subclassed; Dense 16->32->10,
trained one epoch with Adam so optimizer state is saved too), saves each with
`model.export`, `tf.saved_model.save`, `.keras`, legacy `.h5` (not the
subclassed one: Keras cannot) and `.weights.h5`, then for each k compresses
every file with `gpucompress compress` and runs `gpucompress verify` on it
(32 generated samples, seed 0). Prints one Markdown table: clustered tensors
of all float tensors, clustered values, and the output's relative L2 error.

    python benchmarks/save_paths.py            # k = 256 and 16
    python benchmarks/save_paths.py --k 16
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def run_cell(path: Path, extra: list[str], k: int, folder: Path) -> dict:
    """Compress one saved model at k and verify it; returns counts, the error and both exit codes."""
    from gpucompress.cli import main

    from gpucompress.models import default_output

    name = path.name
    output = folder / f"k{k}" / default_output(path).name
    output.parent.mkdir(exist_ok=True)
    report = folder / f"k{k}-{name}.json"
    with contextlib.redirect_stdout(io.StringIO()):
        compress_rc = main(["compress", str(path), "-o", str(output), "--n_clusters", str(k), "-q",
                            "--report", str(report)])
    tensors = json.loads(report.read_text())["tensors"]
    floating = [t for t in tensors if t["reason"] != "not floating"]
    clustered = [t for t in tensors if t["clustered"]]
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured):
        verify_rc = main(["verify", str(path), str(output), "--json", *extra])
    outputs = json.loads(captured.getvalue())["outputs"] if verify_rc == 0 else []
    return {"compress_rc": compress_rc, "verify_rc": verify_rc, "clustered": len(clustered),
            "floating": len(floating), "values": sum(t["values"] for t in clustered),
            "shapes": sorted({tuple(t["shape"]) for t in clustered}),
            "relative_error": max((o["relative_error"] for o in outputs), default=None)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, action="append", help="codebook sizes (default 256 and 16)")
    arguments = parser.parse_args(argv)
    from tests.keras_models import save_matrix

    ks = arguments.k or [256, 16]
    with tempfile.TemporaryDirectory(prefix="gpucompress-save-paths-") as folder:
        folder = Path(folder)
        (folder / "models").mkdir()
        saved = save_matrix(folder / "models")
        header = "| model | saved with | " + " | ".join(f"k={k}: clustered (values) | k={k}: output rel. L2"
                                                     for k in ks) + " | exit codes |"
        print(header)
        print("|" + "---|" * (header.count("|") - 1))
        for (kind, how), (path, extra) in saved.items():
            cells, codes = [], []
            for k in ks:
                cell = run_cell(path, extra, k, folder)
                error = "-" if cell["relative_error"] is None else f"{cell['relative_error']:.4f}"
                cells += [f"{cell['clustered']} of {cell['floating']} ({cell['values']:,})", error]
                codes.append(f"{cell['compress_rc']}/{cell['verify_rc']}")
            print(f"| {kind} | {how} | " + " | ".join(cells) + f" | {' '.join(codes)} |")
    print("\nclustered: tensors clustered of all float tensors (optimizer state included in the total); "
          "exit codes: compress/verify per k; verify on 32 generated samples, seed 0")
    return 0


if __name__ == "__main__":
    sys.exit(main())
