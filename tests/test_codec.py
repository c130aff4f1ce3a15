"""The archive codec: bit-packing, index coders, the container and its defences against corrupt input."""
from __future__ import annotations

import json
import struct
import zlib

import numpy
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gpucompress import CompressOptions, FormatError
from gpucompress.clustering import cluster_weights
from gpucompress.codec import archive as archives
from gpucompress.codec import bitpack, codebooks, entropy
from gpucompress.models import GraphDefModel
from gpucompress.packing import decode_archive, encode_model, index_exactly

from .conftest import add_raw_const


# --- bit-packing --------------------------------------------------------------------------------

def test_pack_indices_hand_computed():
    # 2-bit indices 1, 2, 3 fill bits 0-1, 2-3, 4-5 of one byte: 0b00_11_10_01.
    assert bitpack.pack_indices(numpy.array([1, 2, 3]), 2) == bytes([0b00111001])
    # 3-bit indices 5, 6 across a byte: bits 101 then 110 -> 0b110101 in the first byte.
    assert bitpack.pack_indices(numpy.array([5, 6]), 3) == bytes([0b110101])
    assert bitpack.bits_for(1) == 0 and bitpack.bits_for(2) == 1 and bitpack.bits_for(256) == 8
    assert bitpack.bits_for(257) == 9 and bitpack.bits_for(65536) == 16


@st.composite
def _indices(draw):
    bits = draw(st.integers(0, 16))
    values = draw(hnp.arrays(numpy.int64, st.integers(0, 300), elements=st.integers(0, (1 << bits) - 1)))
    return values, bits


@settings(max_examples=200, deadline=None)
@given(_indices())
def test_bitpack_round_trip(case):
    values, bits = case
    data = bitpack.pack_indices(values, bits)
    assert len(data) == bitpack.packed_size(values.size, bits)
    numpy.testing.assert_array_equal(bitpack.unpack_indices(data, values.size, bits), values)


def test_unpack_rejects_wrong_length_and_padding():
    with pytest.raises(FormatError, match="need"):
        bitpack.unpack_indices(b"\x00", 3, 3)
    with pytest.raises(FormatError, match="padding"):
        bitpack.unpack_indices(bytes([0b11000000]), 2, 3)
    with pytest.raises(FormatError, match="padding"):
        bitpack.unpack_indices(bytes([0xF0]), 1, 4)
    with pytest.raises(ValueError):
        bitpack.pack_indices(numpy.array([4]), 2)


# --- index coders ---------------------------------------------------------------------------------

@st.composite
def _streams(draw):
    k = draw(st.sampled_from([1, 2, 3, 16, 255, 256, 257, 4096]))
    n = draw(st.integers(0, 2000))
    skew = draw(st.floats(0.01, 1.0))
    seed = draw(st.integers(0, 2**32 - 1))
    values = numpy.minimum(numpy.random.default_rng(seed).geometric(skew, n) - 1, k - 1)
    return values, k


@settings(max_examples=60, deadline=None)
@given(_streams(), st.sampled_from(entropy.CODERS))
def test_every_coder_round_trips(case, coder):
    values, k = case
    packed = bitpack.pack_indices(values, bitpack.bits_for(k))
    stream = {"packed": lambda: packed, "zstd": lambda: entropy.zstd_compress(packed),
              "ans": lambda: entropy.ans_encode(values, k)}[coder]()
    decoded = entropy.decode_indices(coder, stream, values.size, k)
    numpy.testing.assert_array_equal(decoded, values)
    assert decoded.dtype == (numpy.uint8 if k <= 256 else numpy.uint16)


@settings(max_examples=60, deadline=None)
@given(_streams())
def test_chosen_coder_is_smallest_and_near_the_entropy(case):
    values, k = case
    fast_coder, fast_stream = entropy.encode_indices(values, k)
    coder, stream = entropy.encode_indices(values, k, speed_tolerance=0.0)
    assert len(stream) <= len(fast_stream) <= len(stream) * (1 + entropy.SPEED_TOLERANCE)
    assert entropy.CODERS.index(fast_coder) <= entropy.CODERS.index(coder)
    numpy.testing.assert_array_equal(entropy.decode_indices(coder, stream, values.size, k), values)
    assert len(stream) <= bitpack.packed_size(values.size, bitpack.bits_for(k))
    if coder == "ans":  # words of 4 bytes, a count table, at most 0.1 % of modelling loss
        table = len(entropy.encode_varints(numpy.bincount(values, minlength=k)))
        assert len(stream) <= 1.001 * entropy.entropy_bytes(values, k) + table + 12


