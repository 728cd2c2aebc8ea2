"""``.npz`` files (``numpy.savez``, JAX and Flax exports): one ``.npy`` record per array.

Opening reads the zip directory and each record's small ``.npy`` header
(magic, version, a Python-literal dict of ``descr``, ``fortran_order`` and
``shape``, parsed with ``ast.literal_eval``: no code runs). Arrays of a
stored (``savez``) archive become `FileTensor` leaves read with positioned
reads like any other file tensor; arrays of a compressed archive
(``savez_compressed``) are `CompressedArray` leaves, decompressed whole when
loaded. Object arrays (which ``np.load`` would unpickle) and structured,
string or big-endian arrays are not tensors: they are problems at their path.
Member names are split on ``/`` as well as ``.`` (``params/Dense_0/kernel``).
"""

from __future__ import annotations

import ast
import io
import math
import re
import typing
import zipfile

import torch

from ..._report import SourceError
from .._io.byte_source import ByteSource, writable_bytes
from .._io.file_tensor import FileTensor, contiguous_strides
from .._io.paths import open_handle, zip_archive
from .._leaves import BadLeaf, SourceTensor
from ..nesting import insert, numbered_in_order
from ..tree import SourceInfo, SourceTree
from .zip_records import open_zip, record_data_offset

#: ``.npy`` headers longer than this are refused (numpy itself allows 10 000 bytes by default).
MAX_NPY_HEADER_BYTES = 1 << 20
#: Bytes read at first from each record: numpy pads its headers to 128 bytes, or a multiple of 64.
HEAD_BYTES = 256

_KINDS = {"f": "float", "i": "int", "u": "uint", "b": "bool", "c": "complex"}
_DESCR = re.compile(r"^([<|=]?)([fiubc])(\d+)$")
_PLAIN_HEADER = re.compile(
    r"\{'descr': '(?P<descr>[<|=]?[fiubc]\d+)', 'fortran_order': (?P<fortran>True|False), "
    r"'shape': \((?P<shape>(?:\d+, ?)*\d*)\), \}\s*\Z"
)


def open_npz(path: str, file: ByteSource | None = None) -> SourceTree:
    """The source tree of an ``.npz`` file, reading only the ``.npy`` headers; `file` is
    its handle when the caller has opened it already."""
    file = file or open_handle(path)
    archive = open_zip(file, "numpy .npz file")
    tree: dict = {}
    for info in archive.infolist():
        if not info.filename.endswith(".npy"):
            continue
        name = info.filename[: -len(".npy")].replace("/", ".")
        leaf: SourceTensor | BadLeaf
        try:
            leaf = _member(file, archive, info)
        except _Refused as refused:
            leaf = BadLeaf(f"the array '{info.filename}' is not a tensor: {refused}")
        insert(tree, name, leaf)
    if not tree:
        raise SourceError(f"{path}: the archive holds no .npy arrays; not a numpy .npz file")
    return SourceTree(numbered_in_order(tree), SourceInfo(path, "npz", (file,)))


class _Refused(Exception):
    pass


