"""`code()` reads like what a person writes (API.md §11): when the numbered blocks differ (aligned
one by one), still one rule per pattern with ``(\\d+)`` groups, not one line per block; explicit
lines only for true exceptions; no look-ahead, no intermediate paths."""

from __future__ import annotations

import torch
import torch.nn as nn
from align_check import code_loads_what_align_loads  # noqa: F401  (every alignment's code() is executed)

import structload as sl
from helpers import randomized


class Mine(nn.Module):
    def __init__(self, d: int, extra: str | None = None):
        super().__init__()
        self.norm, self.fc, self.out = nn.LayerNorm(d), nn.Linear(d, 2 * d), nn.Linear(2 * d, d)
        if extra is not None:
            self.add_module(extra, nn.Linear(d, 3))


class Theirs(nn.Module):
    def __init__(self, d: int, extra: bool = False):
        super().__init__()
        self.ln, self.fc1, self.fc2 = nn.LayerNorm(d), nn.Linear(d, 2 * d), nn.Linear(2 * d, d)
        if extra:
            self.router = nn.Linear(d, 3)


def rules(code: str) -> list[str]:
    return [line.strip() for line in code.splitlines() if line.startswith("    r")]


def test_blocks_that_differ_still_get_one_rule_per_pattern():
    """Every other block has a router: the blocks are aligned one by one, and the rules folded."""
    model = nn.ModuleDict({"blocks": nn.ModuleList(Mine(8, "gate" if i % 2 else None) for i in range(4))})
    source = randomized(nn.ModuleDict({"layers": nn.ModuleList(Theirs(8, bool(i % 2)) for i in range(4))}))
    alignment = sl.align(model, source)
    assert alignment.ok, alignment.code()
    assert rules(alignment.code()) == [
        r'r"^layers\.(\d+)\.ln\.": r"blocks.\1.norm.",',
        r'r"^layers\.(\d+)\.fc1\.": r"blocks.\1.fc.",',
        r'r"^layers\.(\d+)\.fc2\.": r"blocks.\1.out.",',
        r'r"^layers\.(\d+)\.router\.": r"blocks.\1.gate.",',
    ]
    assert sl.load(model, source, align=alignment).ok
    assert torch.equal(model["blocks"][3].gate.weight, source["layers"][3].router.weight)


def test_a_true_exception_keeps_its_own_line():
    """The last block's router is called ``switch`` here: that one rule is written out."""
    names = [None, "gate", None, "switch"]
    model = nn.ModuleDict({"blocks": nn.ModuleList(Mine(8, name) for name in names)})
    source = randomized(nn.ModuleDict({"layers": nn.ModuleList(Theirs(8, name is not None) for name in names)}))
    alignment = sl.align(model, source)
    assert alignment.ok, alignment.code()
    written = rules(alignment.code())
    assert r'r"^layers\.1\.router\.": "blocks.1.gate.",' in written
    assert r'r"^layers\.3\.router\.": "blocks.3.switch.",' in written
    assert r'r"^layers\.(\d+)\.fc1\.": r"blocks.\1.fc.",' in written and len(written) == 5
    assert not any("(?=" in line or "@" in line for line in written)
    assert sl.load(model, source, align=alignment).ok
    assert torch.equal(model["blocks"][3].switch.bias, source["layers"][3].router.bias)
