"""`SourceTree`: what `structload.open` returns, a lazy tree you can index and pass to `load`.

A source tree carries what its source knows about itself (`SourceInfo`): where
it came from, the files opening it opened, and what its format learned while
opening it (the types of a pickle's objects that were not imported). Every
format reader returns one; `load` hands it to the plan, whose report reads the
pickled types from there.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Mapping
from typing import Any

from .._report import SourceError
from ._leaves import ABSENT, SKIP, BadLeaf, ExtraState, MemoryTensor, SourceTensor, Value, iter_leaves


@dataclasses.dataclass(frozen=True)
class SourceInfo:
    """What a source knows about itself, learned while opening it (nothing, for one in memory).

    >>> SourceInfo("model.pt", "torch", pickled={"config": "argparse.Namespace"}).pickled["config"]
    'argparse.Namespace'
    """

    origin: str = ""  # the path or URL opened; "" for an in-memory source
    format: str = "memory"  # "safetensors", "torch", "torch legacy", "npz", "index", "dcp" or "memory"
    #: What opening it opened and its tensors read from: files (`structload.sources._io.byte_source.ByteSource`),
    #: a DCP directory. The shards of a sharded checkpoint open when first read, so are not among them.
    files: tuple[object, ...] = ()
    #: Dotted path -> type name of each object of a torch file's pickle that was not imported.
    pickled: Mapping[str, str] = dataclasses.field(default_factory=dict)
    #: Module path -> its entry of ``state_dict()._metadata`` (``{"version": 2}``), from every state
    #: dict a torch file's pickle holds (`structload.sources.formats.versions`), for modules' own loading code.
    versions: Mapping[str, Mapping] = dataclasses.field(default_factory=dict)


#: An in-memory source's: it knows nothing about itself.
IN_MEMORY = SourceInfo()


class SourceTree(Mapping):
    """A subtree of a source, read lazily: index it by name, iterate it, inspect it, load it.

    ``tree["model"]["encoder"]`` and ``tree["model.encoder"]`` give the same
    subtree; a tensor comes back as a lazy leaf with ``shape``, ``dtype``,
    ``nbytes`` and ``read()``. Nothing but metadata is read until a load (or
    ``read()``) needs the data. Other values come back as they are, read-only:
    numbers and strings, and objects of a torch file's pickle that structload
    did not import as `structload.Pickled` (``tree["hyper_parameters"].lr``).
    """

    def __init__(self, node: Any, info: SourceInfo = IN_MEMORY, path: str = ""):
        self.node = node  # a dict; a file holding one tensor is that leaf here, which `structload.open` refuses
        self.info = info
        self.path = path

    @property
    def origin(self) -> str:
        """The path or URL this tree was opened from ("" in memory)."""
        return self.info.origin

    def __getitem__(self, key: str):
        node, path = self.node, self.path
        for part in str(key).split("."):
            if type(node) is not dict or part not in node:
                raise KeyError(self._no_such(key, node))
            node = node[part]
            path = f"{path}.{part}" if path else part
        if type(node) is dict:
            return SourceTree(node, self.info, path)
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
        found = self.info.pickled
        if not self.path:
            return dict(found)
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
    from . import open_tree

    if isinstance(src, SourceTree):
        return src
    tree = open_tree(src)
    node, origin = tree.node, tree.origin
    if type(node) is not dict and origin:
        what = node.reason if isinstance(node, BadLeaf) else "a single tensor"
        raise SourceError(f"{origin}: holds {what}, not a tree of tensors", path="")
    if type(node) is not dict:
        raise TypeError(f"structload.open: a {type(src).__name__} is a single value, not a tree")
    return tree
