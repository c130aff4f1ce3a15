"""The command line: seed-compatible flags, summary, exit codes and bad input."""
from __future__ import annotations

import subprocess
import sys

import numpy
import pytest

from gpucompress.cli import main
from gpucompress.models import read_model

from .conftest import const_node, graphdef_of


def distinct_counts(path):
    return {w.name: numpy.unique(w.load()).size for w in read_model(path).weights() if w.floating}


def test_default_output_is_pb_min_with_seed_flags(small_pb, capsys):
    assert main(["compress", str(small_pb), "--n_clusters=16", "--device", "cpu"]) == 0
    output = small_pb.with_name("model.pb.min")
    counts = distinct_counts(output)
    assert set(counts) == {"w1", "w2"} and 8 < counts["w1"] <= 16 and 8 < counts["w2"] <= 16
    printed = capsys.readouterr().out
    assert "clustered 2 of 3 constant tensors" in printed and "parse" in printed


def test_kebab_case_flags_and_whitelist(small_pb, tmp_path):
    output = tmp_path / "out.pb"
    assert main(["compress", str(small_pb), "-o", str(output), "--n-clusters", "8",
                 "--whitelisted", "w1", "--device=cpu", "-q"]) == 0
    counts = distinct_counts(output)
    assert counts["w1"] == 1600 and counts["w2"] <= 8


def test_global_clusters_and_min_n_weights(small_pb, tmp_path):
    output = tmp_path / "out.pb"
    assert main(["compress", str(small_pb), "-o", str(output), "--global_clusters",
                 "--min_n_weights=1000", "--n_clusters=4", "--device", "cpu", "-q"]) == 0
    counts = distinct_counts(output)
    assert counts["w1"] <= 4 and counts["w2"] == 300


def test_python_dash_m_runs_the_cli(small_pb, tmp_path):
    output = tmp_path / "out.pb"
    done = subprocess.run([sys.executable, "-m", "gpucompress", "compress", str(small_pb), "-o", str(output),
                           "--zip-sizes"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "zipped" in done.stdout and output.exists()


def test_same_bytes_every_run(small_pb, tmp_path):
    outputs = [tmp_path / f"{i}.pb" for i in range(2)]
    for output in outputs:
        assert main(["compress", str(small_pb), "-o", str(output), "--init", "kmeans++", "-q"]) == 0
    assert outputs[0].read_bytes() == outputs[1].read_bytes()


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "gpucompress", *args], capture_output=True, text=True)


