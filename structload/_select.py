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


class Selection:
    """The ``include`` / ``exclude`` / ``filter`` options, asked path by path during the walk.

    >>> selection = Selection(include="encoder.*", exclude="encoder.head")
    >>> selection.enter("encoder.layer.weight", None, included=False)
    True
    >>> selection.enter("encoder.head", None, included=True) is None
    True
    >>> selection.enter("decoder", None, included=False)
    False
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

    def accepts_source(self, path: str) -> bool:
        """Whether a source path with no destination counts as unexpected.

        A source entry that `include` / `exclude` would have left out is
        silently ignored rather than reported.
        """
        if self.include is None and self.exclude is None:
            return True
        parts = path.split(".")
        prefixes = [".".join(parts[: i + 1]) for i in range(len(parts))]
        if self.exclude is not None and any(self.exclude.match(p) for p in prefixes):
            return False
        return self.include is None or any(self.include.match(p) for p in prefixes)
