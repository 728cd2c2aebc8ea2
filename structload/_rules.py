"""The rules: one small pure function per (destination slot, source leaf) pair.

Like the leaf methods of Flux's ``loadmodel!``, each rule looks at one
destination slot and the source leaf the walk found for it, and returns a
`Verdict`: what the load will do there, or the problem that stops it. No rule
writes anything; only the zero test of R3 and nothing else reads tensor data.

===========  ==================  =====================================================
destination  source              verdict
===========  ==================  =====================================================
tensor       tensor              R1: loaded (shapes equal, a dtype change is a cast)
tensor       None                R2: skipped
tensor       absent / no bias    R3: zeroed
tensor       nothing             missing
absent       tensor              R3: dropped when all zeros, else an ``absent`` problem
absent       absent/None/nothing nothing to do
extra        _extra_state        R5: loaded through ``set_extra_state``
ignored      anything            R5: non-persistent buffer, so unexpected if given
any          subtree / bad leaf  a ``type`` problem
===========  ==================  =====================================================
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ._dest import ABSENT as ABSENT_SLOT
from ._distributed import dtensor_problem, is_dtensor
from ._dest import EXTRA, IGNORED, TENSOR, Slot
from ._report import dtype_text, shape_text
from .sources import ABSENT, SKIP, BadLeaf, ExtraState, SourceTensor
from .sources._leaves import ConvertedTensor

# What a rule decides for one destination path.
LOADED, ZEROED, SKIPPED, EXCLUDED = "loaded", "zeroed", "skipped", "excluded"
MISSING, MISMATCHED, DROPPED, UNEXPECTED, NOTHING = "missing", "mismatched", "dropped", "unexpected", "nothing"


class Missing:
    """The source has nothing at `root`, the destination path where it first diverges."""

    __slots__ = ("root",)

    def __init__(self, root: str):
        self.root = root


class Clash:
    """The source has a leaf at `root` where the destination has a whole subtree."""

    __slots__ = ("root", "message")

    def __init__(self, root: str, message: str):
        self.root = root
        self.message = message


#: A matching source node without a ``bias`` entry: the bias is absent (R3).
NO_BIAS = "no bias entry"


class Verdict(NamedTuple):
    """A rule's answer: the outcome, and the problem (kind, message) if any."""

    status: str
    problem_kind: str | None = None
    message: str | None = None
    src_shape: tuple | None = None


def source_kind(leaf) -> str:
    """The column of the rules table a source leaf falls in."""
    if isinstance(leaf, SourceTensor):
        return "tensor"
    if leaf is SKIP:
        return "skip"
    if leaf is ABSENT or leaf is NO_BIAS:
        return "absent"
    if isinstance(leaf, Missing):
        return "missing"
    if isinstance(leaf, ExtraState):
        return "extra"
    return "other"  # a subtree, a bad leaf or a clash


# --- tensor destinations ---------------------------------------------------------------


def load_tensor(slot: Slot, leaf: SourceTensor) -> Verdict:
    """R1: equal shapes; the dtype may differ (a cast). A DTensor is judged on its global shape."""
    dst = slot.tensor
    if tuple(dst.shape) != tuple(leaf.shape):
        message = f"shape {shape_text(dst.shape)} in destination, {shape_text(leaf.shape)} in source"
        if isinstance(leaf, ConvertedTensor):
            message += f" (made by {leaf.made_by})"
        return Verdict(MISMATCHED, "shape", message, tuple(leaf.shape))
    if leaf.dtype is not None and leaf.dtype.is_complex and not dst.dtype.is_complex:
        message = f"source is {dtype_text(leaf.dtype)}, destination {dtype_text(dst.dtype)}: the imaginary part would be lost"
        return Verdict(MISMATCHED, "type", message, tuple(leaf.shape))
    if is_dtensor(dst) and dtensor_problem(dst):
        return Verdict(MISMATCHED, "type", dtensor_problem(dst), tuple(leaf.shape))
    if dst.is_meta and slot.owner is None:
        message = "a meta tensor in a pytree destination cannot be materialized in place; build it with real tensors"
        return Verdict(MISMATCHED, "type", message, tuple(leaf.shape))
    return Verdict(LOADED)


def skip(slot: Slot, leaf) -> Verdict:
    """R2: ``None`` leaves the destination as it is."""
    return Verdict(SKIPPED)


def zero(slot: Slot, leaf) -> Verdict:
    """R3: the source computed without this tensor; zero reproduces it."""
    return Verdict(ZEROED)


