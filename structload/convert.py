"""Converters: load tensors whose layout differs from the destination's.

Pass them as ``sl.load(dst, src, convert=[...])``. Each converter matches
source paths (after ``rename``) against a pattern, and replaces the matched
tensors by the tensors it makes, lazily: shapes and dtypes are computed from
metadata alone, so a wrong mapping is a problem of the plan (naming the
converter, the source and the destination) before any data is read or any
tensor written. Converters run in order, each on what the previous ones left,
so ``Transpose`` then ``Split`` works.

Patterns: ``*`` matches any text (dots included) and captures it; targets
reuse captures as ``{0}``, ``{1}``, ... . ``Unstack`` targets and ``Stack``
sources use ``{i}`` for the position in the stack.

Examples:
    >>> import torch, structload as sl
    >>> from structload.convert import Split, Transpose
    >>> qkv = {"attn.c_attn.weight": torch.arange(24.0).reshape(2, 12)}  # Conv1D layout: (in, 3 * out)
    >>> model = torch.nn.ModuleDict({n: torch.nn.Linear(2, 4, bias=False) for n in ("q", "k", "v")})
    >>> report = sl.load(model, qkv, convert=[
    ...     Transpose("attn.c_attn.weight"),
    ...     Split("attn.c_attn.weight", into=["q.weight", "k.weight", "v.weight"]),
    ... ])
    >>> model["k"].weight.tolist()
    [[4.0, 16.0], [5.0, 17.0], [6.0, 18.0], [7.0, 19.0]]
    >>> report.converted[0].made_by
    "Transpose('attn.c_attn.weight') then Split('attn.c_attn.weight') of 'attn.c_attn.weight'"
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence

import torch

from ._render.text import plural, shape_text
from ._report import Problem, ProblemKind, SourceError
from .sources import SourceTensor, iter_leaves
from .sources._leaves import ComputedTensor, ConvertedTensor
from .sources.nesting import insert
from .sources.views import narrow, reshape, select, transpose

__all__ = ["Apply", "Concat", "Converter", "Reshape", "Split", "Stack", "Transpose", "Unstack"]


class _Bad(Exception):
    """A converter cannot make its outputs from this input; the message says why."""


# --- patterns ------------------------------------------------------------------------------


class _Pattern:
    """A source pattern: ``*`` captures any text, ``{i}`` (when allowed) captures an index."""

    def __init__(self, text: str, index: bool = False):
        if not isinstance(text, str):
            raise TypeError(f"patterns are strings, got {type(text).__name__}")
        self.text = text
        parts = re.split(r"(\*|\{i\})", text)
        if "{i}" in parts and not index:
            raise ValueError(f"'{{i}}' is only for Stack sources and Unstack targets: {text!r}")
        self.stars = parts.count("*")
        regex = "".join(r"(.*?)" if p == "*" else r"(?P<i>\d+)" if p == "{i}" else re.escape(p) for p in parts)
        self.regex = re.compile(regex + r"\Z")
        self.template = "".join(_star_template(parts))

    def match(self, path: str) -> re.Match | None:
        return self.regex.match(path)


def _star_template(parts: list[str]):
    """``a.*.b`` -> ``a.{0}.b``: the pattern filled back from its captures."""
    n = 0
    for part in parts:
        if part == "*":
            yield f"{{{n}}}"
            n += 1
        else:
            yield part.replace("{", "{{").replace("}", "}}") if part != "{i}" else "{i}"


def _check_template(template: str, stars: int, index: bool = False) -> str:
    if not isinstance(template, str):
        raise TypeError(f"targets are strings, got {type(template).__name__}")
    for field in re.findall(r"\{([^}]*)\}", template):
        if field == "i" and index:
            continue
        if not field.isdigit() or int(field) >= stars:
            raise ValueError(f"target {template!r} uses {{{field}}}, but its pattern has {stars} '*' capture(s)")
    return template


def _fill(template: str, captures: Sequence[str], i: int | None = None) -> str:
    return template.format(*captures, i=i)


def _captures(match: re.Match) -> tuple[str, ...]:
    """The ``*`` captures of a match, without the ``{i}`` index."""
    index = match.re.groupindex.get("i")
    return tuple(match.group(k) for k in range(1, match.re.groups + 1) if k != index)


def _dim(dim: int, ndim: int, what: str) -> int:
    if not -ndim <= dim < ndim:
        raise _Bad(f"dim {dim} is out of range for {what}")
    return dim % ndim


# --- the converters ------------------------------------------------------------------------


class Converter:
    """Base class: match source paths, replace them by the tensors made from them."""

    pattern: _Pattern

    def run(self, flat: dict, made: dict) -> list[Problem]:
        """Convert in place: `flat` is path -> leaf, `made` path -> (made_by, sources)."""
        matches = [(path, m) for path in list(flat) if (m := self.pattern.match(path))]
        if not matches:
            return [Problem(ProblemKind.SOURCE, self.pattern.text, f"{self}: matches no source path")]
        problems: list[Problem] = []
        for path, match in matches:
            if path not in flat:  # consumed earlier in this same run (Concat / Stack groups)
                continue
            problems += self.convert_one(flat, made, path, match)
        return problems

    def convert_one(self, flat, made, path, match) -> list[Problem]:
        leaf = flat[path]
        if not isinstance(leaf, SourceTensor):
            return [Problem(ProblemKind.TYPE, path, f"{self} matched '{path}', which is not a tensor")]
        del flat[path]  # consumed even when it fails: never loaded unconverted by accident
        try:
            outputs = self.outputs(leaf, _captures(match))
        except _Bad as bad:
            return [
                Problem(ProblemKind.SHAPE, path, f"{self}: {bad} (source '{path}' has shape {shape_text(leaf.shape)})")
            ]
        return _publish(self, flat, made, outputs, [path])

    def outputs(self, leaf: SourceTensor, captures) -> list[tuple[str, SourceTensor]]:
        raise NotImplementedError

    def __str__(self) -> str:
        return f"{type(self).__name__}({self.pattern.text!r})"

    def __repr__(self) -> str:
        """The call that makes this converter (what `Alignment.code` prints)."""
        return f"{type(self).__name__}({self.pattern.text!r})"


def _publish(converter, flat, made, outputs, inputs) -> list[Problem]:
    """Put a converter's outputs into the flat source, recording who made them."""
    before = [made.get(p) for p in inputs]
    chain = " then ".join(dict.fromkeys([b[0] for b in before if b] + [str(converter)]))
    sources = tuple(s for p, b in zip(inputs, before) for s in (b[1] if b else (p,)))
    problems = []
    for path, leaf in outputs:
        if path in flat:
            other = made[path][0] if path in made else "the source itself"
            problems.append(Problem(ProblemKind.SOURCE, path, f"'{path}' is written by both {other} and {converter}"))
            continue
        flat[path] = leaf
        made[path] = (chain, sources)
    return problems


