"""Sources: every kind of input becomes one nested tree of lazy leaves.

`to_source_tree` is the single entry point; each input kind lives in its own
module (`memory` for tensors, arrays, numbers and pytrees; `module` for
``nn.Module``). A file format is one more module and one more branch here.
"""

from __future__ import annotations

import os

from .._report import SourceError
from ._leaves import ABSENT, SKIP, BadLeaf, ExtraState, MemoryTensor, SourceTensor, count_tensors, iter_leaves
from .memory import tree_from_object

__all__ = [
    "ABSENT",
    "SKIP",
    "BadLeaf",
    "ExtraState",
    "MemoryTensor",
    "SourceTensor",
    "count_tensors",
    "iter_leaves",
    "to_source_tree",
]


def to_source_tree(src):
    """The nested source tree (dicts and lazy leaves) for anything `load` accepts as `src`."""
    if isinstance(src, (str, os.PathLike)):
        raise SourceError(f"{os.fspath(src)}: loading from files is not supported yet", path="")
    return tree_from_object(src)
