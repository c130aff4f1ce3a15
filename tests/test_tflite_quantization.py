"""TFLite skeletons with their quantization vectors rewritten for zstd (models/tflite_quantization.py):
exact inversion on real converted models and on scales the rewrite cannot predict, plain skeletons for
float models, archives of the plain form (written before it) still unpacked, and bounded fuzzing."""
import os

import numpy
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpucompress.codec import entropy
from gpucompress.errors import FormatError
from gpucompress.models import read_model, tflite_quantization
from gpucompress.models.tflite import QUANTIZED_MAGIC, SKELETON_MAGIC, TFLiteModel
from gpucompress.options import CompressOptions
from gpucompress.packing import pack_file, unpack_file
from gpucompress.api import compress_file

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
pytest.importorskip("tensorflow")

from .tflite_models import KINDS, conv_model, convert, images  # noqa: E402


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """{kind: path} of the conv model converted each way (int8: full-integer, per-channel scales)."""
    folder = tmp_path_factory.mktemp("tflite_quantization")
    model, probe = conv_model(), images(16)
    paths = {}
    for kind in KINDS:
        paths[kind] = folder / f"conv_{kind}.tflite"
        paths[kind].write_bytes(convert(model, kind, probe))
    return paths


def _scale_vectors(data: bytes):
    return [entry["scales"] for entry in tflite_quantization._vectors(bytearray(data), "test").values()]


@pytest.mark.parametrize("kind", KINDS)
def test_decode_undoes_encode_byte_for_byte(converted, kind):
    data = converted[kind].read_bytes()
    rewritten = bytearray(data)
    changed = tflite_quantization.encode(rewritten)
    assert changed == (kind in ("int8", "dynamic")) and (bytes(rewritten) != data) == changed
    tflite_quantization.decode(rewritten)
    assert bytes(rewritten) == data


def test_int8_bias_scales_become_zeros_and_the_skeleton_shrinks(converted):
    data = converted["int8"].read_bytes()
    predictions = tflite_quantization._bias_predictions(bytearray(data), "test")
    assert len(predictions) == 2  # the conv and depthwise biases (one scale per channel; its Dense layers have none)
    rewritten = bytearray(data)
    tflite_quantization.encode(rewritten)
    vectors = tflite_quantization._vectors(rewritten, "test")
    for key in predictions:
        start, count = vectors[key]["scales"]
        assert not any(rewritten[start : start + 4 * count])  # input scale x weight scale held exactly
    assert len(entropy.zstd_compress(bytes(rewritten), 19)) < len(entropy.zstd_compress(data, 19))


def test_scales_the_product_does_not_predict_round_trip(converted):
    # A bias scale off by one bit, and one of another value: stored as their XOR, read back exactly.
    data = bytearray(converted["int8"].read_bytes())
    vectors = tflite_quantization._vectors(data, "test")
    key = next(iter(tflite_quantization._bias_predictions(data, "test")))
    start, count = vectors[key]["scales"]
    scales = numpy.frombuffer(bytes(data[start : start + 4 * count]), "<f4").copy()
    scales[0] = numpy.nextafter(scales[0], numpy.float32(1))
    scales[-1] = 0.125
    data[start : start + 4 * count] = scales.tobytes()
    original = bytes(data)
    tflite_quantization.encode(data)
    assert any(data[start : start + 4 * count])
    tflite_quantization.decode(data)
    assert bytes(data) == original


@pytest.mark.parametrize("kind", KINDS)
def test_skeleton_magic_and_pack_unpack(converted, tmp_path, kind):
    model = read_model(converted[kind])
    names = [w.name for w in model.weights() if w.floating]
    skeleton = model.to_skeleton(names)
    # float models have no quantization vectors: the plain skeleton, byte for byte as before
    assert skeleton[:4] == (QUANTIZED_MAGIC if kind in ("int8", "dynamic") else SKELETON_MAGIC)
    rebuilt = TFLiteModel.from_skeleton(skeleton)
    for weight in model.weights():
        if weight.floating:
            rebuilt.replace_values({weight.name: weight.load()})
    assert rebuilt.to_bytes() == model.to_bytes()
    options = CompressOptions(n_clusters=16, device="cpu")
    compress_file(converted[kind], tmp_path / "min.tflite", options)
    pack_file(converted[kind], tmp_path / "model.gpcz", options)
    unpack_file(tmp_path / "model.gpcz", tmp_path / "unpacked.tflite")
    assert (tmp_path / "unpacked.tflite").read_bytes() == (tmp_path / "min.tflite").read_bytes()


def test_archives_of_plain_skeletons_still_unpack(converted, tmp_path, monkeypatch):
    # Archives written before the rewrite (TFSK skeletons of int8 models) read as they did.
    options = CompressOptions(n_clusters=16, device="cpu")
    compress_file(converted["int8"], tmp_path / "min.tflite", options)
    with monkeypatch.context() as patch:
        patch.setattr(tflite_quantization, "encode", lambda data, source="model": False)
        pack_file(converted["int8"], tmp_path / "plain.gpcz", options)
    pack_file(converted["int8"], tmp_path / "quantized.gpcz", options)
    assert (tmp_path / "quantized.gpcz").stat().st_size < (tmp_path / "plain.gpcz").stat().st_size
    for name in ("plain", "quantized"):
        unpack_file(tmp_path / f"{name}.gpcz", tmp_path / f"{name}.tflite")
        assert (tmp_path / f"{name}.tflite").read_bytes() == (tmp_path / "min.tflite").read_bytes()


@pytest.fixture(scope="module")
def quantized_skeleton(converted):
    model = read_model(converted["int8"])
    return model.to_skeleton([w.name for w in model.weights() if w.floating])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(edits=st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), min_size=1, max_size=6))
def test_corrupt_quantized_skeletons_only_raise_format_errors(quantized_skeleton, edits):
    data = bytearray(quantized_skeleton)
    for position, value in edits:
        data[8 + position % (len(data) - 8)] = value
    try:
        TFLiteModel.from_skeleton(bytes(data))
    except FormatError:
        pass
