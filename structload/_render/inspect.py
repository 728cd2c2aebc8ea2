"""Drawing a checkpoint's contents for `structload inspect`: a tree with totals.

Each tensor shows its shape, dtype and size; each subtree its tensor count,
parameter count and bytes. Below ``depth`` subtrees fold into one line, and
numbered siblings with identical contents (``h.0–11``) are drawn once.
"""

from __future__ import annotations

import math

from rich.text import Text
from rich.tree import Tree

from .text import dtype_text, human_bytes, human_count, plural, shape_text
from .tree import node_at, numbered_run_end


class _Totals:
    __slots__ = ("children", "info", "nbytes", "params", "signature", "tensors", "type_name")

    def __init__(self):
        self.children: dict[str, _Totals] = {}
        self.info = None
        self.type_name = ""  # the type of a pickled object that was not imported (a module of a whole model)
        self.tensors = self.params = self.nbytes = 0
        self.signature: tuple = ()


def _totals(infos: dict, types: dict[str, str]) -> _Totals:
    root = _Totals()
    for path, info in infos.items():
        node_at(root, path, _Totals).info = info
    for path, name in types.items():
        node = root if not path else node_at(root, path, _Totals)
        node.type_name = name
    _add_up(root)
    return root


def _add_up(node: _Totals) -> None:
    if node.info is not None:
        node.tensors, node.params, node.nbytes = 1, math.prod(node.info.shape), node.info.nbytes
    for child in node.children.values():
        _add_up(child)
        node.tensors += child.tensors
        node.params += child.params
        node.nbytes += child.nbytes
    leaf = (tuple(node.info.shape), str(node.info.dtype)) if node.info is not None else None
    node.signature = (leaf, node.type_name, tuple((name, c.signature) for name, c in node.children.items()))


def _totals_text(node: _Totals) -> str:
    return f"{plural(node.tensors, 'tensor')}, {human_count(node.params)} params, {human_bytes(node.nbytes)}"


def _branch_text(label: str, node: _Totals, each: str) -> Text:
    text = Text(label, style="bold")
    if node.type_name:
        text.append(f"  {node.type_name}", style="magenta")
    text.append(f"  ({_totals_text(node)}{each})", style="bold")
    return text


def _leaf_text(name: str, info) -> Text:
    text = Text(name + "  ")
    text.append(shape_text(info.shape), style="cyan")
    text.append(f"  {dtype_text(info.dtype)}", style="green")
    text.append(f"  {human_bytes(info.nbytes)}", style="dim")
    return text


def inspect_tree(infos: dict, title: str, depth: int | None = None, types: dict[str, str] | None = None) -> Tree:
    """A checkpoint's tensors as a tree: shape, dtype and size per tensor, totals per subtree,
    folded below `depth` and where numbered siblings are alike. `types` names the pickled
    objects that were not imported (``SourceTree.types``); the note under the title says so."""
    types = types or {}
    root = _totals(infos, types)
    tree = Tree(_branch_text(title, root, ""))
    if types:
        tree.add(Text("type names: objects of the pickle, read without importing or running their code", style="dim"))
    _inspect_children(tree, root, depth, 1)
    return tree


def _inspect_children(tree: Tree, node: _Totals, depth: int | None, level: int) -> None:
    items = list(node.children.items())
    i = 0
    while i < len(items):
        name, child = items[i]
        j = numbered_run_end(items, i, lambda k, first: items[k][1].signature == items[first][1].signature)
        label = name if j == i + 1 else f"{name}–{items[j - 1][0]}"
        if child.info is not None and not child.children:
            tree.add(_leaf_text(label, child.info))
        elif depth is not None and level >= depth:
            tree.add(_branch_text(label, child, " each" if j > i + 1 else ""))
        else:
            branch = tree.add(_branch_text(label, child, ", each alike" if j > i + 1 else ""))
            _inspect_children(branch, child, depth, level + 1)
        i = j
