"""`SourceTree`: what `structload.open` returns, a lazy tree you can index and pass to `load`."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping

from .._report import SourceError
from ._files import FileHandle, file_handles
from ._leaves import ABSENT, SKIP, BadLeaf, ExtraState, MemoryTensor, SourceTensor, Value, iter_leaves


class SourceTree(Mapping):
    """A subtree of a source, read lazily: index it by name, iterate it, inspect it, load it.

    ``tree["model"]["encoder"]`` and ``tree["model.encoder"]`` give the same
    subtree; a tensor comes back as a lazy leaf with ``shape``, ``dtype``,
    ``nbytes`` and ``read()``. Nothing but metadata is read until a load (or
    ``read()``) needs the data. Other values come back as they are, read-only:
    numbers and strings, and objects of a torch file's pickle that structload
    did not import as `structload.Pickled` (``tree["hyper_parameters"].lr``).
    """

    def __init__(self, node: dict, origin: str = "", path: str = ""):
        self.node = node
        self.origin = origin
        self.path = path

    def __getitem__(self, key: str):
        node, path = self.node, self.path
        for part in str(key).split("."):
            if type(node) is not dict or part not in node:
                raise KeyError(self._no_such(key, node))
            node = node[part]
            path = f"{path}.{part}" if path else part
        if type(node) is dict:
            return SourceTree(node, self.origin, path)
        if node is SKIP:
            return None
        if node is ABSENT:
            return False
        if isinstance(node, (ExtraState, Value)):
            return node.value
        if isinstance(node, MemoryTensor) and node.number is not None:
            return node.number
        return node

    def _no_such(self, key, node) -> str:
        where = f"'{self.path}' of {self.origin}" if self.path else self.origin or "the source"
        names = ", ".join(list(node)[:10]) if type(node) is dict else "a leaf"
        return f"'{key}' is not in {where} (it holds: {names})"

    def __iter__(self) -> Iterator[str]:
        return iter(self.node)

    def __len__(self) -> int:
        return len(self.node)

    @property
    def types(self) -> dict[str, str]:
        """Dotted path (below this subtree) -> type name of each object of a torch file's pickle
        that was not imported: a whole pickled model's modules, a config object.

        >>> import torch, structload as sl
        >>> sl.open({"w": torch.zeros(1)}).types
        {}
        """
        found: dict[str, str] = {}
        if not FileHandle.holding_pickled_types:  # no file open has any: no pass over the leaves
            return found
        for handle in file_handles(self.node):
            found.update(handle.pickled_types)
        if not self.path:
            return found
        prefix = self.path + "."
        return {p[len(prefix) :]: t for p, t in found.items() if p.startswith(prefix)} | (
            {"": found[self.path]} if self.path in found else {}
        )

    def tensors(self) -> dict[str, SourceTensor]:
        """Every tensor below, by dotted path relative to this subtree."""
        return {p: leaf for p, leaf in iter_leaves(self.node) if isinstance(leaf, SourceTensor)}

    @property
    def nbytes(self) -> int:
        return sum(leaf.nbytes for leaf in self.tensors().values())

    def __repr__(self) -> str:
        where = os.path.basename(self.origin) if self.origin else "memory"
        inside = f"['{self.path}']" if self.path else ""
        return f"<SourceTree {where}{inside}: {len(self.tensors())} tensors, {self.nbytes:,} bytes>"


def open_source(src) -> SourceTree:
    """The lazy source tree of a checkpoint file, index, directory, or any in-memory source.

    Examples:
        >>> import torch, structload as sl
        >>> tree = sl.open({"model": {"fc.weight": torch.zeros(2, 3)}, "epoch": 3})
        >>> list(tree), tree["model"]["fc"]["weight"].shape, tree["model.fc.weight"].dtype
        (['model', 'epoch'], (2, 3), torch.float32)
    """
    from . import to_source_tree

    if isinstance(src, SourceTree):
        return src
    origin = os.fspath(src) if isinstance(src, (str, os.PathLike)) else ""
    node = to_source_tree(src)
    if type(node) is not dict and origin:
        what = node.reason if isinstance(node, BadLeaf) else "a single tensor"
        raise SourceError(f"{origin}: holds {what}, not a tree of tensors", path="")
    if type(node) is not dict:
        raise TypeError(f"structload.open: a {type(src).__name__} is a single value, not a tree")
    return SourceTree(node, origin)
