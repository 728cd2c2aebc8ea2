"""Paths in `align`: leaves grouped by numbered container, a block's tensor written for one block
(``h.3.attn.q.weight``) or for all (``h.*.attn.q.weight``, ``h.{0}.attn.q.weight``), and the check
that a set of rename rules sends every source path where the matches say.

>>> from structload._align.match import Leaf
>>> leaf = Leaf("h.0.attn.q.weight", (4, 4), "h", 0, "attn.q.weight")
>>> full_path(leaf, "h", 3), block_pattern(leaf, "h", [0, 1]), block_template("attn.q.weight", "h")
('h.3.attn.q.weight', 'h.*.attn.q.weight', 'h.{0}.attn.q.weight')
"""

from __future__ import annotations

import re

from .._rename import Renamer
from .match import Leaf


def parent(leaves: tuple[Leaf, ...]) -> str:
    """The module holding all of `leaves`' modules (``attn`` for ``attn.q``, ``attn.k``, ``attn.v``)."""
    parts = [leaf.module.split(".") for leaf in leaves]
    common = []
    for names in zip(*parts):
        if len(set(names)) != 1:
            break
        common.append(names[0])
    if all(len(p) == len(common) for p in parts):  # all in one module: its parent
        common = common[:-1]
    return ".".join(common)


def by_container(leaves: list[Leaf]) -> tuple[dict[str, dict[int, list[Leaf]]], list[Leaf]]:
    blocks: dict[str, dict[int, list[Leaf]]] = {}
    top = []
    for leaf in leaves:
        if leaf.container is None:
            top.append(leaf)
        else:
            blocks.setdefault(leaf.container, {}).setdefault(leaf.index or 0, []).append(leaf)
    return blocks, top


def named_stages(containers) -> set[str]:
    """The numbered containers that are stages named by number (torchvision's ``layer1`` ..
    ``layer4``: siblings whose names differ only in a trailing number). Their entry counts say
    nothing about a list's (``layer2``'s 4 blocks are not ``stages.0..3``): they are aligned by
    whole paths, where the numbers in their names count as positions.

    >>> sorted(named_stages(["layer1", "layer2", "fc1", "blocks", "encoder.stages"]))
    ['layer1', 'layer2']
    """
    families: dict[tuple[str, str], list[str]] = {}
    for container in containers:
        found = re.fullmatch(r"(.*?)(\d+)", container or "")
        if found is not None and not found[1].endswith("."):
            families.setdefault((found[1], container.rpartition(".")[0]), []).append(container)
    return {c for members in families.values() if len(members) > 1 for c in members}


def all_leaves(blocks: dict[int, list[Leaf]]) -> list[Leaf]:
    return [leaf for i in sorted(blocks) for leaf in blocks[i]]


def same_layout(a: list[Leaf], b: list[Leaf]) -> bool:
    return [(leaf.rel, leaf.shape) for leaf in a] == [(leaf.rel, leaf.shape) for leaf in b]


def full_path(leaf: Leaf, container, index) -> str:
    if container is None or index is None:
        return leaf.path
    return f"{container}.{index}.{leaf.rel}" if container else f"{index}.{leaf.rel}"


def block_pattern(leaf: Leaf, container, indices: list) -> str:
    """The leaf's path, with ``*`` for the block index when it stands for every block."""
    if container is None or len(indices) == 1:
        return full_path(leaf, container, indices[0])
    return f"{container}.*.{leaf.rel}" if container else f"*.{leaf.rel}"


def block_template(rel: str, container: str) -> str:
    return f"{container}.{{0}}.{rel}" if container else f"{{0}}.{rel}"


def sends(rules: dict, src: list[Leaf], expected: dict[str, str]) -> dict | None:
    """`rules` less those that rename no source path, if they send every matched source path where
    expected and no other onto a taken path; else None.

    A rule that renames nothing (a submodule's rule after its module's rule has renamed it
    already) would be a ``pattern`` problem in a plain load. Rules that drop a tied copy are kept
    (`src` holds the first of tied tensors only)."""
    renamer = Renamer(rules)
    taken = set(expected.values())
    for leaf in src:
        new = renamer(leaf.path)
        if leaf.path in expected:
            if new != expected[leaf.path]:
                return None
        elif new in taken:
            return None
    return {key: value for key, value in rules.items() if key in renamer.used or value is None}
