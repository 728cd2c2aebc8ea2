"""Sharded destinations (FSDP2, tensor parallel) and the agreement that keeps ranks in step.

A destination tensor that is a ``DTensor`` is planned on its global shape and
dtype, so reports and errors read exactly as for an unsharded model; writing
fills only this rank's local shard, reading from the source only the block of
the global tensor that shard holds (`SourceTensor.read_slice_into`).

When the destination holds DTensors and a process group is up, every rank
reports its verdict (after planning, and again after writing) through one
``all_gather_object``: if any rank failed, every rank raises the same error,
and none is left waiting in a later collective. Nothing else communicates;
each rank reads its own blocks.
"""

from __future__ import annotations

import itertools
import sys

import torch
import torch.distributed as dist

from ._report import LoadError, Problem, ProblemKind, SourceError


def _tensor_module():
    """``torch.distributed.tensor`` if anything imported it. Importing it costs most of a
    second, and no DTensor can exist before it is imported, so structload never does."""
    return sys.modules.get("torch.distributed.tensor")


def is_dtensor(tensor) -> bool:
    module = _tensor_module()
    return module is not None and isinstance(tensor, module.DTensor)


def dtensor_class() -> type | None:
    """The ``DTensor`` class, or ``None`` while no DTensor can exist (its module is not imported)."""
    module = _tensor_module()
    return module.DTensor if module is not None else None


def dtensor_problem(tensor) -> str | None:
    """Why a DTensor destination cannot be loaded as it is, or ``None``."""
    module = _tensor_module()
    unsupported = [p for p in tensor.placements if not isinstance(p, (module.Shard, module.Replicate))]
    if unsupported:
        return f"a DTensor with placement {unsupported[0]} cannot be loaded (only Shard and Replicate)"
    if tensor.to_local().is_meta:
        return "a sharded (DTensor) tensor on the meta device; call model.to_empty(device=...) before loading"
    return None


def local_block(tensor) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(starts, sizes)``: the block of the global tensor this rank's shard holds."""
    try:  # the helper DCP itself uses: any mesh, any mix of Shard and Replicate
        from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

        sizes, starts = compute_local_shape_and_global_offset(tensor.shape, tensor.device_mesh, tensor.placements)
        return tuple(starts), tuple(sizes)
    except ImportError:
        return _block_1d(tensor)


def _block_1d(tensor) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The same for a 1-D mesh, as ``torch.chunk`` splits a sharded dim."""
    starts, sizes = [0] * tensor.dim(), list(tensor.shape)
    (placement,) = tensor.placements
    if isinstance(placement, _tensor_module().Shard):
        d, n = placement.dim, tensor.device_mesh.size()
        chunk = -(-tensor.shape[d] // n)
        starts[d] = min(tensor.device_mesh.get_local_rank() * chunk, tensor.shape[d])
        sizes[d] = max(0, min(chunk, tensor.shape[d] - starts[d]))
    return tuple(starts), tuple(sizes)


def holds_dtensors(dst) -> bool:
    """Whether ranks must agree on this load: a process group is up and `dst` holds DTensors."""
    if _tensor_module() is None or not dist.is_available() or not dist.is_initialized():
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
