"""`sl.load_optimizer` at its edges: tied parameters, LBFGS, converters that match nothing, and
what the report's counts count."""

from __future__ import annotations

from unittest import mock

import pytest
import torch
import torch.nn as nn
from optim_models import OPTIMIZERS, Model, assert_unchanged, snapshot, state_at, trained

import structload as sl
from structload import convert
from structload._report import Problem, ProblemKind
from structload.convert import Concat

# --- tied parameters: one parameter at two paths ------------------------------------------------


class TiedLM(nn.Module):
    """An embedding whose weight the output head shares, as GPT-2's ``lm_head`` does."""

    def __init__(self, tied: bool = True):
        super().__init__()
        self.embed = nn.Embedding(6, 4)
        self.mid = nn.Linear(4, 4)
        self.head = nn.Linear(4, 6, bias=False)
        if tied:
            self.head.weight = self.embed.weight

    def forward(self, idx):
        return self.head(self.mid(self.embed(idx)))


def trained_lm(tied: bool = True, named: bool = False):
    torch.manual_seed(0)
    model = TiedLM(tied)
    optimizer = torch.optim.Adam(model.named_parameters() if named else model.parameters(), lr=0.01)
    for step in range(2):
        optimizer.zero_grad()
        model(torch.tensor([[step, 2, 3]])).pow(2).mean().backward()
        optimizer.step()
    return model, optimizer


def test_a_tied_parameter_gets_its_state_once_at_either_path():
    src, src_opt = trained_lm()
    tree = sl.optimizer_state(src_opt, src)
    assert "head" not in tree  # held once, at its first path
    for source in (tree, {"head": {"weight": tree["embed"]["weight"]}, "mid": tree["mid"]}):  # either path
        dst = TiedLM()
        dst_opt = torch.optim.Adam(dst.parameters())
        report = sl.load_optimizer(dst_opt, dst, source)
        assert report.ok and ("embed.weight.exp_avg", "head.weight.exp_avg") in report.tied
        state = dst_opt.state[dst.embed.weight]
        for key, value in src_opt.state[src.embed.weight].items():
            assert torch.equal(state[key], value), key
        assert len(dst_opt.state) == 3  # embed/head's weight, mid's weight and bias: one state each


def test_a_source_with_different_state_at_the_two_paths_is_a_tied_problem():
    untied, untied_opt = trained_lm(tied=False, named=True)  # the embedding and head trained apart
    dst = TiedLM()
    dst_opt = torch.optim.Adam(dst.parameters())
    before = snapshot(dst_opt)
    with pytest.raises(sl.LoadError) as error:
        sl.load_optimizer(dst_opt, dst, untied_opt.state_dict())
    problems = {(p.kind, p.path) for p in error.value.problems}
    assert problems == {("tied", "embed.weight.exp_avg"), ("tied", "embed.weight.exp_avg_sq")}
    assert "'head.weight.exp_avg'" in str(error.value)
    assert_unchanged(dst_opt, before)
    report = sl.load_optimizer(dst_opt, dst, untied_opt.state_dict(), strict=False)
    assert dst.embed.weight not in dst_opt.state  # starts fresh, as a new parameter would
    assert torch.equal(dst_opt.state[dst.mid.weight]["exp_avg"], untied_opt.state[untied.mid.weight]["exp_avg"])
    assert not report.ok


def test_equal_state_at_the_two_paths_loads():
    src, src_opt = trained_lm()
    tree = sl.optimizer_state(src_opt, src)
    tree["head"] = {"weight": {key: value.clone() for key, value in tree["embed"]["weight"].items()}}
    dst = TiedLM()
    dst_opt = torch.optim.Adam(dst.parameters())
    assert sl.load_optimizer(dst_opt, dst, tree).ok
    assert torch.equal(dst_opt.state[dst.head.weight]["exp_avg_sq"], src_opt.state[src.embed.weight]["exp_avg_sq"])


# --- LBFGS: state for all parameters together ---------------------------------------------------


