"""Which parameter path each index of a torch ``optimizer.state_dict()`` stands for.

torch numbers parameters in the order the optimizer was given them, group
after group. The names come from the state dict's own ``param_names``
(optimizers built from ``named_parameters()``), or from ``source_model``: the
model it was saved with, a list of names (one list per group when there are
several), or a torch-pickled state dict, which keeps insertion order. What
cannot give the order is a ``source`` problem that says what to pass; shapes
only check an order, they never choose one.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import NamedTuple

import torch

from .._rename import compile_rename
from .._render.text import plural
from .._report import Problem, ProblemKind
from ..sources import SourceTensor, iter_leaves
from ..sources.tree import SourceTree, open_source

WHAT_TO_PASS = (
    "pass source_model= (the model the state was saved with, a list of its parameter names in "
    "the optimizer's order, or the model's torch-saved state dict)"
)
PER_GROUP = "pass source_model= as one list of parameter names per param group"


class Group(NamedTuple):
    """One param group of a torch ``state_dict()``: its parameter indices, and names if it has them."""

    params: list[int]
    names: list[str] | None


class Order(NamedTuple):
    """Index -> source parameter path; and each named parameter's shape, where the names' source knows it."""

    paths: dict[int, str]
    shapes: dict[str, tuple[int, ...]]


def index_paths(groups: list[Group], source_model, model: torch.nn.Module, rename=None) -> tuple[Order, list[Problem]]:
    """The source path of every index in `groups`, or the problem that says what to pass.
    `rename` (the load's) tells the model's buffers among a state dict's names."""
    if groups and all(g.names is not None and len(g.names) == len(g.params) for g in groups):
        return Order({i: n for g in groups for i, n in zip(g.params, g.names or ())}, {}), []
    if source_model is None:
        return _no_order(f"the optimizer state is keyed by index and has no param_names: {WHAT_TO_PASS}")
    names, shapes, problem = _names(source_model, groups, model, rename)
    if problem:
        return _no_order(problem)
    for g, (group, group_names) in enumerate(zip(groups, names)):
        if len(group_names) != len(group.params):
            where = f"param group {g}" if len(groups) > 1 else "the optimizer"
            return _no_order(
                f"source_model gives {plural(len(group_names), 'parameter name')}, but {where} holds "
                f"{len(group.params)}: pass the names of exactly the parameters the optimizer was given, in order"
            )
    return Order({i: n for group, ns in zip(groups, names) for i, n in zip(group.params, ns)}, shapes), []


def _no_order(message: str) -> tuple[Order, list[Problem]]:
    return Order({}, {}), [Problem(ProblemKind.SOURCE, "", message)]


def _names(source_model, groups: list[Group], model, rename) -> tuple[list[list[str]], dict, str]:
    """One list of names per group from `source_model`, the shapes it knows, or why it cannot say."""
    several = len(groups) > 1
    if isinstance(source_model, (list, tuple)) and all(isinstance(n, str) for n in source_model):
        return ([list(source_model)], {}, "") if not several else ([], {}, f"{len(groups)} param groups: {PER_GROUP}")
    if isinstance(source_model, (list, tuple)) and all(isinstance(n, (list, tuple)) for n in source_model):
        if len(source_model) != len(groups):
            return [], {}, f"source_model has {len(source_model)} lists of names, the state {len(groups)} param groups"
        return [list(names) for names in source_model], {}, ""
    if isinstance(source_model, (str, os.PathLike, SourceTree)):
        source_model = open_source(source_model)
        if not _keeps_order(source_model.origin):
            where = os.path.basename(source_model.origin) or "this source"
            return [], {}, f"{where} sorts its names and cannot give the parameters' order: {WHAT_TO_PASS}"
    if several:
        reason = f"{len(groups)} param groups, and a model cannot say which group held which parameter"
        return [], {}, f"{reason}: {PER_GROUP}"
    if isinstance(source_model, torch.nn.Module):
        shapes = {n: tuple(p.shape) for n, p in source_model.named_parameters()}
        trainable = [n for n, p in source_model.named_parameters() if p.requires_grad]
        names = list(shapes) if len(shapes) == len(groups[0].params) else trainable
        return [names], shapes, ""
    return _names_of_state_dict(source_model, len(groups[0].params), model, rename)


def _names_of_state_dict(state_dict, count: int, model, rename) -> tuple[list[list[str]], dict, str]:
    """The parameter names of a state dict, in insertion order: its floating-point tensors, less
    the destination's buffers (running statistics) when that is what makes the count agree."""
    if isinstance(state_dict, SourceTree):
        leaves = list(iter_leaves(state_dict.node))
    elif isinstance(state_dict, Mapping):
        leaves = list(iter_leaves(open_source(dict(state_dict)).node))
    else:
        return [], {}, f"source_model cannot be a {type(state_dict).__name__}: {WHAT_TO_PASS}"
    tensors = {p: leaf for p, leaf in leaves if isinstance(leaf, SourceTensor) and _floating(leaf)}
    shapes = {p: tuple(leaf.shape) for p, leaf in tensors.items()}
    names = list(tensors)
    if len(names) != count:
        buffers = {n for n, _ in model.named_buffers()}
        renamer = compile_rename(rename) or (lambda name: name)
        names = [n for n in names if renamer(n) not in buffers]
    return [names], shapes, ""


def _floating(leaf: SourceTensor) -> bool:
    return leaf.dtype is not None and (leaf.dtype.is_floating_point or leaf.dtype.is_complex)


def _keeps_order(origin: str) -> bool:
    """Whether a file keeps its names in insertion order: a torch file does (zip or legacy pickle);
    safetensors headers, indexes, npz and DCP metadata sort them, and memory sources are dicts."""
    if not origin:
        return True
    if os.path.isdir(origin) or not os.path.isfile(origin):
        return False
    with open(origin, "rb") as file:
        magic = file.read(2)
    return magic == b"PK" or magic[:1] == b"\x80"
