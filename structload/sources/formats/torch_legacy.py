"""Legacy ``torch.save`` files: the format before PyTorch 1.6, not a zip archive.

``torch.save(obj, f, _use_new_zipfile_serialization=False)`` still writes it,
and many published weights are in it (facenet-pytorch, lpips, resemblyzer).
The file is five pickles, then the storages' bytes, one after the other::

    magic number | protocol version (1001) | sys info | main pickle | storage keys | storage | storage ...

where each storage is an 8-byte little-endian element count followed by its
bytes, in the order of the storage keys. structload reads it as it reads a
zip-format file (`structload.sources.formats.torch_file`):

- the main pickle goes through the same unpickler, with the legacy format's
  persistent ids: no code from the pickle runs, unknown objects become inert
  placeholders, a whole pickled module becomes its state tree;
- tensors become lazy `FileTensor` leaves. Opening reads the pickles (in
  growing blocks: at most as many bytes again past them, or 64 KiB) and one
  8-byte header per storage, nothing else: each storage is located from the
  sizes the pickle gives (its header must agree, as ``torch.load`` checks),
  never by reading the data before it;
- every pickle is checked by `structload.sources.formats.pickle_scan` before it is
  unpickled (no memo index that would make the unpickler allocate gigabytes);
- a storage saved on ``cuda:N`` or ``mps`` is read like a CPU one: its
  location says where the tensor lived when it was saved (what
  ``map_location`` remaps), the bytes are the same.

    >>> import os, tempfile, torch, structload as sl
    >>> path = os.path.join(tempfile.mkdtemp(), "old.pt")
    >>> torch.save({"w": torch.arange(3.0)}, path, _use_new_zipfile_serialization=False)
    >>> sl.open(path)["w"].read()
    tensor([0., 1., 2.])
"""

from __future__ import annotations

import io
import pickle
import reprlib

from ..._report import SourceError
from .._io.byte_source import ByteSource
from .._io.file_tensor import FileTensor
from .._io.paths import open_handle
from ..tree import SourceTree
from .pickle_scan import Incomplete, scan
from .torch_file import (
    _LEGACY_STORAGES,
    MAX_PICKLE_BYTES,
    _Allowed,
    _python3_name,
    _Refused,
    _Storage,
    _StorageType,
    _WeightsUnpickler,
    tree_of_pickle,
)

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001
#: The magic number's pickle is shorter than this in every pickle protocol.
HEAD_BYTES = 64
#: Each storage's bytes follow its element count, an 8-byte little-endian integer.
HEADER_BYTES = 8
#: The pickles are read in blocks of at least this size, each next block twice the last.
BLOCK_BYTES = 64 << 10

_SHORT = reprlib.Repr()
_SHORT.maxstring, _SHORT.maxother = 60, 60


def is_legacy_torch_file(head: bytes) -> bool:
    """Whether a file's first bytes are the pickled magic number of a legacy torch file.

    >>> is_legacy_torch_file(pickle.dumps(MAGIC_NUMBER, protocol=2) + pickle.dumps(PROTOCOL_VERSION))
    True
    >>> is_legacy_torch_file(b"PK\\x03\\x04" + bytes(60)), is_legacy_torch_file(pickle.dumps(12345))
    (False, False)
    """
    head = head[:HEAD_BYTES]
    try:
        return _PlainUnpickler(io.BytesIO(head[: scan(head)])).load() == MAGIC_NUMBER
    except Exception:  # anything that is not a small plain pickle is not this format
        return False


def open_legacy_torch_file(path: str, file: ByteSource | None = None) -> SourceTree:
    """The source tree of a legacy ``torch.save`` file, reading only its pickles and the
    storages' headers; `file` is its handle when the caller has opened it already."""
    file = file or open_handle(path)
    pickles = _Pickles(file, MAX_PICKLE_BYTES)
    unpickler = _LegacyUnpickler(file)

    def unpickle():
        _check_preamble(pickles)
        unpickled = unpickler.load_from(pickles.next())
        keys = _plain(pickles.next())
        _locate_storages(file, unpickler, keys, pickles.end)
        return unpickled

    return tree_of_pickle(path, file, unpickler, unpickle, "torch legacy")


