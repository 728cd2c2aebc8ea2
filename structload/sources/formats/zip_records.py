"""Zip archives holding tensors (torch.save files, ``.npz``): where a stored record's bytes start."""

from __future__ import annotations

import struct
import zipfile

from ..._report import SourceError
from .._io.byte_source import ByteSource
from .._io.paths import zip_archive


def open_zip(file: ByteSource, what: str) -> zipfile.ZipFile:
    """The archive's directory, or a `SourceError` naming the file (`what` says what it should be)."""
    if file.size == 0:
        raise SourceError(f"{file.path}: the file is empty")
    try:
        return zip_archive(file)
    except Exception as error:  # zipfile raises many kinds (BadZipFile, NotImplementedError, struct.error, ...)
        raise SourceError(
            f"{file.path}: not a {what}, or its zip archive is corrupt or truncated ({type(error).__name__}: {error})"
        ) from None


def record_data_offset(file: ByteSource, info: zipfile.ZipInfo) -> int:
    """Where a stored record's bytes start: after its local header, whose extra field may differ
    from the central directory's."""
    header = file.read_bytes(info.header_offset, 30)
    signature, *_, name_length, extra_length = struct.unpack("<IHHHHHIIIHH", header)
    if signature != 0x04034B50:
        raise SourceError(f"{file.path}: zip record '{info.filename}' has a corrupt local header")
    return info.header_offset + 30 + name_length + extra_length
