"""`load_optimizer`: optimizer state matched by parameter path, through the load pipeline."""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from typing import NamedTuple

import torch

from .._align.aligner import align as structural_align
from .._align.alignment import Alignment
from .._apply import apply_plan
from .._distributed.agreement import holds_dtensors, in_step
from .._options import LoadOptions
from .._plan.plan import Plan, make_plan
from .._plan.select import Selection
from .._report import LoadError, LoadReport, Problem, ProblemKind
from .._runtime import collector_paused
from ..sources import SourceTensor
from ..sources.tree import SourceTree
from ._dest import DestStates, dest_states, install
from ._fast import fast_load
from ._fuse import fuse_states, rename_states
from ._report import OptimizerReport, optimizer_report
from ._sources import read_states
from ._tree import Held, Parameters, held_parameters


def load_optimizer(
    optimizer: torch.optim.Optimizer,
    model: torch.nn.Module,
    src,
    *,
    source_model=None,
    strict: bool = True,
    include=None,
    exclude=None,
    filter=None,
    rename=None,
    convert=None,
    align=False,
    dry_run: bool = False,
    progress: bool | None = None,
) -> LoadReport:
    """Load optimizer state into `optimizer` by parameter path, whatever changed in the model.

    `model` is the module whose parameters `optimizer` holds. `src` is the tree
    of `structload.optimizer_state` (in memory, or any file or `structload.open`
    subtree holding it), a torch ``optimizer.state_dict()`` (its indices become
    paths through its ``param_names``, else through `source_model`: the model
    it was saved with, a list of parameter names in order, one list per param
    group, or a torch-saved state dict of the model), or an FQN-keyed dict
    (``get_optimizer_state_dict``). Whatever cannot give the order is a
    ``source`` problem saying what to pass: state is never paired by shape.

    Examples:
        >>> import torch, structload as sl
        >>> old = torch.nn.ModuleDict({"a": torch.nn.Linear(2, 2), "b": torch.nn.Linear(2, 1)})
        >>> adam = torch.optim.Adam(old.parameters())
        >>> old["b"](old["a"](torch.ones(1, 2))).sum().backward(); adam.step()
        >>> saved = adam.state_dict()  # keyed by index: 0 is a.weight, 3 is b.bias

        The new model registers its layers in another order; `load_state_dict`
        would put a.weight's moments on b.weight. By path, each finds its own:

        >>> new = torch.nn.ModuleDict({"b": torch.nn.Linear(2, 1), "a": torch.nn.Linear(2, 2)})
        >>> new.load_state_dict(old.state_dict())
        <All keys matched successfully>
        >>> resumed = torch.optim.Adam(new.parameters())
        >>> report = sl.load_optimizer(resumed, new, saved, source_model=old)
        >>> report.loaded[:3]
        ['b.weight.step', 'b.weight.exp_avg', 'b.weight.exp_avg_sq']
        >>> torch.equal(resumed.state[new["a"].weight]["exp_avg"], adam.state[old["a"].weight]["exp_avg"])
        True

    Options are `structload.load`'s, matched on parameter paths: ``strict``,
    ``include`` / ``exclude`` / ``filter`` (on the model's paths), ``rename``
    and ``convert`` (the same mapping as the weights': a ``Concat`` into a
    fused qkv concatenates ``exp_avg`` the same way), ``align``,
    ``dry_run`` and ``progress``. Report paths are ``param_path.state_key``.

    Extended help -- the rules:

    - State tensors of the parameter's shape go through its converters;
      scalar state (``step``) is copied, and pieces fused into one parameter
      must agree (else ``tied``); a converted state of any other shape is a
      ``type`` problem.
    - A held parameter with no source state is ``missing`` (non-strict: it
      starts fresh, as a new parameter would; so does one with any key
      missing or mismatched). A parameter the source holds with ``{}`` starts
      fresh without a problem. Source state of a model parameter the
      optimizer does not hold (frozen here) is listed in ``report.ignored``.
    - The optimizer's param groups and hyperparameters are kept; existing
      state tensors are written in place; new ones are made as the optimizer
      would (the parameter's dtype and device) and installed only after
      every write succeeded. A strict failure leaves the optimizer unchanged.
    """
    options = LoadOptions(
        strict=strict,
        include=include,
        exclude=exclude,
        filter=filter,
        rename=rename,
        convert=convert,
        align=align,
        dry_run=dry_run,
        progress=progress,
    )
    with collector_paused():  # as in `load`: a load allocates small objects per tensor; see structload._runtime
        return _load(optimizer, model, src, source_model, options)


