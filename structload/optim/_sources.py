"""Every kind of optimizer-state source as one flat mapping: ``{param_path: {state_key: leaf}}``.

- the tree of `structload.optimizer_state` (nested by path, in memory or from a file);
- a torch ``optimizer.state_dict()``, keyed by index: see `_order`;
- an FQN-keyed dict (``torch.distributed.checkpoint.state_dict.get_optimizer_state_dict``):
  its ``state`` is already a tree by path.

Leaves are source leaves (`SourceTensor`, ``SKIP``, `BadLeaf`, ...), so a file
source stays lazy: nothing here reads tensor data.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import NamedTuple

import torch

from .._report import Problem, ProblemKind
from ..sources import SKIP, MemoryTensor, SourceTensor, to_source_tree
from ..sources._leaves import Value
from ..sources.memory import leaf_from_value, tensor_leaf
from ._order import Group, index_paths


class SourceStates(NamedTuple):
    """Per source parameter path, its state (``{}``: held, no state yet); and what was wrong."""

    states: dict[str, dict[str, object]]
    problems: list[Problem]
    readable: bool = True  # False: the source says nothing usable (no order for its indices, say)


def read_states(src, source_model, model: torch.nn.Module, rename=None) -> SourceStates:
    """The states of `src`, whatever kind of optimizer-state source it is (`rename` is the load's).

    An in-memory nested dict is read as it is (its tensors become leaves one by one, much faster
    than building its source tree first); anything else, flat dotted names included (a flattened
    ``get_optimizer_state_dict``), through `to_source_tree`, which nests them."""
    raw = _in_memory(src)
    return _states_of(src if raw else to_source_tree(src), source_model, model, rename, _raw_leaf if raw else _same)


def memory_states(src, source_model, model: torch.nn.Module) -> SourceStates | None:
    """The states of an in-memory nested dict with its values as they are (tensors, numbers), not
    made into source leaves: what the fast lane (`_fast`) checks. ``None`` for any other source."""
    return _states_of(src, source_model, model, None, _as_is) if _in_memory(src) else None


def _in_memory(src) -> bool:
    """An in-memory nested dict, read as it is; flat dotted names are nested by `to_source_tree`."""
    return (type(src) is dict or type(src) is OrderedDict) and not any("." in str(k) for k in src)


def _states_of(node, source_model, model, rename, leaf) -> SourceStates:
    if not isinstance(node, Mapping):
        problem = Problem(ProblemKind.SOURCE, "", "the source is a single value, not optimizer state")
        return SourceStates({}, [problem], readable=False)
    if "state" in node and "param_groups" in node:
        groups = _groups(node["param_groups"])
        state = node["state"] if isinstance(node["state"], Mapping) else {}
        if groups is not None and _keyed_by_index(state, groups):
            return _by_index(state, groups, source_model, model, rename, leaf)
        node = state  # keyed by path (FQN): a tree like optimizer_state's
    return _by_path(node, leaf)


def _raw_leaf(value):
    """The source leaf of an in-memory value (a tensor, a number, ``None``...)."""
    if type(value) is torch.Tensor:  # the common case, first
        return tensor_leaf(value)
    leaf = leaf_from_value(value)
    return leaf if leaf is not None else Value(value, f"a value of type {type(value).__name__} is not a tensor")


def _same(leaf):
    return leaf


def _as_is(value):
    """Like `_same`, for in-memory values the fast lane reads as they are (`memory_states`)."""
    return value


def _by_path(tree: Mapping, leaf) -> SourceStates:
    states: dict[str, dict] = {}
    _param_nodes(tree, "", leaf, states)
    problems = []
    if "" in states:
        message = f"state keys {sorted(states.pop(''))} at the root: optimizer state is keyed by parameter path"
        problems.append(Problem(ProblemKind.SOURCE, "", message))
    return SourceStates(states, problems)


def _param_nodes(tree: Mapping, path: str, leaf, states: dict[str, dict]) -> None:
    """Add ``path: state`` to `states` for every node whose children are leaves (or that is empty).
    A dotted name among the leaves is a flat ``param_path.state_key`` (a flat dict, a file)."""
    state: dict = {}
    prefix = f"{path}." if path else ""
    for name, value in tree.items():
        if type(value) is torch.Tensor and type(name) is str and "." not in name:  # the common case, first
            state[name] = leaf(value)
        elif type(value) is dict or isinstance(value, Mapping):
            _param_nodes(value, prefix + str(name), leaf, states)
        elif type(name) is str and "." not in name:
            state[name] = leaf(value)
        else:
            param, _, key = str(name).rpartition(".")
            states.setdefault(prefix + param if param else path, {})[key] = leaf(value)
    if state or (not tree and path):
        states.setdefault(path, {}).update(state)


def _by_index(state: Mapping, groups: list[Group], source_model, model, rename, leaf) -> SourceStates:
    order, problems = index_paths(groups, source_model, model, rename)
    if problems:
        return SourceStates({}, problems, readable=False)
    states: dict[str, dict] = {path: {} for path in order.paths.values()}
    for key, entry in state.items():
        path = order.paths.get(int(key))
        if path is None:
            problems.append(Problem(ProblemKind.SOURCE, f"state.{key}", "state for an index no param group holds"))
            continue
        # values as they are (the fast lane's `_as_is`): a copy of the entry, keys unchanged (it checks them)
        entry = dict(entry) if leaf is _as_is else {str(k): leaf(v) for k, v in entry.items()}
        states[path] = entry
        if order.shapes:
            problems += _order_checks(path, key, entry, order.shapes.get(path))
    return SourceStates({} if problems else states, problems, readable=not problems)  # nothing from a wrong order


def _order_checks(path: str, index: str, entry: dict, shape) -> list[Problem]:
    """The order given must fit the state: the names' own shapes check it (they never choose it)."""
    if shape is None:
        return []
    for key, leaf in entry.items():
        if isinstance(leaf, (SourceTensor, torch.Tensor)) and leaf.shape and not fits(tuple(leaf.shape), shape):
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
    groups = []
    for group in _sequence(node):
        params = [_plain(v) for v in _sequence(group.get("params", ()))] if isinstance(group, Mapping) else []
        if not all(type(i) is int for i in params):
            return None
        names = group.get("param_names") if isinstance(group, Mapping) else None
        plain_names = [_plain(v) for v in _sequence(names)] if names is not None else None
        valid = plain_names is not None and all(isinstance(n, str) for n in plain_names)
        groups.append(Group(params, plain_names if valid else None))
    return groups


def _sequence(node) -> list:
    """The items of a list: itself in memory, a dict ``{"0": ..., "1": ...}`` in a source tree."""
    if isinstance(node, (list, tuple)):
        return list(node)
    return list(node.values()) if isinstance(node, Mapping) else []


def _keyed_by_index(state: Mapping, groups: list[Group]) -> bool:
    return any(g.params for g in groups) and all(str(k).isdigit() for k in state)


def _plain(leaf):
    """A Python value of the source back as itself: numbers, strings; anything else as ``None``."""
    if isinstance(leaf, MemoryTensor) and leaf.number is not None:
        return leaf.number
    if isinstance(leaf, Value):
        return leaf.value
    return None if leaf is SKIP else leaf
