"""PyTorch files written by ``torch.save`` (zip format: ``.pt``, ``.pth``, ``.bin``, ``.ckpt``).

structload reads these itself rather than through ``torch.load``, and runs no
code from the pickle, ever:

- the pickle (``<archive>/data.pkl``) is unpickled with an allow-list:
  containers, numbers, strings, dtypes, devices, and tensors rebuilt by
  ``torch._utils``. Any other global (a class of the training code,
  ``argparse.Namespace``, ``os.system``, ...) becomes an inert placeholder
  (`structload.sources.formats.pickled`) that only records what the pickle does with
  it: nothing it names is imported or called, and no attribute of a real
  object is set from pickled data (a state dict's ``_metadata``, module versions, is kept as
  plain data: `structload.sources.formats.versions`). Every object the pickle can reach is a
  plain value, a placeholder, or one of this module's stand-ins, whose
  ``__setstate__`` refuses (see `_Sealed`);
- tensors become lazy `FileTensor` leaves pointing at their storage record
  inside the zip, so nothing but the pickle is read at open, and each tensor
  later goes straight from the file into the destination. ``torch.load(...,
  mmap=True)`` would be as lazy, but reading through a memory map adds every
  page read to the process's resident memory, a second copy of the weights;
- a whole pickled ``nn.Module`` becomes its state tree, numpy scalars and
  arrays their values, and other placeholders read-only values.

Legacy (pre-1.6, non-zip) files are read by `structload.sources.formats.torch_legacy`, through the same
unpickler.
"""

from __future__ import annotations

import _compat_pickle
import builtins
import collections
import io
import math
import pickle
import zipfile

import torch

from ..._report import SourceError
from .._io.byte_source import ByteSource
from .._io.file_tensor import FileTensor
from .._io.paths import open_handle
from .._leaves import BadLeaf
from ..memory import tree_from_object
from ..tree import SourceInfo, SourceTree
from .pickle_scan import PickleRefused, scan
from .pickled import MAX_PLACEHOLDER_TYPES, PickledType, placeholder_type, types_in
from .versions import plain_metadata, versions_in
from .zip_records import open_zip, record_data_offset

_LEGACY_STORAGES = {
    "DoubleStorage": torch.float64,
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
    "ComplexFloatStorage": torch.complex64,
    "ComplexDoubleStorage": torch.complex128,
    "UntypedStorage": torch.uint8,
}

# Constructors whose output is bounded by their input (not bytearray: bytearray(10**12) allocates).
_SAFE_BUILTINS = {"set", "frozenset", "slice", "complex", "tuple", "list", "dict", "int", "float", "str", "bool"}

#: A ``data.pkl`` larger than this is refused (about 100 bytes per tensor: millions of tensors fit).
MAX_PICKLE_BYTES = 512 << 20


class _Refused(Exception):
    pass


class NotZipArchive(SourceError):
    """The file does not start like a zip archive (`formats` then tries the legacy format)."""


class _Sealed:
    """Stand-ins the pickle can reach: ``BUILD`` on them is refused, so pickled data never sets
    their attributes (without this, ``BUILD``'s slot state would ``setattr`` them)."""

    __slots__ = ()

    def __setstate__(self, state):
        raise _Refused(f"the pickle tries to set attributes of {type(self).__name__.lstrip('_')}")


class _StorageType(_Sealed):
    """What a ``torch.FloatStorage``-like global stands for: a dtype."""

    __slots__ = ("dtype",)

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype


class _Storage(_Sealed):
    """A storage record of the archive: where its bytes start, how many, of which dtype."""

    __slots__ = ("dtype", "key", "nbytes", "offset")

    def __init__(self, offset: int, nbytes: int, dtype: torch.dtype, key: str):
        self.offset, self.nbytes, self.dtype, self.key = offset, nbytes, dtype, key


class _Allowed(_Sealed):
    """An allowed callable as the pickle sees it: callable, and nothing else (no attributes to set)."""

    __slots__ = ("function",)

    def __init__(self, function):
        self.function = function

    def __call__(self, *args):
        return self.function(*args)