def _check_preamble(pickles: _Pickles) -> None:
    """The three small pickles before the main one: magic number, protocol version, sys info."""
    if _plain(pickles.next()) != MAGIC_NUMBER:
        raise _Refused("not a legacy torch.save file (wrong magic number)")
    version = _plain(pickles.next())
    if version != PROTOCOL_VERSION:
        raise _Refused(f"legacy torch.save protocol version {_SHORT.repr(version)}; only {PROTOCOL_VERSION} exists")
    info = _plain(pickles.next())
    if not isinstance(info, dict):
        raise _Refused(f"the system information is {type(info).__name__}, not a dict")
    if info.get("little_endian", True) is not True:
        raise _Refused("tensors are stored big-endian; structload reads little-endian files only")


def _plain(data: bytes):
    return _PlainUnpickler(io.BytesIO(data)).load()


class _Pickles:
    """The pickles at the start of the file, one after the other, each checked by
    `structload.sources.formats.pickle_scan` before it is unpickled. The file is read in growing blocks
    as the scan needs them, never past `limit` bytes: after the pickles, at most as many bytes
    again (or `BLOCK_BYTES`) are read."""

    def __init__(self, file: ByteSource, limit: int):
        self.file, self.limit = file, limit
        self.buffer = bytearray()
        self.end = 0  # where the next pickle starts: after the last one, where the storages start

    def next(self) -> bytes:
        while True:
            try:
                stop = scan(self.buffer, self.end)
                break
            except Incomplete as incomplete:
                self._read_up_to(self.end + incomplete.needed)
        start, self.end = self.end, stop
        return bytes(self.buffer[start:stop])

    def _read_up_to(self, needed: int) -> None:
        if needed > self.file.size:
            raise SourceError(f"{self.file.path}: the file ends inside its pickles (truncated, or corrupt)")
        if needed > self.limit:
            raise SourceError(f"{self.file.path}: the pickles are over the {self.limit}-byte limit")
        readable = min(self.file.size, self.limit)
        have = len(self.buffer)
        self.buffer += self.file.read_bytes(have, min(readable, max(needed, 2 * have, BLOCK_BYTES)) - have)


class _PlainUnpickler(pickle.Unpickler):
    """For the pickles around the main one (numbers, a dict, a list of keys): no global at all."""

    def find_class(self, module, name):
        raise _Refused(f"a header pickle names {_SHORT.repr(module)}.{_SHORT.repr(name)}; not a torch.save file")

    def persistent_load(self, pid):
        raise _Refused("a header pickle holds a persistent id; not a torch.save file")


class _LegacyUnpickler(_WeightsUnpickler):
    """The zip reader's unpickler (same allow-list, placeholders and stand-ins) with the legacy
    format's persistent ids, its older ``_rebuild_tensor``, and storages whose place in the file is
    known only once the whole pickle is read: tensors are made at offsets inside their storage and
    moved to the file's by `_locate_storages`."""

    def __init__(self, file: ByteSource):  # no archive: the zip reader's __init__ does not apply
        self.file = file
        self.storages: dict[str, _Storage] = {}  # by root key, at offset 0 of themselves
        self.views: dict[str, _Storage] = {}  # storage views (older torch versions), by view key
        self.placeholders = {}
        self.tensors: list[tuple[FileTensor, str]] = []  # each tensor made, and its storage's root key

    def load_from(self, data: bytes):
        pickle.Unpickler.__init__(self, io.BytesIO(data), encoding="utf-8")  # as torch.load: Python 2 str is UTF-8
        return self.load()

    def find_class(self, module: str, name: str):
        module, name = _python3_name(str(module), str(name))
        if (module, name) == ("torch._utils", "_rebuild_tensor"):  # written by PyTorch 0.3
            return _Allowed(self.rebuild_tensor_v1)
        if module == "torch.cuda" and name in _LEGACY_STORAGES:
            return _StorageType(_LEGACY_STORAGES[name])
        return super().find_class(module, name)

    def persistent_load(self, pid):
        kind = _text(pid[0]) if isinstance(pid, tuple) and pid else None
        if kind == "module" and len(pid) == 4:  # a pickled module's class, with its source code
            return pid[1]  # a placeholder type; the source is not kept
        if kind != "storage" or len(pid) != 6:
            raise _Refused(f"unknown persistent id {_SHORT.repr(pid)}")
        _, storage_type, key, location, numel, view = pid
        key = _text(key)
        if not isinstance(storage_type, _StorageType) or not _is_count(numel) or key is None or _text(location) is None:
            raise _Refused(f"invalid storage reference {_SHORT.repr(pid)}")
        dtype = storage_type.dtype
        # As torch.load: the first reference to a storage fixes its dtype and size.
        root = self.storages.setdefault(key, _Storage(0, numel * dtype.itemsize, dtype, key))
        return root if view is None else self._view(root, view, storage_type)

    def _view(self, root: _Storage, view, storage_type: _StorageType) -> _Storage:
        """A storage view (``(view_key, offset, size)`` in elements): a range of its root storage."""
        if not (isinstance(view, tuple) and len(view) == 3 and _text(view[0]) is not None):
            raise _Refused(f"invalid storage view {_SHORT.repr(view)}")
        key, offset, size = _text(view[0]), view[1], view[2]
        if not (_is_count(offset) and _is_count(size)):
            raise _Refused(f"invalid storage view {_SHORT.repr(view)}")
        itemsize = storage_type.dtype.itemsize
        if (offset + size) * itemsize > root.nbytes:
            raise _Refused(f"a storage view reaches past the end of storage '{root.key}'")
        return self.views.setdefault(
            str(key), _Storage(offset * itemsize, size * itemsize, storage_type.dtype, root.key)
        )

    def rebuild_tensor_v1(self, storage, storage_offset, size, stride):
        if not isinstance(storage, _Storage):
            raise _Refused("a tensor refers to an invalid storage")
        return self.lazy_tensor(storage, storage_offset, size, stride, storage.dtype)

    def lazy_tensor(self, storage, storage_offset, size, stride, dtype) -> FileTensor:
        tensor = super().lazy_tensor(storage, storage_offset, size, stride, dtype)
        self.tensors.append((tensor, storage.key))
        return tensor


