"""Rules R1–R6, one test (or a few) per case, asserting values and identities."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

import structload as sl
from helpers import Net, TiedLM, assert_same_state, assert_unchanged, randomized, snapshot

# --- R1: tensor -> tensor --------------------------------------------------------------


def test_r1_values_copied_in_place_and_parameters_keep_identity():
    src, dst = randomized(Net(), 1), randomized(Net(), 2)
    params_before = dict(dst.named_parameters())
    report = sl.load(dst, src.state_dict())
    assert_same_state(dst, src)
    assert all(p is params_before[name] for name, p in dst.named_parameters())
    assert report.ok and report.loaded == list(dst.state_dict())


def test_r1_optimizer_keeps_working_after_load():
    dst = Net()
    optimizer = torch.optim.SGD(dst.parameters(), lr=1.0)
    src = randomized(Net(), 3)
    sl.load(dst, src)
    dst.head.weight.grad = torch.ones_like(dst.head.weight)
    optimizer.step()
    assert torch.equal(dst.head.weight, src.head.weight - 1)


def test_r1_cast_to_destination_dtype_is_recorded():
    dst = nn.Linear(3, 2)
    src = {"weight": torch.arange(6, dtype=torch.float64).reshape(2, 3) / 3, "bias": torch.tensor([1, 2])}
    report = sl.load(dst, src)
    assert dst.weight.dtype == torch.float32
    assert torch.allclose(dst.weight, src["weight"].float())
    assert torch.equal(dst.bias, torch.tensor([1.0, 2.0]))
    assert [(c.path, c.src_dtype, c.dst_dtype) for c in report.cast] == [
        ("weight", torch.float64, torch.float32),
        ("bias", torch.int64, torch.float32),
    ]


def test_r1_no_broadcasting_or_reshape():
    dst = nn.Linear(4, 1)
    with pytest.raises(sl.LoadError) as info:
        sl.load(dst, {"weight": torch.ones(4), "bias": torch.ones(1)})
    [problem] = info.value.problems
    assert (problem.kind, problem.path) == ("shape", "weight")
    assert problem.message == "shape (1, 4) in destination, (4,) in source"


def test_r1_shape_mismatch_non_strict_loads_the_rest():
    src, dst = randomized(Net(), 1), randomized(Net(), 2)
    state = src.state_dict()
    state["blocks.1.fc1.weight"] = torch.zeros(3, 3)
    old = dst.blocks[1].fc1.weight.detach().clone()
    report = sl.load(dst, state, strict=False)
    assert torch.equal(dst.blocks[1].fc1.weight, old)
    assert torch.equal(dst.blocks[2].fc2.weight, src.blocks[2].fc2.weight)
    [mismatch] = report.mismatched
    assert (mismatch.path, mismatch.dst_shape, mismatch.src_shape) == ("blocks.1.fc1.weight", (8, 4), (3, 3))
    assert "blocks.1.fc1.weight" not in report.loaded and not report.ok


def test_r1_numpy_arrays_and_python_numbers_are_leaves():
    dst = nn.BatchNorm1d(3)
    src = {
        "weight": np.array([1.0, 2.0, 3.0]),
        "bias": np.zeros(3, dtype=np.float32),
        "running_mean": np.ones(3, dtype=np.float32),
        "running_var": np.full(3, 2.0, dtype=np.float32),
        "num_batches_tracked": 7,
    }
    report = sl.load(dst, src)
    assert torch.equal(dst.weight, torch.tensor([1.0, 2.0, 3.0]))
    assert torch.equal(dst.running_var, torch.full((3,), 2.0))
    assert dst.num_batches_tracked.item() == 7 and dst.num_batches_tracked.dtype == torch.int64
    assert [c.path for c in report.cast] == ["weight"]  # float64 array; numbers are not casts


def test_r1_number_into_non_scalar_is_a_shape_problem():
    with pytest.raises(sl.LoadError, match=r"bias: shape \(2,\) in destination, \(\) in source"):
        sl.load(nn.Linear(2, 2), {"weight": torch.ones(2, 2), "bias": 0.5})


def test_r1_complex_into_real_is_refused():
    with pytest.raises(sl.LoadError, match="imaginary part"):
        sl.load({"w": torch.zeros(2)}, {"w": torch.ones(2, dtype=torch.complex64)})


def test_r1_complex_into_a_complex_meta_tensor_made_real_by_dtype_is_refused():
    """A complex meta destination that ``dtype=torch.float64`` materializes in float64 would lose
    the imaginary part: a type problem at each path, in strict and non-strict loads alike."""
    with sl.init_empty_weights():
        dst = nn.Linear(2, 2, dtype=torch.complex64)
    src = {"weight": torch.randn(2, 2, dtype=torch.complex64), "bias": torch.randn(2, dtype=torch.complex64)}
    with pytest.raises(sl.LoadError) as info:
        sl.load(dst, src, dtype=torch.float64)
    assert [(p.kind, p.path) for p in info.value.problems] == [("type", "weight"), ("type", "bias")]
    assert "destination float64" in str(info.value) and "imaginary part would be lost" in str(info.value)
    assert dst.weight.is_meta and dst.bias.is_meta  # nothing written
    report = sl.load(dst, {**src, "bias": torch.ones(2, dtype=torch.float64)}, dtype=torch.float64, strict=False)
    assert report.loaded == ["bias"] and [m.path for m in report.mismatched] == ["weight"]
    assert dst.bias.dtype == torch.float64 and dst.weight.is_meta


def test_r1_complex_into_a_meta_tensor_keeps_its_imaginary_part_where_it_is_made_complex():
    """The same source loads where the materialized dtype is complex: the destination's own, or
    the checkpoint's under ``dtype="auto"``."""
    src = {"weight": torch.randn(2, 2, dtype=torch.complex64), "bias": torch.randn(2, dtype=torch.complex64)}
    for dtype, built in [(None, torch.complex64), ("auto", torch.float32), (torch.complex128, torch.complex64)]:
        with sl.init_empty_weights():
            dst = nn.Linear(2, 2, dtype=built)
        assert sl.load(dst, src, dtype=dtype).ok
        assert dst.weight.is_complex() and torch.equal(dst.weight.to(torch.complex64), src["weight"])


