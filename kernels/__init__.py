"""Compute kernels of gpucompress: pure array math that runs on NumPy or CuPy.

Every function here takes arrays and derives the array module from them
(`array_namespace`), so the CPU and GPU paths are one implementation. All the
arithmetic that decides a result is integer (fixed point), which is exact and
associative: NumPy and CuPy give bit-identical codebooks and labels whatever
order their reductions run in.

On the CPU, the steps that are slow as NumPy calls (keys and prefix sums
from each segment's sorted values, the DP of optimal.py, Lloyd's
iterations, labelling) run as compiled twins
(_cpu_kernels.pyx, compiled at install; compiled.py calls them) that repeat the
array code's arithmetic; the array code
stays the reference, and the tests compare the two bit for bit.

Installed as `gpucompress.kernels` (see setup.py); the sources stay at the
repository's `kernels/` folder.
"""
from .fixedpoint import KEY_BIAS, KEY_SHIFT, array_namespace, segment_exponents, value_bits
from .initializers import INITIALIZERS
from .lloyd import lloyd

__all__ = [
    "INITIALIZERS",
    "KEY_BIAS",
    "KEY_SHIFT",
    "array_namespace",
    "lloyd",
    "segment_exponents",
    "value_bits",
]