@pytest.mark.parametrize("kind", ["missing", "directory", "text", "empty", "truncated"])
def test_bad_input_is_one_line_and_no_output(tmp_path, small_pb, kind):
    path = {"missing": tmp_path / "nope.pb", "directory": tmp_path}.get(kind, tmp_path / "bad.pb")
    if kind == "text":
        path.write_text("this is not a graph\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(small_pb.read_bytes()[:-7])
    output = tmp_path / "out.pb"
    done = run_cli("compress", str(path), "-o", str(output))
    assert done.returncode == 1
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpucompress: error:"), done.stderr
    assert "Traceback" not in done.stderr
    assert not output.exists()
    assert list(tmp_path.glob(".*.tmp")) == []


def test_refuses_to_overwrite_the_input_or_an_existing_output(small_pb):
    before = small_pb.read_bytes()
    done = run_cli("compress", str(small_pb), "-o", str(small_pb), "--overwrite")
    assert done.returncode == 1 and "refusing to overwrite the input" in done.stderr
    assert small_pb.read_bytes() == before
    existing = small_pb.with_name("model.pb.min")
    existing.write_bytes(b"keep me")
    done = run_cli("compress", str(small_pb))
    assert done.returncode == 1 and "already exists" in done.stderr
    assert existing.read_bytes() == b"keep me"
    assert run_cli("compress", str(small_pb), "--overwrite").returncode == 0
    assert existing.read_bytes() != b"keep me"


@pytest.mark.parametrize("flags, message", [(["--n_clusters=1"], "n_clusters=1 should be >= 2"),
                                            (["--init", "magic"], "init='magic' should be one of"),
                                            (["--max-iter", "-3"], "max_iter=-3 should be >= 0")])
def test_bad_options_name_the_rule(small_pb, flags, message):
    done = run_cli("compress", str(small_pb), *flags)
    assert done.returncode == 1 and message in done.stderr


def test_unknown_flag_is_a_usage_error(small_pb):
    assert run_cli("compress", str(small_pb), "--bogus").returncode == 2


def test_package_imports_without_tensorflow():
    code = "import sys, gpucompress, gpucompress.cli, gpucompress.models; assert 'tensorflow' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_plain_compress_imports_no_archive_savedmodel_or_importance_code(small_pb, tmp_path):
    # Issue 16 (fresh-process time): a GraphDef compress without options loads only what it uses.
    code = ("import sys; from gpucompress.cli import main; "
            f"code = main(['compress', {str(small_pb)!r}, '-o', {str(tmp_path / 'out.pb')!r}, '-q']); "
            "print(sorted(m for m in ('zipfile', 'tarfile', 'gpucompress.npz', 'gpucompress.models.savedmodel', "
            "'gpucompress.models.freeze', 'gpucompress.models.tflm', 'gpucompress.packing', 'zstandard', "
            "'constriction') if m in sys.modules)); sys.exit(code)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_top_level_help_names_every_format(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name in ("GraphDef", "SavedModel", ".keras", ".h5"):
        assert name in text
    assert "cluster the weights of a frozen GraphDef" not in text


@pytest.mark.parametrize("name,kind", [("model.onnx", "ONNX"), ("model.pt", "PyTorch")])
def test_an_unsupported_format_is_named(tmp_path, capsys, name, kind):
    path = tmp_path / name
    path.write_bytes(b"whatever")
    assert main(["compress", str(path)]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == (f"gpucompress: error: {path}: {kind} models are not a supported format "
                    "(supported: frozen GraphDef (.pb), SavedModel folder, Keras .keras, Keras HDF5 (.h5, .hdf5, "
                    ".weights.h5), TensorFlow Lite (.tflite))")
    assert list(tmp_path.iterdir()) == [path]


def test_a_broken_tflite_file_is_one_line_naming_the_format(tmp_path, capsys):
    path = tmp_path / "model.tflite"
    path.write_bytes(b"whatever")
    assert main(["compress", str(path)]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"gpucompress: error: {path}") and "TFLite" in line
    assert list(tmp_path.iterdir()) == [path]


def test_n_clusters_beyond_what_the_optimal_method_can_hold_is_refused_up_front(tmp_path, capsys):
    path = tmp_path / "g.pb"
    path.write_bytes(graphdef_of(const_node("w", numpy.arange(64, dtype=numpy.float32))).SerializeToString())
    assert main(["compress", str(path), "--n_clusters", "16384"]) == 1
    error = capsys.readouterr().err
    assert "n_clusters=16384 should be <= 4096 with method='optimal'" in error and "--method lloyd" in error
    assert not (tmp_path / "g.pb.min").exists()
    assert main(["compress", str(path), "--n_clusters", "16384", "--method", "lloyd", "-q"]) == 0


def test_leaving_most_float_values_out_is_said_with_the_reasons(tmp_path, caplog):
    rng = numpy.random.default_rng(0)
    path = tmp_path / "g.pb"
    path.write_bytes(graphdef_of(const_node("kernel", rng.normal(size=(40, 25)).astype(numpy.float32)),
                                 const_node("table", numpy.repeat(numpy.arange(3, dtype=numpy.float32), 700)))
                     .SerializeToString())
    assert main(["compress", str(path), "-q", "--n_clusters", "16"]) == 0
    (line,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert line == ("left 2,100 of 3,100 float values (68%) as they are: no more distinct values than the "
                    "codebook: 1 tensors, 2,100 values (--report FILE lists every tensor's reason)")
    caplog.clear()
    assert main(["compress", str(path), "-q", "--n_clusters", "16", "--overwrite", "--whitelisted", "table"]) == 0
    assert not [r for r in caplog.records if r.levelname == "WARNING"]  # whitelisted on purpose: not counted