@settings(max_examples=100, deadline=None)
@given(hnp.arrays(numpy.uint64, st.integers(0, 50), elements=st.integers(0, 2**35 - 1)))
def test_varints_round_trip(values):
    data = entropy.encode_varints(values)
    decoded, used = entropy.decode_varints(data + b"\x7f", values.size)
    numpy.testing.assert_array_equal(decoded, values)
    assert used == len(data)


def test_ans_stream_is_pinned():
    # Regression: archives must stay readable; a change in constriction's
    # quantization of the categorical model would change these bytes.
    values = numpy.array([0, 1, 1, 2, 2, 2, 2, 3] * 8 + [0, 0, 3], dtype=numpy.int64)
    stream = entropy.ans_encode(values, 4)
    assert stream.hex() == PINNED_ANS_STREAM
    numpy.testing.assert_array_equal(entropy.ans_decode(stream, values.size, 4), values)


# u32 table length 4, counts 10 16 32 9 (varints), then the coded 32-bit words.
PINNED_ANS_STREAM = "040000000a102009692ba15a837d580fc99f05998ccd2535dc290000"


def test_ans_rejects_inconsistent_counts():
    stream = entropy.ans_encode(numpy.array([0, 1, 1, 0, 1]), 2)
    with pytest.raises(FormatError, match="sum"):
        entropy.ans_decode(stream, 6, 2)
    with pytest.raises(FormatError):
        entropy.ans_decode(stream[:3], 5, 2)


def test_zstd_frame_size_is_checked_before_decompressing():
    frame = entropy.zstd_compress(b"\0" * 1000)
    with pytest.raises(FormatError, match="declares 1000 bytes, expected 10"):
        entropy.zstd_decompress(frame, 10)


# --- the container --------------------------------------------------------------------------------

def small_graph(rng) -> bytes:
    """A GraphDef of a few Consts (float32 with NaN, float16, float64 *_val, int32) and an Identity."""
    from tensorboard.compat.proto import graph_pb2

    graph = graph_pb2.GraphDef()
    weights = rng.laplace(0, 0.1, 600).astype("<f4")
    weights[[3, 77]] = [numpy.nan, numpy.inf]
    add_raw_const(graph, "w", 1, [20, 30], weights.tobytes())
    add_raw_const(graph, "h", 19, [300], rng.normal(0, 1, 300).astype("<f2").tobytes())
    add_raw_const(graph, "d", 2, [4, 100], double_val=rng.normal(0, 1, 320).tolist())
    add_raw_const(graph, "i", 3, [3], int_val=[1, 2, 3])
    identity = graph.node.add()
    identity.name, identity.op = "out", "Identity"
    identity.input.append("w")
    return graph.SerializeToString()


@pytest.fixture(scope="module")
def small_archive():
    """(archive bytes, the clustered model's bytes) of a few-KB archive, k = 16."""
    model = GraphDefModel.from_bytes(small_graph(numpy.random.default_rng(1)))
    run = cluster_weights(model.weights(), CompressOptions(n_clusters=16, device="cpu"))
    model.replace_values({t.name: t.values() for t in run.clustered()})
    data, report = encode_model(model, run)
    assert report["coded"] == 3 and len(data) < 4000
    return data, model.to_bytes()


def test_small_archive_round_trips(small_archive):
    data, expected = small_archive
    assert decode_archive(data).to_bytes() == expected


def test_lazy_read_decodes_each_tensor_as_the_eager_read(small_archive):
    """Regression (pack's peak memory): pack verifies with index streams decoded one tensor at a time."""
    from gpucompress.codec.archive import DeferredTensor

    data, expected = small_archive
    eager, lazy = archives.read_archive(data), archives.read_archive(data, lazy=True)
    assert all(isinstance(t, DeferredTensor) for t in lazy.tensors) and len(lazy.tensors) == 3
    for first, second in zip(eager.tensors, lazy.tensors):
        assert (first.name, first.dtype, first.shape) == (second.name, second.dtype, second.shape)
        assert first.values().tobytes() == second.values().tobytes()
    assert decode_archive(data, lazy=True).to_bytes() == expected


