"""Parity testing in CuPy's style: one test body, run on NumPy and on CuPy, compared exactly.

Modelled on cupy/testing/_loops.py (`numpy_cupy_array_equal(type_check=True, accept_error=...)`):
the decorated test takes `xp`, builds its inputs on the host (same values for both libraries),
moves them with `xp.asarray` and returns an array or a tuple of arrays. The decorator runs it with
numpy and with cupy and asserts the results equal bit for bit (bytes, shape and, with type_check,
dtype: never allclose), or that both raised the same accepted error.

The NumPy run uses the array code, not the compiled CPU twins (GPUCOMPRESS_COMPILED=0 in effect):
that is the code CuPy runs, so any difference is CuPy's. The twins are compared with the array
code in tests/test_compiled.py.
"""
from __future__ import annotations

import contextlib
import functools
import inspect

import numpy
import pytest

from gpucompress.device import gpu_available

requires_gpu = pytest.mark.skipif(not gpu_available(), reason="needs CuPy and a CUDA device")


@contextlib.contextmanager
def array_code_only():
    """Run the kernels' array code on NumPy (the compiled twins switched off) inside the block."""
    from gpucompress.kernels import compiled

    original = compiled.available
    compiled.available = lambda: False
    try:
        yield
    finally:
        compiled.available = original


def to_host(value):
    """Return value with every CuPy array (also inside tuples and lists) copied to NumPy."""
    if isinstance(value, (tuple, list)):
        return type(value)(to_host(item) for item in value)
    if type(value).__module__.startswith("cupy"):
        return value.get()
    return value


def assert_same(expected, actual, type_check: bool = True, path: str = "result") -> None:
    """Assert two results (arrays, scalars, or tuples of them) are bit-identical.

    Raises AssertionError naming where they differ: the structure, shape, dtype or the first index.
    """
    if isinstance(expected, (tuple, list)):
        assert isinstance(actual, (tuple, list)) and len(actual) == len(expected), f"{path}: structure differs"
        for index, (left, right) in enumerate(zip(expected, actual)):
            assert_same(left, right, type_check, f"{path}[{index}]")
        return
    left, right = numpy.asarray(expected), numpy.asarray(actual)
    assert left.shape == right.shape, f"{path}: shape {left.shape} != {right.shape}"
    if type_check:
        assert left.dtype == right.dtype, f"{path}: dtype {left.dtype} != {right.dtype}"
    else:
        right = right.astype(left.dtype)
    left, right = numpy.ascontiguousarray(left), numpy.ascontiguousarray(right)
    if left.tobytes() != right.tobytes():
        # Bytes, not ==: -0.0 and 0.0 differ, NaNs of the same bits agree.
        left_bytes = left.reshape(-1).view(numpy.uint8).reshape(left.size, -1)
        right_bytes = right.reshape(-1).view(numpy.uint8).reshape(right.size, -1)
        first = int(numpy.flatnonzero((left_bytes != right_bytes).any(axis=1))[0])
        index = numpy.unravel_index(first, left.shape)
        raise AssertionError(f"{path}: differs at {tuple(map(int, index))}: {left[index]!r} != {right[index]!r}")


def compare_on(test, modules, args=(), kwargs=None, type_check=True, accept_error=()):
    """Run test(*args, xp=module, **kwargs) for each of two array modules and assert_same the results.

    accept_error: exception types that both runs must then raise alike (same type); any other
    exception propagates. The NumPy run happens under array_code_only().
    """
    kwargs = kwargs or {}
    outcomes = []
    for module in modules:
        context = array_code_only() if module is numpy else contextlib.nullcontext()
        try:
            with context:
                outcomes.append(("value", to_host(test(*args, xp=module, **kwargs))))
        except accept_error as error:
            outcomes.append(("error", error))
    (kind_a, a), (kind_b, b) = outcomes
    assert kind_a == kind_b, f"one run raised and the other did not: {a!r} / {b!r}"
    if kind_a == "error":
        assert type(a) is type(b), f"different errors: {a!r} / {b!r}"
        return
    assert_same(a, b, type_check)


def numpy_cupy_array_equal(type_check: bool = True, accept_error=()):
    """Decorate a test taking `xp`: run it on NumPy and CuPy and assert bit-identical results."""
    def decorator(test):
        @functools.wraps(test)
        def wrapper(*args, **kwargs):
            import cupy

            compare_on(test, (numpy, cupy), args, kwargs, type_check, accept_error)

        # pytest must not look for an `xp` fixture.
        signature = inspect.signature(test)
        wrapper.__signature__ = signature.replace(
            parameters=[p for name, p in signature.parameters.items() if name != "xp"])
        return wrapper
    return decorator
