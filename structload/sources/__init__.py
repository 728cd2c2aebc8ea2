"""Sources: every kind of input becomes one nested tree of lazy leaves.

`to_source_tree` is the single entry point; each input kind lives in its own
module: `memory` (tensors, arrays, numbers, pytrees), `module` (``nn.Module``),
`safetensors_file`, `torch_file`, `sharded` (index files and directories) and
`dcp` (``torch.distributed.checkpoint`` directories).
`open_file` picks the file format from the name, or from the first bytes.
"""

from __future__ import annotations

import os

from .._report import SourceError
from ._leaves import ABSENT, SKIP, BadLeaf, ExtraState, MemoryTensor, SourceTensor, count_tensors, iter_leaves
from .dcp import is_dcp_directory, open_dcp
from .memory import tree_from_object
from .safetensors_file import open_safetensors
from .sharded import find_in_directory, open_index
from .torch_file import open_torch_file
from .tree import SourceTree

__all__ = [
    "ABSENT",
    "SKIP",
    "BadLeaf",
    "ExtraState",
    "MemoryTensor",
    "SourceTensor",
    "count_tensors",
    "iter_leaves",
    "open_file",
    "to_source_tree",
]

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


def to_source_tree(src):
    """The nested source tree (dicts and lazy leaves) for anything `load` accepts as `src`."""
    if isinstance(src, (str, os.PathLike)):
        return open_file(os.fspath(src))
    if isinstance(src, SourceTree):
        return src.node
    return tree_from_object(src)


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
