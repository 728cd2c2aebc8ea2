"""The rules: one small pure function per (destination slot, source leaf) pair.

Like the leaf methods of Flux's ``loadmodel!``, each rule looks at one
destination slot and the source leaf the walk paired with it, and returns a
`Verdict`: what the load will do there, or the problem that stops it. No rule
writes anything. Two read tensor data, because their rule is about values: R3's
zero test (a source tensor into an absent slot must be all zeros) here, and
R4's comparison of tied sources (`values_agree`, used by `_ties`).

===========  ===================  =====================================================
slot         source               verdict
===========  ===================  =====================================================
tensor       tensor               R1: loaded (shapes equal, a dtype change is a cast)
sharded      tensor               R1 on the global shape; each rank writes its shard
lazy         tensor               R1 for an uninitialized (lazy) parameter: it takes the source's shape
tensor       None                 R2: skipped
tensor       absent               R3: zeroed
tensor       missing              missing; R3: zeroed when it is a bias beside its module
absent       tensor               R3: dropped when all zeros, else an ``absent`` problem
absent       absent/None/missing  nothing to do
extra        _extra_state         R5: loaded through ``set_extra_state``
ignored      anything             R5: non-persistent buffer, so unexpected if given
any          subtree / bad leaf   a ``type`` problem
===========  ===================  =====================================================

`RULES` holds every (`SlotKind`, `SourceKind`) pair; a test checks it is complete.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from typing import Any, NamedTuple

import torch
from torch.nn.modules.batchnorm import _NormBase

from .._distributed.dtensors import dtensor_problem
from .._empty import built_empty
from .._render.text import dtype_text, shape_text
from .._report import Problem, ProblemKind
from ..sources import ABSENT, SKIP, BadLeaf, ExtraState, SourceTensor
from ..sources._leaves import ConvertedTensor
from .dest import Slot, SlotKind
from .materialized import materialized_dtype
from .records import Entry, Status
from .walk import Clash, Missing


class SourceKind(StrEnum):
    """What the walk paired with a slot: the column of the rules table."""

    TENSOR = "tensor"  # a `SourceTensor`
    SKIP = "skip"  # None: leave the destination as it is (R2)
    ABSENT = "absent"  # False, or a parameter registered as None in a source module (R3)
    MISSING = "missing"  # nothing at all (`_walk.Missing`)
    EXTRA = "extra"  # an `_extra_state` value
    OTHER = "other"  # a subtree, a bad leaf or a clash


class Verdict(NamedTuple):
    """A rule's answer: the outcome, and the problem (kind, message) if any."""

    status: Status
    problem_kind: ProblemKind | None = None
    message: str | None = None
    src_shape: tuple | None = None


def source_kind(leaf) -> SourceKind:
    """The column of the rules table a source leaf falls in."""
    if isinstance(leaf, SourceTensor):
        return SourceKind.TENSOR
    if leaf is SKIP:
        return SourceKind.SKIP
    if leaf is ABSENT:
        return SourceKind.ABSENT
    if isinstance(leaf, Missing):
        return SourceKind.MISSING
    if isinstance(leaf, ExtraState):
        return SourceKind.EXTRA
    return SourceKind.OTHER


# --- tensor destinations ---------------------------------------------------------------


def plain_load(slot: Slot, leaf: SourceTensor, dtype=None) -> bool:
    """Whether R1 loads this pair with nothing to say (the common case, which `judge` takes
    without building a verdict): equal shapes, no imaginary part lost, a destination that can
    be written where it is. `dtype` is ``load(dtype=...)``: what a meta destination is made in."""
    dst = slot.tensor
    return (
        dst.shape == leaf.shape
        and not (leaf.dtype is not None and leaf.dtype.is_complex and loses_imaginary(dst, leaf.dtype, dtype))
        and not (dst.is_meta and slot.owner is None)
    )


