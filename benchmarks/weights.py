"""Deterministic trained-looking weights in the shapes of FaceNet's Inception-ResNet-v1.

Trained convolution kernels are roughly Laplace-distributed around zero with a
heavy tail of a few large weights, and each tensor has its own scale (about
sqrt(2 / fan_in)). `inception_resnet_v1_weights()` draws such tensors, in the
shapes of a representative subset of Inception-ResNet-v1's conv kernels, from a
fixed seed, so every benchmark sees the same numbers on every machine.
"""
from __future__ import annotations

import math

import numpy

# (name, shape HWIO): stem, one block of each repeated kind, and the reductions.
INCEPTION_RESNET_V1_SHAPES = (
    ("Conv2d_1a_3x3", (3, 3, 3, 32)),
    ("Conv2d_2a_3x3", (3, 3, 32, 32)),
    ("Conv2d_2b_3x3", (3, 3, 32, 64)),
    ("Conv2d_3b_1x1", (1, 1, 64, 80)),
    ("Conv2d_4a_3x3", (3, 3, 80, 192)),
    ("Conv2d_4b_3x3", (3, 3, 192, 256)),
    ("block35_1/Branch_0/Conv2d_1x1", (1, 1, 256, 32)),
    ("block35_1/Branch_1/Conv2d_0a_1x1", (1, 1, 256, 32)),
    ("block35_1/Branch_1/Conv2d_0b_3x3", (3, 3, 32, 32)),
    ("block35_1/Branch_2/Conv2d_0a_1x1", (1, 1, 256, 32)),
    ("block35_1/Branch_2/Conv2d_0b_3x3", (3, 3, 32, 32)),
    ("block35_1/Branch_2/Conv2d_0c_3x3", (3, 3, 32, 32)),
    ("block35_1/Conv2d_1x1", (1, 1, 96, 256)),
    ("Mixed_6a/Branch_0/Conv2d_1a_3x3", (3, 3, 256, 384)),
    ("Mixed_6a/Branch_1/Conv2d_0a_1x1", (1, 1, 256, 192)),
    ("Mixed_6a/Branch_1/Conv2d_0b_3x3", (3, 3, 192, 192)),
    ("Mixed_6a/Branch_1/Conv2d_1a_3x3", (3, 3, 192, 256)),
    ("block17_1/Branch_0/Conv2d_1x1", (1, 1, 896, 128)),
    ("block17_1/Branch_1/Conv2d_0a_1x1", (1, 1, 896, 128)),
    ("block17_1/Branch_1/Conv2d_0b_1x7", (1, 7, 128, 128)),
    ("block17_1/Branch_1/Conv2d_0c_7x1", (7, 1, 128, 128)),
    ("block17_1/Conv2d_1x1", (1, 1, 256, 896)),
    ("Mixed_7a/Branch_0/Conv2d_0a_1x1", (1, 1, 896, 256)),
    ("Mixed_7a/Branch_0/Conv2d_1a_3x3", (3, 3, 256, 384)),
    ("Mixed_7a/Branch_1/Conv2d_1a_3x3", (3, 3, 256, 256)),
    ("Mixed_7a/Branch_2/Conv2d_0b_3x3", (3, 3, 256, 256)),
    ("block8_1/Branch_0/Conv2d_1x1", (1, 1, 1792, 192)),
    ("block8_1/Branch_1/Conv2d_0a_1x1", (1, 1, 1792, 192)),
    ("block8_1/Branch_1/Conv2d_0b_1x3", (1, 3, 192, 192)),
    ("block8_1/Branch_1/Conv2d_0c_3x1", (3, 1, 192, 192)),
    ("block8_1/Conv2d_1x1", (1, 1, 384, 1792)),
    ("Block8/Conv2d_1x1_wide", (3, 3, 384, 384)),
)

# Share of weights drawn from the heavy tail, and its width relative to the core.
TAIL_FRACTION = 0.01
TAIL_SCALE = 4.0


def trained_looking(shape, seed: int) -> numpy.ndarray:
    """Return float32 weights of `shape`: a Laplace core plus a heavy Student-t tail.

    The scale is sqrt(2 / fan_in) (He initialization) with a per-tensor factor in
    [0.5, 1.5), so tensors differ in scale as trained ones do. Same seed, same array.
    """
    rng = numpy.random.default_rng(seed)
    fan_in = int(numpy.prod(shape[:-1]))
    scale = math.sqrt(2.0 / fan_in) * (0.5 + rng.random())
    n = int(numpy.prod(shape))
    values = rng.laplace(0.0, scale / math.sqrt(2.0), size=n)
    tail = rng.random(n) < TAIL_FRACTION
    values[tail] = rng.standard_t(3, size=int(tail.sum())) * scale * TAIL_SCALE
    return values.astype(numpy.float32).reshape(shape)


def inception_resnet_v1_weights(limit: int | None = None) -> list[tuple[str, numpy.ndarray]]:
    """Return [(name, float32 array)] for the first `limit` shapes (all by default)."""
    shapes = INCEPTION_RESNET_V1_SHAPES[:limit]
    return [(name, trained_looking(shape, seed)) for seed, (name, shape) in enumerate(shapes)]
