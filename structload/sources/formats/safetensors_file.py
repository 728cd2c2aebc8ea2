"""``.safetensors`` files: the header gives every shape and dtype; data is read on demand.

Format: 8 bytes (little-endian u64) header length N, N bytes of JSON
``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}``,
then the data; offsets are relative to the end of the header. Everything is
checked at open, before any destination is touched.
"""

from __future__ import annotations

import itertools
import json
import math

import torch

from ..._report import SourceError
from .._io.byte_source import ByteSource
from .._io.file_tensor import FileTensor
from .._io.paths import open_handle
from ..nesting import insert, numbered_in_order
from ..tree import SourceInfo, SourceTree
from .json_keys import refuse_duplicate_keys

#: Headers larger than this are refused (the reference implementation allows 100 MB).
MAX_HEADER_BYTES = 100_000_000

DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "U16": torch.uint16,
    "U32": torch.uint32,
    "U64": torch.uint64,
    "C64": torch.complex64,
}


def open_safetensors(path: str, file: ByteSource | None = None) -> SourceTree:
    """The source tree of a safetensors file (tensor names split on dots); `file` is
    its handle when the caller has opened it already."""
    file = file or open_handle(path)
    header, data_start = _read_header(file)
    data_size = file.size - data_start
    tree: dict = {}
    spans = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        dtype, shape, begin, end = _check_entry(path, name, entry, data_size)
        spans.append((begin, end, name))
        insert(tree, name, FileTensor(file, data_start + begin, shape, dtype))
    _check_no_overlap(path, spans)
    return SourceTree(numbered_in_order(tree), SourceInfo(path, "safetensors", (file,)))


def _fail(path: str, what: str) -> SourceError:
    return SourceError(f"{path}: not a valid safetensors file: {what}")


def _read_header(file: ByteSource) -> tuple[dict, int]:
    if file.size < 8:
        raise _fail(file.path, f"{file.size} bytes is too short for a header")
    length = int.from_bytes(file.read_bytes(0, 8), "little")
    if length > file.size - 8:
        raise _fail(file.path, f"header length {length} exceeds the {file.size - 8} bytes after the length prefix")
    if length > MAX_HEADER_BYTES:
        raise _fail(file.path, f"header length {length} exceeds the 100 MB limit")
    raw = file.read_bytes(8, length)
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=refuse_duplicate_keys)
    except (ValueError, RecursionError) as error:  # UnicodeDecodeError is a ValueError
        raise _fail(file.path, f"header is not valid JSON ({type(error).__name__}: {error})") from None
    if not isinstance(header, dict):
        raise _fail(file.path, "header is not a JSON object")
    return header, 8 + length


def _check_entry(path: str, name: str, entry, data_size: int):
    if not isinstance(entry, dict):
        raise _fail(path, f"entry '{name}' is not an object")
    dtype = DTYPES.get(str(entry.get("dtype")))
    if dtype is None:
        raise _fail(path, f"tensor '{name}' has unknown dtype {entry.get('dtype')!r}")
    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise _fail(path, f"tensor '{name}' has invalid shape {shape!r}")
    offsets = entry.get("data_offsets")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
        raise _fail(path, f"tensor '{name}' has invalid data_offsets {offsets!r}")
    begin, end = offsets
    if not 0 <= begin <= end <= data_size:
        raise _fail(path, f"tensor '{name}' spans bytes {begin}..{end}, beyond the {data_size} bytes of data")
    expected = math.prod(shape) * dtype.itemsize
    if end - begin != expected:
        raise _fail(
            path,
            f"tensor '{name}' has {end - begin} bytes for shape {tuple(shape)} of {entry['dtype']} ({expected} expected)",
        )
    return dtype, shape, begin, end


def _check_no_overlap(path: str, spans: list[tuple[int, int, str]]) -> None:
    spans.sort()
    for (_, end, first), (begin, next_end, second) in itertools.pairwise(spans):
        if begin < end and begin < next_end:  # starts inside the previous one, and is not empty
            raise _fail(path, f"tensors '{first}' and '{second}' overlap")
