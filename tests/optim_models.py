"""Models, optimizers and checks shared by the optimizer-state tests (`sl.load_optimizer`)."""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

D = 4


class Attention(nn.Module):
    """q, k, v registered in the order given (the forward pass is the same whatever it is)."""

    def __init__(self, order: str = "qkv"):
        super().__init__()
        for name in order:
            setattr(self, name, nn.Linear(D, D))
        self.o = nn.Linear(D, D)

    def project(self, x):
        return self.q(x), self.k(x), self.v(x)

    def forward(self, x):
        q, k, v = self.project(x)
        return self.o(F.softmax(q @ k.transpose(-1, -2) / D**0.5, dim=-1) @ v)


class FusedAttention(Attention):
    """The same attention with one fused ``qkv`` projection."""

    def __init__(self):
        nn.Module.__init__(self)
        self.qkv = nn.Linear(D, 3 * D)
        self.o = nn.Linear(D, D)

    def project(self, x):
        return self.qkv(x).chunk(3, dim=-1)


class Model(nn.Module):
    """embed -> attn -> head, with the edits of issue 27 as options."""

    def __init__(self, *, order="qkv", head_first=False, extra=False, fused=False):
        super().__init__()
        if head_first:
            self.head = nn.Linear(D, 2)
        self.embed = nn.Linear(3, D)
        self.attn = FusedAttention() if fused else Attention(order)
        if extra:
            self.extra = nn.Linear(D, D)
        if not head_first:
            self.head = nn.Linear(D, 2)

    def forward(self, x):
        h = self.attn(self.embed(x))
        if hasattr(self, "extra"):
            h = self.extra(h)
        return self.head(h)


OPTIMIZERS = {
    "sgd-momentum": lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9),
    "adam": lambda params: torch.optim.Adam(params, lr=0.01),
    "adamw": lambda params: torch.optim.AdamW(params, lr=0.01, weight_decay=0.1),
    "adagrad": lambda params: torch.optim.Adagrad(params, lr=0.1),
    "rmsprop": lambda params: torch.optim.RMSprop(params, lr=0.01, momentum=0.5, centered=True),
}


def batch(step: int, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(5, 3, generator=torch.Generator().manual_seed(step), dtype=dtype)


def train(model: nn.Module, optimizer, steps) -> None:
    for step in steps:
        optimizer.zero_grad()
        model(batch(step, next(model.parameters()).dtype)).pow(2).mean().backward()
        optimizer.step()


def trained(make_optimizer, steps=3, **edits):
    """A model and its optimizer over its trainable parameters, after a few steps."""
    torch.manual_seed(0)
    model = Model(**{k: v for k, v in edits.items() if k != "frozen"})
    for path in edits.get("frozen", ()):
        model.get_parameter(path).requires_grad_(False)
    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad])
    train(model, optimizer, range(steps))
    return model, optimizer


def state_at(optimizer, model, path: str) -> dict:
    return optimizer.state[model.get_parameter(path)]


def assert_same_state(dst_opt, dst, src_opt, src, paths) -> None:
    """Each destination parameter's state is bitwise its source parameter's (same path unless mapped)."""
    for dst_path, src_path in paths:
        got, want = state_at(dst_opt, dst, dst_path), state_at(src_opt, src, src_path)
        assert set(got) == set(want), dst_path
        for key, value in want.items():
            assert torch.equal(got[key], value) and got[key].dtype == value.dtype, f"{dst_path}.{key}"


def snapshot(optimizer) -> dict:
    """The optimizer's state and groups, deep-copied, to prove it unchanged."""
    state = {param: copy.deepcopy(s) for param, s in optimizer.state.items()}
    groups = [{k: copy.deepcopy(v) for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    return {"state": state, "groups": groups}


def assert_unchanged(optimizer, before: dict) -> None:
    assert set(optimizer.state) == set(before["state"])
    for param, state in before["state"].items():
        assert set(optimizer.state[param]) == set(state)
        for key, value in state.items():
            got = optimizer.state[param][key]
            assert torch.equal(got, value) if isinstance(value, torch.Tensor) else got == value
    for group, old in zip(optimizer.param_groups, before["groups"]):
        assert {k: v for k, v in group.items() if k != "params"} == old


def params_of(model) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]
