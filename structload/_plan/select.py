"""Which destination paths a load touches: ``include``, ``exclude`` and ``filter``.

Patterns are `fnmatch` globs on dotted paths; a pattern that matches a
module's path covers the whole module (``exclude="head"`` excludes
``head.weight`` and ``head.bias``), and ``*`` crosses dots
(``"encoder.*"`` matches ``encoder.layers.0.weight``). A pattern that
matches nothing is a ``pattern`` problem (a typo would otherwise load nothing).
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .._render.text import path_prefixes
from .._report import Problem, ProblemKind
from .dest import TENSOR_SLOTS, as_dest, dest_children, is_container


class Globs:
    """The glob patterns of one option (``include`` or ``exclude``): one regular expression for
    all of them, and each one's own, to tell which of them matched nothing.

    >>> globs = Globs("include", ["head.*", "fc"])
    >>> globs.match("head.bias"), [text for text, _ in globs.each]
    (True, ['head.*', 'fc'])
    """

    def __init__(self, option: str, patterns: str | Iterable[str]):
        if isinstance(patterns, str):
            patterns = [patterns]
        if not isinstance(patterns, Iterable):
            raise TypeError(
                f"{option}= takes a glob pattern or a list of them, got {type(patterns).__name__} {patterns!r}"
            )
        patterns = list(patterns)
        for pattern in patterns:
            if not isinstance(pattern, str):
                raise TypeError(f"include/exclude patterns must be strings, got {type(pattern).__name__}")
        self.option = option
        self.each = [(p, re.compile(fnmatch.translate(p))) for p in patterns]
        joined = "|".join(f"(?:{fnmatch.translate(p)})" for p in patterns)
        self.regex = re.compile(joined if patterns else r"(?!)")  # an empty list matches nothing

    def match(self, path: str) -> bool:
        return self.regex.match(path) is not None


def _globs(option: str, patterns) -> Globs | None:
    return None if patterns is None else Globs(option, patterns)


@dataclass(frozen=True)
class LeftOut:
    """What a selection leaves out of one destination: slot paths, and the roots of whole
    subtrees (modules, containers or slots) that `exclude` or `filter` removed."""

    paths: frozenset[str]
    roots: frozenset[str]


class Selection:
    """The ``include`` / ``exclude`` / ``filter`` options of one load.

    `left_out` walks the destination (alone) and says which paths the load
    leaves out; `accepts_source` says whether a source path the destination
    lacks still counts as unexpected; `unmatched_patterns` names the patterns
    that matched nothing.

    >>> import torch
    >>> net = torch.nn.ModuleDict({"encoder": torch.nn.Linear(2, 2), "head": torch.nn.Linear(2, 2)})
    >>> sorted(Selection(include="encoder.*").left_out(net).paths)
    ['head.bias', 'head.weight']
    >>> Selection(exclude="head").left_out(net).roots
    frozenset({'head'})
    >>> selection = Selection(include="encodr")
    >>> _ = selection.left_out(net)
    >>> print(selection.unmatched_patterns()[0])
    encodr: include pattern matches no destination path; did you mean 'encoder'?
    """

    def __init__(self, include=None, exclude=None, filter: Callable[[str, object], bool] | None = None):
        self.include = _globs("include", include)
        self.exclude = _globs("exclude", exclude)
        self.filter = filter
        if filter is not None and not callable(filter):
            raise TypeError(f"filter must be callable(path, node) -> bool, got {type(filter).__name__}")
        self._seen: list[str] = []  # destination paths `left_out` visited
        self._source_ignored: list[str] = []  # source paths `accepts_source` ignored because of `exclude`

    @property
    def everything(self) -> bool:
        return self.include is None and self.exclude is None and self.filter is None

    def left_out(self, dst) -> LeftOut | None:
        """The destination paths this selection leaves out, or ``None`` when it keeps everything."""
        if self.everything:
            return None
        paths: set[str] = set()
        roots: set[str] = set()
        self._seen = []
        root = as_dest(dst)
        if root is not None and is_container(root):
            self._visit_children(root, "", self.include is None, paths, roots)
        return LeftOut(frozenset(paths), frozenset(roots))

    def _visit_children(self, node, path: str, included: bool, paths: set[str], roots: set[str]) -> None:
        for name, child in dest_children(node):
            child_path = f"{path}.{name}" if path else name
            self._seen.append(child_path)
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

    def _filter(self, path: str, node) -> bool:
        """The user's ``filter``; an error it raises gets a note naming the path it was asked about."""
        try:
            return self.filter(path, node)  # type: ignore[misc]
        except Exception as error:
            error.add_note(f"structload: raised by the filter= callable, asked about '{path}'")
            raise

    def enter(self, path: str, node, included: bool, ask_filter: bool = True) -> bool | None:
        """``None``: `path` and all below it are excluded. Otherwise whether it is
        already known to be included (``False`` while an ``include`` pattern has
        not matched it or any of its ancestors). `filter` is asked only when
        `ask_filter` is true."""
        if ask_filter and self.filter is not None and not self._filter(path, node):
            return None
        if self.exclude is not None and self.exclude.match(path):
            return None
        return included or self.include is None or self.include.match(path)

    def accepts_source(self, path: str, left_out: LeftOut | None) -> bool:
        """Whether a source path with no destination counts as unexpected.

        A source entry that `include` / `exclude` would have left out, or that
        lies under a destination subtree they or `filter` removed, is silently
        ignored rather than reported.
        """
        if left_out is None:
            return True
        prefixes = path_prefixes(path)
        if any(p in left_out.roots for p in prefixes):
            return False
        excluded = [p for p in prefixes if self.exclude is not None and self.exclude.match(p)]
        if excluded:
            self._source_ignored.append(excluded[0])
            return False
        return self.include is None or any(self.include.match(p) for p in prefixes)

    def leaves_out_module(self, path: str, left_out: LeftOut | None) -> bool:
        """Whether the load leaves the destination module at `path` out whole."""
        if left_out is None or not path:
            return False
        prefixes = path_prefixes(path)
        if any(p in left_out.roots for p in prefixes):
            return True
        return self.include is not None and not any(self.include.match(p) for p in prefixes)

    def unmatched_patterns(self) -> list[Problem]:
        """A ``pattern`` problem for every include / exclude pattern that matched no path of the
        destination `left_out` walked (nor, for exclude, any source path it ignored)."""
        problems = []
        for globs, also in ((self.include, []), (self.exclude, self._source_ignored)):
            if globs is None:
                continue
            for text, regex in globs.each:
                if not any(regex.match(p) for p in self._seen) and not any(regex.match(p) for p in also):
                    message = f"{globs.option} pattern matches no destination path" + did_you_mean(text, self._seen)
                    problems.append(Problem(ProblemKind.PATTERN, text, message))
        return problems


def did_you_mean(text: str, paths: list[str]) -> str:
    """``; did you mean 'encoder'?`` for the path (or ``path.*``) closest to a pattern, or ``""``."""
    candidates = paths + [f"{p}.*" for p in paths]
    close = difflib.get_close_matches(text, candidates, n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def _slot_paths(node, path: str) -> list[str]:
    """Every slot path under a destination node (the node itself when it is a slot)."""
    if not is_container(node):
        return [path]
    return [p for name, child in dest_children(node) for p in _slot_paths(child, f"{path}.{name}")]
