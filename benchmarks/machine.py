"""Describe the machine a benchmark ran on: CPU model, cores, memory, GPU, library versions, date."""
from __future__ import annotations

import datetime
import os
import platform


def cpu_model() -> str:
    """Return the CPU model name (from /proc/cpuinfo on Linux, else platform.processor())."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as stream:
            for line in stream:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    """Return the cores this process may run on (the affinity mask, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def gpu_name() -> str | None:
    """Return the CUDA device name CuPy sees, or None."""
    from gpucompress.device import gpu_available

    if not gpu_available():
        return None
    import cupy

    return cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()


def describe() -> dict:
    """Return a dict naming the machine, software versions and the date (UTC, ISO 8601)."""
    import numpy

    import gpucompress

    memory = None
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        pass
    versions = {"python": platform.python_version(), "numpy": numpy.__version__,
                "gpucompress": gpucompress.__version__}
    for name in ("sklearn", "faiss", "flash1dkmeans", "kmeans1d", "tensorflow"):
        try:
            versions[name] = getattr(__import__(name), "__version__", "?")
        except ImportError:
            versions[name] = None
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_model(), "cores": usable_cores(), "memory_bytes": memory,
        "gpu": gpu_name(), "platform": platform.platform(), "versions": versions,
        "load_average": load_average(),
    }


def load_average() -> list[float] | None:
    """Return the 1, 5 and 15-minute load averages (runnable processes; compare with the cores), or None."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def short_name(info: dict) -> str:
    """Return a filename-safe tag such as "2025-11-23-cpu2" or "2025-11-23-cpu16-gpu"."""
    return f"{info['date'][:10]}-cpu{info['cores']}{'-gpu' if info['gpu'] else ''}"
