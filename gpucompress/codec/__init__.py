"""The `.gpcz` archive: Deep Compression's storage stage (codebooks, packed and entropy-coded indices).

- bitpack.py: indices at b bits, vectorized;
- entropy.py: index coders ("packed", "zstd", "ans"), picked per tensor by size;
- archive.py: the container (FORMAT.md specifies the bytes), reader hardened
  against untrusted input.

The codec never clusters and knows no model format: it stores a skeleton
(bytes from the model's `to_skeleton`) and CodedTensors, and the format name
that finds the model class again.
"""
__all__ = ["Archive", "CodedTensor", "read_archive", "write_archive"]


def __getattr__(name: str):
    """Return the container's names from archive.py, loaded on first use (PEP 562): the CLI's
    parser reads entropy's defaults without importing the container."""
    if name in __all__:
        from . import archive

        return getattr(archive, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
