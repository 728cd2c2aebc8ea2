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
    >>> planned = on_meta(converter, "experts.gate_up_proj", None, leaves)
    >>> {name: tuple(t.shape) for name, t in planned.items()}
    {'experts.gate_up_proj': (4, 4, 3)}
    >>> lazy(converter, leaves, planned)["experts.gate_up_proj"].read()[3, :, 0].tolist()
    [3.0, 3.0, 3.0, 3.0]
"""

from __future__ import annotations

import torch

from ..convert import Concat, Stack
from ..sources import SourceTensor
from ..sources._leaves import ComputedTensor
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


def lazy(converter, leaves: dict[str, list[SourceTensor]], planned: dict[str, torch.Tensor]):
    """The outputs as structload views and gathers, or ``None`` when an operation has no lazy
    form here (or the lazy form would disagree with transformers' own run on meta)."""
    try:
        made = _lazy_outputs(converter, leaves)
    except ValueError:  # shapes a gather refuses: transformers' own run decides what happens
        return None
    if made is None or len(made) != len(planned):
        return None
    outputs = dict(zip(planned, made))
    for name, leaf in outputs.items():
        if tuple(leaf.shape) != tuple(planned[name].shape) or leaf.dtype != planned[name].dtype:
            return None
    return outputs


def _lazy_outputs(converter, leaves: dict[str, list[SourceTensor]]) -> list[SourceTensor] | None:
    """The outputs, in transformers' order, for the operation chains with a lazy form."""
    from transformers.core_model_loading import Chunk, Concatenate, MergeModulelist, Transpose

    ops = [(type(op), op) for op in converter.operations]
    kinds = [kind for kind, _ in ops]
    groups = [leaves[p] for p in converter.source_patterns if p in leaves]
    if kinds == [MergeModulelist] and len(groups) == 1:
        return [_stack(groups[0], ops[0][1].dim)]
    if kinds == [MergeModulelist, Concatenate]:
        return [_concat([_stack(group, ops[0][1].dim) for group in groups], ops[1][1].dim)]
    if kinds == [Concatenate]:
        return [_concat([leaf for group in groups for leaf in group], ops[0][1].dim)]
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


def _same_dtype(leaves: list[SourceTensor]) -> None:
    if len({leaf.dtype for leaf in leaves}) > 1:
        raise ValueError("mixed dtypes")


def _stack(leaves: list[SourceTensor], dim: int) -> SourceTensor:
    """``torch.stack`` of `leaves`, written entry by entry into the destination."""
    _same_dtype(leaves)
    try:
        return Stack("{i}", into="stacked", dim=dim).combine([str(i) for i in range(len(leaves))], leaves)
    except Exception as bad:  # convert._Bad: shapes that do not stack
        raise ValueError(str(bad)) from None


def _concat(leaves: list[SourceTensor], dim: int) -> SourceTensor:
    """``torch.cat`` of `leaves`, each written into its slice of the destination."""
    _same_dtype(leaves)
    try:
        return Concat(["*"], into="{0}", dim=dim).combine([str(i) for i in range(len(leaves))], leaves)
    except Exception as bad:
        raise ValueError(str(bad)) from None


def _chunks(leaf: SourceTensor, dim: int, n: int) -> list[SourceTensor] | None:
    """``torch.chunk`` into `n` pieces, as narrowed views (``None`` when the pieces are unequal)."""
    dim = dim % len(leaf.shape)
    size = leaf.shape[dim]
    if n == 0 or size % n:
        return None
    step = size // n
    return [narrow(leaf, dim, k * step, step) for k in range(n)]