def trained_lbfgs():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 1))
    optimizer = torch.optim.LBFGS(model.parameters(), history_size=3, max_iter=4)
    x = torch.randn(5, 3)

    def closure():
        optimizer.zero_grad()
        loss = model(x).pow(2).mean()
        loss.backward()
        return loss

    optimizer.step(closure)
    return model, optimizer


@pytest.mark.parametrize("kind", ["tree", "state_dict"])
def test_lbfgs_state_is_a_clear_type_problem(kind):
    src, src_opt = trained_lbfgs()
    assert isinstance(src_opt.state[src[0].weight]["old_dirs"], list)
    source = sl.optimizer_state(src_opt, src) if kind == "tree" else src_opt.state_dict()
    dst, dst_opt = trained_lbfgs()
    before = values_of(dst_opt)
    with pytest.raises(sl.LoadError) as error:
        sl.load_optimizer(dst_opt, dst, source, source_model=src)
    (problem,) = error.value.problems
    assert problem.kind == "type" and "LBFGS keeps one state for all its parameters" in problem.message
    assert "optimizer.load_state_dict()" in problem.message
    report = sl.load_optimizer(dst_opt, dst, source, source_model=src, strict=False)
    assert not report.applied and [p.kind for p in report.problems] == ["type"]
    assert values_of(dst_opt) == before


def values_of(optimizer) -> dict:
    """LBFGS's state as plain values (its history is lists of tensors)."""

    def plain(value):
        if isinstance(value, list):
            return [plain(v) for v in value]
        return (value.dtype, value.tolist()) if isinstance(value, torch.Tensor) else value

    return {(i, key): plain(v) for i, state in enumerate(optimizer.state.values()) for key, v in state.items()}


# --- converters that match nothing: said once, whatever their words -----------------------------

FUSE = [Concat(["attn.q.weight", "attn.k.weight", "attn.v.weight"], into="attn.qkv.weight")]


def test_a_converter_matching_nothing_is_one_problem_whatever_its_message():
    src, src_opt = trained(OPTIMIZERS["adam"])
    tree = {"module": sl.optimizer_state(src_opt, src)}  # names with a prefix the converter does not have
    dst = Model(fused=True)
    dst_opt = OPTIMIZERS["adam"](dst.parameters())
    original = convert.Converter.run

    def reworded(self, flat, made):  # another wording and kind for "matches no source path"
        found = original(self, flat, made)
        return [Problem(ProblemKind.PATTERN, p.path, "found nothing to convert") for p in found]

    with mock.patch.object(convert.Converter, "run", reworded), pytest.raises(sl.LoadError) as error:
        sl.load_optimizer(
            dst_opt,
            dst,
            tree,
            rename={r"^module\.": ""},
            convert=[
                Concat(["module.attn.q.weight", "module.attn.k.weight", "module.attn.v.weight"], into="attn.qkv.weight")
            ],
        )
    about_it = [p for p in error.value.problems if "found nothing" in p.message]
    assert [(p.kind, p.path) for p in about_it] == [("pattern", "module.attn.q.weight")]  # once, not per state key


# --- what the report counts --------------------------------------------------------------------


def test_the_summary_counts_state_entries_and_of_how_many_parameters():
    src, src_opt = trained(OPTIMIZERS["adam"])
    tree = sl.optimizer_state(src_opt, src)
    del tree["embed"]  # two parameters' state, three entries each
    dst = Model()
    dst_opt = OPTIMIZERS["adam"](dst.parameters())
    report = sl.load_optimizer(dst_opt, dst, tree, strict=False)
    assert [p.path for p in report.problems] == ["embed.weight", "embed.bias"]  # one per parameter
    summary = report.summary()
    assert summary.startswith(f"Adam: {len(report.loaded)} state entries loaded (of 10 parameters)")
    assert "6 missing (of 2 parameters); 2 problems (2 missing)" in summary
    assert state_at(dst_opt, dst, "head.weight")  # the rest loaded
