"""`sl.align` leaves nothing behind for the garbage collector: what it builds per tensor (the
leaves of both sides, the source tree) is freed by reference counting when it returns, so the
collector's first pass after it scans the result only (issue 25: a tenth of a 20k align).

No `align_check` fixture here: it keeps every source to run `code()` at teardown."""

from __future__ import annotations

import gc
import weakref

import torch
import torch.nn as nn

import structload as sl


def _freed_without_the_collector(make_source) -> bool:
    """Align a destination written independently against the source `make_source` builds, with
    the collector off, drop the source, and say whether its first tensor is gone."""
    dst = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 4))
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        source = make_source()
        first = weakref.ref(next(iter(source.values())))
        alignment = sl.align(dst, source)
        assert alignment.ok and len(alignment.matched) == 4
        del source
        return first() is None
    finally:
        if enabled:
            gc.enable()


def test_align_frees_a_flat_state_dict_without_the_collector():
    def state() -> dict[str, torch.Tensor]:
        return {
            name: torch.randn(*shape)
            for name, shape in (("0.weight", (3, 2)), ("0.bias", (3,)), ("2.weight", (4, 3)), ("2.bias", (4,)))
        }

    assert _freed_without_the_collector(state)


def test_align_frees_a_nested_source_with_other_names_without_the_collector():
    def state() -> dict[str, torch.Tensor]:
        names = ("layers.0.fc.weight", "layers.0.fc.bias", "layers.1.fc.weight", "layers.1.fc.bias")
        shapes = ((3, 2), (3,), (4, 3), (4,))
        return {name: torch.randn(*shape) for name, shape in zip(names, shapes)}

    assert _freed_without_the_collector(state)
