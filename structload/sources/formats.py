"""Which reader opens a path: by its name, or by its first bytes."""

from __future__ import annotations

import os

from .._report import SourceError
from .dcp import is_dcp_directory, open_dcp
from .safetensors_file import open_safetensors
from .sharded import find_in_directory, open_index
from .torch_file import open_torch_file

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


def open_file(path: str) -> dict:
    """Open a checkpoint file, index or directory as a lazy source tree; reads metadata only."""
    if os.path.isdir(path):
        if is_dcp_directory(path):
            return open_dcp(path)
        path = find_in_directory(path)
    elif not os.path.exists(path):
        raise SourceError(f"{path}: no such file or directory")
    if path.endswith(".index.json"):
        return open_index(path)
    if path.endswith(".safetensors"):
        return open_safetensors(path)
    if path.endswith(TORCH_SUFFIXES):
        return open_torch_file(path)
    return _open_by_content(path)


def _open_by_content(path: str) -> dict:
    try:
        with open(path, "rb") as stream:
            head = stream.read(9)
    except OSError as error:
        raise SourceError(f"{path}: cannot read ({error.strerror})") from None
    if head.startswith(b"PK\x03\x04"):
        return open_torch_file(path)
    if len(head) == 9 and head[8:9] == b"{":
        return open_safetensors(path)
    raise SourceError(
        f"{path}: unknown checkpoint format (expected .safetensors, a torch.save file "
        f"({', '.join(TORCH_SUFFIXES)}), a *.index.json or a directory holding one)"
    )