class _UnpickledTensor(FileTensor):
    """A file tensor the pickle built: its offset and shape are checked, and sealed against ``BUILD``."""

    __slots__ = ()
    __setstate__ = _Sealed.__setstate__


class _OrderedDict(collections.OrderedDict):
    """``collections.OrderedDict`` as the pickle builds it: of the ``BUILD`` state, only torch's
    ``_metadata`` (module versions) is kept, and only as plain data; nothing else becomes an attribute."""

    def __setstate__(self, state) -> None:
        metadata = plain_metadata(state.get("_metadata")) if isinstance(state, dict) else None
        if metadata is not None:
            self._metadata = metadata


def open_torch_file(path: str, file: ByteSource | None = None) -> SourceTree:
    """The source tree of a ``torch.save`` file, reading only its pickle; `file` is its
    handle when the caller has opened it already."""
    file = file or open_handle(path)
    archive = _open_archive(file)
    pickle_name = _pickle_record(path, archive)
    prefix = pickle_name[: -len("data.pkl")]
    byteorder = _record_text(archive, prefix + "byteorder")
    if byteorder not in (None, "little"):
        raise SourceError(f"{path}: tensors are stored {byteorder}-endian; structload reads little-endian files only")
    data = _read_pickle(path, archive, pickle_name)
    unpickler = _WeightsUnpickler(file, archive, prefix)

    def unpickle():
        scan(data)  # first: a memo index the C unpickler would allocate gigabytes for is refused
        return unpickler.load_from(data)

    try:
        return tree_of_pickle(path, file, unpickler, unpickle, "torch")
    finally:  # the archive's handle on the file is not kept past opening
        archive.close()


def tree_of_pickle(path: str, file: ByteSource, unpickler: _WeightsUnpickler, unpickle, format: str) -> SourceTree:
    """The source tree of what `unpickle()` returns (through `unpickler`), with the types of the
    pickle's objects that were not imported; whatever goes wrong is a `SourceError` naming `path`.
    Shared with the legacy format (`structload.sources.formats.torch_legacy`)."""
    try:
        unpickled = unpickle()
        pickled = types_in(unpickled) if unpickler.placeholders else {}
        versions = versions_in(unpickled)  # state dicts' _metadata, for modules' own loading code
        tree = tree_from_object(unpickled)
    except (_Refused, PickleRefused) as refused:
        raise SourceError(f"{path}: {refused}") from None
    except SourceError:
        raise
    except Exception as error:  # a corrupt pickle can fail in many ways; none may escape raw
        raise SourceError(f"{path}: the pickle data is corrupt ({type(error).__name__}: {error})") from None
    finally:  # the memo holds the unpickler's bound methods (a cycle through it): freed now, not by the collector
        unpickler.memo.clear()
    if isinstance(tree, BadLeaf):
        raise SourceError(f"{path}: nothing to load: the pickle holds {tree.reason}")
    return SourceTree(tree, SourceInfo(path, format, (file,), pickled, versions))


def _open_archive(file: ByteSource) -> zipfile.ZipFile:
    path = file.path
    magic = file.read_bytes(0, min(4, file.size))
    if magic != b"PK\x03\x04":
        if file.size == 0:
            raise SourceError(f"{path}: the file is empty")
        raise NotZipArchive(
            f"{path}: not a torch.save file: neither a zip archive nor the legacy format "
            "(a damaged legacy torch.save file, or not a checkpoint at all)"
        )
    return open_zip(file, "torch.save file")