# --- R2: None means skip ---------------------------------------------------------------


def test_r2_none_leaf_skips_and_is_not_missing():
    dst = randomized(nn.Linear(2, 2), 5)
    bias = dst.bias.detach().clone()
    report = sl.load(dst, {"weight": torch.ones(2, 2), "bias": None})
    assert torch.equal(dst.bias, bias) and torch.equal(dst.weight, torch.ones(2, 2))
    assert report.skipped == ["bias"] and report.missing == [] and report.ok


def test_r2_none_subtree_skips_every_leaf_below():
    src, dst = randomized(Net(), 1), randomized(Net(), 2)
    before = {k: v.clone() for k, v in dst.blocks[1].state_dict().items()}
    tree = sl.state(src)
    tree["blocks"]["1"] = None
    report = sl.load(dst, tree)
    assert all(torch.equal(v, before[k]) for k, v in dst.blocks[1].state_dict().items())
    assert report.skipped == [f"blocks.1.{k}" for k in before]
    assert torch.equal(dst.blocks[0].fc1.weight, src.blocks[0].fc1.weight)


# --- R3: absent parameters --------------------------------------------------------------


def test_r3_false_leaf_zeroes_destination():
    dst = randomized(nn.Linear(2, 2), 1)
    report = sl.load(dst, {"weight": torch.ones(2, 2), "bias": False})
    assert torch.equal(dst.bias, torch.zeros(2)) and report.zeroed == ["bias"]


def test_r3_bias_free_source_module_zeroes_destination_bias():
    src, dst = randomized(Net(bias=False), 1), randomized(Net(bias=True), 2)
    report = sl.load(dst, src)
    assert torch.equal(dst.head.bias, torch.zeros(3))
    assert torch.equal(dst.head.weight, src.head.weight)
    assert "head.bias" in report.zeroed and "blocks.0.fc1.bias" in report.zeroed
    assert report.ok


def test_r3_source_node_without_bias_entry_counts_as_absent():
    src, dst = randomized(Net(bias=False), 1), randomized(Net(bias=True), 2)
    report = sl.load(dst, src.state_dict())  # a checkpoint of a bias-free model
    assert torch.equal(dst.blocks[2].fc2.bias, torch.zeros(4))
    assert len(report.zeroed) == 7 and report.ok


def test_r3_only_bias_counts_as_absent_other_names_are_missing():
    dst = nn.LayerNorm(3)
    with pytest.raises(sl.LoadError) as info:
        sl.load(dst, {"bias": torch.ones(3)})
    assert [(p.kind, p.path) for p in info.value.problems] == [("missing", "weight")]


