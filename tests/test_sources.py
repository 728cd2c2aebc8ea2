"""Every in-memory source form, and pytree destinations through optree."""

from __future__ import annotations

import dataclasses
from collections import OrderedDict, namedtuple

import numpy as np
import optree
import pytest
import torch
import torch.nn as nn

import structload as sl
from helpers import Net, assert_same_state, randomized


@pytest.fixture
def pair():
    return randomized(Net(n=2), 1), randomized(Net(n=2), 2)


def test_module_source(pair):
    src, dst = pair
    assert sl.load(dst, src).ok
    assert_same_state(dst, src)


def test_flat_state_dict_source(pair):
    src, dst = pair
    assert sl.load(dst, src.state_dict()).ok
    assert_same_state(dst, src)


def test_nested_mapping_source(pair):
    src, dst = pair
    nested = sl.state(src)
    assert isinstance(nested["blocks"]["1"]["fc2"], dict)
    assert sl.load(dst, nested).ok
    assert_same_state(dst, src)


def test_mixed_flat_and_nested_mapping(pair):
    src, dst = pair
    state = src.state_dict()
    mixed = {
        "embed": {"weight": state["embed.weight"]},
        "blocks.0": {k[len("blocks.0.") :]: v for k, v in state.items() if k.startswith("blocks.0.")},
        "blocks": {"1": {k[len("blocks.1.") :]: v for k, v in state.items() if k.startswith("blocks.1.")}},
        "head.weight": state["head.weight"],
        "head": OrderedDict(bias=state["head.bias"]),
    }
    assert sl.load(dst, mixed).ok
    assert_same_state(dst, src)


def test_lists_and_tuples_match_modulelist_and_sequential_by_position():
    dst = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    src = [
        {"weight": torch.ones(3, 2), "bias": torch.zeros(3)},
        None,
        ({"weight": torch.full((1, 3), 2.0), "bias": torch.ones(1)}),
    ]
    assert sl.load(dst, src).ok
    assert torch.equal(dst[2].weight, torch.full((1, 3), 2.0))
    blocks = {"blocks": tuple(sl.state(randomized(Net(n=2), 3))["blocks"].values())}
    dst_net = Net(n=2)
    report = sl.load(dst_net, blocks, include="blocks")
    assert report.ok and torch.equal(dst_net.blocks[1].fc1.weight, blocks["blocks"][1]["fc1"]["weight"])


Pair = namedtuple("Pair", ["weight", "bias"])


@optree.dataclasses.dataclass(namespace="structload")
class Params:
    weight: torch.Tensor
    bias: torch.Tensor


def test_namedtuple_and_registered_dataclass_as_source():
    dst = nn.Linear(2, 2)
    assert sl.load(dst, Pair(torch.ones(2, 2), torch.zeros(2))).ok
    assert torch.equal(dst.weight, torch.ones(2, 2))
    assert sl.load(dst, Params(torch.full((2, 2), 3.0), torch.ones(2))).ok
    assert torch.equal(dst.weight, torch.full((2, 2), 3.0))


def test_pytrees_as_destination_are_updated_in_place():
    weight, bias = torch.zeros(2, 2), torch.zeros(2)
    dst = {"layer": Params(weight, bias), "extra": [Pair(torch.zeros(1), None)], "step": 3}
    src = {"layer": {"weight": torch.ones(2, 2), "bias": torch.ones(2)}, "extra": [{"weight": torch.ones(1)}]}
    report = sl.load(dst, src)
    assert report.ok and report.loaded == ["layer.weight", "layer.bias", "extra.0.weight"]
    assert dst["layer"].weight is weight and torch.equal(weight, torch.ones(2, 2))
    assert torch.equal(dst["extra"][0].weight, torch.ones(1))


def test_module_into_pytree_and_pytree_into_module():
    module = randomized(nn.Linear(2, 3), 1)
    tree = {"weight": torch.zeros(3, 2), "bias": torch.zeros(3)}
    sl.load(tree, module)
    assert torch.equal(tree["weight"], module.weight)
    back = nn.Linear(2, 3)
    sl.load(back, tree)
    assert torch.equal(back.bias, module.bias)


