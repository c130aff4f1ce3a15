"""Count the array-library calls the GPU path makes per batch, without a GPU.

    python benchmarks/launches.py                  # FaceNet-shaped graph, k = 16 and 256, both methods
    python benchmarks/launches.py --width 8 --k 16 --method lloyd

Runs the engine's GPU path (gpucompress.engine with device "gpu", so the kernels take their CuPy
branches: no compiled twins, searchsorted where NumPy would repeat, one sort of int64 keys) on
NumPy through a counting array module. Every call that would be a CUDA kernel launch on CuPy is
counted once: a ufunc (operator, comparison, reduction), an array function (searchsorted, sort,
cumsum, concatenate, where, ...), an array creation that fills memory (zeros, full, arange),
advanced indexing (gather), any assignment into an array (scatter or copy), astype and copies.
Views (basic slicing, reshape of contiguous data, broadcast_to) count nothing. Device-to-host reads
(int(), bool(), tolist(), a boolean mask's size) are counted as synchronizations, host arrays
turned into device arrays as transfers. CuPy launches at least this many kernels (some calls,
such as a sort or a boolean mask, are several kernels there), so these are lower bounds.

Prints, per configuration, the counts by phase (batch: keys, sort and prefix sums; init; dp: the
optimal method's dynamic program; lloyd; labels; codebooks), the number of DP layers and Lloyd
steps, and the calls per layer and per step. Counts depend on the data only through the shapes
and the iteration counts, so they are exact for this graph. No time is measured: that needs the
device (benchmarks/gpu_check.sh).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections import Counter
from pathlib import Path

import numpy

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

# Functions of the array module that make no kernel launch on CuPy: views, metadata, allocation
# without a fill.
NO_LAUNCH = {"broadcast_to", "empty", "empty_like", "shape", "ndim", "result_type", "dtype"}
# Host data becoming device data.
TRANSFER = {"asarray", "array", "ascontiguousarray"}


class Tally:
    """Counts of launches, synchronizations and transfers, by phase."""

    def __init__(self):
        self.phase = "other"
        self.launches: Counter = Counter()
        self.syncs: Counter = Counter()
        self.transfers: Counter = Counter()
        self.events: Counter = Counter()
        self.by_name: Counter = Counter()

    def launch(self, name: str, count: int = 1) -> None:
        self.launches[self.phase] += count
        self.by_name[(self.phase, name)] += count

    def sync(self) -> None:
        self.syncs[self.phase] += 1

    def transfer(self) -> None:
        self.transfers[self.phase] += 1

    @contextlib.contextmanager
    def within(self, phase: str):
        previous, self.phase = self.phase, phase
        try:
            yield
        finally:
            self.phase = previous


TALLY = Tally()


def _plain(value):
    if isinstance(value, Counted):
        return value.view(numpy.ndarray)
    if isinstance(value, tuple):
        return tuple(_plain(item) for item in value)
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value


def _wrap(value):
    if isinstance(value, numpy.ndarray):
        return value.view(Counted)
    if isinstance(value, numpy.generic):  # CuPy returns 0-d arrays, never host scalars
        return numpy.asarray(value).view(Counted)
    if isinstance(value, tuple):
        return tuple(_wrap(item) for item in value)
    return value


def _is_advanced(key) -> tuple[bool, bool]:
    """Return (advanced, boolean mask) for an indexing key."""
    keys = key if isinstance(key, tuple) else (key,)
    advanced = mask = False
    for item in keys:
        if isinstance(item, (numpy.ndarray, list)):
            array = numpy.asarray(item)
            if array.ndim > 0:
                advanced = True
                mask |= array.dtype == bool
    return advanced, mask


class Counted(numpy.ndarray):
    """A NumPy array that tallies what CuPy would launch for each operation on it."""

    def __array_ufunc__(self, ufunc, method, *inputs, out=None, **kwargs):
        TALLY.launch(ufunc.__name__ if method == "__call__" else f"{ufunc.__name__}.{method}")
        if out is not None:
            kwargs["out"] = tuple(_plain(item) for item in out)
        return _wrap(getattr(ufunc, method)(*_plain(inputs), **kwargs))

    def __array_function__(self, func, types, args, kwargs):
        TALLY.launch(func.__name__)
        return _wrap(func(*_plain(args), **_plain(kwargs)))

    def __getitem__(self, key):
        advanced, mask = _is_advanced(key)
        if advanced:
            TALLY.launch("mask" if mask else "gather")
            if mask:
                TALLY.sync()  # the result's size is read back to the host
        return _wrap(numpy.ndarray.__getitem__(self.view(numpy.ndarray), _plain(key)))

    def __setitem__(self, key, value):
        _, mask = _is_advanced(key)
        TALLY.launch("scatter-mask" if mask else "setitem")
        numpy.ndarray.__setitem__(self.view(numpy.ndarray), _plain(key), _plain(value))

    def astype(self, *args, **kwargs):
        TALLY.launch("astype")
        return _wrap(self.view(numpy.ndarray).astype(*args, **kwargs))

    def copy(self, *args, **kwargs):
        TALLY.launch("copy")
        return _wrap(self.view(numpy.ndarray).copy(*args, **kwargs))

    def ravel(self, *args, **kwargs):
        if not self.flags.c_contiguous:
            TALLY.launch("ravel-copy")
        return _wrap(self.view(numpy.ndarray).ravel(*args, **kwargs))

    def reshape(self, *args, **kwargs):
        if not self.flags.c_contiguous:
            TALLY.launch("reshape-copy")
        return _wrap(self.view(numpy.ndarray).reshape(*args, **kwargs))

    def _read(self):
        TALLY.sync()
        return self.view(numpy.ndarray)

    def __int__(self):
        return int(self._read())

    def __index__(self):
        return int(self._read())

    def __float__(self):
        return float(self._read())

    def __bool__(self):
        return bool(self._read())

    def tolist(self):
        return self._read().tolist()

    def item(self, *args):
        return self._read().item(*args)

    def get(self):
        """cupy.ndarray.get(): the device-to-host copy."""
        TALLY.sync()
        return self.view(numpy.ndarray).copy()


class CountingModule:
    """Stands for cupy: NumPy's functions, tallied, on Counted arrays."""

    __name__ = "counting-cupy"

    def __getattr__(self, name):
        attribute = getattr(numpy, name)
        if not callable(attribute) or isinstance(attribute, type):
            return attribute  # dtypes, inf, newaxis

        def call(*args, **kwargs):
            if name in TRANSFER:
                source = args[0] if args else kwargs.get("a")
                if not isinstance(source, Counted):
                    TALLY.transfer()
                elif name == "ascontiguousarray" and not source.flags.c_contiguous:
                    TALLY.launch(name)
                elif name != "ascontiguousarray" and "dtype" in kwargs and kwargs["dtype"] != source.dtype:
                    TALLY.launch(name)
            elif name not in NO_LAUNCH:
                TALLY.launch(name)
            return _wrap(attribute(*_plain(args), **_plain(kwargs)))

        return call


