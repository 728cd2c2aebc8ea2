"""The ``rename`` option: rewriting source paths before the walk."""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping

from ._render.text import path_prefixes
from ._report import Problem, ProblemKind
from .sources import iter_leaves
from .sources.nesting import insert


class OptionalKey(str):
    """A ``rename`` key that may match no source path: no ``pattern`` problem when it finds nothing.
    Made by `optional`; otherwise a plain string (a regex)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"sl.optional({_literal(str(self))})"


def optional(regex: str) -> OptionalKey:
    r"""Mark a ``rename`` key as optional, so that one mapping serves a family of checkpoints (a
    tied head stored in some, not in others). Unmarked keys keep the rule: a key that matches no
    source path is a ``pattern`` problem.

    >>> import torch, structload as sl
    >>> rename = {r"^model\.": "", sl.optional(r"^lm_head\."): "head."}
    >>> net = torch.nn.ModuleDict({"fc": torch.nn.Linear(2, 2)})
    >>> sl.load(net, {"model.fc.weight": torch.ones(2, 2), "model.fc.bias": torch.ones(2)}, rename=rename).ok
    True
    >>> rename
    {'^model\\.': '', sl.optional(r"^lm_head\."): 'head.'}
    """
    if not isinstance(regex, str):
        raise TypeError(f"sl.optional takes a regular expression (a string), got {type(regex).__name__}")
    return OptionalKey(regex)


def _literal(text: str) -> str:
    """A Python literal for a regex: raw when it holds backslashes (and that is possible)."""
    if "\\" in text and not text.endswith("\\") and '"' not in text:
        return f'r"{text}"'
    return repr(text)


class Renamer:
    """A ``{regex: replacement}`` mapping applied in order with ``re.sub``; a replacement of
    ``None`` drops the entries its regex finds, a function of the match computes the new text (as
    in ``re.sub``: ``lambda m: f"layer{int(m[1]) + 1}."`` for index arithmetic). It remembers which regexes found something, so a
    key that matches no source path can be reported (`unmatched`).

    >>> renamer = Renamer({r"^module\\.": "", r"\\.gamma$": ".weight", r"position_ids$": None})
    >>> renamer("module.norm.gamma"), renamer("module.embeddings.position_ids")
    ('norm.weight', None)
    >>> print(Renamer({r"^encodr\\.": ""}).unmatched(["encoder.fc.weight"])[0].message)
    rename pattern '^encodr\\.' matches no source path; did you mean 'encoder'?
    """

    def __init__(self, rename: Mapping):
        try:
            self.rules = [(text, re.compile(text), replacement) for text, replacement in rename.items()]
        except re.error as error:
            raise ValueError(f"rename: invalid regular expression: {error}") from None
        for text, _, replacement in self.rules:
            if replacement is not None and not isinstance(replacement, str) and not callable(replacement):
                raise TypeError(
                    f"rename: the replacement for {text!r} must be a string, a function of the match (as in "
                    f"re.sub) or None, not {type(replacement).__name__}"
                )
        self.used: set[str] = set()

    def __call__(self, path: str) -> str | None:
        for text, pattern, replacement in self.rules:
            if replacement is None:
                if pattern.search(path):
                    self.used.add(text)
                    return None
                continue
            path, n = pattern.subn(replacement, path)
            if n:
                self.used.add(text)
        return path

    @property
    def all_used(self) -> bool:
        return len(self.used) == len(self.rules)

    def unmatched(self, source_paths: list[str]) -> list[Problem]:
        """A ``pattern`` problem for every regex that found nothing in the source."""
        problems = []
        for text, _, _ in self.rules:
            if text not in self.used and not isinstance(text, OptionalKey):
                message = f"rename pattern '{text}' matches no source path" + _closest(text, source_paths)
                problems.append(Problem(ProblemKind.PATTERN, text, message))
        return problems


def _closest(text: str, paths: list[str]) -> str:
    """``; did you mean 'encoder'?`` for the source name or path closest to a regex's literal text."""
    literal = re.sub(r"\\(.)", r"\1", text).strip("^$")
    candidates = sorted({prefix for path in paths for prefix in path_prefixes(path)})
    close = difflib.get_close_matches(literal.strip("."), candidates, n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def compile_rename(rename) -> Callable[[str], str | None] | None:
    """A function from source path to new path (``None`` drops the entry).

    `rename` is a ``{regex: replacement}`` mapping (a `Renamer`), or a callable.
    """
    if rename is None:
        return None
    if callable(rename):
        return rename
    if not isinstance(rename, Mapping):
        raise TypeError(f"rename must be a {{regex: replacement}} mapping or a callable, got {type(rename).__name__}")
    return Renamer(rename)


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
        try:
            new = rename(path)
        except Exception as error:  # the user's callable: its own error, with the path it was given
            error.add_note(f"structload: raised by the rename= callable, given source path '{path}'")
            raise
        if new is None:
            continue
        if not isinstance(new, str) or not new:
            raise ValueError(f"rename turned source path '{path}' into {new!r}; expected a non-empty string or None")
        first = origins.setdefault(new, path)
        insert(renamed, new, leaf, origin=f"'{first}' and '{path}'" if first != path else "")
    return renamed
