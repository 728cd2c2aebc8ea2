"""The agreement that keeps the ranks of a sharded load in step.

When the destination holds DTensors and a process group is up, every rank
reports its verdict (after planning, and again after writing) through one
``all_gather_object``: if any rank failed, every rank raises the same error,
and none is left waiting in a later collective. Nothing else communicates;
each rank reads its own blocks (`_distributed`).

>>> in_step(False, "Net", lambda: "planned")  # one process: the step runs alone
'planned'
"""

from __future__ import annotations

import itertools

import torch
import torch.distributed as dist

from .._report import LoadError, Problem, ProblemKind, SourceError
from .dtensors import is_dtensor, tensor_module


def in_step(collective: bool, target: str, step):
    """Run one step of a load. For a sharded destination (`collective`), every rank learns whether
    any rank failed and raises the same error, so none waits forever in a later collective."""
    try:
        result = step()
    except Exception as error:
        if not collective:
            raise
        shared: Exception = agree(error, target) or error
        raise shared from (None if shared is error else error)
    if collective and (failure := agree(None, target)) is not None:
        raise failure
    return result


def holds_dtensors(dst) -> bool:
    """Whether ranks must agree on this load: a process group is up and `dst` holds DTensors."""
    if tensor_module() is None or not dist.is_available() or not dist.is_initialized():
        return False
    if isinstance(dst, torch.nn.Module):  # parameters and buffers directly: no state_dict hooks run
        return any(is_dtensor(t) for t in itertools.chain(dst.parameters(), dst.buffers()))
    import optree

    return any(is_dtensor(leaf) for leaf in optree.tree_leaves(dst, none_is_leaf=True, namespace="structload"))


def agree(failure: BaseException | None, target: str) -> LoadError | None:
    """Every rank calls this with its own failure (or ``None``); every rank gets back the same
    error when any rank failed, ``None`` when all succeeded."""
    mine = None if failure is None else _payload(failure)
    everyone: list = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    failed = [(rank, payload) for rank, payload in enumerate(everyone) if payload is not None]
    if not failed:
        return None
    if isinstance(failure, LoadError) and len(failed) == len(everyone) and all(p == mine for _, p in failed):
        return failure  # the same error on every rank (a shape mismatch): each keeps its own report
    return _combined(failed, len(everyone), target)


def _payload(failure: BaseException) -> tuple:
    if isinstance(failure, LoadError):
        problems = tuple((p.kind, p.path, p.message) for p in failure.problems)
        return (type(failure).__name__, str(failure), problems)
    return (type(failure).__name__, f"{type(failure).__name__}: {failure}", ())


def _combined(failed: list[tuple[int, tuple]], world: int, target: str) -> LoadError:
    problems = []
    for rank, (_, text, rank_problems) in failed:
        problems += [Problem(kind, path, f"rank {rank}: {message}") for kind, path, message in rank_problems]
        if not rank_problems:
            problems.append(Problem(ProblemKind.SOURCE, "", f"rank {rank}: {text}"))
    lines = [f"{len(failed)} of {world} ranks failed loading into {target}"]
    lines += [f"  rank {rank}: {text.splitlines()[0]}" for rank, (_, text, _) in failed]
    kind = SourceError if all(name == "SourceError" for _, (name, _, _) in failed) else LoadError
    error = kind.__new__(kind)
    LoadError.__init__(error, problems, None, message="\n".join(lines))
    return error