XP = CountingModule()


def install():
    """Point the engine's GPU path at the counting module and tag the phases."""
    import importlib

    from gpucompress import device, engine
    from gpucompress.kernels import fixedpoint, initializers, optimal, segments

    lloyd = importlib.import_module("gpucompress.kernels.lloyd")  # the package exports a function of that name

    def namespace(*arrays):
        return XP if any(isinstance(array, Counted) for array in arrays) else numpy

    for module in (fixedpoint, segments, lloyd, initializers, optimal):
        module.array_namespace = namespace
    device.resolve_device = lambda requested: "gpu"
    device.array_module = lambda resolved: XP
    device.to_numpy = lambda array: array.get() if isinstance(array, Counted) else array

    def phased(function, phase, event=None):
        def wrapper(*args, **kwargs):
            if event:
                TALLY.events[event] += 1
            if phase is None:
                return function(*args, **kwargs)
            with TALLY.within(phase):
                return function(*args, **kwargs)
        return wrapper

    engine.build_batch = phased(engine.build_batch, "batch")
    engine.assign_labels = phased(engine.assign_labels, "labels")
    fixedpoint.dequantize = phased(fixedpoint.dequantize, "codebooks")
    for name in list(engine.INITIALIZERS):
        engine.INITIALIZERS[name] = phased(engine.INITIALIZERS[name], "init")
    engine.METHODS["optimal"] = phased(engine.METHODS["optimal"], "dp")
    engine.lloyd = phased(engine.lloyd, "lloyd")
    optimal.lloyd = phased(optimal.lloyd, "lloyd")
    optimal._layer = phased(optimal._layer, None, "dp layers (full)")
    optimal._band_layer = phased(optimal._band_layer, None, "dp layers (banded)")
    lloyd.update_centroids = phased(lloyd.update_centroids, None, "lloyd steps")