def _pickle_record(path: str, archive: zipfile.ZipFile) -> str:
    names = [n for n in archive.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
    if len(names) != 1:
        raise SourceError(f"{path}: no '<archive>/data.pkl' record; not a torch.save file")
    return names[0]


def _read_pickle(path: str, archive: zipfile.ZipFile, name: str) -> bytes:
    """The pickle's bytes, never more than `MAX_PICKLE_BYTES` whatever the archive declares."""
    info = archive.getinfo(name)
    if info.file_size > MAX_PICKLE_BYTES:
        raise SourceError(f"{path}: '{name}' declares {info.file_size} bytes, over the {MAX_PICKLE_BYTES}-byte limit")
    try:
        with archive.open(info) as stream:
            data = stream.read(MAX_PICKLE_BYTES + 1)
    except Exception as error:  # zlib.error, BadZipFile, NotImplementedError, ...
        raise SourceError(f"{path}: cannot read '{name}' from the archive ({error})") from None
    if len(data) > MAX_PICKLE_BYTES:
        raise SourceError(f"{path}: '{name}' is over the {MAX_PICKLE_BYTES}-byte limit")
    return data


def _record_text(archive: zipfile.ZipFile, name: str) -> str | None:
    """A small text record (``byteorder``), or ``None`` when absent or unreadable."""
    try:
        with archive.open(name) as stream:
            return stream.read(64).decode("ascii", "replace").strip()
    except Exception:  # absent or unreadable: the archive's other checks will say what is wrong
        return None


class _WeightsUnpickler(pickle.Unpickler):
    """Unpickles ``data.pkl`` running no code: allowed globals are data, all others placeholders."""

    def __init__(self, file: ByteSource, archive: zipfile.ZipFile, prefix: str):
        self.file, self.archive, self.prefix = file, archive, prefix
        self.storages: dict[str, _Storage] = {}
        self.placeholders: dict[tuple[str, str], PickledType] = {}

    def load_from(self, data: bytes):
        super().__init__(io.BytesIO(data))
        return self.load()

    def find_class(self, module: str, name: str):
        module, name = _python3_name(str(module), str(name))
        allowed = _allowed_global(module, name, self)
        if allowed is not None:
            return allowed
        key = (module, name)
        if key not in self.placeholders:
            if len(self.placeholders) >= MAX_PLACEHOLDER_TYPES:
                raise _Refused(f"the pickle names over {MAX_PLACEHOLDER_TYPES} distinct classes and functions")
            self.placeholders[key] = placeholder_type(*key)
        return self.placeholders[key]

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise _Refused(f"unknown persistent id {pid!r}")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType) or not isinstance(numel, int):
            raise _Refused(f"invalid storage reference {pid!r}")
        return self._storage(str(key), storage_type.dtype, numel)

    def _storage(self, key: str, dtype: torch.dtype, numel: int) -> _Storage:
        if key not in self.storages:
            name = f"{self.prefix}data/{key}"
            try:
                info = self.archive.getinfo(name)
            except KeyError:
                raise SourceError(f"{self.file.path}: storage record '{name}' is missing from the archive") from None
            if info.compress_type != zipfile.ZIP_STORED:
                raise SourceError(
                    f"{self.file.path}: storage record '{name}' is compressed; torch.save never does that"
                )
            offset = record_data_offset(self.file, info)
            nbytes = numel * dtype.itemsize
            if info.file_size < nbytes or offset + nbytes > self.file.size:
                raise SourceError(
                    f"{self.file.path}: storage record '{name}' holds {info.file_size} bytes, "
                    f"{nbytes} expected, or runs past the end of the file"
                )
            self.storages[key] = _Storage(offset, nbytes, dtype, key)
        return self.storages[key]

    # Stand-ins for torch._utils' rebuild functions: lazy leaves instead of tensors.

    def rebuild_tensor_v2(self, storage, storage_offset, size, stride, requires_grad=False, hooks=None, metadata=None):
        if not isinstance(storage, _Storage):
            raise _Refused("a tensor refers to an invalid storage")
        return self.lazy_tensor(storage, storage_offset, size, stride, storage.dtype)

    def rebuild_tensor_v3(self, storage, storage_offset, size, stride, requires_grad, hooks, dtype, metadata=None):
        if not isinstance(dtype, torch.dtype):
            raise _Refused("a tensor has an invalid dtype")
        return self.lazy_tensor(storage, storage_offset, size, stride, dtype)

    def rebuild_parameter(self, data, requires_grad=False, hooks=None, state=None):
        if not isinstance(data, FileTensor):
            raise _Refused("a parameter wraps something that is not a tensor")
        return data

    def rebuild_from_type(self, function, new_type, args, state):
        """``torch._tensor._rebuild_from_type_v2``: a tensor subclass; its values are ``function(*args)``
        when that is an allowed rebuild, its Python type and state are not kept."""
        if not isinstance(function, _Allowed) or not isinstance(args, tuple):
            raise _Refused("a tensor subclass is rebuilt by a function that is not allowed")
        return function(*args)

    def lazy_tensor(self, storage: _Storage, storage_offset, size, stride, dtype: torch.dtype) -> FileTensor:
        if not isinstance(storage, _Storage) or not isinstance(storage_offset, int):
            raise _Refused("a tensor refers to an invalid storage")
        size, stride = tuple(size), tuple(stride)
        if len(size) != len(stride) or not all(isinstance(n, int) and n >= 0 for n in size):
            raise _Refused(f"a tensor has an invalid shape {size} or stride {stride}")
        start = storage_offset * dtype.itemsize
        span = 0 if math.prod(size) == 0 else 1 + sum((n - 1) * s for n, s in zip(size, stride))
        if storage_offset < 0 or any(s < 0 for s in stride) or start + span * dtype.itemsize > storage.nbytes:
            raise SourceError(
                f"{self.file.path}: a tensor of shape {size} reaches past the end of its storage record '{storage.key}'"
            )
        return _UnpickledTensor(self.file, storage.offset + start, size, dtype, stride)