def test_r3_missing_module_is_missing_not_zeroed():
    dst = Net()
    state = Net().state_dict()
    del state["head.weight"], state["head.bias"]
    report = sl.load(dst, state, strict=False)
    assert report.missing == ["head.weight", "head.bias"] and report.zeroed == []


def test_r3_zero_tensor_into_absent_destination_is_dropped():
    dst = nn.Linear(2, 2, bias=False)
    report = sl.load(dst, {"weight": torch.ones(2, 2), "bias": torch.zeros(2)})
    assert report.dropped == ["bias"] and report.ok and dst.bias is None


def test_r3_nonzero_tensor_into_absent_destination_is_an_absent_problem():
    dst = randomized(nn.Linear(2, 2, bias=False), 3)
    before = snapshot(dst)
    with pytest.raises(sl.LoadError) as info:
        sl.load(dst, {"weight": torch.ones(2, 2), "bias": torch.tensor([0.0, 0.1])})
    [problem] = info.value.problems
    assert (problem.kind, problem.path) == ("absent", "bias")
    assert "non-zero" in problem.message
    assert_unchanged(dst, before)


def test_r3_absent_to_absent_is_nothing():
    src, dst = Net(bias=False), Net(bias=False)
    report = sl.load(dst, src)
    assert report.ok and report.zeroed == [] and report.dropped == []
    assert report.loaded == list(dst.state_dict())  # absent biases are in no list
    assert dst.head.bias is None


# --- R4: tied parameters -----------------------------------------------------------------


def test_r4_tied_tensor_needs_only_one_source_path():
    src = randomized(TiedLM(), 1)
    dst = TiedLM()
    report = sl.load(dst, {"wte.weight": src.wte.weight})
    assert torch.equal(dst.lm_head.weight, src.wte.weight)
    assert dst.lm_head.weight is dst.wte.weight
    assert report.ok and report.missing == []
    assert report.tied == [("wte.weight", "lm_head.weight")]
    assert report.loaded == ["wte.weight", "lm_head.weight"]


def test_r4_tied_tensor_written_once_when_both_given_equal():
    src, dst = randomized(TiedLM(), 1), TiedLM()
    state = {"wte.weight": src.wte.weight.clone(), "lm_head.weight": src.wte.weight.clone()}
    report = sl.load(dst, state)
    assert report.ok and torch.equal(dst.wte.weight, src.wte.weight)
    assert dst.lm_head.weight is dst.wte.weight


def test_r4_conflicting_tied_sources_are_a_tied_problem():
    dst = randomized(TiedLM(), 2)
    before = snapshot(dst)
    state = {"wte.weight": torch.ones(7, 4), "lm_head.weight": torch.zeros(7, 4)}
    with pytest.raises(sl.LoadError) as info:
        sl.load(dst, state)
    [problem] = info.value.problems
    assert problem.kind == "tied" and problem.path == "wte.weight" and "lm_head.weight" in problem.message
    assert_unchanged(dst, before)
    report = sl.load(dst, state, strict=False)
    assert [(m.path, m.kind) for m in report.mismatched] == [("wte.weight", "tied"), ("lm_head.weight", "tied")]
    assert_unchanged(dst, before)


def test_r4_a_tied_weight_given_false_beside_its_loaded_partner_is_written_from_the_partner():
    """R4 over R3: ``False`` at one tied path, a tensor at the other: one provided path is enough,
    the shared tensor is written once from it, and ``False`` is no "not a bias" problem."""
    dst = randomized(TiedLM(), 2)
    weight = torch.randn(7, 4)
    report = sl.load(dst, {"wte.weight": weight, "lm_head.weight": False})
    assert report.ok and report.problems == [] and report.zeroed == []
    assert torch.equal(dst.lm_head.weight, weight) and dst.lm_head.weight is dst.wte.weight
    assert report.loaded == ["wte.weight", "lm_head.weight"]
    untied = randomized(nn.Linear(4, 7, bias=False), 3)  # the same False with no tie partner stays a problem
    with pytest.raises(sl.LoadError, match="weight: absent in source, but not a bias"):
        sl.load(untied, {"weight": False})


def test_r4_shared_submodule_counts_as_tied():
    shared = nn.Linear(2, 2)
    dst = nn.ModuleDict({"a": shared, "b": shared})
    report = sl.load(dst, {"a": {"weight": torch.ones(2, 2), "bias": torch.ones(2)}})
    assert report.ok and torch.equal(dst["b"].weight, torch.ones(2, 2))
    assert ("a.weight", "b.weight") in report.tied


