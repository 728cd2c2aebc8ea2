"""Which reader opens a path: by its name, or by its first bytes."""

from __future__ import annotations

import dataclasses

from ..._report import SourceError
from .._io import paths
from .._io.byte_source import ByteSource
from ..tree import SourceTree
from .dcp import is_dcp_directory, open_dcp
from .npz_file import open_npz
from .safetensors_file import open_safetensors
from .sharded import find_in_directory, open_index
from .torch_file import NotZipArchive, open_torch_file
from .torch_legacy import HEAD_BYTES, is_legacy_torch_file, open_legacy_torch_file

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


def open_file(path: str) -> SourceTree:
    """Open a checkpoint file, index or directory (local, or an fsspec URL) as a lazy source tree
    whose origin is `path`; reads metadata only."""
    tree = _open(path)
    if tree.origin == path:
        return tree
    return SourceTree(tree.node, dataclasses.replace(tree.info, origin=path))  # a directory: the file it holds


def _open(path: str) -> SourceTree:
    found = paths.kind(path)
    if found is None:
        raise SourceError(f"{path}: no such file or directory")
    if found == "directory":
        if is_dcp_directory(path):
            return open_dcp(path)
        path = find_in_directory(path)
    if path.endswith(".index.json"):
        return open_index(path)
    if path.endswith(".safetensors"):
        return open_safetensors(path)
    if path.endswith(TORCH_SUFFIXES):
        return _open_torch(path, paths.open_handle(path))
    if path.endswith(".npz"):
        return open_npz(path)
    return _open_by_content(path)


def _open_by_content(path: str) -> SourceTree:
    handle = paths.open_handle(path)
    head = handle.read_bytes(0, min(HEAD_BYTES, handle.size))
    if head.startswith(b"PK\x03\x04"):
        return open_npz(path, handle) if _holds_npy_arrays(handle) else open_torch_file(path, handle)
    if len(head) >= 9 and head[8:9] == b"{":
        return open_safetensors(path, handle)
    if is_legacy_torch_file(head):
        return open_legacy_torch_file(path, handle)
    raise SourceError(
        f"{path}: unknown checkpoint format (expected .safetensors, a torch.save file "
        f"({', '.join(TORCH_SUFFIXES)}), a numpy .npz file, a *.index.json or a directory holding one)"
    )


def _open_torch(path: str, handle: ByteSource) -> SourceTree:
    """A ``torch.save`` file: the zip format (its reader checks the zip magic first), else the
    legacy one (before PyTorch 1.6), known by its pickled magic number."""
    try:
        return open_torch_file(path, handle)
    except NotZipArchive as not_zip:
        head = handle.read_bytes(0, min(_TAR_MAGIC_END, handle.size))
        if is_legacy_torch_file(head):
            return open_legacy_torch_file(path, handle)
        if head[_TAR_MAGIC_END - 5 :] == b"ustar":
            raise SourceError(
                f"{path}: a tar-format torch.save file (the format of the earliest PyTorch releases), "
                "which structload does not read; convert a trusted one with "
                "torch.save(torch.load(path, weights_only=False), new_path)"
            ) from None
        raise not_zip


#: A tar archive has "ustar" at bytes 257..262.
_TAR_MAGIC_END = 262


def _holds_npy_arrays(handle: ByteSource) -> bool:
    """Whether a zip file is an ``.npz`` (``.npy`` records, no torch ``data.pkl``)."""
    try:
        with paths.zip_archive(handle) as archive:
            names = archive.namelist()
    except Exception:  # the torch reader says what is wrong with the archive
        return False
    return any(n.endswith(".npy") for n in names) and not any(n.endswith("data.pkl") for n in names)
