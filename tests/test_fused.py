"""The fused CUDA kernels' sources (kernels/*.cu), run on the host against the array code.

No GPU here: the very source of each kernel is compiled with g++ (C++20) against
tests/cuda_emulation.h, which runs one std::thread per CUDA thread and turns __syncthreads()
into a barrier, and its results must equal the array code's bit for bit, iteration counts
included. This checks the kernel's arithmetic, indexing and synchronization logic; it cannot
check NVRTC compilation or the device (tests/test_cupy_parity.py does, marked gpu).
"""
from __future__ import annotations

import ctypes
import importlib
import shutil
import subprocess
from pathlib import Path

import numpy
import pytest

from gpucompress.kernels import fixedpoint, fused, initializers

from .cupy_testing import array_code_only
from .test_cupy_parity import _batch, _laplace_arrays

lloyd_module = importlib.import_module("gpucompress.kernels.lloyd")

HARNESS = """
#include "cuda_emulation.h"
#include "kernel.cu"
extern "C" void run(const long long* keys, const unsigned long long* prefix, const long long* offsets,
                    long long* centroids, long long* iterations, int segments, int threads, int k,
                    int max_iter, int key_shift, long long key_bias) {
    emulated_launch(segments, threads, lloyd_segments, keys, prefix, offsets, centroids, iterations, k,
                    max_iter, key_shift, key_bias);
}
"""


@pytest.fixture(scope="module")
def emulated_lloyd(tmp_path_factory):
    """Return the host build of kernels/lloyd.cu (ctypes function `run`), or skip without g++."""
    compiler = shutil.which("g++")
    if compiler is None:
        pytest.skip("needs g++ to run the CUDA source on the host")
    folder = tmp_path_factory.mktemp("emulated")
    # C++ has no `extern static`: the emulation's __shared__ is `static`, dynamic shared memory extern.
    (folder / "kernel.cu").write_text(fused.source("lloyd.cu").replace("extern __shared__", "extern"))
    (folder / "harness.cpp").write_text(HARNESS)
    library = folder / "lloyd.so"
    built = subprocess.run([compiler, "-std=c++20", "-O1", "-shared", "-fPIC", "-pthread", "-Wall", "-Werror",
                            "-I", str(Path(__file__).parent), "-o", str(library), str(folder / "harness.cpp")],
                           capture_output=True, text=True, timeout=300)
    if built.returncode != 0 and "barrier" in built.stderr:
        pytest.skip("g++ lacks C++20 <barrier>")
    assert built.returncode == 0, built.stderr
    return ctypes.CDLL(str(library)).run


def _emulate(run, batch, initial, max_iter: int, threads: int):
    centroids = numpy.ascontiguousarray(initial, dtype=numpy.int64).copy()
    iterations = numpy.zeros(batch.n_segments, dtype=numpy.int64)
    pointer = ctypes.c_void_p
    run(pointer(batch.keys.ctypes.data), pointer(batch.prefix.ctypes.data), pointer(batch.offsets.ctypes.data),
        pointer(centroids.ctypes.data), pointer(iterations.ctypes.data), ctypes.c_int(batch.n_segments),
        ctypes.c_int(threads), ctypes.c_int(initial.shape[1]), ctypes.c_int(max_iter),
        ctypes.c_int(fixedpoint.KEY_SHIFT), ctypes.c_longlong(fixedpoint.KEY_BIAS))
    return centroids, iterations


@pytest.mark.parametrize("k", [2, 16, 256])
@pytest.mark.parametrize("threads", [1, 7, 64])
@pytest.mark.parametrize("max_iter", [300, 3, 0])
def test_lloyd_kernel_equals_the_array_code(emulated_lloyd, k, threads, max_iter):
    # 7 and 64 threads stride over the clusters (k + 1 borders); max_iter 3 stops segments that
    # still move (their iterations are max_iter), 0 returns the start.
    with array_code_only():
        batch = _batch(_laplace_arrays(7), numpy)
        initial = initializers.INITIALIZERS["linear" if k != 16 else "density"](batch, k)
        expected = lloyd_module.lloyd(batch, initial, max_iter)
    actual = _emulate(emulated_lloyd, batch, initial, max_iter, threads)
    assert numpy.array_equal(actual[0], expected[0]) and numpy.array_equal(actual[1], expected[1])
    if max_iter == 3:
        assert (expected[1] == 3).any()  # the cap is exercised


def test_fused_path_is_opt_in(monkeypatch):
    monkeypatch.delenv(fused.VARIABLE, raising=False)
    assert not fused.enabled(16)
    monkeypatch.setenv(fused.VARIABLE, "1")
    assert fused.enabled(16) and fused.enabled(fused.MAX_FUSED_K) and not fused.enabled(fused.MAX_FUSED_K + 1)
