"""transformers' conversion operations on structload's lazy source tensors.

`on_meta` runs a ``WeightConverter`` the way ``from_pretrained`` runs it, on ``meta``
stand-ins of its inputs: the names, shapes and dtypes it makes, known before any data is read.
`lazy` builds the same outputs from structload's views and gathers for the operations
checkpoints commonly declare (``MergeModulelist``, ``Concatenate``, ``Chunk``,
``Transpose``): expert lists are read straight into the fused destination tensor, a chunk or a
transpose of a file tensor reads only its bytes. `computed` covers every other operation by
running transformers' own code on the real tensors when they are read.

Examples:
    >>> import torch
    >>> from structload.sources import MemoryTensor
    >>> from transformers.core_model_loading import MergeModulelist, Concatenate, WeightConverter
    >>> converter = WeightConverter(["experts.*.w1.weight", "experts.*.w3.weight"], "experts.gate_up_proj",
    ...                             operations=[MergeModulelist(dim=0), Concatenate(dim=1)])
    >>> leaves = {p: [MemoryTensor(torch.full((2, 3), float(i))) for i in range(4)] for p in converter.source_patterns}
    >>> planned = on_meta(converter, "experts.gate_up_proj", None, leaves)  # transformers' own code, on meta
    >>> {name: tuple(t.shape) for name, t in planned.items()}
    {'experts.gate_up_proj': (4, 4, 3)}
    >>> made = lazy(converter, "experts.gate_up_proj", leaves)  # the same, as a gather read into the destination
    >>> {name: tuple(t.shape) for name, t in made.items()}
    {'experts.gate_up_proj': (4, 4, 3)}
    >>> made["experts.gate_up_proj"].read()[3, :, 0].tolist()
    [3.0, 3.0, 3.0, 3.0]
"""

from __future__ import annotations

import torch

from .._runtime import READERS
from ..sources import SourceTensor
from ..sources._leaves import ComputedTensor
from ..sources.reading import PARALLEL_BYTES, reads_from_file
from ..sources.views import narrow, transpose


def _run(converter, target: str, model, inputs: dict[str, list]) -> dict[str, torch.Tensor]:
    """``converter.convert`` on `inputs` (pattern -> list of zero-argument callables), as
    ``from_pretrained`` calls it; the collected tensors are consumed by the call."""
    converter.collected_tensors.clear()
    for pattern, makers in inputs.items():
        converter.collected_tensors[pattern] = list(makers)
    config = getattr(model, "config", None)
    made = converter.convert(target, model=model, config=config)
    return {name: value[0] if isinstance(value, list) else value for name, value in made.items()}


def on_meta(converter, target: str, model, leaves: dict[str, list[SourceTensor]]) -> dict[str, torch.Tensor]:
    """The tensors `converter` makes from `leaves`, as ``meta`` tensors: names, shapes, dtypes."""

    def stand_in(leaf: SourceTensor):
        return lambda: torch.empty(leaf.shape, dtype=leaf.dtype, device="meta")

    inputs = {pattern: [stand_in(leaf) for leaf in group] for pattern, group in leaves.items()}
    return _run(copy_of(converter), target, model, inputs)


def copy_of(converter):
    import copy

    return copy.deepcopy(converter)


def computed(converter, target: str, model, leaves, planned: dict[str, torch.Tensor]) -> dict[str, SourceTensor]:
    """Outputs made by transformers' own operations, run once when the first of them is read."""
    cache: dict[str, torch.Tensor] = {}

    def reader(name: str):
        def read() -> torch.Tensor:
            if not cache:
                inputs = {p: [leaf.read for leaf in group] for p, group in leaves.items()}
                cache.update(_run(copy_of(converter), target, model, inputs))
            return cache.pop(name)  # each output is read once: drop it as soon as it is handed out

        return read

    return {name: ComputedTensor(t.shape, t.dtype, reader(name)) for name, t in planned.items()}


def lazy(converter, target: str, leaves: dict[str, list[SourceTensor]]) -> dict[str, SourceTensor] | None:
    """The outputs as structload views and gathers, named as ``WeightConverter.convert`` names
    them, or ``None`` when an operation has no lazy form here or the shapes do not fit it
    (transformers' own code then decides, on meta stand-ins)."""
    try:
        made = _lazy_outputs(converter, leaves)
    except ValueError:  # shapes a gather refuses
        return None
    if made is None:
        return None
    names = _full_names(target, list(converter.target_patterns)[: len(made)] if len(made) > 1 else [target])
    return None if names is None or len(names) != len(made) else dict(zip(names, made))


def _full_names(target: str, made: list[str]) -> list[str] | None:
    """transformers' naming of a converter's outputs: the target key's prefix and suffix around the
    first output pattern it contains, put around every output pattern (``WeightConverter.convert``)."""
    for pattern in made:
        if pattern in target:
            prefix, _, suffix = target.partition(pattern)
            return [prefix + p + suffix for p in made]
    return None


