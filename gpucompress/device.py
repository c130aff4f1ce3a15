"""The one place that knows about devices: which array module runs the kernels.

Asking whether a GPU is present never raises: `import cupy` succeeds on machines
without CUDA and only the first real call fails, so we probe with a real call.
"""
from __future__ import annotations

import functools
import logging

import numpy

from .errors import DeviceError

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=None)
def gpu_available() -> bool:
    """Return True when CuPy is importable and sees at least one working CUDA device.

    Returns False (never raises) without CuPy, without a driver or without a device.
    """
    try:
        import cupy
    except Exception:  # ImportError, or a broken CUDA install raising at import
        return False
    try:
        if not cupy.is_available():
            return False
        # A tiny real computation: some broken setups pass is_available().
        return int(cupy.arange(3).sum()) == 3
    except Exception as error:
        log.debug("CuPy present but unusable: %s", error)
        return False


def resolve_device(device: str) -> str:
    """Map a device option ("auto", "cpu", "gpu") to the device that will run: "cpu" or "gpu".

    Raises DeviceError when "gpu" is asked for and none is usable.
    """
    if device == "cpu":
        return "cpu"
    if device == "gpu":
        if not gpu_available():
            raise DeviceError("--device gpu: no usable CUDA device (CuPy missing, no driver or no GPU)")
        return "gpu"
    return "gpu" if gpu_available() else "cpu"


def array_module(device: str):
    """Return the array module (numpy or cupy) for a resolved device ("cpu" or "gpu")."""
    if device == "gpu":
        import cupy

        return cupy
    return numpy


def to_numpy(array) -> numpy.ndarray:
    """Return a NumPy copy of a NumPy or CuPy array (NumPy arrays are returned as they are)."""
    if isinstance(array, numpy.ndarray):
        return array
    return array.get()
