"""The save-path matrix: functional / Sequential / subclassed Keras 3 models saved every way
(`model.export`, `tf.saved_model.save`, `.keras`, `.h5`, `.weights.h5`), each compressed with its
kernels clustered and verified with exit 0; a tf.Module; whitelists by variable path; verify's
errors (unloadable model, unknown signature, weights without their architecture).

The models are built, trained one epoch and saved once per session (tests/keras_models.py).
"""
import contextlib
import io
import json
import os

import pytest

from gpucompress.cli import main
from gpucompress.models import default_output, read_model
from gpucompress.models.weights import ROLE_OPTIMIZER

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

from .keras_models import KERNEL_SHAPES, MATRIX_KINDS, SAVE_PATHS, save_matrix  # noqa: E402

CELLS = [(kind, how) for kind in MATRIX_KINDS for how in SAVE_PATHS if (kind, how) != ("subclassed", ".h5")]


@pytest.fixture(scope="session")
def matrix(tmp_path_factory):
    """{(kind, save path): (path, extra verify arguments)}, built once."""
    return save_matrix(tmp_path_factory.mktemp("matrix"))


def _run(argv):
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured):
        code = main(argv)
    return code, captured.getvalue()


@pytest.mark.parametrize("kind,how", CELLS)
def test_every_save_path_clusters_its_kernels_and_verifies(matrix, tmp_path, kind, how):
    path, extra = matrix[kind, how]
    output = tmp_path / default_output(path).name
    report = tmp_path / "report.json"
    code, _ = _run(["compress", str(path), "-o", str(output), "--n_clusters", "16", "-q", "--report", str(report)])
    assert code == 0
    tensors = json.loads(report.read_text())["tensors"]
    clustered = [t for t in tensors if t["clustered"]]
    # every kernel (both shapes) clustered; nothing else (biases stay, optimizer state stays)
    assert {tuple(t["shape"]) for t in clustered} == KERNEL_SHAPES
    roles = {w.name: w.role for w in read_model(path).weights()}
    assert all(roles[t["name"]] != ROLE_OPTIMIZER for t in clustered)
    if how != "export":  # model.export saves no optimizer; the others hold Adam's slots
        assert sum(1 for role in roles.values() if role == ROLE_OPTIMIZER) >= 4
    code, printed = _run(["verify", str(path), str(output), "--json", "--fail-above", "0.2", *extra])
    assert code == 0
    (result,) = json.loads(printed)["outputs"]
    assert 0 < result["relative_error"] < 0.2  # changed, and not broken


def test_sequential_saved_with_tf_saved_model_save_has_its_kernels_as_model_variables(matrix):
    # Regression: its kernels sit under optimizer/_trainable_variables/N and were taken for optimizer state.
    path, _ = matrix["sequential", "tf.saved_model.save"]
    weights = {w.name: w for w in read_model(path).weights()}
    kernels = [w for w in weights.values() if w.shape in KERNEL_SHAPES and w.role != ROLE_OPTIMIZER]
    assert {w.name.split("/")[0] for w in kernels} == {"optimizer"}
    assert {"sequential/dense/kernel", "dense/kernel"} <= {a for w in kernels for a in w.aliases}


def test_compress_verify_prints_the_output_error(matrix, tmp_path):
    path, _ = matrix["functional", "tf.saved_model.save"]
    code, printed = _run(["compress", str(path), "-o", str(tmp_path / "out"), "--n_clusters", "16", "--verify"])
    assert code == 0
    (line,) = [line for line in printed.splitlines() if line.startswith("verify: output error")]
    error = float(line.split()[3])
    assert 0 < error < 0.2


def test_a_tf_module_clusters_its_matrix_and_verifies(tmp_path):
    class Affine(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable(tf.random.stateless_normal((16, 32), seed=(1, 2)), name="w")
            self.b = tf.Variable(tf.zeros(32), name="b")

        @tf.function(input_signature=[tf.TensorSpec((None, 16), tf.float32)])
        def __call__(self, x):
            return tf.matmul(x, self.w) + self.b

    module = Affine()
    tf.saved_model.save(module, str(tmp_path / "module"))
    code, printed = _run(["compress", str(tmp_path / "module"), "--n_clusters", "16", "--verify"])
    assert code == 0
    assert "clustered 1 of" in printed and "verify: output error" in printed


@pytest.mark.parametrize("how,name,other", [
    (".h5", "dense/kernel", "sequential/dense_1/kernel"),
    ("tf.saved_model.save", "dense/kernel", "sequential/dense_1/kernel"),
    ("export", "sequential/dense/kernel", "dense_1/kernel"),
])
def test_whitelist_by_the_variables_own_path(matrix, tmp_path, how, name, other):
    path, _ = matrix["sequential", how]
    report = tmp_path / "report.json"
    code, _ = _run(["compress", str(path), "-o", str(tmp_path / default_output(path).name), "--n_clusters", "16",
                    "-q", "--whitelisted", f"{name},{other}", "--report", str(report)])
    assert code == 0
    tensors = json.loads(report.read_text())["tensors"]
    assert not any(t["clustered"] for t in tensors)
    assert sum(t["reason"] == "whitelisted" for t in tensors) >= 2


def test_whitelist_entry_matching_nothing_is_an_error_listing_the_closest(matrix, tmp_path, capsys):
    path, _ = matrix["functional", ".h5"]
    output = tmp_path / "out.h5"
    code = main(["compress", str(path), "-o", str(output), "--whitelisted", "hiden/kernel"])
    assert code == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("gpucompress: error: whitelisted") and "'hiden/kernel'" in error
    assert "closest: hidden/kernel" in error
    assert not output.exists()


def test_verify_names_the_signatures_a_savedmodel_has(matrix, capsys):
    path, _ = matrix["functional", "export"]
    assert main(["verify", str(path), str(path), "--signature", "nope"]) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "'nope'" in error and "serve, serving_default" in error
    assert main(["verify", str(path), str(path), "--signature", "serve", "-q"]) == 0


def test_verify_weights_only_needs_the_architecture(matrix, capsys):
    path, _ = matrix["functional", ".weights.h5"]
    assert main(["verify", str(path), str(path)]) == 1
    assert "--architecture" in capsys.readouterr().err


def test_verify_a_model_keras_cannot_load_is_one_line(matrix, tmp_path, capsys):
    import zipfile

    path, _ = matrix["functional", ".keras"]
    broken = tmp_path / "broken.keras"
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(broken, "w") as target:
        for item in source.infolist():
            data = source.read(item)
            if item.filename == "config.json":
                data = data.replace(b'"Dense"', b'"NoSuchLayer"')
            target.writestr(item, data)
    assert main(["verify", str(path), str(broken)]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()[-1:]
    assert line.startswith(f"gpucompress: error: {broken}: Keras cannot load this model (")


def test_nothing_clustered_is_said_on_stderr(matrix, tmp_path, caplog):
    path, _ = matrix["functional", ".keras"]
    code, _ = _run(["compress", str(path), "-o", str(tmp_path / "out.keras"), "--n_clusters", "1024"])
    assert code == 0
    (error,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and r.name.startswith("gpucompress")]
    assert "clustered nothing" in error and "no more distinct values than the codebook" in error
    assert "--report" in error
