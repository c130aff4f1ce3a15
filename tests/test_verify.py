"""`verify`: both models on the same inputs; a faithful copy passes, a damaged one fails."""
from __future__ import annotations

import math

import numpy
import pytest

from .frozen_digits import write_frozen_digits
from gpucompress import CompressOptions, compress_file
from gpucompress.cli import main
from gpucompress.models import read_model
from gpucompress.verify import compare_outputs, generate_inputs, verify_models
from gpucompress.runners import InputSpec


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(original, clustered with k=256, the clustered one with its dense kernel negated)."""
    folder = tmp_path_factory.mktemp("verify")
    original = write_frozen_digits(folder / "digits.pb")
    faithful = folder / "digits.pb.min"
    compress_file(original, faithful, CompressOptions(device="cpu"))
    model = read_model(faithful)
    (kernel,) = [w for w in model.weights() if w.shape == (1024, 32)]
    model.replace_values({kernel.name: kernel.load() * numpy.float32(-1)})
    damaged = folder / "damaged.pb"
    model.save(damaged)
    return original, faithful, damaged


def test_compare_outputs_by_hand():
    reference = numpy.array([[1.0, 0.0], [0.0, 1.0]])
    candidate = numpy.array([[1.0, 0.0], [1.0, 0.0]])
    result = compare_outputs("scores", reference, candidate)
    assert result.max_abs_error == 1.0
    assert result.relative_error == pytest.approx(1.0)  # |(0,0,-1,1)| / |(1,0,0,1)|
    assert result.cosine_similarity == pytest.approx(0.5)
    assert result.top1_agreement == 0.5
    assert compare_outputs("vector", numpy.ones(3), numpy.ones(3)).top1_agreement is None
    zero = compare_outputs("zero", numpy.zeros((2, 3)), numpy.zeros((2, 3)))
    assert (zero.relative_error, zero.cosine_similarity) == (0.0, 1.0)
    assert math.isinf(compare_outputs("off", numpy.zeros(2), numpy.ones(2)).relative_error)


def test_generated_inputs_follow_the_signature_and_the_seed():
    specs = [InputSpec("images", "float32", (None, 8, 8, 1)), InputSpec("ids", "int64", (None, 3))]
    first = generate_inputs(specs, samples=5, seed=3)
    assert first["images"].shape == (5, 8, 8, 1) and first["images"].dtype == numpy.float32
    assert first["ids"].shape == (5, 3) and set(numpy.unique(first["ids"])) <= {0, 1}
    again = generate_inputs(specs, samples=5, seed=3)
    assert all(numpy.array_equal(first[name], again[name]) for name in first)
    assert not numpy.array_equal(first["images"], generate_inputs(specs, samples=5, seed=4)["images"])


def test_faithful_copy_passes(models, capsys):
    original, faithful, _ = models
    verification = verify_models(original, faithful, samples=16)
    (output,) = verification.outputs
    assert output.shape == (16, 10) and verification.samples == 16
    assert 0 < output.relative_error < 0.01 and output.cosine_similarity > 0.9999
    assert 0 <= output.top1_agreement <= 1
    assert main(["verify", str(original), str(faithful), "--fail-above", "0.01"]) == 0
    out = capsys.readouterr().out
    assert "relative L2" in out and "top-1 agree" in out
    # The same model against itself: exactly no error.
    same = verify_models(original, original).outputs[0]
    assert (same.max_abs_error, same.relative_error, same.top1_agreement) == (0.0, 0.0, 1.0)


def test_damaged_copy_fails(models, capsys):
    original, _, damaged = models
    output = verify_models(original, damaged).outputs[0]
    assert output.relative_error > 0.05 and output.top1_agreement < 0.5
    assert main(["verify", str(original), str(damaged), "--fail-above", "0.01"]) == 1
    assert "verify failed: relative error" in capsys.readouterr().err
    # Without --fail-above it reports and succeeds.
    assert main(["verify", str(original), str(damaged), "-q"]) == 0


def test_inputs_from_npz(models, tmp_path, capsys):
    original, faithful, _ = models
    images = numpy.random.default_rng(0).random((7, 8, 8, 1), dtype=numpy.float32)
    path = tmp_path / "inputs.npz"
    numpy.savez(path, images=images)
    verification = verify_models(original, faithful, inputs=path)
    assert verification.samples == 7 and verification.inputs_source == str(path)
    numpy.savez(tmp_path / "wrong.npz", pixels=images)
    assert main(["verify", str(original), str(faithful), "--inputs", str(tmp_path / "wrong.npz")]) == 1
    assert "no array named 'images'" in capsys.readouterr().err
    numpy.savez(tmp_path / "shape.npz", images=images[:, :4])
    assert main(["verify", str(original), str(faithful), "--inputs", str(tmp_path / "shape.npz")]) == 1
    assert "the model expects ?x8x8x1" in capsys.readouterr().err


def test_npz_with_pickled_objects_is_refused(models, tmp_path, capsys):
    """Regression guard: inputs are read with allow_pickle=False, so object arrays never unpickle."""
    original, faithful, _ = models
    path = tmp_path / "objects.npz"
    numpy.savez(path, images=numpy.array([{"a": 1}], dtype=object))
    assert main(["verify", str(original), str(faithful), "--inputs", str(path)]) == 1
    assert "not a NumPy .npz file of plain arrays" in capsys.readouterr().err
