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
from .api import CompressionSummary, compress_file, compress_graphdef
from .device import gpu_available
from .engine import ClusterResult, SegmentedResult, cluster_arrays, cluster_segments
from .errors import DeviceError, FormatError, GpucompressError, InputError, OptionsError
from .options import CompressOptions

# Loaded on first use (PEP 562): `compress` never needs the archive code (codec, zstd, tarfile).
_PACKING = ("PackSummary", "pack_file", "read_archive", "unpack_file")


def __getattr__(name: str):
    """Return the archive API's names (PackSummary, pack_file, read_archive, unpack_file) from packing."""
    if name in _PACKING:
        from . import packing

        return getattr(packing, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
