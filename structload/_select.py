"""Which destination paths a load touches: ``include``, ``exclude`` and ``filter``.

Patterns are `fnmatch` globs on dotted paths; a pattern that matches a
module's path covers the whole module (``exclude="head"`` excludes
``head.weight`` and ``head.bias``), and ``*`` crosses dots
(``"encoder.*"`` matches ``encoder.layers.0.weight``).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ._dest import TENSOR_SLOTS, as_dest, dest_children, is_container


def compile_patterns(patterns: str | Iterable[str] | None) -> re.Pattern | None:
    """One regular expression matching any of the glob `patterns`, or ``None``.

    >>> bool(compile_patterns(["head.*", "fc"]).match("head.bias"))
    True
    """
    if patterns is None:
        return None
    if isinstance(patterns, str):
        patterns = [patterns]
    patterns = list(patterns)
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise TypeError(f"include/exclude patterns must be strings, got {type(pattern).__name__}")
    if not patterns:
        return re.compile(r"(?!)")  # an empty list matches nothing
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))


@dataclass(frozen=True)
class LeftOut:
    """What a selection leaves out of one destination: slot paths, and the roots of whole
    subtrees (modules, containers or slots) that `exclude` or `filter` removed."""

    paths: frozenset[str]
    roots: frozenset[str]


class Selection:
    """The ``include`` / ``exclude`` / ``filter`` options.

    `left_out` walks the destination (alone) and says which paths the load
    leaves out; `accepts_source` says whether a source path the destination
    lacks still counts as unexpected.

    >>> import torch
    >>> net = torch.nn.ModuleDict({"encoder": torch.nn.Linear(2, 2), "head": torch.nn.Linear(2, 2)})
    >>> sorted(Selection(include="encoder.*").left_out(net).paths)
    ['head.bias', 'head.weight']
    >>> Selection(exclude="head").left_out(net).roots
    frozenset({'head'})
    """

    def __init__(self, include=None, exclude=None, filter: Callable[[str, object], bool] | None = None):
        self.include = compile_patterns(include)
        self.exclude = compile_patterns(exclude)
        self.filter = filter
        if filter is not None and not callable(filter):
            raise TypeError(f"filter must be callable(path, node) -> bool, got {type(filter).__name__}")

    @property
    def everything(self) -> bool:
        return self.include is None and self.exclude is None and self.filter is None

    def left_out(self, dst) -> LeftOut | None:
        """The destination paths this selection leaves out, or ``None`` when it keeps everything."""
        if self.everything:
            return None
        paths: set[str] = set()
        roots: set[str] = set()
        root = as_dest(dst)
        if root is not None and is_container(root):
            self._visit_children(root, "", self.include is None, paths, roots)
        return LeftOut(frozenset(paths), frozenset(roots))

    def _visit_children(self, node, path: str, included: bool, paths: set[str], roots: set[str]) -> None:
        for name, child in dest_children(node):
            child_path = f"{path}.{name}" if path else name
            slot = not is_container(child)
            # `filter` sees modules, containers and tensors only
            asks_filter = not slot or child.kind in TENSOR_SLOTS
            verdict = self.enter(child_path, child.tensor if slot else child, included, ask_filter=asks_filter)
            if verdict is None:
                roots.add(child_path)
                paths.update(_slot_paths(child, child_path))
            elif slot:
                if not verdict:
                    paths.add(child_path)
            else:
                self._visit_children(child, child_path, verdict, paths, roots)

    def enter(self, path: str, node, included: bool, ask_filter: bool = True) -> bool | None:
        """``None``: `path` and all below it are excluded. Otherwise whether it is
        already known to be included (``False`` while an ``include`` pattern has
        not matched it or any of its ancestors). `filter` is asked only when
        `ask_filter` is true."""
        if ask_filter and self.filter is not None and not self.filter(path, node):
            return None
        if self.exclude is not None and self.exclude.match(path):
            return None
        return included or self.include is None or bool(self.include.match(path))

    def accepts_source(self, path: str, left_out: LeftOut | None) -> bool:
        """Whether a source path with no destination counts as unexpected.

        A source entry that `include` / `exclude` would have left out, or that
        lies under a destination subtree they or `filter` removed, is silently
        ignored rather than reported.
        """
        if left_out is None:
            return True
        parts = path.split(".")
        prefixes = [".".join(parts[: i + 1]) for i in range(len(parts))]
        if any(p in left_out.roots for p in prefixes):
            return False
        if self.exclude is not None and any(self.exclude.match(p) for p in prefixes):
            return False
        return self.include is None or any(self.include.match(p) for p in prefixes)


def _slot_paths(node, path: str) -> list[str]:
    """Every slot path under a destination node (the node itself when it is a slot)."""
    if not is_container(node):
        return [path]
    return [p for name, child in dest_children(node) for p in _slot_paths(child, f"{path}.{name}")]
