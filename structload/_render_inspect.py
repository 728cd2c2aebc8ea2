"""Drawing a checkpoint's contents for `structload inspect`: a tree with totals.

Each tensor shows its shape, dtype and size; each subtree its tensor count,
parameter count and bytes. Below ``depth`` subtrees fold into one line, and
numbered siblings with identical contents (``h.0–11``) are drawn once.
"""

from __future__ import annotations

import math

from rich.text import Text
from rich.tree import Tree

from ._render_tree import node_at, numbered_run_end
from ._text import dtype_text, human_bytes, human_count, plural, shape_text


class _Totals:
    __slots__ = ("children", "info", "nbytes", "params", "signature", "tensors")

    def __init__(self):
        self.children: dict[str, _Totals] = {}
        self.info = None
        self.tensors = self.params = self.nbytes = 0
        self.signature: tuple = ()


def _totals(infos: dict) -> _Totals:
    root = _Totals()
    for path, info in infos.items():
        node_at(root, path, _Totals).info = info
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
    node.signature = (leaf, tuple((name, c.signature) for name, c in node.children.items()))


def _totals_text(node: _Totals) -> str:
    return f"{plural(node.tensors, 'tensor')}, {human_count(node.params)} params, {human_bytes(node.nbytes)}"


def _leaf_text(name: str, info) -> Text:
    text = Text(name + "  ")
    text.append(shape_text(info.shape), style="cyan")
    text.append(f"  {dtype_text(info.dtype)}", style="green")
    text.append(f"  {human_bytes(info.nbytes)}", style="dim")
    return text


def inspect_tree(infos: dict, title: str, depth: int | None = None) -> Tree:
    """A checkpoint's tensors as a tree: shape, dtype and size per tensor, totals per subtree,
    folded below `depth` and where numbered siblings are alike."""
    root = _totals(infos)
    tree = Tree(Text(f"{title}  ({_totals_text(root)})", style="bold"))
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
            each = " each" if j > i + 1 else ""
            tree.add(Text(f"{label}  ({_totals_text(child)}{each})", style="bold"))
        else:
            each = ", each alike" if j > i + 1 else ""
            branch = tree.add(Text(f"{label}  ({_totals_text(child)}{each})", style="bold"))
            _inspect_children(branch, child, depth, level + 1)
        i = j
