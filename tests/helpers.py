"""Shared models and helpers for the test suite: ``from helpers import Net, snapshot, ...``."""

from __future__ import annotations

import optree
import torch
import torch.nn as nn


class Block(nn.Module):
    def __init__(self, d: int = 4, bias: bool = True):
        super().__init__()
        self.fc1 = nn.Linear(d, 2 * d, bias=bias)
        self.fc2 = nn.Linear(2 * d, d, bias=bias)
        self.norm = nn.LayerNorm(d)


class Net(nn.Module):
    """A small model with an embedding, a ModuleList of blocks and a head."""

    def __init__(self, d: int = 4, n: int = 3, bias: bool = True, classes: int = 3):
        super().__init__()
        self.embed = nn.Embedding(10, d)
        self.blocks = nn.ModuleList(Block(d, bias) for _ in range(n))
        self.head = nn.Linear(d, classes, bias=bias)


class TiedLM(nn.Module):
    """An embedding tied to the output projection, as in GPT-2."""

    def __init__(self, vocab: int = 7, d: int = 4):
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.lm_head.weight = self.wte.weight


def randomized(module: nn.Module, seed: int = 0) -> nn.Module:
    """`module` with every floating parameter and buffer filled with seeded random values."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in list(module.parameters()) + list(module.buffers()):
            if tensor.is_floating_point():
                tensor.copy_(torch.randn(tensor.shape, generator=generator))
    return module


def _named_tensors(obj) -> dict[str, torch.Tensor]:
    """Every tensor of a module (its state_dict) or of a pytree of tensors, by path."""
    if isinstance(obj, nn.Module):
        return dict(obj.state_dict())
    if isinstance(obj, torch.Tensor):
        return {"": obj}
    paths, leaves, _ = optree.tree_flatten_with_path(obj, namespace="structload")
    return {".".join(map(str, path)): leaf for path, leaf in zip(paths, leaves) if isinstance(leaf, torch.Tensor)}


def snapshot(obj) -> dict:
    """Everything needed to prove a destination unchanged: values, bytes and parameter identities."""
    ids = (
        {name: id(p) for name, p in obj.named_parameters(remove_duplicate=False)} if isinstance(obj, nn.Module) else {}
    )
    return {"values": {k: v.detach().clone() for k, v in _named_tensors(obj).items()}, "ids": ids}


def assert_unchanged(obj, before: dict) -> None:
    after = snapshot(obj)
    assert after["ids"] == before["ids"]
    assert after["values"].keys() == before["values"].keys()
    for key, value in before["values"].items():
        now = after["values"][key]
        assert now.dtype == value.dtype and now.shape == value.shape, key
        assert torch.equal(
            now.view(torch.uint8) if now.dim() else now, value.view(torch.uint8) if value.dim() else value
        ), key


def assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def destination_outcomes(report) -> list[str]:
    """Every destination path the report places, one entry per list it appears in: the lists a
    destination path lands in exactly one of (loaded, missing, skipped, excluded, zeroed, mismatched)."""
    lists = [report.loaded, report.missing, report.skipped, report.excluded, report.zeroed]
    return [path for paths in lists for path in paths] + [m.path for m in report.mismatched]


def attempt(fn):
    """``(result, None)`` when ``fn()`` returns, ``(None, error)`` when it raises `structload.LoadError`:
    for tests whose cases may go either way (property tests, ranks reporting back)."""
    import structload as sl

    try:
        return fn(), None
    except sl.LoadError as error:
        return None, error
