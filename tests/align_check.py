"""`code_loads_what_align_loads`: an autouse fixture for the alignment tests. Every alignment a
test builds (through `sl.align`, `sl.load(align=...)` or the CLI) is recorded with a copy of its
destination; after the test, its `code()` is executed and loaded into one copy, the alignment
itself (`align=m`) into another, and both must end up bitwise identical with the same verdict
(API.md §11: `matched`, `rename` and `code()` agree).

Use it with ``from align_check import code_loads_what_align_loads  # noqa: F401``.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

import structload as sl
import structload._cli
import structload._load
from structload._rename import compile_rename


@pytest.fixture(autouse=True)
def code_loads_what_align_loads(monkeypatch):
    built: list[tuple[nn.Module, object, sl.Alignment]] = []
    original = structload._load.structural_align

    def recording(dst, src, **options):
        alignment = original(dst, src, **options)
        if isinstance(dst, nn.Module):
            built.append((copy.deepcopy(dst), copy.deepcopy(src) if isinstance(src, nn.Module) else src, alignment))
        return alignment

    for module, name in ((sl, "align"), (structload._load, "structural_align"), (structload._cli, "align")):
        monkeypatch.setattr(module, name, recording)
    yield built
    for dst, src, alignment in built:
        assert_code_loads_the_same(dst, src, alignment)


def assert_code_loads_the_same(dst: nn.Module, src, alignment: sl.Alignment) -> None:
    namespace: dict = {}
    exec(alignment.code(), namespace)
    rename = compile_rename(namespace["rename"])
    for match in alignment.matched:  # every plain match: code()'s rename sends its source to its path
        plain = all(type(c).__name__ == "Transpose" for c in match.converters) and len(match.src) == 1
        if plain and not any(e.startswith("tied to") for e in match.evidence):
            assert rename(match.src[0]) == match.dst, f"{match}: code() renames it to {rename(match.src[0])!r}"
    by_code, by_align = copy.deepcopy(dst), copy.deepcopy(dst)
    code_report = sl.load(by_code, src, rename=namespace["rename"], convert=namespace["convert"], strict=False)
    align_report = sl.load(by_align, src, align=alignment, strict=False)
    assert code_report.ok == align_report.ok, alignment.code()
    code_state, align_state = by_code.state_dict(), by_align.state_dict()
    assert code_state.keys() == align_state.keys()
    for path, tensor in code_state.items():
        if tensor.is_meta:
            assert align_state[path].is_meta, path
        else:
            assert torch.equal(tensor, align_state[path]), f"{path}: code() loads other values\n{alignment.code()}"
