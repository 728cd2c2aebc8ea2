"""The ``rename`` option: rewriting source paths before the walk."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from .sources import iter_leaves
from .sources.nesting import insert


def compile_rename(rename) -> Callable[[str], str | None] | None:
    """A function from source path to new path (``None`` drops the entry).

    `rename` is a ``{regex: replacement}`` mapping, applied in order with
    ``re.sub``, or a callable.

    >>> compile_rename({r"^module\\.": "", r"\\.gamma$": ".weight"})("module.norm.gamma")
    'norm.weight'
    """
    if rename is None:
        return None
    if callable(rename):
        return rename
    if not isinstance(rename, Mapping):
        raise TypeError(f"rename must be a {{regex: replacement}} mapping or a callable, got {type(rename).__name__}")
    try:
        rules = [(re.compile(pattern), replacement) for pattern, replacement in rename.items()]
    except re.error as error:
        raise ValueError(f"rename: invalid regular expression: {error}") from None

    def apply(path: str) -> str:
        for pattern, replacement in rules:
            path = pattern.sub(replacement, path)
        return path

    return apply


def rename_tree(tree, rename: Callable[[str], str | None]):
    """The source tree with every leaf path passed through `rename`.

    Two source paths renamed onto one become a `BadLeaf` naming both.

    >>> rename_tree({"module": {"fc": {"weight": 1}}}, compile_rename({"^module\\\\.": ""}))
    {'fc': {'weight': 1}}
    """
    if type(tree) is not dict:
        return tree
    renamed: dict = {}
    origins: dict[str, str] = {}
    for path, leaf in iter_leaves(tree):
        new = rename(path)
        if new is None:
            continue
        if not isinstance(new, str) or not new:
            raise ValueError(f"rename turned source path '{path}' into {new!r}; expected a non-empty string or None")
        first = origins.setdefault(new, path)
        insert(renamed, new, leaf, origin=f"'{first}' and '{path}'" if first != path else "")
    return renamed
