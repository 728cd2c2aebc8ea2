"""R3 by role (biases registered under other names) and tensor extra state from every source
kind (issue 22, API.md §10)."""

from __future__ import annotations

import pytest
import safetensors.torch
import torch
import torch.nn as nn

import structload as sl
from helpers import assert_unchanged, randomized, snapshot

# --- R3 by role: an additive offset beside its weight is a bias -------------------------------------


def test_a_bias_free_multihead_attention_loads_into_a_biased_one_with_zero_biases():
    src, dst = randomized(nn.MultiheadAttention(8, 2, bias=False)), randomized(nn.MultiheadAttention(8, 2), 1)
    for source in (src, src.state_dict()):
        report = sl.load(dst, source)
        assert report.ok and report.zeroed == ["in_proj_bias", "out_proj.bias"]
    assert torch.equal(dst.in_proj_weight, src.in_proj_weight) and not dst.in_proj_bias.any()
    x = torch.randn(3, 5, 8)
    assert torch.allclose(dst(x, x, x)[0], src(x, x, x)[0], atol=1e-6)  # zero reproduces what the source computed


@pytest.mark.parametrize("kind", [nn.LSTM, nn.GRU, nn.RNN])
def test_rnn_biases_of_every_layer_and_direction_are_biases(kind):
    src = randomized(kind(4, 6, num_layers=2, bidirectional=True, bias=False))
    dst = randomized(kind(4, 6, num_layers=2, bidirectional=True), 1)
    report = sl.load(dst, src.state_dict())
    assert report.ok and len(report.zeroed) == 8
    assert set(report.zeroed) == {f"bias_{g}_l{i}{r}" for g in ("ih", "hh") for i in (0, 1) for r in ("", "_reverse")}
    x = torch.randn(2, 3, 4)
    assert torch.allclose(dst(x)[0], src(x)[0], atol=1e-6)


def test_a_nonzero_role_bias_into_a_bias_free_module_is_an_absent_problem_and_writes_nothing():
    dst = randomized(nn.MultiheadAttention(8, 2, bias=False))
    before = snapshot(dst)
    with pytest.raises(sl.LoadError) as info:
        sl.load(dst, randomized(nn.MultiheadAttention(8, 2), 1))
    assert {(p.kind, p.path) for p in info.value.problems} == {("absent", "in_proj_bias"), ("absent", "out_proj.bias")}
    assert_unchanged(dst, before)


def test_tensors_named_bias_that_offset_no_weight_are_not_zeroed():
    # MultiheadAttention's bias_k / bias_v are learned key / value tokens, not offsets of a weight
    dst = nn.MultiheadAttention(8, 2, add_bias_kv=True)
    with pytest.raises(sl.LoadError) as info:
        sl.load(dst, nn.MultiheadAttention(8, 2).state_dict())
    assert [(p.kind, p.path) for p in info.value.problems] == [("missing", "bias_k"), ("missing", "bias_v")]
    with pytest.raises(sl.LoadError) as info:
        sl.load({"w_weight": torch.zeros(3, 2), "w_bias": torch.zeros(1, 3)}, {"w_weight": torch.ones(3, 2)})
    assert [(p.kind, p.path) for p in info.value.problems] == [("missing", "w_bias")]  # 2-d: not one per row


def test_role_biases_in_a_pytree_destination():
    dst = {"in_proj_weight": torch.zeros(6, 2), "in_proj_bias": torch.ones(6)}
    report = sl.load(dst, {"in_proj_weight": torch.ones(6, 2), "in_proj_bias": False})
    assert report.zeroed == ["in_proj_bias"] and not dst["in_proj_bias"].any()


# --- tensor extra state (TransformerEngine keeps its FP8 metadata as a uint8 tensor) ----------------


class FP8Linear(nn.Module):
    """TransformerEngine's way: ``get_extra_state`` returns a uint8 tensor of serialized metadata."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 4)
        self.meta = torch.zeros(6, dtype=torch.uint8)
        self.calls = 0

    def get_extra_state(self) -> torch.Tensor:
        return self.meta

    def set_extra_state(self, state: torch.Tensor) -> None:
        self.calls += 1
        self.meta = state.clone()


def _source() -> FP8Linear:
    src = randomized(FP8Linear())
    src.meta = torch.arange(6, dtype=torch.uint8) * 7
    return src


def _sources(tmp_path):
    src = _source()
    safetensors.torch.save_file(src.state_dict(), str(tmp_path / "te.safetensors"))
    torch.save(src.state_dict(), tmp_path / "te.pt")
    return {
        "state_dict": src.state_dict(),
        "module": src,
        "state": sl.state(src),
        "safetensors": str(tmp_path / "te.safetensors"),
        "torch": str(tmp_path / "te.pt"),
    }


@pytest.mark.parametrize("kind", ["state_dict", "module", "state", "safetensors", "torch"])
@pytest.mark.parametrize("empty", [False, True], ids=["built", "meta"])
def test_tensor_extra_state_loads_from_every_source_kind(tmp_path, kind, empty):
    source = _sources(tmp_path)[kind]
    if empty:
        with sl.init_empty_weights():
            dst = FP8Linear()
    else:
        dst = FP8Linear()
    report = sl.load(dst, source)
    assert report.ok and report.loaded == list(_source().state_dict())  # _extra_state, linear.weight, linear.bias
    assert dst.calls == 1 and dst.meta.dtype == torch.uint8
    assert torch.equal(dst.meta, _source().meta) and torch.equal(dst.linear.weight, _source().linear.weight)
