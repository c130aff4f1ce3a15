"""The one way gpucompress opens an HDF5 file: in memory, and only when it reaches nothing outside itself.

HDF5 can make a file's datasets live elsewhere: *external storage* (raw data
in another file, by path: reading it reads that file, writing it writes that
file), *external links* (an object in another file), *virtual datasets*
(data mapped from other files). A `.h5` model or an archive skeleton that
uses any of them could read or overwrite any file the user can, so
`open_hdf5` refuses them, and a user block (bytes before the HDF5 data, which
we would copy unchecked), before it returns the file: every HDF5 file
gpucompress reads or writes is opened here, and the check runs before any
write. Soft links are never followed (they name objects inside the file,
which are checked where they live).
"""
from __future__ import annotations

import io

from .errors import FormatError, InputError

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
# What h5py raises on a damaged file: its C layer's errors surface as these
# (an out-of-range length as OverflowError, a bad type code as TypeError).
CORRUPT_HDF5_ERRORS = (OSError, RuntimeError, KeyError, ValueError, TypeError, OverflowError)


def h5py_module():
    """Return h5py; raises InputError when it is not installed."""
    try:
        import h5py
    except ImportError:
        raise InputError("Keras and HDF5 models need h5py (pip install 'gpucompress[tf]')") from None
    return h5py


def open_hdf5(buffer: io.BytesIO, label: str, mode: str = "r"):
    """Return an h5py File over an in-memory buffer, after checking it is self-contained.

    buffer: the file's bytes in a BytesIO (mode "r+" writes into it).
    label: how messages name the file. Raises FormatError (one line naming the
    object) for a file h5py cannot open, a user block, an external link, a
    dataset with external storage or a virtual dataset.
    """
    h5py = h5py_module()
    view = buffer.getbuffer()
    if view[:8].tobytes() != HDF5_SIGNATURE:
        offset = 512  # HDF5 looks for its signature at 0, 512, 1024, 2048 ...: a user block before it
        while offset + 8 <= len(view) and view[offset : offset + 8].tobytes() != HDF5_SIGNATURE:
            offset *= 2
        del view
        if offset + 8 <= len(buffer.getbuffer()):
            raise FormatError(f"{label}: HDF5 file has a user block of {offset} bytes (refused)")
        raise FormatError(f"{label}: not an HDF5 file (no HDF5 signature)")
    del view
    try:
        handle = h5py.File(buffer, mode)
    except (OSError, ValueError) as error:
        raise FormatError(f"{label}: not a readable HDF5 file ({error})") from None
    try:
        _check_self_contained(handle, label)
    except BaseException:
        handle.close()
        raise
    return handle


def _check_self_contained(handle, label: str) -> None:
    h5py = h5py_module()
    if handle.userblock_size:
        raise FormatError(f"{label}: HDF5 file has a user block of {handle.userblock_size} bytes (refused)")
    seen = set()
    pending = [("/", handle)]
    try:
        while pending:
            path, group = pending.pop()
            for name in sorted(group):
                item_path = f"{path.rstrip('/')}/{name}"
                link = group.get(name, getlink=True)
                if isinstance(link, h5py.ExternalLink):
                    raise FormatError(f"{label}: {item_path} is an external link to {link.filename}:{link.path} "
                                      "(refused: it reaches outside the file)")
                if isinstance(link, h5py.SoftLink):
                    continue
                item = group[name]
                address = h5py.h5o.get_info(item.id).addr
                if address in seen:
                    continue
                seen.add(address)
                if isinstance(item, h5py.Group):
                    pending.append((item_path, item))
                elif isinstance(item, h5py.Dataset):
                    _check_dataset(h5py, item, item_path, label)
    except FormatError:
        raise
    except CORRUPT_HDF5_ERRORS as error:
        raise FormatError(f"{label}: corrupt HDF5 file ({error})") from None


def _check_dataset(h5py, dataset, path: str, label: str) -> None:
    plist = dataset.id.get_create_plist()
    if plist.get_external_count():
        name = plist.get_external(0)[0].decode("utf-8", "replace")
        raise FormatError(f"{label}: dataset {path} keeps its data in the external file {name!r} "
                          "(refused: it reaches outside the file)")
    if plist.get_layout() == h5py.h5d.VIRTUAL:
        raise FormatError(f"{label}: dataset {path} is a virtual dataset (refused: it maps other files)")