def loses_imaginary(dst: torch.Tensor, source_dtype: torch.dtype, dtype=None) -> bool:
    """Whether a complex source tensor lands in a real one: the destination's dtype, or for a meta
    destination the dtype ``load(dtype=...)`` materializes it in (a complex meta tensor made in
    float64 loses the imaginary part as surely as a real one).

    >>> meta = torch.empty(2, dtype=torch.complex64, device="meta")
    >>> loses_imaginary(meta, torch.complex64), loses_imaginary(meta, torch.complex64, torch.float64)
    (False, True)
    """
    return source_dtype.is_complex and not materialized_dtype(dst, source_dtype, dtype).is_complex


def load_tensor(slot: Slot, leaf: SourceTensor, dtype=None) -> Verdict:
    """R1: equal shapes; the dtype may differ (a cast). `dtype`: as for `plain_load`."""
    if plain_load(slot, leaf, dtype):
        return Verdict(Status.LOADED)
    dst = slot.tensor
    if tuple(dst.shape) != tuple(leaf.shape):
        message = f"shape {shape_text(dst.shape)} in destination, {shape_text(leaf.shape)} in source"
        if isinstance(leaf, ConvertedTensor):
            message += f" (made by {leaf.made_by})"
        return Verdict(Status.MISMATCHED, ProblemKind.SHAPE, message, tuple(leaf.shape))
    if leaf.dtype is not None and loses_imaginary(dst, leaf.dtype, dtype):
        made = materialized_dtype(dst, leaf.dtype, dtype)
        made_in = " (the dtype= this meta tensor is materialized in)" if made != dst.dtype else ""
        message = (
            f"source is {dtype_text(leaf.dtype)}, destination {dtype_text(made)}{made_in}: "
            "the imaginary part would be lost"
        )
        return Verdict(Status.MISMATCHED, ProblemKind.TYPE, message, tuple(leaf.shape))
    if dst.is_meta and slot.owner is None:
        message = "a meta tensor in a pytree destination cannot be materialized in place; build it with real tensors"
        return Verdict(Status.MISMATCHED, ProblemKind.TYPE, message, tuple(leaf.shape))
    return Verdict(Status.LOADED)


def load_lazy(slot: Slot, leaf: SourceTensor) -> Verdict:
    """An uninitialized parameter of a lazy module takes the source's shape, as ``load_state_dict`` does."""
    if leaf.dtype is not None and leaf.dtype.is_complex and not slot.tensor.dtype.is_complex:
        message = f"source is {dtype_text(leaf.dtype)}, destination {dtype_text(slot.tensor.dtype)}: the imaginary part would be lost"
        return Verdict(Status.MISMATCHED, ProblemKind.TYPE, message, tuple(leaf.shape))
    return Verdict(Status.LOADED)


def load_shard(slot: Slot, leaf: SourceTensor, dtype=None) -> Verdict:
    """R1 for a DTensor, judged on its global shape; some placements cannot be loaded."""
    verdict = load_tensor(slot, leaf, dtype)
    problem = dtensor_problem(slot.tensor) if verdict.status == Status.LOADED else None
    return Verdict(Status.MISMATCHED, ProblemKind.TYPE, problem, tuple(leaf.shape)) if problem else verdict


def skip(slot: Slot, leaf) -> Verdict:
    """R2: ``None`` leaves the destination as it is."""
    return Verdict(Status.SKIPPED)


def zero(slot: Slot, leaf) -> Verdict:
    """R3: the source computed without this bias; zero reproduces it. Only additive offsets:
    zero does not reproduce a missing scale or statistic (a norm without affine weights)."""
    if slot.additive:
        return Verdict(Status.ZEROED)
    return Verdict(Status.MISSING, ProblemKind.ABSENT, NOT_A_BIAS)


NOT_A_BIAS = (
    "absent in source, but not a bias: zero would not reproduce what the source computed "
    "(a norm built without affine weights scales by 1; statistics never tracked have no value); "
    "give it a value, skip it with None, or exclude it"
)


def missing(slot: Slot, leaf: Missing) -> Verdict:
    """Nothing in the source. R3: a bias its module's source node lacks is absent there.
    A BatchNorm's ``num_batches_tracked`` (absent from checkpoints before PyTorch 0.4.1) keeps
    its value, as ``load_state_dict`` does (0 on meta)."""
    if leaf.beside and slot.additive:
        return Verdict(Status.ZEROED)
    if leaf.beside and slot.name == "num_batches_tracked" and isinstance(slot.owner, _NormBase):
        return Verdict(Status.ZEROED if slot.tensor.is_meta else Status.SKIPPED)
    return Verdict(Status.MISSING)