def _lazy_outputs(converter, leaves: dict[str, list[SourceTensor]]) -> list[SourceTensor] | None:
    """The outputs, in transformers' order, for the operation chains with a lazy form."""
    from transformers.core_model_loading import Chunk, Concatenate, MergeModulelist, Transpose

    ops = [(type(op), op) for op in converter.operations]
    kinds = [kind for kind, _ in ops]
    groups = [leaves[p] for p in converter.source_patterns if p in leaves]
    if kinds == [MergeModulelist] and len(groups) == 1:
        return [_gather(groups, ops[0][1].dim, 0)]
    if kinds == [MergeModulelist, Concatenate]:
        return [_gather(groups, ops[0][1].dim, ops[1][1].dim)]
    if kinds == [Concatenate]:
        return [_gather(groups, None, ops[0][1].dim)]
    single = groups[0][0] if len(groups) == 1 and len(groups[0]) == 1 else None
    if single is None:
        return None
    op = ops[0][1] if len(ops) == 1 else None
    if isinstance(op, Chunk) and op.num_shards_attribute is None:
        return _chunks(single, op.dim, len(converter.target_patterns))
    if isinstance(op, Transpose) and not op.check_dims:
        ndim = len(single.shape)
        return [transpose(single, op.dim0 % ndim, op.dim1 % ndim)]
    return None


def _gather(groups: list[list[SourceTensor]], stack_dim: int | None, cat_dim: int) -> SourceTensor:
    """``torch.cat([torch.stack(group, stack_dim) for group in groups], cat_dim)`` (with ``stack_dim=None``,
    ``torch.cat`` of every leaf), read straight into the destination, one slice per leaf.

    Raises ``ValueError`` when the shapes or dtypes do not fit together."""
    leaves = [leaf for group in groups for leaf in group]
    if not leaves or len({leaf.dtype for leaf in leaves}) > 1:
        raise ValueError("no tensors, or tensors of mixed dtypes")
    pieces = []  # (shape of each group's piece, its leaves)
    for group in groups:
        if len({tuple(leaf.shape) for leaf in group}) > 1:
            raise ValueError("the tensors of one group differ in shape")
        shape = list(group[0].shape)
        if stack_dim is not None:
            shape.insert(stack_dim % (len(shape) + 1), len(group))
            pieces.append((shape, group))
        else:
            pieces += [(list(leaf.shape), [leaf]) for leaf in group]
    ndim = len(pieces[0][0])
    dim = cat_dim % ndim
    if any(len(s) != ndim or s[:dim] + s[dim + 1 :] != pieces[0][0][:dim] + pieces[0][0][dim + 1 :] for s, _ in pieces):
        raise ValueError("the pieces do not concatenate")
    shape = list(pieces[0][0])
    shape[dim] = sum(s[dim] for s, _ in pieces)
    sdim = None if stack_dim is None else stack_dim % ndim

    def read() -> torch.Tensor:
        made = [torch.stack([leaf.read() for leaf in g], sdim) if sdim is not None else g[0].read() for _, g in pieces]
        return torch.cat(made, dim)

    def write(target: torch.Tensor) -> None:
        parts, start = [], 0
        for piece_shape, group in pieces:
            piece = target.narrow(dim, start, piece_shape[dim])
            start += piece_shape[dim]
            parts += [(leaf, piece.select(sdim, i) if sdim is not None else piece) for i, leaf in enumerate(group)]
        _write_parts(parts)

    return ComputedTensor(shape, leaves[0].dtype, read, write)


def _write_parts(parts: list[tuple[SourceTensor, torch.Tensor]]) -> None:
    """Fill each destination slice from its leaf. Small reads from a file go to the reader threads
    together (a file read splits itself only from 4 MiB up: one expert after the other would use one
    core); anything else is written here, in turn."""
    waiting = []
    for leaf, target in parts:
        parallel = READERS.workers > 1 and leaf.nbytes < PARALLEL_BYTES and reads_from_file(leaf)
        if parallel and target.device.type == "cpu" and leaf.dtype == target.dtype:
            waiting.append(READERS.submit(leaf.read_into, target))
        else:
            leaf.read_into(target)
    for future in waiting:
        future.result()  # the first failure, as the reader raised it


def _chunks(leaf: SourceTensor, dim: int, n: int) -> list[SourceTensor] | None:
    """``torch.chunk`` into `n` pieces, as narrowed views (``None`` when the pieces are unequal)."""
    dim = dim % len(leaf.shape)
    size = leaf.shape[dim]
    if n == 0 or size % n:
        return None
    step = size // n
    return [narrow(leaf, dim, k * step, step) for k in range(n)]