def test_every_byte_flip_is_detected_or_harmless(small_archive):
    data, expected = small_archive
    buffer = bytearray(data)
    outcomes = {"detected": 0, "identical": 0}
    for position in range(len(data)):
        for mask in (0x01, 0xFF):
            buffer[position] ^= mask
            try:
                model = decode_archive(bytes(buffer))
            except FormatError as error:
                assert "\n" not in str(error)
                outcomes["detected"] += 1
            else:
                assert model.to_bytes() == expected, f"flip at {position} decoded to another model"
                outcomes["identical"] += 1
            buffer[position] ^= mask
    assert outcomes["detected"] == 2 * len(data)  # every byte is under a CRC-32


def test_every_truncation_and_the_empty_file_are_detected(small_archive):
    data, _ = small_archive
    for length in range(len(data)):
        with pytest.raises(FormatError):
            decode_archive(data[:length])
    with pytest.raises(FormatError, match="empty"):
        decode_archive(b"")
    with pytest.raises(FormatError, match="extended|truncated"):
        decode_archive(data + b"\0")


def _rewrite_manifest(data: bytes, edit) -> bytes:
    """Return archive bytes whose manifest went through `edit`, with every checksum made valid again."""
    fields = list(archives.HEADER.unpack_from(data))
    stored = data[archives.HEADER.size : archives.HEADER.size + fields[4]]
    manifest = json.loads(entropy.zstd_decompress(stored, fields[5]))
    raw = edit(manifest)
    new_stored = entropy.zstd_compress(raw)
    fields[4:7] = [len(new_stored), len(raw), zlib.crc32(new_stored)]
    header = archives.HEADER.pack(*fields[:-1], 0)[:-4]
    header += struct.pack("<I", zlib.crc32(header))
    return header + new_stored + data[archives.HEADER.size + len(stored) :]


def _edited(change):
    def edit(manifest):
        change(manifest)
        return json.dumps(manifest).encode()
    return edit


@pytest.mark.parametrize("change, message", [
    (lambda m: m["tensors"][0].update(shape=[1 << 20, 1 << 20]), "more than"),
    (lambda m: m["tensors"][0].update(shape=[65536] * 3), "more than"),
    (lambda m: m["tensors"][0].update(coder="pickle"), "coder"),
    (lambda m: m["tensors"][0].update(codebook=7), "codebook"),
    (lambda m: m["codebooks"][0].update(size=1 << 17), "codebook size"),
    (lambda m: m["skeleton"].update(bytes=1 << 40), "skeleton"),
    (lambda m: m["tensors"][1].update(section=m["tensors"][0]["section"]), "exactly once"),
    (lambda m: m["tensors"].append(dict(m["tensors"][0])), "unique"),
    (lambda m: m["tensors"][0].update(nonfinite=True), "non-finite"),
    (lambda m: m.update(extra=1), "keys"),
    (lambda m: m["codebooks"][0].update(coding="lzma"), "coding"),
    (lambda m: m["codebooks"][0].pop("coding"), "keys"),
])
def test_crafted_manifests_are_rejected_before_allocating(small_archive, change, message):
    data, _ = small_archive
    with pytest.raises(FormatError, match=message):
        decode_archive(_rewrite_manifest(data, _edited(change)))


def test_strict_json(small_archive):
    data, _ = small_archive
    duplicate = _rewrite_manifest(data, lambda m: json.dumps(m)[:-1].encode() + b',"info":{}}')
    with pytest.raises(FormatError, match="duplicate"):
        decode_archive(duplicate)
    with pytest.raises(FormatError, match="NaN"):
        decode_archive(_rewrite_manifest(data, lambda m: json.dumps(m).replace('"info": {', '"info": {"x": NaN,', 1).encode()))


def test_index_exactly_keeps_bit_patterns():
    values = numpy.array([0.0, -0.0, numpy.nan, 1.5, -numpy.inf, 1.5, 0.0], dtype=numpy.float32)
    values[2] = numpy.frombuffer(struct.pack("<I", 0x7FC00123), dtype="<f4")[0]  # a NaN payload
    tensor = index_exactly("t", "float32", values)
    assert tensor.codebook.size == 3 and tensor.nonfinite_index.tolist() == [2, 4]
    assert tensor.values().tobytes() == values.tobytes()


