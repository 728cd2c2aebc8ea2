"""sl.state, sl.inspect and sl.diff on in-memory trees."""

from __future__ import annotations

import json

import torch
import torch.nn as nn
from test_rules import WithExtra, WithScratch

import structload as sl
from helpers import Net, TiedLM, randomized
from structload.sources import iter_leaves, to_source_tree


def test_state_shares_storage_and_marks_absent_parameters():
    net = randomized(Net(bias=False), 1)
    tree = sl.state(net)
    assert tree["head"]["bias"] is False
    assert tree["head"]["weight"].data_ptr() == net.head.weight.data_ptr()
    assert not tree["head"]["weight"].requires_grad


def test_state_holds_exactly_state_dict_plus_extra_state():
    for model in (WithScratch(), WithExtra(), nn.BatchNorm1d(2)):
        tree = to_source_tree(sl.state(model))
        assert {path for path, _ in iter_leaves(tree)} == set(model.state_dict())
    assert sl.state(WithExtra())["_extra_state"] == {"step": 0}


def test_state_trainable_touches_trainable_parameters_only():
    src, dst = randomized(Net(), 1), randomized(Net(), 2)
    src.embed.weight.requires_grad_(False)
    embed_before = dst.embed.weight.detach().clone()
    tree = sl.state(src, trainable=True)
    assert tree["embed"]["weight"] is None and tree["head"]["weight"] is not None
    report = sl.load(dst, tree)
    assert torch.equal(dst.embed.weight, embed_before)
    assert torch.equal(dst.head.weight, src.head.weight)
    assert report.skipped == ["embed.weight"]


def test_state_round_trip_makes_models_equal_where_structures_match():
    a, b = randomized(Net(n=3), 1), randomized(Net(n=2), 2)
    sl.load(b, sl.state(a), strict=False)
    state_b = sl.state(b)
    state_a = sl.state(a)
    for i in ("0", "1"):
        for name, value in state_b["blocks"][i]["fc1"].items():
            assert torch.equal(value, state_a["blocks"][i]["fc1"][name])


def test_state_of_tied_model_loads_back():
    a, b = randomized(TiedLM(), 1), TiedLM()
    assert sl.load(b, sl.state(a)).ok and torch.equal(b.lm_head.weight, a.wte.weight)


def test_inspect_reads_shapes_dtypes_and_sizes():
    info = sl.inspect({"a": {"w": torch.zeros(3, 4, dtype=torch.float16)}, "n": 3, "skip": None, "gone": False})
    assert list(info) == ["a.w", "n"]
    assert info["a.w"].shape == (3, 4) and info["a.w"].dtype == torch.float16 and info["a.w"].nbytes == 24
    assert info["n"].shape == () and info["n"].dtype == torch.int64
    assert info["a.w"].to_dict() == {"shape": [3, 4], "dtype": "float16", "nbytes": 24}


def test_diff_lists_every_kind_of_difference():
    a = {
        "same": torch.ones(2),
        "shape": torch.ones(2),
        "dtype": torch.ones(2),
        "values": torch.ones(2),
        "only_a": torch.ones(1),
    }
    b = {
        "same": torch.ones(2),
        "shape": torch.ones(3),
        "dtype": torch.ones(2, dtype=torch.float64),
        "values": torch.zeros(2),
        "only_b": torch.ones(1),
    }
    shallow = sl.diff(a, b)
    assert shallow.values == [] and shallow.same == 2
    result = sl.diff(a, b, values=True)
    assert result.only_in_a == ["only_a"] and result.only_in_b == ["only_b"]
    assert [(d.path, d.a, d.b) for d in result.shape] == [("shape", (2,), (3,))]
    assert [(d.path, d.a, d.b) for d in result.dtype] == [("dtype", torch.float32, torch.float64)]
    assert result.values == ["values"] and result.same == 1 and not result.ok
    assert json.loads(json.dumps(result.to_dict()))["shape"] == [{"path": "shape", "a": "(2,)", "b": "(3,)"}]
    assert "values: values differ" in str(result)


def test_diff_of_equal_models_is_ok_and_nan_equals_nan():
    a = randomized(Net(), 1)
    assert sl.diff(a, a.state_dict(), values=True).ok
    nan = torch.tensor([float("nan"), 1.0])
    assert sl.diff({"x": nan}, {"x": nan.clone()}, values=True).ok


def test_diff_counts_every_tensor_both_hold_as_compared_and_only_equal_ones_as_identical():
    a = {f"w{i}": torch.ones(2) for i in range(10)}
    b = {**a, "w9": torch.zeros(2)}
    result = sl.diff(a, b, values=True)
    assert result.compared() == "10 tensors compared by path, shape, dtype and values"
    assert result.same == 9
    from rich.console import Console

    console = Console(width=100, record=True)
    console.print(result)
    assert "10 tensors compared by path, shape, dtype and values; 9 identical" in " ".join(
        console.export_text().split()
    )
