"""Opt-in fused CUDA kernels: one launch where the array code makes many (CuPy only).

NEVER RUN ON A GPU YET: GPUCOMPRESS_FUSED=1 turns them on; without it (the default) the GPU runs
the array code. Each kernel's source is a `.cu` file beside its NumPy twin (lloyd.cu next to
lloyd.py), compiled by CuPy (NVRTC) on first use and cached per device. They repeat the array
code's integer arithmetic, so their results are the array code's bit for bit:
tests/test_fused.py runs the very source on the host (C++, one thread per CUDA thread) against
the array code, and tests/test_cupy_parity.py compares it on a device.

Why: lloyd.lloyd makes 32 launches and one host synchronization per step, up to max_iter (300)
steps (benchmarks/launches.py); lloyd_segments runs every step of every segment in one launch.
"""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import numpy

VARIABLE = "GPUCOMPRESS_FUSED"
# lloyd_segments keeps (2k + 1) int64 in shared memory: 32 KiB at k = 2048, inside the 48 KiB a
# block gets without opting in to more.
MAX_FUSED_K = 2048
THREADS = 256


def enabled(k: int) -> bool:
    """Return True when GPUCOMPRESS_FUSED=1 and a fused Lloyd kernel exists for k clusters."""
    return os.environ.get(VARIABLE, "").strip() == "1" and 2 <= k <= MAX_FUSED_K


def source(name: str) -> str:
    """Return the text of the kernel source `name` (a .cu file installed beside this module)."""
    return Path(__file__).with_name(name).read_text(encoding="utf-8")


@lru_cache(maxsize=None)
def _lloyd_kernel(device_id: int):
    import cupy

    return cupy.RawKernel(source("lloyd.cu"), "lloyd_segments")


def lloyd(batch, centroids, max_iter: int, key_shift: int, key_bias: int):
    """Return lloyd.lloyd(batch, centroids, max_iter) from one launch of lloyd_segments (CuPy arrays).

    centroids: int64 (S, k) sorted, k <= MAX_FUSED_K (not modified). Returns (centroids int64
    (S, k), iterations int64 (S,)), the same values as the array code.
    """
    import cupy

    n_segments, k = (int(size) for size in centroids.shape)
    if not 2 <= k <= MAX_FUSED_K:
        raise ValueError(f"k={k} should be in [2, {MAX_FUSED_K}] for the fused Lloyd kernel.")
    out = cupy.array(centroids, dtype=cupy.int64, order="C", copy=True)
    iterations = cupy.zeros(n_segments, dtype=cupy.int64)
    if n_segments == 0:
        return out, iterations
    threads = min(THREADS, (k + 1 + 31) // 32 * 32)
    kernel = _lloyd_kernel(cupy.cuda.Device().id)
    arguments = (cupy.ascontiguousarray(batch.keys, dtype=cupy.int64),
                 cupy.ascontiguousarray(batch.prefix, dtype=cupy.uint64),
                 cupy.ascontiguousarray(batch.offsets, dtype=cupy.int64), out, iterations,
                 numpy.int32(k), numpy.int32(max_iter), numpy.int32(key_shift), numpy.int64(key_bias))
    kernel((n_segments,), (threads,), arguments, shared_mem=(2 * k + 1) * 8)
    return out, iterations