def _load(optimizer, model, src, source_model, options: LoadOptions) -> LoadReport:
    """`load_optimizer`, step by step, with the collector paused."""
    # 1. the parameters the optimizer holds, by path in the model
    parameters = held_parameters(optimizer, model)
    held, problems = parameters.held, list(parameters.problems)
    if _common_case(parameters, options):  # resuming the same model: see _fast
        loaded = fast_load(optimizer, held, src, source_model, model, options.progress)
        if loaded is not None:
            return OptimizerReport(target=type(optimizer).__name__, loaded=loaded)
    if isinstance(optimizer, torch.optim.LBFGS):  # its state is not per parameter: nothing to pair by path
        return _nothing_to_pair(optimizer, [*problems, Problem(ProblemKind.TYPE, "", LBFGS)], options.strict)
    # 2. the source's state per source parameter path, whatever its kind
    source = read_states(src, source_model, model, options.rename)
    problems += source.problems
    if not source.readable:  # nothing to pair: only what says why, not a "missing" for every parameter
        return _nothing_to_pair(optimizer, problems, options.strict)
    # 3. the mapping: align (if asked), rename and convert, on parameter paths
    rename, convert = _mapping(model, source.states, source_model, options)
    states, found = rename_states(source.states, rename)
    fused = fuse_states(states, convert, {h.path: tuple(h.param.shape) for h in held} if convert else {})
    problems += found + fused.problems
    # 4. state of model parameters the optimizer does not hold is ignored, not unexpected
    states, ignored = _held_only(fused.states, parameters.not_held)
    # 5. include / exclude / filter on the model's paths
    left_out = options.selection.left_out(model)
    problems += options.selection.unmatched_patterns()
    left_out_params = frozenset(h.path for h in held if left_out is not None and h.path in left_out.paths)
    # 6. the destination tree, planned against the source tree, written, installed
    dest = dest_states(optimizer, held, states, parameters.aliases)
    load = _Load(optimizer, held, dest, left_out_params, fused.rejected)
    report = load.run(_source_tree(states), problems, options)
    report.ignored += ignored
    return report


LBFGS = (
    "LBFGS keeps one state for all its parameters together (its history 'old_dirs', 'old_stps', 'ro' and "
    "'d', 'prev_flat_grad' are flat over every parameter, in the optimizer's order), not a state per parameter: "
    "it cannot be loaded by parameter path. With the model unchanged, optimizer.load_state_dict() restores it; "
    "after a change, let LBFGS start its history afresh (strict=False leaves the optimizer as it is)"
)


def _nothing_to_pair(optimizer, problems: list[Problem], strict: bool) -> LoadReport:
    """The report of a load that pairs nothing (only what says why, not a "missing" per parameter)."""
    report = OptimizerReport(target=type(optimizer).__name__, problems=problems, applied=False)
    if strict:
        raise LoadError(problems, report)
    return report


def _common_case(parameters: Parameters, options: LoadOptions) -> bool:
    """Nothing to map, select or dry-run, and each parameter at one path: the fast lane may take it."""
    plain = options.rename is None and not options.convert and not options.aligns
    return (
        plain
        and options.selection.everything
        and not options.dry_run
        and not parameters.problems
        and not parameters.aliases
    )


