"""How each fast path of a load is switched off: its predicate patched never to fire.

Shared by tests/test_fast_paths.py (each lane off, the load must be the same) and
bench/fast_paths.py (each lane off, what it saves), so the two cannot drift apart.
"""

from __future__ import annotations

from unittest import mock

from structload import _apply, _pytree
from structload._plan import dest as _dest
from structload._plan import load_hooks as _load_hooks
from structload._plan import plan as _plan
from structload._plan import problems as _problems
from structload._plan import rules as _rules
from structload._plan import ties as _ties
from structload.sources import MemoryTensor


def never(*args) -> bool:
    return False


def always(*args) -> bool:
    return True


class _NotTheType(type):
    """A stand-in class that an ``isinstance`` test takes for `real`, but a ``type(x) is`` test never matches."""

    def __instancecheck__(cls, obj) -> bool:
        return isinstance(obj, cls.real)  # type: ignore[attr-defined]


def not_the_type(real: type) -> type:
    return _NotTheType(f"Not{real.__name__}", (), {"real": real})


class _Forgetful(dict):
    """A cache that never finds what it was given."""

    def __contains__(self, key) -> bool:
        return False

    def get(self, key, default=None):
        return default


#: fast path -> the patches that switch it off
LANES = {
    # `judge` builds a loaded entry itself for an in-memory tensor that `plain_load` accepts
    "judge's lane": lambda: [mock.patch.object(_plan, "plain_load", never)],
    # `load_tensor` returns at once when `plain_load` says so; its own three tests must agree
    "load_tensor's plain_load": lambda: [
        mock.patch.object(_plan, "plain_load", never),
        mock.patch.object(_rules, "plain_load", never),
    ],
    # `Plan.report` lists a loaded in-memory tensor with nothing to say without `_add_entry` (and `judge` too)
    "Plan.report's lane": lambda: [mock.patch.object(_plan, "MemoryTensor", not_the_type(MemoryTensor))],
    # `_runs` batches plain copies for `copy_together` instead of `write_entry` one by one
    "the batched copies": lambda: [mock.patch.object(_apply, "MemoryTensor", not_the_type(MemoryTensor))],
    # `copy_together`'s one `torch._foreach_copy_` call against `copy_` one tensor after the other
    "_foreach_copy_": lambda: [mock.patch.object(_apply, "_foreach_copy", _apply._copy_each)],
    # `_module_children`'s inlined `_kind` and `offsets` for a plain Parameter
    "_module_children's Parameter lane": lambda: [mock.patch.object(_dest, "Parameter", not_the_type(object))],
    # `settle_ties` returns at once when no tensor is at two paths
    "settle_ties' shortcut": lambda: [mock.patch.object(_ties, "set", lambda items: (), create=True)],
    # `customises_loading` and `_overrides` ask a class once whether it overrides a method of nn.Module
    "the per-class caches": lambda: [
        mock.patch.object(_dest, "_OVERRIDES", _Forgetful()),
        mock.patch.object(_load_hooks, "_LOADS_ITS_OWN_WAY", _Forgetful()),
    ],
    # `compose_problems` returns at once for a clean load (`_may_have_problems`)
    "compose_problems' clean-load shortcut": lambda: [mock.patch.object(_problems, "_may_have_problems", always)],
    # `_pytree.children` reads a plain dict itself rather than through optree
    "_pytree.children' dict lane": lambda: [mock.patch.object(_pytree, "type", lambda node: None, create=True)],
    # apply's list of reads for the read session skips in-memory tensors without asking `lazy`
    # (the same name switches the batched copies off too)
    "apply's from-memory lane": lambda: [mock.patch.object(_apply, "MemoryTensor", not_the_type(MemoryTensor))],
}
