"""``rename`` and ``convert`` on parameter paths, applied to optimizer state one state key at a time.

State tensors go through the same converters as their parameter's weights,
so a ``Concat`` into a fused qkv concatenates ``exp_avg`` exactly as it
concatenates the weights. Scalar state (``step``) is not converted: each
converted parameter takes it from the pieces it was made from, which must
agree (else a ``tied`` problem). A converted state tensor that does not come
out in its parameter's shape (factored statistics) is a ``type`` problem,
unless every converter that made it says ``converts_state = True``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .._rename import Renamer, compile_rename
from .._report import Problem, ProblemKind
from ..sources import SourceTensor
from ..sources._leaves import ConvertedTensor

States = dict[str, dict[str, object]]


def rename_states(states: States, rename) -> tuple[States, list[Problem]]:
    """The states with each parameter path passed through `rename` (``None`` drops it)."""
    renamer = compile_rename(rename)
    if renamer is None:
        return states, []
    renamed: States = {}
    origins: dict[str, str] = {}
    problems = []
    for path, state in states.items():
        new = renamer(path)
        if new is None:
            continue
        if not isinstance(new, str) or not new:
            raise ValueError(f"rename turned parameter path '{path}' into {new!r}; expected a non-empty string or None")
        if new in renamed:
            message = f"renamed from both '{origins[new]}' and '{path}'"
            problems.append(Problem(ProblemKind.SOURCE, new, message))
            continue
        renamed[new], origins[new] = state, path
    if isinstance(renamer, Renamer) and not renamer.all_used:
        problems += renamer.unmatched(list(states))
    return renamed, problems


class Fused(NamedTuple):
    states: States
    problems: list[Problem]
    rejected: set[str]  # parameters whose converted state cannot be used: they start fresh


def is_scalar(leaf) -> bool:
    return not isinstance(leaf, SourceTensor) or not leaf.shape


def fuse_states(states: States, converters, param_shapes: dict[str, tuple[int, ...]]) -> Fused:
    """Run `converters` over each state key's tensors; carry scalars to what their pieces made."""
    if not converters:
        return Fused(states, [], set())
    if not isinstance(converters, (list, tuple)):
        raise TypeError("convert= takes a list of converters from structload.convert")
    keys = list(dict.fromkeys(k for state in states.values() for k, v in state.items() if not is_scalar(v)))
    fused: States = {p: {k: v for k, v in s.items() if is_scalar(v)} for p, s in states.items()}
    pieces: dict[str, set[str]] = {}  # converted parameter path -> the source paths it was made from
    problems: list[Problem] = []
    unmatched: dict[int, int] = {}  # converter index -> for how many state keys it matched nothing
    rejected: set[str] = set()
    for key in keys:
        flat: dict = {p: s[key] for p, s in states.items() if key in s and not is_scalar(s[key])}
        made: dict = {}
        for index, converter in enumerate(converters):
            matches = _matches_any(converter, flat)
            found = converter.run(flat, made)
            if not matches:  # what it says then (whatever the words): once, if it matched no key's state
                unmatched[index] = unmatched.get(index, 0) + 1
                problems += found if unmatched[index] == len(keys) else []
                continue
            problems += [Problem(p.kind, f"{p.path}.{key}", f"state '{key}': {p.message}") for p in found]
        for path, leaf in flat.items():
            if path in made:
                made_by, sources = made[path]
                leaf = ConvertedTensor(leaf, f"{made_by} of " + ", ".join(f"'{s}'" for s in sources), sources)
                pieces.setdefault(path, set()).update(sources)
                wrong = _shape_check(path, key, leaf, param_shapes.get(path), converters)
                if wrong:  # reported here once, not again as a shape problem of the plan
                    problems += wrong
                    rejected.add(path)
                    continue
            fused.setdefault(path, {})[key] = leaf
    problems += _carry_scalars(fused, states, pieces)
    return Fused({p: s for p, s in fused.items() if s or not states.get(p, True)}, problems, rejected)


def _matches_any(converter, flat: dict) -> bool:
    """Whether `converter` matches a path of `flat` (a converter without a ``pattern`` is taken to)."""
    pattern = getattr(converter, "pattern", None)
    return pattern is None or any(pattern.match(path) for path in flat)


def _shape_check(path: str, key: str, leaf: ConvertedTensor, shape, converters) -> list[Problem]:
    if shape is None or tuple(leaf.shape) == shape:
        return []
    if all(getattr(c, "converts_state", False) for c in converters if str(c) in leaf.made_by):
        return []
    message = (
        f"state '{key}' of shape {tuple(leaf.shape)} after {leaf.made_by}, not the parameter's shape {shape}: "
        "converters apply to state of the parameter's shape (give a converter converts_state = True to take it)"
    )
    return [Problem(ProblemKind.TYPE, f"{path}.{key}", message)]


def _carry_scalars(fused: States, states: States, pieces: dict[str, set[str]]) -> list[Problem]:
    """Each converted parameter's scalar state from its pieces (removed from them); pieces that
    disagree are a ``tied`` problem."""
    problems = []
    for path, sources in pieces.items():
        scalar_keys = dict.fromkeys(k for s in sorted(sources) for k, v in states.get(s, {}).items() if is_scalar(v))
        for key in scalar_keys:
            given = [(s, states[s][key]) for s in _in_order(sources, states) if key in states[s]]
            if not _agree([leaf for _, leaf in given]):
                values = ", ".join(f"'{s}' {_value_text(leaf)}" for s, leaf in given)
                message = f"the pieces fused into '{path}' have different '{key}': {values}"
                problems.append(Problem(ProblemKind.TIED, f"{path}.{key}", message))
            fused.setdefault(path, {})[key] = given[0][1]
    for path in list(fused):
        if path not in pieces and any(path in s for s in pieces.values()):
            fused[path] = {k: v for k, v in fused[path].items() if not is_scalar(v)}
            if not fused[path]:
                del fused[path]
    return problems


def _in_order(sources: set[str], states: States) -> list[str]:
    return [s for s in states if s in sources]


def _agree(leaves: list) -> bool:
    values = [_value(leaf) for leaf in leaves]
    return all(_equal(values[0], v) for v in values[1:])


def _value(leaf):
    return leaf.read() if isinstance(leaf, SourceTensor) else leaf


def _equal(a, b) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and bool(torch.equal(a.to(b.dtype), b))
    return type(a) is type(b) and a == b


def _value_text(leaf) -> str:
    value = _value(leaf)
    return str(value.item()) if isinstance(value, torch.Tensor) and value.numel() == 1 else repr(value)