def test_single_tensor_destination():
    dst = torch.zeros(3)
    assert sl.load(dst, np.arange(3, dtype=np.float32)).loaded == [""]
    assert torch.equal(dst, torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(sl.LoadError, match=r"<root>: shape \(3,\) in destination, \(4,\) in source"):
        sl.load(dst, torch.ones(4))


def test_state_output_round_trips(pair):
    src, dst = pair
    assert sl.load(dst, sl.state(src)).ok
    assert_same_state(dst, src)


def test_numpy_read_only_and_reversed_arrays():
    array = np.arange(4, dtype=np.float32)[::-1]
    frozen = np.ones(4, dtype=np.float32)
    frozen.setflags(write=False)
    dst = {"a": torch.zeros(4), "b": torch.zeros(4)}
    sl.load(dst, {"a": array, "b": frozen})
    assert torch.equal(dst["a"], torch.tensor([3.0, 2.0, 1.0, 0.0])) and torch.equal(dst["b"], torch.ones(4))


def test_key_given_twice_is_a_source_problem():
    dst = nn.Sequential(nn.Linear(2, 2))
    src = {"0.weight": torch.ones(2, 2), "0": {"weight": torch.zeros(2, 2), "bias": torch.ones(2)}}
    with pytest.raises(sl.LoadError) as info:
        sl.load(dst, src)
    [problem] = info.value.problems
    assert (problem.kind, problem.path) == ("source", "0.weight") and "given twice" in problem.message


def test_non_tensor_leaves_are_type_problems():
    dst = nn.Linear(2, 2)
    with pytest.raises(sl.LoadError) as info:
        sl.load(dst, {"weight": "pretrained", "bias": True})
    problems = {p.path: (p.kind, p.message) for p in info.value.problems}
    assert problems["weight"] == ("type", "a value of type str is not a tensor or a tree of tensors")
    assert problems["bias"][0] == "type" and "False marks an absent" in problems["bias"][1]


def test_subtree_against_tensor_and_tensor_against_subtree():
    dst = Net(n=1)
    src = sl.state(Net(n=1))
    src["head"] = torch.ones(3)
    src["embed"]["weight"] = {"a": torch.ones(1), "b": torch.ones(1)}
    with pytest.raises(sl.LoadError) as info:
        sl.load(dst, src)
    problems = {p.path: p.message for p in info.value.problems}
    assert problems["embed.weight"] == "a tensor in destination, a subtree in source (a, b)"
    assert problems["head"] == "a subtree in destination, a tensor of shape (3,) in source"
    report = sl.load(dst, src, strict=False)
    assert {m.path for m in report.mismatched} == {"embed.weight", "head.weight", "head.bias"}


def test_false_for_a_whole_subtree_is_a_type_problem():
    src = sl.state(Net(n=1))
    src["head"] = False
    with pytest.raises(sl.LoadError, match="head: a subtree in destination, False in source"):
        sl.load(Net(n=1), src)


def test_unregistered_object_is_a_type_problem():
    @dataclasses.dataclass
    class Plain:
        weight: torch.Tensor

    with pytest.raises(sl.LoadError, match="a value of type Plain is not a tensor"):
        sl.load(nn.Linear(2, 2, bias=False), {"weight": Plain(torch.ones(2, 2))}["weight"])


def test_a_python_float_reaches_a_float64_destination_exactly(tmp_path):
    dst = {"lr": torch.zeros((), dtype=torch.float64), "scale": torch.zeros(())}
    sl.load(dst, {"lr": 0.1, "scale": 0.1})
    assert dst["lr"].item() == 0.1 and dst["scale"].item() == torch.tensor(0.1).item()
    torch.save({"lr": 0.1, "scale": 0.1}, tmp_path / "hparams.pt")
    dst["lr"].zero_()
    sl.load(dst, tmp_path / "hparams.pt")
    assert dst["lr"].item() == 0.1
