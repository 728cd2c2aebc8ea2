"""Every kind of optimizer-state source as one flat mapping: ``{param_path: {state_key: leaf}}``.

- the tree of `structload.optimizer_state` (nested by path, in memory or from a file);
- a torch ``optimizer.state_dict()``, keyed by index: see `_order`;
- an FQN-keyed dict (``torch.distributed.checkpoint.state_dict.get_optimizer_state_dict``):
  its ``state`` is already a tree by path.

Leaves are source leaves (`SourceTensor`, ``SKIP``, `BadLeaf`, ...), so a file
source stays lazy: nothing here reads tensor data.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .._report import Problem, ProblemKind
from ..sources import SKIP, MemoryTensor, SourceTensor, to_source_tree
from ..sources._leaves import Value
from ._order import Group, index_paths


class SourceStates(NamedTuple):
    """Per source parameter path, its state (``{}``: held, no state yet); and what was wrong."""

    states: dict[str, dict[str, object]]
    problems: list[Problem]


def read_states(src, source_model, model: torch.nn.Module, rename=None) -> SourceStates:
    """The states of `src`, whatever kind of optimizer-state source it is (`rename` is the load's)."""
    node = to_source_tree(src)
    if type(node) is not dict:
        return SourceStates({}, [Problem(ProblemKind.SOURCE, "", "the source is a single value, not optimizer state")])
    if "state" in node and "param_groups" in node:
        groups = _groups(node["param_groups"])
        state = node["state"] if type(node["state"]) is dict else {}
        if groups is not None and _keyed_by_index(state, groups):
            return _by_index(state, groups, source_model, model, rename)
        node = state  # keyed by path (FQN): a tree like optimizer_state's
    return _by_path(node)


def _by_path(tree: dict) -> SourceStates:
    states: dict[str, dict] = {}
    problems = []
    for path, state in _param_nodes(tree, ""):
        if not path:
            message = f"state keys {sorted(state)} at the root: optimizer state is keyed by parameter path"
            problems.append(Problem(ProblemKind.SOURCE, "", message))
            continue
        states[path] = state
    return SourceStates(states, problems)


def _param_nodes(tree: dict, path: str):
    """``(path, state)`` for every node whose children are leaves (or that is empty)."""
    leaves = {k: v for k, v in tree.items() if type(v) is not dict}
    if leaves or (not tree and path):
        yield path, leaves
    for name, child in tree.items():
        if type(child) is dict:
            yield from _param_nodes(child, f"{path}.{name}" if path else name)


def _by_index(state: dict, groups: list[Group], source_model, model, rename) -> SourceStates:
    order, problems = index_paths(groups, source_model, model, rename)
    if problems:
        return SourceStates({}, problems)
    states: dict[str, dict] = {path: {} for path in order.paths.values()}
    for key, entry in state.items():
        path = order.paths.get(int(key))
        if path is None:
            problems.append(Problem(ProblemKind.SOURCE, f"state.{key}", "state for an index no param group holds"))
            continue
        states[path] = entry
        problems += _order_checks(path, key, entry, order.shapes.get(path))
    return SourceStates({} if problems else states, problems)  # nothing mapped by a wrong order is kept


def _order_checks(path: str, index: str, entry: dict, shape) -> list[Problem]:
    """The order given must fit the state: the names' own shapes check it (they never choose it)."""
    if shape is None:
        return []
    for key, leaf in entry.items():
        if isinstance(leaf, SourceTensor) and leaf.shape and not fits(tuple(leaf.shape), shape):
            message = (
                f"the order of source_model puts '{path}' (shape {shape}) at index {index}, whose state "
                f"'{key}' has shape {tuple(leaf.shape)}: that is not the order the optimizer was given"
            )
            return [Problem(ProblemKind.SOURCE, path, message)]
    return []


def fits(state_shape: tuple[int, ...], param_shape: tuple[int, ...]) -> bool:
    """Whether state of `state_shape` belongs to a parameter of `param_shape`: the same shape, or
    a statistic of it (the same rank, each size the parameter's or 1: Adafactor's row and column
    variances).

    >>> fits((4, 3), (4, 3)), fits((4, 1), (4, 3)), fits((1, 3), (4, 3)), fits((5, 3), (4, 3))
    (True, True, True, False)
    """
    return len(state_shape) == len(param_shape) and all(s in (p, 1) for s, p in zip(state_shape, param_shape))


def _groups(node) -> list[Group] | None:
    """The param groups of a torch state dict, or ``None`` when they do not list integer indices."""
    if type(node) is not dict:
        return None
    groups = []
    for group in node.values():
        params = [_plain(v) for v in group.get("params", {}).values()] if type(group) is dict else []
        if not all(type(i) is int for i in params):
            return None
        names = group.get("param_names") if type(group) is dict else None
        plain_names = [_plain(v) for v in names.values()] if type(names) is dict else None
        valid = plain_names is not None and all(isinstance(n, str) for n in plain_names)
        groups.append(Group(params, plain_names if valid else None))
    return groups


def _keyed_by_index(state: dict, groups: list[Group]) -> bool:
    return any(g.params for g in groups) and all(k.isdigit() for k in state)


def _plain(leaf):
    """A Python value of the source back as itself: numbers, strings; anything else as ``None``."""
    if isinstance(leaf, MemoryTensor) and leaf.number is not None:
        return leaf.number
    if isinstance(leaf, Value):
        return leaf.value
    return None if leaf is SKIP else leaf
