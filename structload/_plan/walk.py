"""The side-by-side walk: destination and source trees, node by node, pairing children by name.

Like Flux's ``loadmodel!``, the walk only pairs. At each destination container
it pairs the children with the source node's children by name:

- a destination slot gets the source leaf at its name (a `SlotPair`);
- a destination child the source lacks gets `Missing` (one marker for a whole
  missing subtree, so it can be reported once, at its root);
- a source leaf where the destination has a subtree gives every slot below a
  `Clash` marker;
- a source child the destination lacks is one `Unpaired` subtree.

It decides nothing (the rules do, `_rules.decide`), reads no tensor data and
applies no selection (`_select` marks what is excluded afterwards).

>>> import torch
>>> from structload.sources import to_source_tree
>>> found = walk(torch.nn.Linear(2, 3), to_source_tree({"weight": torch.zeros(3, 2), "scale": torch.ones(1)}))
>>> [(p.path, type(p.leaf).__name__) for p in found.pairs], [u.path for u in found.unpaired]
([('weight', 'MemoryTensor'), ('bias', 'Missing')], ['scale'])
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from torch.nn import Module

from ..sources import SKIP
from .customised import runs_own_code
from .dest import Slot, as_dest, dest_children, is_container
from .load_hooks import customises_loading, loads_its_own_way


class Missing:
    """The source has nothing for a slot; `root` is the destination path where it first diverges.

    `beside` tells whether the source node of the slot's own container exists
    and shares at least one name with it (a checkpoint of the same module that
    lacks this one entry: R3's bias rule reads it).
    """

    __slots__ = ("beside", "root")

    def __init__(self, root: str, beside: bool = False):
        self.root = root
        self.beside = beside


class Clash:
    """The source has a leaf (`found`) at `root` where the destination has a whole subtree."""

    __slots__ = ("found", "root")

    def __init__(self, root: str, found):
        self.root = root
        self.found = found


class SlotPair(NamedTuple):
    """A destination slot and what the source holds for it."""

    path: str
    slot: Slot
    leaf: Any  # a source leaf, or a `Missing` / `Clash` marker


@dataclass(frozen=True)
class Unpaired:
    """A source subtree (or leaf) at `path` with no destination counterpart; `position` is how many
    pairs came before it, to keep walk order. `beside` lists the destination names at that level
    the source did not fill (for "did you mean")."""

    path: str
    subtree: object
    position: int
    beside: tuple[str, ...] = ()


@dataclass
class Walk:
    """Every pairing the walk made, in module order."""

    pairs: list[SlotPair] = field(default_factory=list)
    unpaired: list[Unpaired] = field(default_factory=list)
    #: numbered containers (``ModuleList``, lists) whose source list has another length: path -> source length
    lengths: dict[str, int] = field(default_factory=dict)
    #: modules that customise loading: (path, module, what the source holds there, why: `_load_hooks.loads_its_own_way`,
    #: or ``None`` when structload runs their code: `_customised`)
    customised: list[tuple[str, Any, Any, str | None]] = field(default_factory=list)


def walk(dst, tree) -> Walk:
    """Walk `dst` and the source `tree` together and pair every destination slot."""
    root = as_dest(dst)
    if root is None:
        swapped = "; the destination comes first: load(model, path)" if isinstance(dst, (str, os.PathLike)) else ""
        raise TypeError(
            f"structload: cannot load into {type(dst).__name__}; expected a module, a tensor or a pytree of tensors"
            + swapped
        )
    found = Walk()
    if is_container(root):
        _pair_container(found, root, tree, "")
    else:
        found.pairs.append(SlotPair("", root, tree))
    return found


def _pair_container(found: Walk, node, src, path: str) -> None:
    child: Any
    if isinstance(node, Module) and customises_loading(node):
        reason = loads_its_own_way(node)
        if reason is not None or runs_own_code(node):  # a reason: a problem; none: its code runs
            found.customised.append((path, node, src, reason))
    kids = dest_children(node)
    if type(src) is not dict:  # no source subtree here: every slot below shares one marker
        _pair_all(found, kids, src if src is SKIP or isinstance(src, (Missing, Clash)) else Clash(path, src), path)
        return
    beside: bool | None = None  # whether the source fills any name here: worked out at the first gap
    unfilled = []
    prefix = f"{path}." if path else ""
    pairs = found.pairs
    for name, child in kids:
        child_path = prefix + name
        child_src = src.get(name, _NOTHING)
        is_slot = type(child) is Slot
        if child_src is _NOTHING:
            if beside is None:
                beside = any(name in src for name, _ in kids)
            child_src = Missing(child_path, beside and is_slot)
            unfilled.append(name)
        if is_slot:
            pairs.append(_new_pair(SlotPair, (child_path, child, child_src)))
        else:
            _pair_container(found, child, child_src, child_path)
    if not unfilled and len(src) == len(kids):  # every name paired both ways: no other length, nothing left over
        return
    known = {name for name, _ in kids}
    if _is_other_length_list(known, src):
        found.lengths[path] = len(src)
    for name, child_src in src.items():
        if name not in known:
            child_path = f"{path}.{name}" if path else name
            found.unpaired.append(Unpaired(child_path, child_src, len(found.pairs), tuple(unfilled)))


def _pair_all(found: Walk, kids, marker, path: str) -> None:
    for name, child in kids:
        child_path = f"{path}.{name}" if path else name
        if is_container(child):
            _pair_all(found, dest_children(child), marker, child_path)
        else:
            found.pairs.append(SlotPair(child_path, child, marker))


_NOTHING = object()
_new_pair = tuple.__new__  # `SlotPair(...)` without the NamedTuple's Python-level constructor (once per tensor)


def _is_other_length_list(known: set[str], src: dict) -> bool:
    """Whether destination and source are numbered lists ``0..n-1`` of different lengths."""
    return (
        len(src) != len(known)
        and bool(known)
        and known == {str(i) for i in range(len(known))}
        and set(src) == {str(i) for i in range(len(src))}
    )
