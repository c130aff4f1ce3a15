"""gpucompress: GPU-accelerated weight clustering (Deep Compression) for TensorFlow models.

Public API (importing it never imports TensorFlow):

- `compress_file(input, output=None, options)`: cluster a model file, write the result.
- `compress_graphdef(graph_def, options)`: a clustered copy of a GraphDef message.
- `cluster_arrays(arrays, n_clusters, ...)`: the engine on plain arrays
  (codebook and labels per array, bit-identical on CPU and GPU);
  `cluster_segments(arrays, segment_sizes, n_clusters, ...)`: a codebook per
  segment of each array (per-channel and grouped codebooks).
- `CompressOptions`: every knob, validated; `gpu_available()`.
- `pack_file(input, output=None, options)`, `unpack_file(archive, output=None)`,
  `read_archive(path_or_bytes)`: compact `.gpcz` archives (codebooks and
  entropy-coded indices); read_archive returns the model without writing.
"""
from .errors import DeviceError, FormatError, GpucompressError, InputError, OptionsError
from .options import CompressOptions

# Loaded on first use (PEP 562): importing the package (the CLI does, before it
# parses its arguments) imports neither NumPy nor the engine, and `compress`
# never needs the archive code (codec, zstd, tarfile).
_LAZY = {
    "CompressionSummary": "api", "compress_file": "api", "compress_graphdef": "api",
    "gpu_available": "device",
    "ClusterResult": "engine", "SegmentedResult": "engine", "cluster_arrays": "engine",
    "cluster_segments": "engine",
    "PackSummary": "packing", "pack_file": "packing", "read_archive": "packing", "unpack_file": "packing",
}


def __getattr__(name: str):
    """Return a public name of the API (compress_file, cluster_arrays, pack_file ...) from its module."""
    if name in _LAZY:
        from importlib import import_module

        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value  # looked up once
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__version__ = "0.1.0"

__all__ = [
    "ClusterResult",
    "CompressOptions",
    "CompressionSummary",
    "DeviceError",
    "FormatError",
    "GpucompressError",
    "InputError",
    "OptionsError",
    "PackSummary",
    "SegmentedResult",
    "cluster_arrays",
    "cluster_segments",
    "compress_file",
    "compress_graphdef",
    "gpu_available",
    "pack_file",
    "read_archive",
    "unpack_file",
]