def count(model: Path, k: int, method: str, global_clusters: bool) -> dict:
    """Return the tallies of one cluster_weights call on the model (fresh counters)."""
    from gpucompress.clustering import cluster_weights
    from gpucompress.models import read_model
    from gpucompress.options import CompressOptions

    global TALLY
    TALLY = Tally()
    weights = read_model(model).weights()
    run = cluster_weights(weights, CompressOptions(n_clusters=k, method=method, global_clusters=global_clusters,
                                                   device="gpu"))
    clustered = run.clustered()
    phases = ["batch", "init", "dp", "lloyd", "labels", "codebooks", "other"]
    row = {"k": k, "method": method, "global": global_clusters, "tensors": len(clustered),
           "values": sum(t.size for t in clustered),
           "launches": {p: TALLY.launches[p] for p in phases if TALLY.launches[p]},
           "syncs": {p: TALLY.syncs[p] for p in phases if TALLY.syncs[p]},
           "transfers": sum(TALLY.transfers.values()), "events": dict(TALLY.events),
           "top": [(f"{phase}:{name}", n) for (phase, name), n in TALLY.by_name.most_common(8)]}
    row["total_launches"] = sum(TALLY.launches.values())
    layers = TALLY.events.get("dp layers (full)", 0) + TALLY.events.get("dp layers (banded)", 0)
    steps = TALLY.events.get("lloyd steps", 0)
    row["per_dp_layer"] = round(TALLY.launches["dp"] / layers, 1) if layers else None
    row["per_lloyd_step"] = round(TALLY.launches["lloyd"] / steps, 1) if steps else None
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", type=Path, help="frozen GraphDef (default: the FaceNet-shaped graph)")
    parser.add_argument("--width", type=int, default=1, help="FaceNet width divisor when no model is given")
    parser.add_argument("--k", type=int, action="append", help="codebook size (repeatable; default 16 and 256)")
    parser.add_argument("--method", action="append", help="method (repeatable; default every method)")
    parser.add_argument("--global", dest="modes", action="append_const", const=True,
                        help="global codebook as well as per tensor")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON")
    arguments = parser.parse_args(argv)
    from gpucompress.engine import METHODS

    model = arguments.model
    if model is None:
        import run

        model = run.model_path(HERE / ".cache", arguments.width)
    install()
    rows = []
    print("| k | method | codebooks | tensors | launches | batch | init | dp | lloyd | labels | codebooks | syncs "
          "| DP layers | per layer | Lloyd steps | per step |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for k in arguments.k or [16, 256]:
        for method in arguments.method or sorted(METHODS):
            for global_clusters in [False] + (arguments.modes or []):
                row = count(model, k, method, global_clusters)
                rows.append(row)
                launches, events = row["launches"], row["events"]
                layers = events.get("dp layers (full)", 0) + events.get("dp layers (banded)", 0)
                print(f"| {k} | {method} | {'global' if global_clusters else 'per tensor'} | {row['tensors']} "
                      f"| {row['total_launches']:,} | "
                      + " | ".join(f"{launches.get(p, 0):,}" for p in ("batch", "init", "dp", "lloyd", "labels",
                                                                      "codebooks"))
                      + f" | {sum(row['syncs'].values()):,} | {layers:,} | {row['per_dp_layer'] or '-'} "
                      f"| {events.get('lloyd steps', 0):,} | {row['per_lloyd_step'] or '-'} |", flush=True)
    for row in rows:
        print(f"k={row['k']} {row['method']}{' global' if row['global'] else ''}: most calls "
              + ", ".join(f"{name} {n:,}" for name, n in row["top"]))
    if arguments.json:
        arguments.json.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
