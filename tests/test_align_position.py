"""Position among siblings of the same kind as evidence (API.md §11), and the traps where a greedy
matcher would guess: a gap in the numbers, layers registered in reversed order, two LSTM stacks."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from align_check import code_loads_what_align_loads  # noqa: F401  (every alignment's code() is executed)

import structload as sl
from helpers import assert_unchanged, randomized, snapshot


def convs(*names: str) -> nn.ModuleDict:
    return randomized(nn.ModuleDict({name: nn.Conv2d(8, 8, 3) for name in names}))


def test_sequential_indices_pair_with_numbered_names_by_position():
    model = nn.ModuleDict({"body": nn.Sequential(*(nn.Conv2d(8, 8, 3) for _ in range(3)))})
    source = convs("conv1", "conv2", "conv3")
    alignment = sl.align(model, source)
    assert alignment.ok, alignment.code()
    assert {m.dst: m.src[0] for m in alignment.matched if m.dst.endswith("weight")} == {
        "body.0.weight": "conv1.weight",
        "body.1.weight": "conv2.weight",
        "body.2.weight": "conv3.weight",
    }
    assert sl.load(model, source, align=alignment).ok
    assert torch.equal(model["body"][2].bias, source["conv3"].bias)
    assert 'r"^conv(\\d+)\\.": lambda m: f"body.{int(m[1]) - 1}."' in alignment.code()


def test_a_gap_in_the_numbers_is_no_position():
    """conv1, conv2, conv4 against body.0..2: as many layers, but the numbers do not say that conv4
    is the third; ambiguous, both sides named, and a strict load writes nothing."""
    model = nn.ModuleDict({"body": nn.Sequential(*(nn.Conv2d(8, 8, 3) for _ in range(3)))})
    source = convs("conv1", "conv2", "conv4")
    alignment = sl.align(model, source)
    assert alignment.matched == []
    weights = next(a for a in alignment.ambiguous if a.dst[0].endswith("weight"))
    assert set(weights.dst) == {"body.0.weight", "body.1.weight", "body.2.weight"}
    assert set(weights.src) == {"conv1.weight", "conv2.weight", "conv4.weight"}
    before = snapshot(model)
    with pytest.raises(sl.LoadError):
        sl.load(model, source, align=True)
    assert_unchanged(model, before)


def test_layers_registered_in_reversed_order_pair_by_their_numbers_not_their_order():
    class Reversed(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv2 = nn.Conv2d(8, 8, 3)  # registered first, applied second
            self.conv1 = nn.Conv2d(8, 8, 3)

    source = randomized(nn.ModuleDict({"layer": nn.Sequential(nn.Conv2d(8, 8, 3), nn.Conv2d(8, 8, 3))}))
    model = Reversed()
    assert sl.load(model, source, align=True).ok
    assert torch.equal(model.conv1.weight, source["layer"][0].weight)
    assert torch.equal(model.conv2.weight, source["layer"][1].weight)


def test_two_lstm_stacks_stay_ambiguous_with_both_sides_named():
    """Two 2-layer LSTMs against two lists of two 1-layer LSTMs, all one shape: which stack is
    which is not in the structure."""

    class Stacks(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm_a, self.lstm_b = nn.LSTM(8, 8, 2), nn.LSTM(8, 8, 2)

    model = nn.ModuleDict({side: nn.ModuleList(nn.LSTM(8, 8, 1) for _ in range(2)) for side in ("encoder", "decoder")})
    alignment = sl.align(model, randomized(Stacks()))
    assert not alignment.ok and alignment.matched == []
    ambiguity = next(a for a in alignment.ambiguous if "encoder.0.weight_ih_l0" in a.dst)
    assert {"encoder.0.weight_ih_l0", "decoder.1.weight_ih_l0"} <= set(ambiguity.dst)
    assert {"lstm_a.weight_ih_l0", "lstm_b.weight_ih_l1"} <= set(ambiguity.src)