CODEBOOK_DTYPES = ["<f2", "bfloat16", "<f4", "<f8"]


def _dtype(name):
    return archives.numpy_dtype("bfloat16") if name == "bfloat16" else numpy.dtype(name)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), dtype=st.sampled_from(CODEBOOK_DTYPES), rows=st.integers(1, 40), k=st.integers(1, 40),
       sort=st.booleans())
def test_codebook_sections_give_back_every_bit_pattern(data, dtype, rows, k, sort):
    # Any bits (NaN payloads, -0.0, infinities, subnormals): the delta coding maps each to one rank and back.
    dtype = _dtype(dtype)
    words = data.draw(hnp.arrays(f"<u{dtype.itemsize}", rows * k))
    codebook = words.view(dtype).reshape(rows, k)
    if sort:
        codebook = numpy.sort(codebook.astype(numpy.float64), axis=1).astype(dtype)
    coding, section = codebooks.encode_codebook(codebook)
    assert coding in codebooks.CODINGS
    back = codebooks.decode_codebook(coding, section, dtype, rows, k)
    assert back.dtype == dtype and back.view(f"<u{dtype.itemsize}").tolist() == \
        numpy.ascontiguousarray(codebook).reshape(-1).view(f"<u{dtype.itemsize}").tolist()
    if coding == codebooks.RAW:
        assert section == codebook.tobytes()
    forced = entropy.zstd_compress(codebooks._delta_planes(codebook), codebooks.ZSTD_LEVEL)
    assert codebooks.decode_codebook(codebooks.DELTA, forced, dtype, rows, k).tobytes() == codebook.tobytes()


def test_channel_codebooks_take_the_delta_coding_and_shrink():
    # Sorted k-means centroids of channels whose scales differ (trained kernels): steps are small integers.
    rng = numpy.random.default_rng(3)
    centroids = numpy.sort(rng.laplace(size=(2000, 16)), axis=1) * numpy.exp(rng.uniform(-3, 0, (2000, 1)))
    codebook = centroids.astype("<f4")
    coding, section = codebooks.encode_codebook(codebook)
    assert coding == codebooks.DELTA and len(section) < 0.9 * codebook.nbytes
    # One per-tensor codebook of 16 values: the frame would cost more than it saves.
    assert codebooks.encode_codebook(codebook[0])[0] == codebooks.RAW


def test_codebook_sections_of_the_wrong_size_are_refused():
    codebook = numpy.sort(numpy.random.default_rng(4).normal(size=(50, 8)), axis=1).astype("<f4")
    coding, section = codebooks.encode_codebook(codebook)
    assert coding == codebooks.DELTA
    with pytest.raises(FormatError, match="declares"):
        codebooks.decode_codebook(coding, section, numpy.dtype("<f4"), 49, 8)
    with pytest.raises(FormatError, match="holds"):
        codebooks.decode_codebook(codebooks.RAW, codebook.tobytes()[:-1], numpy.dtype("<f4"), 50, 8)
    with pytest.raises(FormatError):
        codebooks.decode_codebook(codebooks.DELTA, section[:-3], numpy.dtype("<f4"), 50, 8)


def test_version_2_archives_still_read():
    import hashlib
    import os

    from .data import make_archive_v2

    data = open(os.path.join(os.path.dirname(__file__), "data", "archive_v2.gpcz"), "rb").read()
    assert int.from_bytes(data[8:10], "little") == 2
    assert hashlib.sha256(decode_archive(data).to_bytes()).hexdigest() == make_archive_v2.UNPACKED_SHA256
    # Written again today it is a version 3 archive of the same model.
    model = make_archive_v2.tiny_graph()
    again = decode_archive(data)
    model.replace_values({w.name: w.load() for w in again.weights()})
    data3, _ = encode_model(*_clustered_again(again))
    assert int.from_bytes(data3[8:10], "little") == 3
    assert decode_archive(data3).to_bytes() == decode_archive(data).to_bytes()


def _clustered_again(model):
    # The unpacked model holds at most 8 values per channel: clustering it again at k=8 is exact.
    run = cluster_weights(model.weights(), CompressOptions(n_clusters=8, granularity="per-channel", device="cpu"))
    model.replace_values({t.name: t.values() for t in run.clustered()})
    return model, run
