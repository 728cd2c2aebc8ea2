"""Hugging Face style sharded checkpoints: ``*.index.json`` and directories holding one.

The index (``{"weight_map": {tensor name: shard file}}``) is enough to build
the source tree; a shard is opened (its header or pickle read) only when the
walk first asks for the shape of one of its tensors, so shards holding only
excluded tensors are never opened.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch

from ..._report import SourceError
from .._io import paths
from .._io.remote import is_url
from .._leaves import SourceTensor
from ..nesting import insert, numbered_in_order
from ..tree import SourceInfo, SourceTree
from .json_keys import refuse_duplicate_keys

#: Checkpoint files a directory is searched for, in order of preference.
DIRECTORY_FILES = (
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
    "model.safetensors",
    "pytorch_model.bin",
)


def find_in_directory(directory: str) -> str:
    """The checkpoint file a directory stands for (an index, or a single weights file)."""
    for name in DIRECTORY_FILES:
        candidate = paths.join(directory, name)
        if paths.isfile(candidate):
            return candidate
    entries = sorted(paths.listdir(directory))
    for suffix in (".index.json", ".safetensors"):
        matches = [e for e in entries if e.endswith(suffix)]
        if len(matches) == 1:
            return paths.join(directory, matches[0])
    shown = ", ".join(entries[:8]) + (", ..." if len(entries) > 8 else "") or "nothing"
    raise SourceError(
        f"{directory}: a directory with no checkpoint structload can pick "
        f"(looked for {', '.join(DIRECTORY_FILES)} or a single *.index.json / *.safetensors; found {shown})"
    )


class Shard:
    """One shard file, opened on first use."""

    def __init__(self, path: str, index: str):
        self.path, self.index = path, index
        self._tree: dict | None = None

    def leaf(self, name: str) -> SourceTensor:
        from .dispatch import open_file  # the format is the shard's own

        if self._tree is None:
            self._tree = open_file(self.path).node
        node: Any = self._tree
        for part in name.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, SourceTensor):
            raise SourceError(f"{self.index}: the index puts '{name}' in {self.path}, which does not hold it")
        return node


class ShardTensor(SourceTensor):
    """A tensor of a sharded checkpoint; its shard is opened when its metadata is first needed."""

    __slots__ = ("_leaf", "name", "shard")

    def __init__(self, shard: Shard, name: str):
        self.shard, self.name = shard, name
        self._leaf: SourceTensor | None = None

    def resolve(self) -> SourceTensor:
        if self._leaf is None:
            self._leaf = self.shard.leaf(self.name)
        return self._leaf

    shape = property(lambda self: self.resolve().shape)
    dtype = property(lambda self: self.resolve().dtype)

    def read(self) -> torch.Tensor:
        return self.resolve().read()

    def read_into(self, target: torch.Tensor) -> None:
        self.resolve().read_into(target)

    def read_slice_into(self, target: torch.Tensor, starts, sizes) -> None:
        self.resolve().read_slice_into(target, starts, sizes)

    def same_data(self, other: SourceTensor) -> bool:
        other = other.resolve() if isinstance(other, ShardTensor) else other
        return self.resolve().same_data(other)

    def __repr__(self) -> str:
        return f"ShardTensor({self.name!r} in {paths.basename(self.shard.path)})"


#: Index files larger than this are refused (a 100k-tensor index is about 10 MB).
MAX_INDEX_BYTES = 256 << 20


def open_index(path: str) -> SourceTree:
    """The source tree of a sharded checkpoint, from its index alone (no shard opened yet)."""
    weight_map = _read_weight_map(path)
    directory = paths.dirname(path)
    shards: dict[str, Shard] = {}
    tree: dict = {}
    for name, filename in weight_map.items():
        shard = shards.get(filename)
        if shard is None:
            shard_path = paths.join(directory, filename)
            # a local shard is looked up now (a stat); a remote one when first opened, so that a load
            # needing one shard sends no request for the others
            if not is_url(shard_path) and not paths.isfile(shard_path):
                raise SourceError(f"{path}: shard '{filename}' (holding '{name}') does not exist")
            shard = shards[filename] = Shard(shard_path, path)
        insert(tree, name, ShardTensor(shard, name))
    return SourceTree(numbered_in_order(tree), SourceInfo(path, "index"))


def _read_weight_map(path: str) -> dict[str, str]:
    try:
        raw = paths.read_small(path, MAX_INDEX_BYTES)
        index = json.loads(raw.decode("utf-8"), object_pairs_hook=refuse_duplicate_keys)
    except OSError as error:
        raise SourceError(f"{path}: cannot read the index ({error.strerror})") from None
    except (ValueError, RecursionError) as error:  # UnicodeDecodeError is a ValueError
        raise SourceError(f"{path}: not a valid checkpoint index ({error})") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise SourceError(f"{path}: not a valid checkpoint index (no 'weight_map' of tensor name -> shard file)")
    for filename in set(weight_map.values()):
        if os.path.isabs(filename) or ".." in filename.replace("\\", "/").split("/"):
            raise SourceError(f"{path}: shard '{filename}' lies outside the index's directory")
    return weight_map
