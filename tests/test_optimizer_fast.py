"""The fast lane of `sl.load_optimizer` (structload/optim/_fast.py) against the general path it shortens.

The fast lane takes the common case (resuming the same model from an
in-memory source) without the plan's objects per state entry. Whatever the
source and the optimizer, the two must give the same report (or the same
error) and leave the optimizer in the same state, tensor for tensor: the
same values, dtypes, devices and layouts, and the same tensors written in
place.
"""

from __future__ import annotations

from contextlib import nullcontext
from unittest import mock

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

import structload as sl
from structload.optim import _fast, _load

OPTIMIZERS = {
    "sgd-momentum": lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9),
    "adam": lambda params: torch.optim.Adam(params, lr=0.01),
    "rmsprop": lambda params: torch.optim.RMSprop(params, lr=0.01, momentum=0.5, centered=True),
    "adagrad": lambda params: torch.optim.Adagrad(params, lr=0.1),
}

#: What a case may do to the source (or the destination) so that it is no longer the common case.
EDITS = [
    None,
    "drop a parameter",
    "extra path",
    "float64 state",
    "other shape",
    "drop a key",
    "none",
    "empty state",
    "not contiguous",
    "frozen in the destination",
    "python step",
    "grads required",
]


def build(sizes: list[int], name: str, stepped: bool, frozen: bool, seed: int):
    """A model of Linear layers of `sizes`, and the optimizer `name` over its trainable parameters,
    stepped (it has state) or fresh; the same arguments give the same model and optimizer."""
    torch.manual_seed(seed)
    model = nn.ModuleDict({f"l{i}": nn.Linear(size, size) for i, size in enumerate(sizes)})
    if frozen:
        model["l0"].bias.requires_grad_(False)
    optimizer = OPTIMIZERS[name]([p for p in model.parameters() if p.requires_grad])
    if stepped:
        for param in optimizer.param_groups[0]["params"]:
            param.grad = torch.randn_like(param)
        optimizer.step()
    return model, optimizer


def source_state(sizes: list[int], name: str, seed: int, kind: str, edit: str | None):
    """The state of a stepped optimizer over the same model, as a tree or a ``state_dict()``, edited."""
    torch.manual_seed(seed + 1)
    model = nn.ModuleDict({f"l{i}": nn.Linear(size, size) for i, size in enumerate(sizes)})
    optimizer = OPTIMIZERS[name](model.named_parameters())
    for _ in range(2):
        for param in model.parameters():
            param.grad = torch.randn_like(param)
        optimizer.step()
    tree = sl.optimizer_state(optimizer, model)
    entry = tree["l0"]["weight"]
    key = list(entry)[-1]  # a tensor of the parameter's shape (exp_avg_sq, momentum_buffer, ...)
    if edit == "drop a parameter":
        del tree["l0"]["weight"]
    elif edit == "extra path":
        tree["l9"] = {"weight": dict(entry)}
    elif edit == "float64 state":
        entry[key] = entry[key].double()
    elif edit == "other shape":
        entry[key] = entry[key].reshape(-1, 1)
    elif edit == "drop a key":
        del entry[key]
    elif edit == "none":
        entry[key] = None
    elif edit == "empty state":
        tree["l0"]["weight"] = {}
    elif edit == "not contiguous":
        entry[key] = entry[key].t().contiguous().t()  # the same values, in column-major order
    elif edit == "python step" and "step" in entry:
        entry["step"] = float(entry["step"])
    elif edit == "grads required":
        entry[key] = entry[key].clone().requires_grad_(True)
    if kind == "tree":
        return tree
    state_dict = optimizer.state_dict()
    for index, path in enumerate(state_dict["param_groups"][0]["param_names"]):
        module, _, param = path.partition(".")
        state_dict["state"][index] = tree.get(module, {}).get(param, {})
    return state_dict


def outcome(model, optimizer, source, strict: bool, general: bool):
    """The report (or the error's text and report) and the optimizer's state afterwards, each tensor
    as its values and layout, and whether it is the tensor that was there before (written in place)."""
    before = {id(p): {k: id(v) for k, v in s.items()} for p, s in optimizer.state.items()}
    lane = mock.patch.object(_load, "fast_load", lambda *args, **kwargs: None) if general else nullcontext()
    with lane:
        try:
            result = sl.load_optimizer(optimizer, model, source, strict=strict).to_dict()
        except sl.LoadError as error:
            result = {"error": str(error), "report": error.report.to_dict() if error.report else None}
    state = {}
    for path, param in model.named_parameters():
        for key, value in optimizer.state.get(param, {}).items():
            kept = before.get(id(param), {}).get(key) == id(value)
            if isinstance(value, torch.Tensor):
                layout = (value.dtype, value.device, value.shape, value.stride(), value.requires_grad)
                state[f"{path}.{key}"] = (value.tolist(), layout, kept)
            else:
                state[f"{path}.{key}"] = (value, type(value), kept)
    return result, state


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 3), min_size=1, max_size=3).filter(lambda sizes: sizes[0] > 1),
    name=st.sampled_from(sorted(OPTIMIZERS)),
    stepped=st.booleans(),
    kind=st.sampled_from(["tree", "state_dict"]),
    edit=st.sampled_from(EDITS),
    strict=st.booleans(),
    seed=st.integers(0, 3),
)
def test_the_fast_lane_agrees_with_the_general_path(sizes, name, stepped, kind, edit, strict, seed):
    frozen = edit == "frozen in the destination"
    runs = []
    for general in (False, True):
        model, optimizer = build(sizes, name, stepped, frozen, seed)
        runs.append(outcome(model, optimizer, source_state(sizes, name, seed, kind, edit), strict, general))
    assert runs[0] == runs[1]


@pytest.mark.parametrize("kind", ["tree", "state_dict"])
@pytest.mark.parametrize("stepped", [True, False], ids=["in place", "fresh"])
def test_resuming_the_same_model_takes_the_fast_lane(kind, stepped):
    taken = []

    def spy(*args, **kwargs):
        taken.append(_fast.fast_load(*args, **kwargs))
        return taken[-1]

    model, optimizer = build([3, 2], "adam", stepped, False, 0)
    source = source_state([3, 2], "adam", 0, kind, None)
    with mock.patch.object(_load, "fast_load", spy):
        report = sl.load_optimizer(optimizer, model, source)
    assert taken and taken[0] is not None and report.ok
    assert report.loaded[:3] == ["l0.weight.step", "l0.weight.exp_avg", "l0.weight.exp_avg_sq"]
    assert torch.equal(optimizer.state[model["l1"].bias]["exp_avg_sq"], source_of(source, kind)["exp_avg_sq"])


def source_of(source, kind: str) -> dict:
    return source["l1"]["bias"] if kind == "tree" else source["state"][3]