def _member(file: ByteSource, archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> SourceTensor:
    stored = info.compress_type == zipfile.ZIP_STORED
    record_start = record_data_offset(file, info) if stored else 0
    head = _first_bytes(file, archive, info, record_start, HEAD_BYTES)
    length, header_start = _header_length(file.path, info, head)
    if header_start + length > len(head):
        head = _first_bytes(file, archive, info, record_start, header_start + length)
    dtype, shape, fortran = _parse_header(file.path, info, head[header_start : header_start + length])
    data_start = header_start + length
    nbytes = math.prod(shape) * dtype.itemsize
    if info.file_size < data_start + nbytes:
        raise SourceError(
            f"{file.path}: '{info.filename}' holds {info.file_size - data_start} bytes of data, {nbytes} expected"
        )
    stride = tuple(reversed(contiguous_strides(tuple(reversed(shape))))) if fortran else None
    if stored:
        offset = record_start + data_start
        if offset + nbytes > file.size:
            raise SourceError(f"{file.path}: '{info.filename}' runs past the end of the file")
        return FileTensor(file, offset, shape, dtype, stride)
    return CompressedArray(file, info.filename, data_start, shape, dtype, stride)


def _first_bytes(file: ByteSource, archive: zipfile.ZipFile, info: zipfile.ZipInfo, start: int, count: int) -> bytes:
    """The first `count` bytes of a record (fewer if it is shorter): one positioned read when it is
    stored, else through the decompressor."""
    count = min(count, info.file_size)
    if info.compress_type == zipfile.ZIP_STORED:
        if start + count > file.size:
            raise SourceError(f"{file.path}: '{info.filename}' runs past the end of the file")
        return file.read_bytes(start, count)
    try:
        with archive.open(info) as stream:
            return stream.read(count)
    except Exception as error:  # zlib.error, BadZipFile, NotImplementedError, ...
        raise SourceError(f"{file.path}: cannot read '{info.filename}' from the archive ({error})") from None


def _header_length(path: str, info: zipfile.ZipInfo, head: bytes) -> tuple[int, int]:
    """The header's length and where it starts, from the magic and version bytes."""
    if len(head) < 10 or head[:6] != b"\x93NUMPY":
        raise SourceError(f"{path}: '{info.filename}' is not a .npy array (bad magic)")
    major = head[6]
    if major == 1:
        length, start = int.from_bytes(head[8:10], "little"), 10
    elif major in (2, 3) and len(head) >= 12:
        length, start = int.from_bytes(head[8:12], "little"), 12
    else:
        raise SourceError(f"{path}: '{info.filename}' has unknown .npy version {major}")
    if length > MAX_NPY_HEADER_BYTES:
        raise SourceError(f"{path}: '{info.filename}' declares a {length}-byte header, over the limit")
    return length, start


def _parse_header(path: str, info: zipfile.ZipInfo, header: bytes) -> tuple[torch.dtype, tuple[int, ...], bool]:
    text = header.decode("latin1")
    plain = _PLAIN_HEADER.match(text)  # what numpy writes, read without a parser
    if plain:
        shape = tuple(int(n) for n in plain["shape"].split(",") if n.strip())
        return _dtype(plain["descr"]), shape, plain["fortran"] == "True"
    try:
        fields = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        raise SourceError(f"{path}: '{info.filename}' has a corrupt .npy header") from None
    if not isinstance(fields, dict) or set(fields) != {"descr", "fortran_order", "shape"}:
        raise SourceError(f"{path}: '{info.filename}' has a corrupt .npy header")
    shape, fortran = fields["shape"], fields["fortran_order"]
    if not isinstance(shape, tuple) or not all(type(n) is int and n >= 0 for n in shape):
        raise SourceError(f"{path}: '{info.filename}' has an invalid shape {shape!r}")
    if not isinstance(fortran, bool):
        raise SourceError(f"{path}: '{info.filename}' has an invalid fortran_order {fortran!r}")
    return _dtype(fields["descr"]), shape, fortran


def _dtype(descr) -> torch.dtype:
    match = _DESCR.match(descr) if isinstance(descr, str) else None
    if match is None:
        what = "objects (np.load would unpickle them)" if descr == "|O" else f"dtype {descr!r}"
        raise _Refused(f"it holds {what}")
    kind, size = _KINDS[match[2]], int(match[3])
    dtype = getattr(torch, "bool" if kind == "bool" else f"{kind}{size * 8}", None)
    if not isinstance(dtype, torch.dtype) or dtype.itemsize != size:
        raise _Refused(f"dtype {descr!r} has no torch equivalent")
    return dtype


class CompressedArray(SourceTensor):
    """An array of a compressed ``.npz`` record: decompressed whole when read (zip deflate has no
    random access), through the archive opened anew for each read."""

    __slots__ = ("data_start", "file", "member", "stride")

    def __init__(self, file: ByteSource, member: str, data_start: int, shape, dtype: torch.dtype, stride):
        self.file, self.member, self.data_start = file, member, data_start
        self.shape, self.dtype, self.stride = tuple(shape), dtype, stride

    def read(self) -> torch.Tensor:
        flat = torch.empty(math.prod(self.shape), dtype=self.dtype)
        try:
            with zip_archive(self.file) as archive, archive.open(self.member) as stream:
                stream.read(self.data_start)
                view = writable_bytes(flat)
                done = 0
                while done < len(view):
                    n = typing.cast(io.BufferedIOBase, stream).readinto(view[done:])
                    if not n:
                        raise SourceError(f"{self.file.path}: '{self.member}' ended early (truncated)")
                    done += n
        except SourceError:
            raise
        except Exception as error:  # OSError, zlib.error, BadZipFile, ...
            raise SourceError(
                f"{self.file.path}: cannot read '{self.member}' ({type(error).__name__}: {error})"
            ) from None
        if self.stride is None:
            return flat.view(self.shape)
        return flat.as_strided(self.shape, self.stride)
