"""The frame of a format's skeleton: magic, a JSON header naming what was removed, the model's bytes.

Shared by the formats whose skeleton is their own bytes with the clustered
values taken out (GraphDef, TFLite): layout `MAGIC(4) | u32 length | JSON | body`.
"""
from __future__ import annotations

import json
import struct

from ..errors import FormatError

# The JSON header lists removed tensors: far below this for any real model.
MAX_SKELETON_HEADER_BYTES = 1 << 26


def frame_skeleton(magic: bytes, header, body: bytes) -> bytes:
    """Return magic + the header (a JSON-serialisable list) + body as skeleton bytes."""
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    return magic + struct.pack("<I", len(encoded)) + encoded + body


def split_skeleton(data: bytes, magic: bytes, kind: str, source: str) -> tuple[list, bytes]:
    """Return (header list, body) of skeleton bytes framed with `magic`.

    kind names the format in messages ("GraphDef"). Raises FormatError for a
    wrong magic, a header longer than the data or the limit, a header that is
    not a JSON list.
    """
    if len(data) < 8 or data[:4] != magic:
        raise FormatError(f"{source}: not a {kind} skeleton")
    (length,) = struct.unpack_from("<I", data, 4)
    if length > min(len(data) - 8, MAX_SKELETON_HEADER_BYTES):
        raise FormatError(f"{source}: skeleton header of {length} bytes exceeds the data")
    try:
        header = json.loads(data[8 : 8 + length].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise FormatError(f"{source}: skeleton header is not JSON ({error})") from None
    if not isinstance(header, list):
        raise FormatError(f"{source}: skeleton header should be a list")
    return header, data[8 + length :]