# --- R5: what is state -----------------------------------------------------------------


def test_r5_batchnorm_running_stats_and_counter_are_loaded():
    src, dst = nn.BatchNorm1d(3), nn.BatchNorm1d(3)
    src.train()
    src(torch.randn(8, 3))
    src(torch.randn(8, 3))
    report = sl.load(dst, src)
    assert torch.equal(dst.running_mean, src.running_mean)
    assert dst.num_batches_tracked.item() == 2
    assert report.loaded == ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]


class WithScratch(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, 2)
        self.register_buffer("scratch", torch.full((2,), 5.0), persistent=False)


def test_r5_non_persistent_buffers_are_neither_loaded_nor_expected():
    dst = WithScratch()
    report = sl.load(dst, {"fc": {"weight": torch.ones(2, 2), "bias": torch.ones(2)}})
    assert report.ok and "scratch" not in report.missing and report.ignored == []
    # given anyway (a checkpoint of a model where it was persistent): ignored, not a problem (R5, refined)
    report = sl.load(dst, {"fc": {"weight": torch.ones(2, 2), "bias": torch.ones(2)}, "scratch": torch.ones(2)})
    assert report.ok and report.ignored == ["scratch"] and "scratch" not in report.unexpected
    assert torch.equal(dst.scratch, torch.full((2,), 5.0))


class WithExtra(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, 2)
        self.config = {"step": 0}

    def get_extra_state(self):
        return dict(self.config)

    def set_extra_state(self, state):
        self.config = dict(state)


def test_r5_extra_state_loaded_when_source_has_it():
    src, dst = WithExtra(), WithExtra()
    src.config = {"step": 41, "name": "x"}
    report = sl.load(dst, src)
    assert dst.config == {"step": 41, "name": "x"}
    assert "_extra_state" in report.loaded
    dst2 = WithExtra()
    state = src.state_dict()
    assert "_extra_state" in state
    sl.load(dst2, state)  # flat state_dict: the extra state value is a dict, kept whole
    assert dst2.config == {"step": 41, "name": "x"}


def test_r5_extra_state_not_expected_when_source_lacks_it():
    dst = WithExtra()
    report = sl.load(dst, {"fc.weight": torch.ones(2, 2), "fc.bias": torch.ones(2)})
    assert report.ok and dst.config == {"step": 0}


# --- R6: validation before writing -----------------------------------------------------


def test_r6_strict_failure_leaves_destination_bitwise_unchanged():
    src, dst = randomized(Net(), 1), randomized(Net(), 2)
    state = src.state_dict()
    state["head.weight"] = torch.zeros(2, 4)  # the last module: every earlier tensor matched
    state["blocks.2.norm.extra"] = torch.ones(1)
    before = snapshot(dst)
    with pytest.raises(sl.LoadError) as info:
        sl.load(dst, state)
    assert_unchanged(dst, before)
    assert [p.path for p in info.value.problems] == ["blocks.2.norm.extra", "head.weight"]
    assert info.value.report.applied is False


# --- meta destinations -----------------------------------------------------------------


def test_meta_destination_is_materialized_as_real_parameters():
    src = randomized(Net(), 4)
    with torch.device("meta"):
        dst = Net()
    dst.embed.weight.requires_grad_(False)
    sl.load(dst, src)
    assert_same_state(dst, src)
    params = dict(dst.named_parameters())
    assert all(type(p) is nn.Parameter and p.device.type == "cpu" for p in params.values())
    assert params["embed.weight"].requires_grad is False and params["head.weight"].requires_grad is True
    assert all(not b.is_meta for b in dst.buffers())


def test_meta_tied_parameters_stay_tied_after_materializing():
    src = randomized(TiedLM(), 1)
    with torch.device("meta"):
        dst = TiedLM()
    sl.load(dst, src, device="cpu")
    assert dst.lm_head.weight is dst.wte.weight and not dst.wte.weight.is_meta
    assert torch.equal(dst.lm_head.weight, src.wte.weight)


def test_meta_source_tensor_is_a_type_problem():
    with torch.device("meta"):
        src = nn.Linear(2, 2)
    with pytest.raises(sl.LoadError, match="weight: the source tensor is on the meta device"):
        sl.load(nn.Linear(2, 2), src)


def test_r3_empty_source_node_does_not_match_so_bias_is_missing():
    report = sl.load(nn.Linear(2, 2), {}, strict=False)
    assert report.missing == ["weight", "bias"] and report.zeroed == []