def _locate_storages(file: ByteSource, unpickler: _LegacyUnpickler, keys, start: int) -> None:
    """Move every tensor to its place in the file. Storages follow the pickles (which end at
    `start`) in the order of `keys`, each as a header and the number of bytes its first reference
    in the pickle gave; every storage the pickle uses must be there exactly once."""
    if not isinstance(keys, list) or not all(isinstance(key, str) for key in keys):
        raise _Refused("the list of storage keys after the pickle is corrupt")
    bases: dict[str, int] = {}
    end = start
    for key in keys:
        storage = unpickler.storages.get(key)
        if key in bases or storage is None:
            why = "is listed twice" if key in bases else "is listed, but no tensor uses it"
            raise SourceError(f"{file.path}: storage '{key}' {why}; the file is corrupt")
        bases[key] = end + HEADER_BYTES
        end = bases[key] + storage.nbytes
        if end > file.size:
            raise SourceError(
                f"{file.path}: storage '{key}' ({storage.nbytes} bytes from byte {bases[key]}) runs past the "
                f"end of the file at byte {file.size} (truncated?)"
            )
    unstored = [key for key in unpickler.storages if key not in bases]
    if unstored:
        raise SourceError(f"{file.path}: storage '{unstored[0]}' is used by a tensor but not stored in the file")
    _check_headers(file, unpickler.storages, bases)
    for tensor, key in unpickler.tensors:
        tensor.offset += bases[key]


def _check_headers(file: ByteSource, storages: dict[str, _Storage], bases: dict[str, int]) -> None:
    """Each storage's header (its element count) must agree with the pickle, as ``torch.load``
    checks. The headers of a remote file are fetched in parallel, each a small request."""
    at = [bases[key] - HEADER_BYTES for key in bases]
    if file.local:
        headers = [file.read_bytes(offset, HEADER_BYTES) for offset in at]
    else:
        pending = [file.readers.submit(file.read_bytes, offset, HEADER_BYTES) for offset in at]
        headers = [future.result() for future in pending]
    for key, header in zip(bases, headers):
        storage = storages[key]
        count = int.from_bytes(header, "little", signed=True)
        if count * storage.dtype.itemsize != storage.nbytes:
            raise SourceError(
                f"{file.path}: storage '{key}' has a header of {count} elements where the pickle says "
                f"{storage.nbytes // storage.dtype.itemsize}; the file is corrupt"
            )


def _text(value) -> str | None:
    """A name the pickle gave as ``str``, or as ``bytes`` (Python 2 files read with other encodings)."""
    if isinstance(value, bytes):
        return value.decode("ascii", "replace")
    return value if isinstance(value, str) else None


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