def _python3_name(module: str, name: str) -> tuple[str, str]:
    """The Python 3 name of a Python 2 global (protocol 2 writes ``__builtin__.set``), as
    ``pickle``'s own ``find_class`` maps it; names only, nothing is imported."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[module, name]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


def _allowed_global(module: str, name: str, unpickler: _WeightsUnpickler):
    """What an allowed pickle global resolves to, or ``None``. Exact names only: a protocol-4
    dotted name (``OrderedDict.__init__``) is not an attribute walk, just another unknown name."""
    if module == "collections" and name == "OrderedDict":
        return _Allowed(_OrderedDict)
    if module == "builtins" and name in _SAFE_BUILTINS:
        return _Allowed(getattr(builtins, name))
    if module == "_codecs" and name == "encode":
        return _Allowed(_latin1_encode)
    if module in ("torch", "torch.storage") and name in _LEGACY_STORAGES:
        return _StorageType(_LEGACY_STORAGES[name])
    if module == "torch" and name in _DTYPES:
        return _DTYPES[name]  # torch.dtype objects: immutable, not callable
    if module == "torch" and name in ("device", "Size"):
        return _Allowed(getattr(torch, name))
    if (module, name) in _TORCH_REBUILDERS:
        return _Allowed(getattr(unpickler, _TORCH_REBUILDERS[module, name]))
    return None


#: ``torch.float32`` and the rest, by name (read from the module's dict: no lazy submodule import).
_DTYPES = {name: value for name, value in vars(torch).items() if isinstance(value, torch.dtype)}

#: torch functions a pickle may call, and the unpickler method standing in for each.
_TORCH_REBUILDERS = {
    ("torch._utils", "_rebuild_tensor_v2"): "rebuild_tensor_v2",
    ("torch._utils", "_rebuild_tensor_v3"): "rebuild_tensor_v3",
    ("torch._utils", "_rebuild_parameter"): "rebuild_parameter",
    ("torch._utils", "_rebuild_parameter_with_state"): "rebuild_parameter",
    ("torch._tensor", "_rebuild_from_type_v2"): "rebuild_from_type",
}


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for ``bytes``; latin-1 only."""
    if not isinstance(text, str) or encoding != "latin1":
        raise _Refused("_codecs.encode is allowed for latin-1 bytes only")
    return text.encode("latin1")