class Transpose(Converter):
    """Swap two dimensions (``dims=(0, 1)``): Conv1D or JAX Dense kernels into ``nn.Linear``."""

    def __init__(self, pattern: str, dims: tuple[int, int] = (0, 1)):
        self.pattern, self.dims = _Pattern(pattern), tuple(dims)

    def __repr__(self) -> str:
        dims = "" if self.dims == (0, 1) else f", dims={self.dims!r}"
        return f"Transpose({self.pattern.text!r}{dims})"

    def outputs(self, leaf, captures):
        ndim = len(leaf.shape)
        a, b = (_dim(d, ndim, f"a {ndim}-d tensor") for d in self.dims)
        return [(_fill(self.pattern.template, captures), transpose(leaf, a, b))]


class Reshape(Converter):
    """Give the tensor another shape with the same number of elements (one ``-1`` allowed)."""

    def __init__(self, pattern: str, shape: Sequence[int]):
        self.pattern, self.shape = _Pattern(pattern), tuple(shape)

    def outputs(self, leaf, captures):
        numel, shape = math.prod(leaf.shape), list(self.shape)
        if shape.count(-1) == 1:
            known = math.prod(d for d in shape if d != -1)
            if known == 0 or numel % known:
                raise _Bad(f"cannot reshape {numel} elements to {shape_text(self.shape)}")
            shape[shape.index(-1)] = numel // known
        if math.prod(shape) != numel:
            raise _Bad(f"cannot reshape {numel} elements to {shape_text(self.shape)}")
        return [(_fill(self.pattern.template, captures), reshape(leaf, tuple(shape)))]