def not_a_tensor(slot: Slot, leaf) -> Verdict:
    """A source value that cannot fill a tensor: a subtree, a bad leaf, extra state."""
    if isinstance(leaf, Clash):  # reported once, at the subtree root
        return Verdict(Status.MISMATCHED)
    if isinstance(leaf, BadLeaf):
        return Verdict(Status.MISMATCHED, ProblemKind(leaf.kind), leaf.reason)
    if type(leaf) is dict:
        names = ", ".join(list(leaf)[:4]) + (", ..." if len(leaf) > 4 else "")
        return Verdict(Status.MISMATCHED, ProblemKind.TYPE, f"a tensor in destination, a subtree in source ({names})")
    return Verdict(Status.MISMATCHED, ProblemKind.TYPE, f"a tensor in destination, {type(leaf).__name__} in source")


# --- absent destinations ---------------------------------------------------------------


def drop_if_zero(slot: Slot, leaf: SourceTensor) -> Verdict:
    """R3: a tensor into an absent slot is fine only if it is all zeros (reads the values)."""
    values = leaf.read()
    if values.numel() == 0 or not bool(values.any()):
        return Verdict(Status.DROPPED)
    message = "absent in destination (registered as None) but non-zero in source; loading would lose it"
    return Verdict(Status.NOTHING, ProblemKind.ABSENT, message, tuple(leaf.shape))


def nothing(slot: Slot, leaf) -> Verdict:
    return Verdict(Status.NOTHING)


def absent_not_a_tensor(slot: Slot, leaf) -> Verdict:
    """A subtree or bad leaf where the destination is absent: nothing to write, a problem to say."""
    if isinstance(leaf, Clash):
        return Verdict(Status.NOTHING)
    if isinstance(leaf, BadLeaf):
        return Verdict(Status.NOTHING, ProblemKind(leaf.kind), leaf.reason)
    return Verdict(Status.NOTHING, ProblemKind.TYPE, "absent in destination (registered as None), a subtree in source")


# --- extra state and non-persistent buffers --------------------------------------------


def set_extra(slot: Slot, leaf) -> Verdict:
    """R5: extra state goes through ``set_extra_state`` when the source has it (a value, or a
    tensor: a safetensors file stores a tensor extra state as a tensor)."""
    return Verdict(Status.LOADED)


def not_state(slot: Slot, leaf) -> Verdict:
    """R5: a non-persistent buffer is neither loaded nor expected; what the source has for it is
    ignored (the destination computes it). One left on the meta device is a problem: no
    checkpoint can give it values."""
    if slot.tensor is not None and slot.tensor.is_meta:
        return Verdict(Status.NOTHING, ProblemKind.MISSING, meta_buffer_message(slot))
    given = leaf is not SKIP and leaf is not ABSENT and not isinstance(leaf, Missing)
    return Verdict(Status.IGNORED if given else Status.NOTHING)


META_BUFFER = (
    "a non-persistent buffer still on the meta device: no checkpoint holds it (the model computes it "
    "when built); build the model under structload.init_empty_weights(), which keeps such buffers real"
)


def meta_buffer_message(slot: Slot) -> str:
    """What to do about a non-persistent buffer left on meta: build under `init_empty_weights`, or,
    when the model was built under it (its module computed the buffer from meta weights), leave
    it out of the load and compute it afterwards."""
    if not built_empty(slot.tensor):
        return META_BUFFER
    own_code = "its module's own code that fills it"
    if callable(getattr(slot.owner, "init_non_persistent_buffers", None)):  # timm's modules have one
        own_code = f"{type(slot.owner).__name__}.init_non_persistent_buffers()"
    return (
        "a non-persistent buffer still on the meta device although the model was built under "
        "structload.init_empty_weights(): its module computed it from weights that were on meta, and no "
        f"checkpoint holds it; load with exclude= on it, then compute it (run {own_code} after the load), "
        "or build this module outside init_empty_weights()"
    )