def missing(slot: Slot, leaf) -> Verdict:
    return Verdict(MISSING)


def mismatch(slot: Slot, leaf) -> Verdict:
    """A source value that cannot fill a tensor: a subtree, a bad leaf, extra state."""
    if isinstance(leaf, Clash):  # reported once, at the subtree root
        return Verdict(MISMATCHED)
    if isinstance(leaf, BadLeaf):
        return Verdict(MISMATCHED, leaf.kind, leaf.reason)
    if type(leaf) is dict:
        names = ", ".join(list(leaf)[:4]) + (", ..." if len(leaf) > 4 else "")
        return Verdict(MISMATCHED, "type", f"a tensor in destination, a subtree in source ({names})")
    return Verdict(MISMATCHED, "type", f"a tensor in destination, {type(leaf).__name__} in source")


# --- absent destinations ---------------------------------------------------------------


def drop_if_zero(slot: Slot, leaf: SourceTensor) -> Verdict:
    """R3: a tensor into an absent slot is fine only if it is all zeros."""
    values = leaf.read()
    if values.numel() == 0 or not bool(values.any()):
        return Verdict(DROPPED)
    message = "absent in destination (registered as None) but non-zero in source; loading would lose it"
    return Verdict(NOTHING, "absent", message, tuple(leaf.shape))


def nothing(slot: Slot, leaf) -> Verdict:
    return Verdict(NOTHING)


def absent_mismatch(slot: Slot, leaf) -> Verdict:
    if isinstance(leaf, Clash):
        return Verdict(NOTHING)
    if isinstance(leaf, BadLeaf):
        return Verdict(NOTHING, leaf.kind, leaf.reason)
    return Verdict(NOTHING, "type", "absent in destination (registered as None), a subtree in source")


# --- extra state and non-persistent buffers --------------------------------------------


def set_extra(slot: Slot, leaf: ExtraState) -> Verdict:
    """R5: extra state goes through ``set_extra_state`` when the source has it."""
    return Verdict(LOADED)


def not_state(slot: Slot, leaf) -> Verdict:
    """R5: non-persistent buffers are neither loaded nor expected."""
    return Verdict(UNEXPECTED, "unexpected", "unexpected in source; a non-persistent buffer in destination (not state)")


RULES = {
    (TENSOR, "tensor"): load_tensor,
    (TENSOR, "skip"): skip,
    (TENSOR, "absent"): zero,
    (TENSOR, "missing"): missing,
    (TENSOR, "extra"): mismatch,
    (TENSOR, "other"): mismatch,
    (ABSENT_SLOT, "tensor"): drop_if_zero,
    (ABSENT_SLOT, "skip"): nothing,
    (ABSENT_SLOT, "absent"): nothing,
    (ABSENT_SLOT, "missing"): nothing,
    (ABSENT_SLOT, "extra"): absent_mismatch,
    (ABSENT_SLOT, "other"): absent_mismatch,
    (EXTRA, "extra"): set_extra,
    (EXTRA, "skip"): nothing,
    (EXTRA, "absent"): nothing,
    (EXTRA, "missing"): nothing,
    (EXTRA, "tensor"): mismatch,
    (EXTRA, "other"): mismatch,
    (IGNORED, "tensor"): not_state,
    (IGNORED, "skip"): nothing,
    (IGNORED, "absent"): nothing,
    (IGNORED, "missing"): nothing,
    (IGNORED, "extra"): not_state,
    (IGNORED, "other"): not_state,
}


def decide(slot: Slot, leaf) -> Verdict:
    """Apply the rule for this (slot, leaf) pair.

    >>> import torch
    >>> from structload._dest import Slot, TENSOR
    >>> from structload.sources import MemoryTensor
    >>> decide(Slot(TENSOR, torch.zeros(3)), MemoryTensor(torch.ones(2))).message
    'shape (3,) in destination, (2,) in source'
    """
    return RULES[slot.kind, source_kind(leaf)](slot, leaf)


def values_agree(a, b, dtype: torch.dtype) -> bool:
    """Whether two source leaves (tensors or absent) give one tied tensor the same values (R4)."""
    if source_kind(a) == "absent" and source_kind(b) == "absent":
        return True
    if source_kind(a) == "absent" or source_kind(b) == "absent":
        present = b if source_kind(a) == "absent" else a
        return not bool(present.read().any())
    if a.same_data(b):
        return True
    return torch.equal(a.read().to(dtype), b.read().to(dtype))