class _Load(NamedTuple):
    """Step 6 of `load_optimizer`: plan, raise or write, install. The ranks of a sharded optimizer
    agree after each step, so all raise the same error or none does."""

    optimizer: torch.optim.Optimizer
    held: list[Held]
    dest: DestStates
    left_out: frozenset[str]  # parameter paths include / exclude / filter leave out
    reset: set[str]  # parameters whose state cannot be used: they start fresh

    def run(self, tree: dict, problems: list, options: LoadOptions) -> LoadReport:
        collective = holds_dtensors(self.dest.tree)
        target = type(self.optimizer).__name__
        plan = in_step(collective, target, functools.partial(self.plan, tree, problems, options.strict, target))
        if options.dry_run:
            return optimizer_report(plan.report(applied=False))
        return in_step(collective, target, functools.partial(self.write, plan, options.progress))

    def plan(self, tree: dict, problems: list, strict: bool, target: str) -> Plan:
        left_out = self.left_out
        keep = Selection(filter=lambda path, _node: path.rsplit(".", 1)[0] not in left_out) if left_out else Selection()
        plan = make_plan(self.dest.tree, tree, keep, problems)
        plan.target = target
        plan.problems = by_parameter(plan.problems, self.dest.entries)
        if strict and plan.problems:
            raise LoadError(plan.problems, optimizer_report(plan.report(applied=False)))
        return plan

    def write(self, plan: Plan, progress) -> LoadReport:
        apply_plan(plan, torch.device("cpu"), progress)
        report = optimizer_report(plan.report(applied=True))
        install(self.optimizer, self.held, self.dest, report, self.left_out, self.reset)
        return report


def by_parameter(problems: list[Problem], entries: dict[str, dict]) -> list[Problem]:
    """One ``missing`` problem per parameter whose state the source lacks entirely, instead of one
    per state key (the plan sees the flat ``param_path.state_key`` names)."""
    missing: dict[str, list[str]] = {}
    for problem in problems:
        if problem.kind == ProblemKind.MISSING and problem.message == "missing in source":
            path, key = problem.path.rsplit(".", 1)
            missing.setdefault(path, []).append(key)
    whole = {path for path, keys in missing.items() if path in entries and len(keys) == len(entries[path])}
    if not whole:
        return problems
    out, done = [], set()
    for problem in problems:
        path = problem.path.rsplit(".", 1)[0]
        if problem.kind != ProblemKind.MISSING or path not in whole:
            out.append(problem)
        elif path not in done:
            done.add(path)
            out.append(Problem(ProblemKind.MISSING, path, f"no state in source ({', '.join(missing[path])})"))
    return out


def _held_only(states: dict, not_held: set[str]) -> tuple[dict, list[str]]:
    """The states of held parameters (and of paths the model lacks, which stay unexpected); the
    ``path.key`` of every state of a model parameter the optimizer does not hold."""
    ignored = [f"{p}.{k}" for p, state in states.items() if p in not_held for k in state]
    return {p: s for p, s in states.items() if p not in not_held}, ignored


def _source_tree(states: dict) -> dict:
    """The source as the plan reads it: flat, ``param_path.state_key`` -> leaf, like the destination."""
    return {f"{path}.{key}": leaf for path, state in states.items() for key, leaf in state.items()}


def _mapping(model, states: dict, source_model, options: LoadOptions):
    """The ``rename`` and ``convert`` the load uses: the ones given, or an alignment's (API section 7)
    of the model against the source's weights (`source_model`, or each parameter's largest state tensor)."""
    if not options.aligns:
        return options.rename, options.convert
    if isinstance(options.align, Alignment):
        alignment = options.align
    else:
        weights = source_model if _has_weights(source_model) else _weights_like(states)
        extra = dict(options.align) if isinstance(options.align, dict) else {}
        extra.setdefault("rename", options.rename)
        alignment = structural_align(model, weights, **extra)
    return alignment.rename, list(alignment.convert) + list(options.convert or [])


def _has_weights(source_model) -> bool:
    return isinstance(source_model, (torch.nn.Module, Mapping, SourceTree, str, os.PathLike))


def _weights_like(states: dict) -> dict:
    """A stand-in for the source's weights: each parameter's largest state tensor has its shape."""
    weights = {}
    for path, state in states.items():
        tensors = [leaf for leaf in state.values() if isinstance(leaf, SourceTensor) and leaf.shape]
        if tensors:
            weights[path] = max(tensors, key=lambda leaf: leaf.nbytes)
    return weights
