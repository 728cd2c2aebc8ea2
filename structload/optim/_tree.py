"""The optimizer's parameters by path, and `optimizer_state`: its state as a tree mirroring the model."""

from __future__ import annotations

from typing import NamedTuple

import torch

from .._report import Problem, ProblemKind
from ..sources.nesting import insert


class Held(NamedTuple):
    """A parameter the optimizer holds: its path in the model, the tensor, its param group."""

    path: str
    param: torch.Tensor
    group: int


class Parameters(NamedTuple):
    """The model's parameters as the optimizer sees them."""

    held: list[Held]  # in the model's order, each at its first path (a tied parameter is held once)
    not_held: set[str]  # every path of a model parameter the optimizer does not hold (frozen, say)
    aliases: dict[str, list[str]]  # a tied parameter's first path -> its other paths (one tensor, one state)
    problems: list[Problem]  # a parameter of the optimizer that the model does not have


def held_parameters(optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> Parameters:
    """The parameters `optimizer` holds, by path in `model`, and the model's others."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"expected a torch.optim.Optimizer, got {type(optimizer).__name__}")
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"expected the optimizer's nn.Module, got {type(model).__name__}")
    group_of = {id(p): g for g, group in enumerate(optimizer.param_groups) for p in group["params"]}
    held, first_path, not_held = [], {}, set()
    aliases: dict[str, list[str]] = {}
    for path, param in _named_parameters(model):
        key = id(param)
        if key not in group_of:
            not_held.add(path)
        elif key not in first_path:
            held.append(Held(path, param, group_of[key]))
            first_path[key] = path
        else:
            aliases.setdefault(first_path[key], []).append(path)
    problems: list[Problem] = []
    if len(first_path) == len(group_of):  # every parameter of the optimizer is in the model (the common case)
        return Parameters(held, not_held, aliases, problems)
    for g, group in enumerate(optimizer.param_groups):
        for i, param in enumerate(group["params"]):
            if id(param) not in first_path:
                message = f"the optimizer holds a parameter of shape {tuple(param.shape)} that the model does not have"
                problems.append(Problem(ProblemKind.TYPE, f"param_groups.{g}.params.{i}", message))
    return Parameters(held, not_held, aliases, problems)


def _named_parameters(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """``model.named_parameters(remove_duplicate=False)``, without its generators per module (the
    cost that counts on a model with 20k parameters)."""
    out: list[tuple[str, torch.Tensor]] = []
    _add_parameters(model, "", out)
    return out


def _add_parameters(module: torch.nn.Module, prefix: str, out: list) -> None:
    for name, param in module._parameters.items():
        if param is not None:
            out.append((prefix + name, param))
    for name, child in module._modules.items():
        if child is not None:
            _add_parameters(child, f"{prefix}{name}.", out)


def optimizer_state(optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> dict:
    """The optimizer's per-parameter state as a nested tree mirroring `model` (like `structload.state`).

    At each parameter's path, a dict of its state (tensors share storage with
    the optimizer's, no copies); ``{}`` where the optimizer holds the
    parameter but has no state for it yet. Parameters the optimizer does not
    hold (frozen ones, say) are left out. Param groups and hyperparameters
    are not part of the tree: they belong to the optimizer being loaded into.

    Examples:
        >>> import torch, structload as sl
        >>> model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))
        >>> model[0].requires_grad_(False)
        Linear(in_features=2, out_features=3, bias=True)
        >>> adam = torch.optim.Adam([p for p in model.parameters() if p.requires_grad])
        >>> sl.optimizer_state(adam, model)
        {'1': {'weight': {}, 'bias': {}}}
        >>> model(torch.ones(4, 2)).sum().backward()
        >>> adam.step()
        >>> tree = sl.optimizer_state(adam, model)
        >>> sorted(tree["1"]["weight"]), tree["1"]["weight"]["exp_avg"].shape
        (['exp_avg', 'exp_avg_sq', 'step'], torch.Size([1, 3]))

        Loading the tree back reproduces the state, by path:

        >>> sl.load_optimizer(adam, model, tree).loaded[:3]
        ['1.weight.step', '1.weight.exp_avg', '1.weight.exp_avg_sq']
    """
    parameters = held_parameters(optimizer, model)
    if parameters.problems:
        raise ValueError("; ".join(str(p) for p in parameters.problems))
    tree: dict = {}
    for path, param, _ in parameters.held:
        state = optimizer.state.get(param, {})
        entry = {key: value.detach() if isinstance(value, torch.Tensor) else value for key, value in state.items()}
        insert(tree, path, entry)
    return tree
