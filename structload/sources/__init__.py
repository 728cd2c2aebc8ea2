"""Sources: every kind of input becomes one nested tree of lazy leaves.

`to_source_tree` is the single entry point (`open_tree` when the caller wants
what the source knows about itself too, a `SourceTree`); each input kind lives in its own
module: `memory` (tensors, arrays, numbers, pytrees), `module` (``nn.Module``),
`safetensors_file`, `torch_file`, `sharded` (index files and directories) and
`dcp` (``torch.distributed.checkpoint`` directories); `formats.open_file`
picks the file format from the name, or from the first bytes. How a load reads
(its read session) is `reading`'s business.
"""

from __future__ import annotations

import os

from ._leaves import ABSENT, SKIP, BadLeaf, ConvertedTensor, ExtraState, MemoryTensor, SourceTensor, iter_leaves
from .formats.dispatch import open_file
from .memory import tree_from_object
from .tree import SourceInfo, SourceTree

__all__ = [
    "ABSENT",
    "SKIP",
    "BadLeaf",
    "ConvertedTensor",
    "ExtraState",
    "MemoryTensor",
    "SourceInfo",
    "SourceTensor",
    "SourceTree",
    "iter_leaves",
    "open_file",
    "open_tree",
    "to_source_tree",
]


def to_source_tree(src):
    """The nested source tree (dicts and lazy leaves) for anything `load` accepts as `src`."""
    if isinstance(src, (str, os.PathLike)):
        return open_file(os.fspath(src)).node
    if isinstance(src, SourceTree):
        return src.node
    return tree_from_object(src)


def open_tree(src) -> SourceTree:
    """`src` as a `SourceTree` that carries what its source knows about itself (`SourceInfo`):
    a file's tree with its origin, open files and pickled types; an in-memory object's with nothing.

    >>> import torch
    >>> tree = open_tree({"fc.weight": torch.zeros(2)})
    >>> list(tree.node["fc"]), tree.info.format
    (['weight'], 'memory')
    """
    if isinstance(src, (str, os.PathLike)):
        return open_file(os.fspath(src))
    if isinstance(src, SourceTree):
        return src
    return SourceTree(tree_from_object(src))