Rule = Callable[[Slot, Any], Verdict]

_S, _K = SlotKind, SourceKind
_TENSOR_ROW: dict[SourceKind, Rule] = {
    _K.TENSOR: load_tensor,
    _K.SKIP: skip,
    _K.ABSENT: zero,
    _K.MISSING: missing,
    _K.EXTRA: not_a_tensor,
    _K.OTHER: not_a_tensor,
}
RULES: dict[tuple[SlotKind, SourceKind], Rule] = {
    **{(_S.TENSOR, k): rule for k, rule in _TENSOR_ROW.items()},
    **{(_S.SHARDED, k): rule for k, rule in _TENSOR_ROW.items()},
    (_S.SHARDED, _K.TENSOR): load_shard,
    (_S.ABSENT, _K.TENSOR): drop_if_zero,
    (_S.ABSENT, _K.SKIP): nothing,
    (_S.ABSENT, _K.ABSENT): nothing,
    (_S.ABSENT, _K.MISSING): nothing,
    (_S.ABSENT, _K.EXTRA): absent_not_a_tensor,
    (_S.ABSENT, _K.OTHER): absent_not_a_tensor,
    (_S.EXTRA, _K.EXTRA): set_extra,
    (_S.EXTRA, _K.SKIP): nothing,
    (_S.EXTRA, _K.ABSENT): nothing,
    (_S.EXTRA, _K.MISSING): nothing,
    (_S.EXTRA, _K.TENSOR): set_extra,
    (_S.EXTRA, _K.OTHER): not_a_tensor,
    **{(_S.IGNORED, k): not_state for k in SourceKind},
    **{(_S.LAZY, k): rule for k, rule in _TENSOR_ROW.items()},
    (_S.LAZY, _K.TENSOR): load_lazy,
}


def decide(slot: Slot, leaf, dtype=None) -> Verdict:
    """Apply the rule for this (slot, leaf) pair; `dtype` is ``load(dtype=...)``, which the rules
    that copy a tensor need (what a meta destination is made in).

    >>> import torch
    >>> from structload._plan.dest import Slot, SlotKind
    >>> from structload.sources import MemoryTensor
    >>> decide(Slot(SlotKind.TENSOR, torch.zeros(3)), MemoryTensor(torch.ones(2))).message
    'shape (3,) in destination, (2,) in source'
    """
    rule = RULES[slot.kind, source_kind(leaf)]
    if dtype is not None and (rule is load_tensor or rule is load_shard):
        return rule(slot, leaf, dtype)
    return rule(slot, leaf)


def left_on_meta(entry: Entry) -> Entry:
    """The entry, with a problem if the load leaves its tensor on the meta device (excluded or
    skipped: nothing writes it) and nothing else is said about it already."""
    if entry.problem is not None or entry.status not in (Status.EXCLUDED, Status.SKIPPED):
        return entry
    if entry.slot.kind != SlotKind.TENSOR or not entry.slot.tensor.is_meta:
        return entry
    message = (
        f"{entry.status.value}, so still on the meta device after the load; load it from a source that "
        "has it, or give it values yourself (module.to_empty(device=...) then initialise it)"
    )
    return entry._replace(problem=Problem(ProblemKind.MISSING, entry.path, message))


def counts_as_unexpected(leaf) -> bool:
    """Whether a source leaf with no destination is unexpected (``None`` and ``False`` ask nothing)."""
    return leaf is not SKIP and leaf is not ABSENT


def values_agree(a, b, dtype: torch.dtype) -> bool:
    """Whether two source leaves (tensors, absent, or a missing bias) give one tied tensor the
    same values (R4); reads the values unless both surely share their data."""
    a_absent, b_absent = not isinstance(a, SourceTensor), not isinstance(b, SourceTensor)
    if a_absent or b_absent:
        return (a_absent and b_absent) or not bool((b if a_absent else a).read().any())
    if a.same_data(b):
        return True
    return torch.equal(a.read().to(dtype), b.read().to(dtype))
