"""Sources: every kind of input becomes one nested tree of lazy leaves.

`to_source_tree` is the single entry point; each input kind lives in its own
module: `memory` (tensors, arrays, numbers, pytrees), `module` (``nn.Module``),
`safetensors_file`, `torch_file`, `sharded` (index files and directories) and
`dcp` (``torch.distributed.checkpoint`` directories); `formats.open_file`
picks the file format from the name, or from the first bytes.
"""

from __future__ import annotations

import os

from ._leaves import ABSENT, SKIP, BadLeaf, ExtraState, MemoryTensor, SourceTensor, iter_leaves
from .formats import open_file
from .memory import tree_from_object
from .tree import SourceTree

__all__ = [
    "ABSENT",
    "SKIP",
    "BadLeaf",
    "ExtraState",
    "MemoryTensor",
    "SourceTensor",
    "iter_leaves",
    "open_file",
    "to_source_tree",
]


def to_source_tree(src):
    """The nested source tree (dicts and lazy leaves) for anything `load` accepts as `src`."""
    if isinstance(src, (str, os.PathLike)):
        return open_file(os.fspath(src))
    if isinstance(src, SourceTree):
        return src.node
    return tree_from_object(src)