class Apply(Converter):
    """Any other change: ``fn(tensor) -> tensor``, with ``shape=fn_of_shape`` (and ``dtype``)
    declaring the result so the plan can check it before anything is read."""

    def __init__(self, pattern: str, fn: Callable, shape: Callable | None = None, dtype: torch.dtype | None = None):
        self.pattern, self.fn, self.shape, self.dtype = _Pattern(pattern), fn, shape, dtype

    def outputs(self, leaf, captures):
        shape = tuple(self.shape(tuple(leaf.shape))) if self.shape is not None else tuple(leaf.shape)
        dtype = self.dtype or leaf.dtype
        path = _fill(self.pattern.template, captures)

        def read():
            result = self.fn(leaf.read())
            if tuple(result.shape) != shape:
                raise SourceError(
                    f"{self} made shape {shape_text(result.shape)} for '{path}', but declared {shape_text(shape)}"
                )
            return result

        return [(path, ComputedTensor(shape, dtype, read))]


class Split(Converter):
    """One source tensor into several destinations along `dim` (a fused qkv into q, k, v)."""

    def __init__(self, src_pattern: str, into: Sequence[str], dim: int = 0, sizes: Sequence[int] | None = None):
        self.pattern = _Pattern(src_pattern)
        self.into = [_check_template(t, self.pattern.stars) for t in into]
        self.dim, self.sizes = dim, None if sizes is None else tuple(sizes)
        if not self.into or (self.sizes is not None and len(self.sizes) != len(self.into)):
            raise ValueError(f"Split: give one target per part ({len(self.into)} targets, sizes {self.sizes})")

    def __repr__(self) -> str:
        extra = (f", dim={self.dim}" if self.dim else "") + (f", sizes={list(self.sizes)!r}" if self.sizes else "")
        return f"Split({self.pattern.text!r}, into={self.into!r}{extra})"

    def outputs(self, leaf, captures):
        dim = _dim(self.dim, len(leaf.shape), f"a {len(leaf.shape)}-d tensor")
        total, n = leaf.shape[dim], len(self.into)
        sizes = self.sizes
        if sizes is None:
            if total % n:
                raise _Bad(f"dim {dim} of size {total} does not split into {n} equal parts")
            sizes = (total // n,) * n
        elif sum(sizes) != total:
            raise _Bad(f"sizes {list(sizes)} add up to {sum(sizes)}, not to dim {dim}'s size {total}")
        starts = [sum(sizes[:k]) for k in range(n)]
        return [(_fill(t, captures), narrow(leaf, dim, a, s)) for t, a, s in zip(self.into, starts, sizes)]


class Unstack(Converter):
    """A stacked tensor (a leading layer axis) into one tensor per entry: ``into`` uses ``{i}``."""

    def __init__(self, src_pattern: str, into: str, dim: int = 0):
        self.pattern = _Pattern(src_pattern)
        self.into = _check_template(into, self.pattern.stars, index=True)
        self.dim = dim
        if "{i}" not in into:
            raise ValueError(f"Unstack: the target {into!r} needs '{{i}}' for the position in the stack")

    def outputs(self, leaf, captures):
        dim = _dim(self.dim, len(leaf.shape), f"a {len(leaf.shape)}-d tensor")
        return [(_fill(self.into, captures, i), select(leaf, dim, i)) for i in range(leaf.shape[dim])]


class _Gather(Converter):
    """Converters that make one tensor from several sources (Concat, Stack)."""

    def group(self, flat: dict, match: re.Match) -> tuple[list[str], str]:
        """The source paths the match gathers, and the path of the tensor they make."""
        raise NotImplementedError

    def combine(self, inputs: list[str], leaves: list[SourceTensor]) -> SourceTensor:
        raise NotImplementedError

    def convert_one(self, flat, made, path, match) -> list[Problem]:
        try:
            inputs, target = self.group(flat, match)
            leaves = [flat[p] for p in inputs]
            first = leaves[0]
            for p, leaf in zip(inputs, leaves):
                if leaf.dtype != first.dtype:
                    raise _Bad(f"'{p}' is {leaf.dtype}, '{inputs[0]}' is {first.dtype}")
            output = self.combine(inputs, leaves)
        except _Bad as bad:
            return [Problem(ProblemKind.SHAPE, path, f"{self}: {bad}")]
        for p in inputs:
            del flat[p]
        return _publish(self, flat, made, [(target, output)], inputs)


class Concat(_Gather):
    """Several source tensors into one destination along `dim` (q, k, v into a fused qkv)."""

    def __init__(self, src_patterns: Sequence[str], into: str, dim: int = 0):
        self.patterns = [_Pattern(p) for p in src_patterns]
        if not self.patterns or len({p.stars for p in self.patterns}) != 1:
            raise ValueError("Concat: give source patterns with the same number of '*'")
        self.pattern = self.patterns[0]
        self.into, self.dim = _check_template(into, self.pattern.stars), dim

    def group(self, flat, match):
        captures = _captures(match)
        inputs = [_fill(p.template, captures) for p in self.patterns]
        for p in inputs:
            if not isinstance(flat.get(p), SourceTensor):
                raise _Bad(f"'{p}' is not a tensor of the source (needed with '{inputs[0]}')")
        return inputs, _fill(self.into, captures)

    def combine(self, inputs, leaves):
        ndim = len(leaves[0].shape)
        dim = _dim(self.dim, ndim, f"a {ndim}-d tensor")
        for p, leaf in zip(inputs, leaves):
            other = [d for k, d in enumerate(leaf.shape) if k != dim]
            if len(leaf.shape) != ndim or other != [d for k, d in enumerate(leaves[0].shape) if k != dim]:
                raise _Bad(
                    f"'{p}' has shape {shape_text(leaf.shape)}, which does not concatenate with {shape_text(leaves[0].shape)} along dim {dim}"
                )
        shape = list(leaves[0].shape)
        shape[dim] = sum(leaf.shape[dim] for leaf in leaves)

        def write(target: torch.Tensor) -> None:
            start = 0
            for leaf in leaves:
                leaf.read_into(target.narrow(dim, start, leaf.shape[dim]))
                start += leaf.shape[dim]

        return ComputedTensor(shape, leaves[0].dtype, lambda: torch.cat([leaf.read() for leaf in leaves], dim), write)

    def __str__(self) -> str:
        return f"Concat({[p.text for p in self.patterns]!r})"

    def __repr__(self) -> str:
        dim = f", dim={self.dim}" if self.dim else ""
        return f"Concat({[p.text for p in self.patterns]!r}, into={self.into!r}{dim})"


class Stack(_Gather):
    """One source tensor per entry (``src_pattern`` with ``{i}``) into one stacked tensor."""

    def __init__(self, src_pattern: str, into: str, dim: int = 0):
        self.pattern = _Pattern(src_pattern, index=True)
        if "i" not in self.pattern.regex.groupindex:
            raise ValueError(f"Stack: the source pattern {src_pattern!r} needs '{{i}}' for the position in the stack")
        self.into, self.dim = _check_template(into, self.pattern.stars), dim

    def group(self, flat, match):
        captures = _captures(match)
        members = {}
        for path in flat:
            m = self.pattern.match(path)
            if m and _captures(m) == captures:
                members[int(m.group("i"))] = path
        indices = sorted(members)
        if indices != list(range(len(indices))):
            gaps = sorted(set(range(max(indices) + 1)) - set(indices))
            raise _Bad(f"entries {indices} are not 0..{len(indices) - 1} (missing {gaps})")
        return [members[i] for i in indices], _fill(self.into, captures)

    def combine(self, inputs, leaves):
        for p, leaf in zip(inputs, leaves):
            if tuple(leaf.shape) != tuple(leaves[0].shape):
                raise _Bad(f"'{p}' has shape {shape_text(leaf.shape)}, '{inputs[0]}' {shape_text(leaves[0].shape)}")
        ndim = len(leaves[0].shape) + 1
        dim = _dim(self.dim, ndim, f"stacking {ndim - 1}-d tensors")
        shape = list(leaves[0].shape)
        shape.insert(dim, len(leaves))

        def write(target: torch.Tensor) -> None:
            for i, leaf in enumerate(leaves):
                leaf.read_into(target.select(dim, i))

        return ComputedTensor(shape, leaves[0].dtype, lambda: torch.stack([leaf.read() for leaf in leaves], dim), write)


# --- running them ----------------------------------------------------------------------------


def check_converters(convert) -> list[Converter] | None:
    """``convert=`` as a list of converters, checked before anything is opened: a clear
    ``TypeError`` naming what was passed and what is expected, not a failure deep in the load.

    >>> check_converters((Transpose("fc.weight"),))
    [Transpose('fc.weight')]
    >>> check_converters({})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    TypeError: convert= takes a list of converters ...; got an empty dict ({}): pass convert=[] or leave it out ...
    >>> check_converters([Transpose])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    TypeError: convert= takes ...; its item 0 is the class Transpose, not a converter: make one with its pattern, such as Transpose("fc.weight")
    """
    if convert is None:
        return None
    if not isinstance(convert, (list, tuple)):
        raise TypeError(_EXPECTED + "; got " + _what_was_passed(convert))
    for index, item in enumerate(convert):
        if not isinstance(item, Converter):
            raise TypeError(f"{_EXPECTED}; its item {index} is {_what_item_is(item)}")
    return list(convert)


_EXPECTED = 'convert= takes a list of converters from structload.convert, such as convert=[Transpose("fc.weight")]'


def _what_was_passed(convert) -> str:
    if isinstance(convert, Converter):
        return f"a single converter, {convert!r}: put it in a list, convert=[{convert!r}]"
    if isinstance(convert, dict):
        if not convert:
            return "an empty dict ({}): pass convert=[] or leave it out (renaming is rename=, a dict)"
        if all(isinstance(v, Converter) for v in convert.values()):
            return f"a dict of {plural(len(convert), 'converter')}: pass them as a list, convert=[...]"
        return f"a dict ({_short(convert)}); renaming paths is rename=, a {{regex: replacement}} dict"
    if isinstance(convert, str):
        return f"the string {convert!r}: converters are made by structload.convert's classes"
    return f"{type(convert).__name__} {_short(convert)}"


def _what_item_is(item) -> str:
    if isinstance(item, type) and issubclass(item, Converter):
        return f'the class {item.__name__}, not a converter: make one with its pattern, such as {item.__name__}("fc.weight")'
    if isinstance(item, str):
        return f"the string {item!r}, not a converter: make one from structload.convert, such as Transpose({item!r})"
    return f"{_short(item)} ({type(item).__name__}), not a converter from structload.convert"


def _short(value, most: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= most else text[: most - 3] + "..."


def convert_tree(tree, converters, before_rename=None) -> tuple[object, list[Problem]]:
    """Apply `converters` in order to the source tree; return the new tree and the problems found.

    `before_rename` (the tree before ``rename=``, and the renaming) lets a converter that matches
    no path say when it names a path as it was before renaming (`_named_before_rename`)."""
    converters = check_converters(converters) or []
    if type(tree) is not dict:
        return tree, [Problem(ProblemKind.TYPE, "", "converters need a tree of tensors, not a single value")]
    flat = dict(iter_leaves(tree))
    made: dict[str, tuple[str, tuple[str, ...]]] = {}
    problems: list[Problem] = []
    for converter in converters:
        found = converter.run(flat, made)
        if before_rename is not None:
            found = [_named_before_rename(converter, p, *before_rename) for p in found]
        problems += found
    converted: dict = {}
    for path, leaf in flat.items():
        if path in made:
            made_by, sources = made[path]
            description = f"{made_by} of " + ", ".join(f"'{s}'" for s in sources)
            leaf = ConvertedTensor(leaf, description, sources)
        insert(converted, path, leaf)
    return converted, problems


def _named_before_rename(converter: Converter, problem: Problem, original_tree, rename) -> Problem:
    """A converter that matches no source path because it names paths as they were before
    ``rename=`` (converters see renamed paths): the message says so and names the renamed paths."""
    if problem.path != converter.pattern.text or not problem.message.endswith(": matches no source path"):
        return problem
    before = [path for path, _ in iter_leaves(original_tree) if converter.pattern.match(path)]
    if not before:
        return problem
    after = [new for path in before[:3] if (new := _renamed(rename, path)) is not None]
    message = (
        f"{problem.message} after rename= (converters see renamed paths); it matches "
        f"{', '.join(repr(p) for p in before[:3])}{' ...' if len(before) > 3 else ''} before renaming"
    )
    if after:
        message += f", renamed to {', '.join(repr(p) for p in after)}: name the renamed paths in the converter"
    else:
        message += ", which rename= drops"
    return Problem(problem.kind, problem.path, message)


def _renamed(rename, path: str) -> str | None:
    try:
        return rename(path)
    except Exception:  # a callable rename failing on this path is reported where it ran
        return None
