"""The compiled CPU kernels (kernels/_cpu_kernels.pyx) on bad and extreme input.

Through the public API, edge cases (a single value, all-equal values, extreme
exponents, NaN or Inf at a segment's ends, empty arrays) give the array path's
results or raise its OptionsError, never crash. Called directly with
malformed layouts, the wrappers of compiled.py raise KernelInputError before
the unchecked loops run.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy
import pytest

import gpucompress
from gpucompress.errors import GpucompressError, KernelInputError, OptionsError
from gpucompress.kernels import compiled, fixedpoint

from .test_compiled import assert_same_results, both_paths

pytestmark = pytest.mark.skipif(not compiled.available(), reason="the compiled extension is not built")


def test_the_extension_is_installed_inside_the_package_and_import_skips_numba():
    from gpucompress.kernels import _cpu_kernels

    assert Path(_cpu_kernels.__file__).parent == Path(compiled.__file__).parent
    code = "import sys, gpucompress; print(sorted(m for m in ('numba', 'llvmlite', 'tensorflow') if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert loaded.stdout.strip() == "[]"


def test_the_extension_runs_on_openmp_threads_where_the_compiler_has_openmp(tmp_path):
    import shutil

    from gpucompress.kernels import _cpu_kernels

    compiler = shutil.which("gcc")
    if compiler is None:
        pytest.skip("no gcc to tell whether OpenMP is available")
    source = tmp_path / "check.c"
    source.write_text("#include <omp.h>\nint main(void) { return omp_get_max_threads() > 0 ? 0 : 1; }\n")
    has_openmp = subprocess.run([compiler, "-fopenmp", str(source), "-o", str(tmp_path / "check")],
                                capture_output=True, timeout=120).returncode == 0
    assert _cpu_kernels.OPENMP == has_openmp


EDGE_CASES = {
    "single value": [numpy.array([0.5], dtype=numpy.float32)],
    "single zero": [numpy.array([-0.0])],
    "two values": [numpy.array([1.0, -1.0], dtype=numpy.float32)],
    "all equal": [numpy.full(1000, 3.25, dtype=numpy.float32), numpy.full(7, -2.0)],
    "all zeros": [numpy.zeros(600, dtype=numpy.float32)],
    "float32 extremes": [numpy.array([numpy.finfo(numpy.float32).max, -numpy.finfo(numpy.float32).max, 0.0, 1.0],
                                     dtype=numpy.float32)],
    "float32 subnormals": [numpy.array([1e-45, -1e-45, 3e-44, 0.0] * 50, dtype=numpy.float32)],
    "float64 huge": [numpy.random.default_rng(1).normal(size=700) * 1e300, numpy.array([1.7e308, -1.7e308, 1.0])],
    "float64 tiny": [numpy.random.default_rng(2).normal(size=700) * 1e-305, numpy.array([5e-324, -5e-324, 0.0])],
    "float16": [numpy.linspace(-65504, 65504, 300).astype(numpy.float16)],
    "one outlier": [numpy.concatenate([numpy.zeros(999), [1e30]])],
}


EXACT_CASES = {"single value", "single zero", "two values", "all equal", "all zeros"}


@pytest.mark.parametrize("method", ["optimal", "lloyd"])
@pytest.mark.parametrize("k", [2, 256])
@pytest.mark.parametrize("case", sorted(EDGE_CASES))
def test_edge_cases_through_the_public_api_match_the_array_path(monkeypatch, case, k, method):
    arrays = EDGE_CASES[case]
    fast, slow = both_paths(monkeypatch, arrays, n_clusters=k, method=method)
    assert_same_results(fast, slow)
    for array, result in zip(arrays, fast):
        assert result.labels.shape == (array.size,) and int(result.labels.max()) < result.codebook.size
        if case in EXACT_CASES:  # few values on the fixed-point grid: each is its own centroid, exactly
            assert numpy.array_equal(result.codebook[result.labels].astype(numpy.float64), array.astype(numpy.float64))


@pytest.mark.parametrize("bad", [numpy.nan, numpy.inf, -numpy.inf])
@pytest.mark.parametrize("where", ["first", "last", "only", "all"])
def test_nonfinite_at_the_ends_raise_the_same_options_error_on_both_paths(monkeypatch, bad, where):
    values = numpy.linspace(-1.0, 1.0, 50, dtype=numpy.float32)
    if where == "first":
        values[0] = bad
    elif where == "last":
        values[-1] = bad
    elif where == "only":
        values = numpy.array([bad], dtype=numpy.float32)
    else:
        values[:] = bad
    messages = []
    for switch in (True, False):
        with monkeypatch.context() as patch:
            patch.setattr(compiled, "available", lambda switch=switch: switch)
            with pytest.raises(OptionsError) as error:
                gpucompress.cluster_arrays([numpy.ones(10), values], 4, device="cpu")
        messages.append(str(error.value))
    assert messages[0] == messages[1] and "arrays[1]" in messages[0]


def test_empty_array_raises_the_same_options_error_on_both_paths(monkeypatch):
    messages = []
    for switch in (True, False):
        with monkeypatch.context() as patch:
            patch.setattr(compiled, "available", lambda switch=switch: switch)
            with pytest.raises(OptionsError) as error:
                gpucompress.cluster_arrays([numpy.ones(3), numpy.zeros(0, dtype=numpy.float32)], 4, device="cpu")
        messages.append(str(error.value))
    assert messages[0] == messages[1]


def test_sorted_keys_and_prefix_run_on_over_many_segments_as_one_cumsum():
    # The uint64 running sum carries on from segment to segment (wrapping below zero) exactly as the
    # array code's single cumsum over the batch, over many segments of mixed sizes and scales.
    rng = numpy.random.default_rng(3)
    sizes = rng.integers(1, 300, size=60)
    sizes[::7] = 1
    parts = [numpy.sort(rng.standard_t(3, size=int(n)) * (10.0 ** rng.integers(-3, 3))) for n in sizes]
    values = numpy.concatenate(parts).astype(numpy.float32)
    offsets = numpy.concatenate([[0], numpy.cumsum(sizes)]).astype(numpy.int64)
    max_abs = numpy.array([numpy.abs(p.astype(numpy.float32)).max() for p in parts], dtype=numpy.float64)
    exponents = fixedpoint.segment_exponents(max_abs, sizes)
    keys, prefix = compiled.sorted_keys_and_prefix(values, offsets, exponents, fixedpoint.KEY_SHIFT,
                                                   fixedpoint.KEY_BIAS)
    segment = numpy.repeat(numpy.arange(sizes.size, dtype=numpy.int64), sizes)
    expected = fixedpoint.make_keys(fixedpoint.quantize(values.astype(numpy.float64), exponents[segment]), segment)
    assert numpy.array_equal(keys, expected)
    assert numpy.array_equal(prefix, fixedpoint.prefix_sums(fixedpoint.key_values(expected)))


def _sorted_batch():
    values = numpy.sort(numpy.random.default_rng(0).normal(size=100)).astype(numpy.float64)
    offsets = numpy.array([0, 40, 100], dtype=numpy.int64)
    exponents = fixedpoint.segment_exponents(numpy.array([numpy.abs(values[:40]).max(),
                                                          numpy.abs(values[40:]).max()]), numpy.array([40, 60]))
    keys, prefix = compiled.sorted_keys_and_prefix(values, offsets, exponents, fixedpoint.KEY_SHIFT,
                                                   fixedpoint.KEY_BIAS)
    return values, offsets, exponents, keys, prefix


MALFORMED = {
    "offsets past the values": lambda b: compiled.sorted_keys_and_prefix(
        b[0], numpy.array([0, 40, 101]), b[2], fixedpoint.KEY_SHIFT, fixedpoint.KEY_BIAS),
    "decreasing offsets": lambda b: compiled.lloyd(
        b[3], b[4], numpy.array([0, 60, 40, 100]), numpy.zeros((3, 4), dtype=numpy.int64), 5,
        fixedpoint.KEY_SHIFT, fixedpoint.KEY_BIAS),
    "centroid rows": lambda b: compiled.lloyd(
        b[3], b[4], b[1], numpy.zeros((3, 4), dtype=numpy.int64), 5, fixedpoint.KEY_SHIFT, fixedpoint.KEY_BIAS),
    "prefix length": lambda b: compiled.lloyd(
        b[3], b[4][:-1], b[1], numpy.zeros((2, 4), dtype=numpy.int64), 5, fixedpoint.KEY_SHIFT, fixedpoint.KEY_BIAS),
    "exponents per segment": lambda b: compiled.sorted_keys_and_prefix(
        b[0], b[1], b[2][:1], fixedpoint.KEY_SHIFT, fixedpoint.KEY_BIAS),
    "row out of range": lambda b: compiled.bin_edges(
        b[3], b[1], numpy.array([2]), 20, fixedpoint.KEY_SHIFT, fixedpoint.KEY_VALUE_MASK, fixedpoint.KEY_BIAS, 4, 18, 2),
    "segment not larger than n_bins": lambda b: compiled.bin_edges(
        b[3], b[1], numpy.array([0]), 40, fixedpoint.KEY_SHIFT, fixedpoint.KEY_VALUE_MASK, fixedpoint.KEY_BIAS, 4, 18, 2),
    "no equal-width bins": lambda b: compiled.bin_edges(
        b[3], b[1], numpy.array([1]), 6, fixedpoint.KEY_SHIFT, fixedpoint.KEY_VALUE_MASK, fixedpoint.KEY_BIAS, 4, 18, 2),
    "zero stride": lambda b: compiled.dp_bin_borders(
        numpy.zeros((1, 9), dtype=numpy.int64), numpy.zeros((1, 9)), 3, [4, 0]),
    "stride beyond the bins": lambda b: compiled.dp_bin_borders(
        numpy.zeros((1, 9), dtype=numpy.int64), numpy.zeros((1, 9)), 3, [16]),
    "sums and counts shapes": lambda b: compiled.dp_bin_borders(
        numpy.zeros((1, 9), dtype=numpy.int64), numpy.zeros((2, 9)), 3, [4]),
    "band past the bins": lambda b: compiled.band_bin_borders(
        numpy.zeros((1, 9), dtype=numpy.int64), numpy.zeros((1, 9)), 2, numpy.array([[0, 6, 6]]), 4),
    "negative band": lambda b: compiled.band_bin_borders(
        numpy.zeros((1, 9), dtype=numpy.int64), numpy.zeros((1, 9)), 2, numpy.array([[0, -1, 4]]), 4),
    "lows shape": lambda b: compiled.band_bin_borders(
        numpy.zeros((1, 9), dtype=numpy.int64), numpy.zeros((1, 9)), 2, numpy.array([[0, 4]]), 4),
    "label beyond the codebook": lambda b: compiled.error_sums(
        numpy.ones(4, dtype=numpy.float32), numpy.ones(3, dtype=numpy.float32), numpy.array([0, 1, 2, 3], dtype=numpy.uint8)),
    "labels shape": lambda b: compiled.error_sums(
        numpy.ones(4), numpy.ones(3), numpy.array([0, 1], dtype=numpy.uint8)),
    "float16 values": lambda b: compiled.error_sums(
        numpy.ones(2, dtype=numpy.float16), numpy.ones(3, dtype=numpy.float16), numpy.zeros(2, dtype=numpy.uint8)),
    "partition into a short array": lambda b: compiled.partition(
        numpy.ones(10, dtype=numpy.float32), 0.5, numpy.empty(9, dtype=numpy.float32)),
    "mid keys per segment": lambda b: compiled.value_labels(
        b[0], b[1], b[2], numpy.zeros(5, dtype=numpy.int64), 3, b[3][b[1][:-1]], b[3][b[1][1:] - 1],
        fixedpoint.KEY_SHIFT, fixedpoint.KEY_BIAS, numpy.uint8),
    "low key above high key": lambda b: compiled.value_labels(
        b[0], b[1], b[2], numpy.zeros(6, dtype=numpy.int64), 3, b[3][b[1][1:] - 1], b[3][b[1][:-1]],
        fixedpoint.KEY_SHIFT, fixedpoint.KEY_BIAS, numpy.uint8),
    "label dtype": lambda b: compiled.value_labels(
        b[0], b[1], b[2], numpy.zeros(6, dtype=numpy.int64), 3, b[3][b[1][:-1]], b[3][b[1][1:] - 1],
        fixedpoint.KEY_SHIFT, fixedpoint.KEY_BIAS, numpy.float32),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_layouts_raise_kernel_input_error_before_the_loops(case):
    with pytest.raises(KernelInputError) as error:
        MALFORMED[case](_sorted_batch())
    assert isinstance(error.value, GpucompressError) and str(error.value)


def test_labels_of_keys_outside_the_stated_key_range_stay_in_bounds():
    # low_keys/high_keys narrower than the values' keys: the lookup clamps to
    # its table (labels come out wrong, but nothing is read out of bounds).
    values, offsets, exponents, keys, _ = _sorted_batch()
    mid_keys = numpy.sort(keys[[5, 20, 35, 50, 70, 90]].reshape(2, 3), axis=1).ravel()
    low, high = keys[offsets[:-1]] + 1000, keys[offsets[1:] - 1] - 1000
    labels = compiled.value_labels(values, offsets, exponents, mid_keys, 3, low, high, fixedpoint.KEY_SHIFT,
                                   fixedpoint.KEY_BIAS, numpy.int64)
    assert labels.shape == values.shape and labels.min() >= 0 and labels.max() <= 3


def test_segment_exponents_bits_of_every_size_match_value_bits():
    # segment_exponents finds every size's bit length by one frexp below 2**52
    # (per-channel runs pass tens of thousands of sizes): value_bits' numbers.
    sizes = numpy.array([1, 2, 3, 4, 7, 8, 255, 256, 257, 640, 2**20 - 1, 2**20, 2**40 + 1, 2**52 - 1],
                        dtype=numpy.int64)
    max_abs = numpy.linspace(0.0, 3.0, sizes.size)
    expected = numpy.array([fixedpoint.value_bits(int(n)) for n in sizes]) - numpy.frexp(max_abs)[1]
    assert numpy.array_equal(fixedpoint.segment_exponents(max_abs, sizes), numpy.where(max_abs > 0, expected, 0))
    with pytest.raises(ValueError, match="n=0"):
        fixedpoint.segment_exponents(numpy.ones(2), numpy.array([3, 0]))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
@pytest.mark.parametrize("label_dtype", ["uint8", "uint16", "uint32", "int32", "int64"])
def test_gather_bytes_is_the_array_codes_bytes(dtype, label_dtype):
    # Issue 16: the writer's one-pass twin of codebook[labels].tobytes().
    import ml_dtypes

    rng = numpy.random.default_rng(11)
    codebook = numpy.sort(rng.normal(size=200)).astype(ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype)
    for n in (0, 1, compiled._kernels().LABEL_BLOCK + 3):
        labels = rng.integers(0, codebook.size, size=n).astype(label_dtype)
        assert compiled.gather_bytes(codebook, labels) == codebook[labels].tobytes()


@pytest.mark.parametrize("case", ["label above k", "negative label", "empty codebook", "2-D codebook",
                                  "big-endian codebook", "float labels"])
def test_gather_bytes_refuses_what_it_would_read_out_of_bounds(case):
    codebook, labels = numpy.arange(4, dtype=numpy.float32), numpy.array([0, 3, 1], dtype=numpy.int64)
    if case == "label above k":
        labels = numpy.array([0, 4], dtype=numpy.uint8)
    elif case == "negative label":
        labels = numpy.array([-1, 0], dtype=numpy.int64)
    elif case == "empty codebook":
        codebook = numpy.zeros(0, dtype=numpy.float32)
    elif case == "2-D codebook":
        codebook = codebook.reshape(2, 2)
    elif case == "big-endian codebook":
        codebook = codebook.astype(">f4")
    else:
        labels = labels.astype(numpy.float64)
    with pytest.raises(KernelInputError):
        compiled.gather_bytes(codebook, labels)
