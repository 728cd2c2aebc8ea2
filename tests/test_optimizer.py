"""`sl.optimizer_state` and `sl.load_optimizer` (API.md section 13): optimizer state by parameter path.

Five torch optimizers against each model edit of issue 27 (a layer added or
removed, attributes registered in another order, a subset frozen or unfrozen,
q/k/v fused), checked bitwise against the source optimizer's own state.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
from optim_models import (
    OPTIMIZERS,
    Attention,
    D,
    Model,
    assert_same_state,
    assert_unchanged,
    params_of,
    snapshot,
    state_at,
    train,
    trained,
)

import structload as sl
from structload.convert import Concat, Split

# --- each optimizer against each edit ----------------------------------------------------------


@pytest.fixture(params=list(OPTIMIZERS))
def make_optimizer(request):
    return OPTIMIZERS[request.param]


def test_attributes_registered_in_another_order_load_by_path(make_optimizer):
    src, src_opt = trained(make_optimizer)
    dst = Model(order="vkq", head_first=True)
    dst.load_state_dict(src.state_dict())
    dst_opt = make_optimizer(dst.parameters())
    report = sl.load_optimizer(dst_opt, dst, src_opt.state_dict(), source_model=src)
    assert report.ok and not report.missing and not report.unexpected
    assert_same_state(dst_opt, dst, src_opt, src, [(p, p) for p in params_of(src)])
    # torch's positional load of the same state: attn.v.weight gets another parameter's moments (or it fails)
    positional = make_optimizer(dst.parameters())
    try:
        positional.load_state_dict(src_opt.state_dict())
    except (ValueError, RuntimeError):
        return
    moment = next(k for k in state_at(src_opt, src, "attn.v.weight") if k != "step")
    wrong = state_at(positional, dst, "attn.v.weight")[moment]
    assert not torch.equal(wrong, state_at(src_opt, src, "attn.v.weight")[moment])


def test_a_layer_added_is_missing_and_starts_fresh(make_optimizer):
    src, src_opt = trained(make_optimizer)
    dst = Model(extra=True)
    dst_opt = make_optimizer(dst.parameters())
    before = snapshot(dst_opt)  # Adagrad makes its state in its constructor; the others have none yet
    with pytest.raises(sl.LoadError) as error:
        sl.load_optimizer(dst_opt, dst, src_opt.state_dict(), source_model=src)
    assert [(p.kind, p.path) for p in error.value.problems] == [("missing", "extra.weight"), ("missing", "extra.bias")]
    assert {p.rsplit(".", 1)[0] for p in error.value.report.missing} == {"extra.weight", "extra.bias"}
    assert_unchanged(dst_opt, before)  # a strict failure wrote nothing
    report = sl.load_optimizer(dst_opt, dst, src_opt.state_dict(), source_model=src, strict=False)
    assert sorted(report.missing) == sorted(f"extra.{n}.{k}" for n in ("weight", "bias") for k in state_keys(src_opt))
    assert_same_state(dst_opt, dst, src_opt, src, [(p, p) for p in params_of(src)])
    assert dst.extra.weight not in dst_opt.state  # a new parameter: no state yet
    train(dst, dst_opt, range(3, 4))  # and the optimizer steps
    assert dst.extra.weight in dst_opt.state


def state_keys(optimizer) -> list[str]:
    return list(next(iter(optimizer.state.values())))


def test_a_layer_removed_is_unexpected(make_optimizer):
    src, src_opt = trained(make_optimizer, extra=True)
    dst = Model()
    dst_opt = make_optimizer(dst.parameters())
    with pytest.raises(sl.LoadError) as error:
        sl.load_optimizer(dst_opt, dst, src_opt.state_dict(), source_model=src)
    assert error.value.report.unexpected and all(p.startswith("extra.") for p in error.value.report.unexpected)
    report = sl.load_optimizer(dst_opt, dst, src_opt.state_dict(), source_model=src, strict=False)
    assert_same_state(dst_opt, dst, src_opt, src, [(p, p) for p in params_of(dst)])
    assert not report.missing


def test_a_subset_frozen_in_the_destination_is_ignored(make_optimizer):
    src, src_opt = trained(make_optimizer)
    dst = Model()
    dst.embed.requires_grad_(False)
    dst_opt = make_optimizer([p for p in dst.parameters() if p.requires_grad])
    report = sl.load_optimizer(dst_opt, dst, src_opt.state_dict(), source_model=src)
    assert report.ok
    assert sorted(report.ignored) == sorted(f"embed.{n}.{k}" for n in ("weight", "bias") for k in state_keys(src_opt))
    assert_same_state(dst_opt, dst, src_opt, src, [(p, p) for p in params_of(dst)])
    assert dst.embed.weight not in dst_opt.state


def test_a_subset_unfrozen_in_the_destination_is_missing(make_optimizer):
    frozen = ("embed.weight", "embed.bias")
    src, src_opt = trained(make_optimizer, frozen=frozen)
    dst = Model()
    dst_opt = make_optimizer(dst.parameters())
    # the source optimizer held the trainable parameters only: a module gives them by requires_grad
    with pytest.raises(sl.LoadError) as error:
        sl.load_optimizer(dst_opt, dst, src_opt.state_dict(), source_model=src)
    assert [(p.kind, p.path) for p in error.value.problems] == [("missing", "embed.weight"), ("missing", "embed.bias")]
    report = sl.load_optimizer(dst_opt, dst, src_opt.state_dict(), source_model=params_of(src), strict=False)
    assert {p.rsplit(".", 1)[0] for p in report.missing} == set(frozen)
    assert_same_state(dst_opt, dst, src_opt, src, [(p, p) for p in params_of(src)])


FUSE = [
    Concat(["attn.q.weight", "attn.k.weight", "attn.v.weight"], into="attn.qkv.weight"),
    Concat(["attn.q.bias", "attn.k.bias", "attn.v.bias"], into="attn.qkv.bias"),
]


def test_q_k_v_fused_concatenates_their_state_like_the_weights(make_optimizer):
    src, src_opt = trained(make_optimizer)
    dst = Model(fused=True)
    assert sl.load(dst, src, convert=FUSE).ok
    dst_opt = make_optimizer(dst.parameters())
    report = sl.load_optimizer(dst_opt, dst, src_opt.state_dict(), source_model=src, convert=FUSE)
    assert report.ok
    for name in ("weight", "bias"):
        got = state_at(dst_opt, dst, f"attn.qkv.{name}")
        pieces = [state_at(src_opt, src, f"attn.{x}.{name}") for x in "qkv"]
        for key, value in pieces[0].items():
            want = value if not value.shape else torch.cat([piece[key] for piece in pieces])
            assert torch.equal(got[key], want), key
    assert {c.path.rsplit(".", 1)[0] for c in report.converted} == {"attn.qkv.weight", "attn.qkv.bias"}
    unfused = [p for p in params_of(src) if not p.startswith(("attn.q.", "attn.k.", "attn.v."))]
    assert_same_state(dst_opt, dst, src_opt, src, [(p, p) for p in unfused])
    # after the load, one step of the fused model equals one step of the unfused one
    train(src, src_opt, range(3, 4))
    train(dst, dst_opt, range(3, 4))
    torch.testing.assert_close(
        dst.attn.qkv.weight, torch.cat([src.attn.q.weight, src.attn.k.weight, src.attn.v.weight])
    )


def test_a_fused_qkv_splits_back(make_optimizer):
    src, src_opt = trained(make_optimizer, fused=True)
    dst = Model()
    split = [Split("attn.qkv.weight", into=["attn.q.weight", "attn.k.weight", "attn.v.weight"])]
    split += [Split("attn.qkv.bias", into=["attn.q.bias", "attn.k.bias", "attn.v.bias"])]
    dst_opt = make_optimizer(dst.parameters())
    assert sl.load_optimizer(dst_opt, dst, sl.optimizer_state(src_opt, src), convert=split).ok
    for i, x in enumerate("qkv"):
        got, whole = state_at(dst_opt, dst, f"attn.{x}.weight"), state_at(src_opt, src, "attn.qkv.weight")
        for key, value in whole.items():
            assert torch.equal(got[key], value if not value.shape else value.chunk(3)[i]), key


# --- the resume equivalence ---------------------------------------------------------------------


def test_resume_after_reordering_equals_training_without_interruption(make_optimizer, tmp_path):
    torch.manual_seed(0)
    reference = Model().double()
    first = copy.deepcopy(reference)
    reference_opt = make_optimizer(reference.parameters())
    train(reference, reference_opt, range(10))

    first_opt = make_optimizer(first.parameters())
    train(first, first_opt, range(5))
    torch.save({"model": first.state_dict(), "optimizer": first_opt.state_dict()}, tmp_path / "ckpt.pt")
    del first, first_opt

    resumed = Model(order="vkq", head_first=True).double()
    checkpoint = sl.open(tmp_path / "ckpt.pt")
    sl.load(resumed, checkpoint["model"])
    resumed_opt = make_optimizer(resumed.parameters())
    sl.load_optimizer(resumed_opt, resumed, checkpoint["optimizer"], source_model=checkpoint["model"])
    train(resumed, resumed_opt, range(5, 10))
    for path, param in reference.named_parameters():
        assert torch.equal(resumed.get_parameter(path), param), path


# --- what the load keeps, writes in place, or leaves unchanged -----------------------------------


def test_round_trip_through_the_tree_reproduces_the_state():
    src, src_opt = trained(OPTIMIZERS["adam"], frozen=("head.bias",))
    tree = sl.optimizer_state(src_opt, src)
    assert "bias" not in tree["head"]  # not held by the optimizer
    assert (
        tree["attn"]["q"]["weight"]["exp_avg"].data_ptr()
        == state_at(src_opt, src, "attn.q.weight")["exp_avg"].data_ptr()
    )
    dst = copy.deepcopy(src)
    dst_opt = OPTIMIZERS["adam"]([p for p in dst.parameters() if p.requires_grad])
    report = sl.load_optimizer(dst_opt, dst, tree)
    assert report.ok and len(report.loaded) == 3 * len(params_of(src))
    assert_same_state(dst_opt, dst, src_opt, src, [(p, p) for p in params_of(src)])


def test_a_fresh_optimizer_gives_empty_state_and_loading_it_resets():
    model = Model()
    optimizer = torch.optim.Adam(model.parameters())
    fresh = sl.optimizer_state(optimizer, model)
    assert fresh["embed"] == {"weight": {}, "bias": {}}
    _, trained_opt = trained(OPTIMIZERS["adam"])
    optimizer.load_state_dict(trained_opt.state_dict())
    report = sl.load_optimizer(optimizer, model, fresh)
    assert report.ok and not report.loaded and not optimizer.state


def test_existing_state_is_written_in_place_and_groups_are_kept():
    src, src_opt = trained(OPTIMIZERS["adam"])
    dst, dst_opt = trained(lambda params: torch.optim.Adam(params, lr=0.5, betas=(0.8, 0.9)), steps=1)
    before = {p: dict(s) for p, s in dst_opt.state.items()}
    sl.load_optimizer(dst_opt, dst, src_opt.state_dict(), source_model=src)
    for param, state in before.items():
        for key, tensor in state.items():
            assert dst_opt.state[param][key] is tensor  # the same tensor object, written in place
    assert_same_state(dst_opt, dst, src_opt, src, [(p, p) for p in params_of(src)])
    assert dst_opt.param_groups[0]["lr"] == 0.5 and dst_opt.param_groups[0]["betas"] == (0.8, 0.9)


def test_a_strict_failure_leaves_the_optimizer_bitwise_unchanged():
    src, src_opt = trained(OPTIMIZERS["adam"], extra=True)
    dst, dst_opt = trained(OPTIMIZERS["adam"], steps=1, order="vkq")
    before = snapshot(dst_opt)
    source = sl.optimizer_state(src_opt, src)
    source["embed"]["weight"]["exp_avg"] = torch.zeros(7, 7)  # a shape problem on top of the unexpected layer
    with pytest.raises(sl.LoadError) as error:
        sl.load_optimizer(dst_opt, dst, source)
    assert {p.kind for p in error.value.problems} == {"unexpected", "shape"}
    assert_unchanged(dst_opt, before)


def test_dry_run_writes_nothing_and_reports_what_it_would_do():
    src, src_opt = trained(OPTIMIZERS["sgd-momentum"])
    dst = Model()
    dst_opt = OPTIMIZERS["sgd-momentum"](dst.parameters())
    report = sl.load_optimizer(dst_opt, dst, sl.optimizer_state(src_opt, src), dry_run=True)
    assert report.loaded[0] == "embed.weight.momentum_buffer" and not report.applied
    assert not dst_opt.state


def test_include_and_exclude_match_parameter_paths():
    src, src_opt = trained(OPTIMIZERS["adam"])
    dst = Model()
    dst_opt = OPTIMIZERS["adam"](dst.parameters())
    report = sl.load_optimizer(dst_opt, dst, src_opt.state_dict(), source_model=src, exclude="attn")
    assert {p.split(".")[0] for p in report.loaded} == {"embed", "head"}
    assert {p.split(".")[0] for p in report.excluded} == {"attn"}
    assert dst.attn.q.weight not in dst_opt.state
    report = sl.load_optimizer(dst_opt, dst, src_opt.state_dict(), source_model=src, include="attn.q.*")
    assert {p.rsplit(".", 1)[0] for p in report.loaded} == {"attn.q.weight", "attn.q.bias"}
    with pytest.raises(sl.LoadError, match="include pattern matches no destination path"):
        sl.load_optimizer(dst_opt, dst, src_opt.state_dict(), source_model=src, include="atn.*")


def test_missing_state_is_missing_by_path_and_starts_fresh_when_not_strict():
    src, src_opt = trained(OPTIMIZERS["adam"])
    dst, dst_opt = trained(OPTIMIZERS["adam"], steps=1)
    tree = sl.optimizer_state(src_opt, src)
    del tree["head"]["weight"]["exp_avg_sq"]  # half a state
    del tree["embed"]  # no state at all
    with pytest.raises(sl.LoadError) as error:
        sl.load_optimizer(dst_opt, dst, tree)
    paths = {p.path for p in error.value.problems}
    assert paths == {"head.weight.exp_avg_sq", "embed.weight", "embed.bias"} or paths >= {"head.weight.exp_avg_sq"}
    report = sl.load_optimizer(dst_opt, dst, tree, strict=False)
    assert "head.weight.exp_avg_sq" in report.missing and "embed.weight.exp_avg" in report.missing
    assert dst.head.weight not in dst_opt.state and dst.embed.weight not in dst_opt.state  # fresh
    assert_same_state(dst_opt, dst, src_opt, src, [("head.bias", "head.bias"), ("attn.q.weight", "attn.q.weight")])


def test_a_module_prefix_is_renamed_away_as_for_the_weights():
    src, src_opt = trained(OPTIMIZERS["adam"])
    wrapped = nn.ModuleDict({"module": src})  # what DistributedDataParallel's names look like
    tree = sl.optimizer_state(src_opt, wrapped)
    dst = Model()
    dst_opt = OPTIMIZERS["adam"](dst.parameters())
    with pytest.raises(sl.LoadError) as error:
        sl.load_optimizer(dst_opt, dst, tree)
    assert 'pass rename={r"^module\\.": ""}' in str(error.value)
    assert sl.load_optimizer(dst_opt, dst, tree, rename={r"^module\.": ""}).ok
    assert_same_state(dst_opt, dst, src_opt, src, [(p, p) for p in params_of(src)])


def test_fused_pieces_with_different_steps_are_a_tied_problem():
    src, src_opt = trained(OPTIMIZERS["adam"])
    state_at(src_opt, src, "attn.k.weight")["step"] = torch.tensor(7.0)
    dst = Model(fused=True)
    dst_opt = OPTIMIZERS["adam"](dst.parameters())
    with pytest.raises(sl.LoadError) as error:
        sl.load_optimizer(dst_opt, dst, sl.optimizer_state(src_opt, src), convert=FUSE)
    (problem,) = error.value.problems
    assert problem.kind == "tied" and problem.path == "attn.qkv.weight.step"
    assert "'attn.k.weight' 7.0" in problem.message and not dst_opt.state


def test_factored_state_through_a_converter_is_a_type_problem():
    src, src_opt = trained(lambda params: torch.optim.Adafactor(params, lr=0.01))
    assert state_at(src_opt, src, "attn.q.weight")["row_var"].shape == (D, 1)
    dst = Model(fused=True)
    dst_opt = torch.optim.Adafactor(dst.parameters(), lr=0.01)
    with pytest.raises(sl.LoadError) as error:
        sl.load_optimizer(dst_opt, dst, sl.optimizer_state(src_opt, src), convert=FUSE)
    kinds = {p.path: p.kind for p in error.value.problems}
    assert kinds["attn.qkv.weight.row_var"] == "type" and kinds["attn.qkv.weight.col_var"] == "type"
    # unconverted, the same factored state loads as it is
    same = Model()
    same_opt = torch.optim.Adafactor(same.parameters(), lr=0.01)
    assert sl.load_optimizer(same_opt, same, sl.optimizer_state(src_opt, src)).ok
    assert_same_state(same_opt, same, src_opt, src, [(p, p) for p in params_of(src)])


def test_a_model_mismatch_of_the_optimizer_is_a_problem():
    model = Model()
    other = nn.Linear(2, 2)
    optimizer = torch.optim.SGD([*model.parameters(), other.weight], lr=0.1)
    with pytest.raises(
        sl.LoadError,
        match=r"param_groups.0.params.12: the optimizer holds a parameter of shape \(2, 2\) that the model does not",
    ):
        sl.load_optimizer(optimizer, model, {})


def test_factored_state_rejected_by_a_converter_starts_fresh_when_not_strict():
    src, src_opt = trained(lambda params: torch.optim.Adafactor(params, lr=0.01))
    dst = Model(fused=True)
    dst_opt = torch.optim.Adafactor(dst.parameters(), lr=0.01)
    report = sl.load_optimizer(dst_opt, dst, sl.optimizer_state(src_opt, src), convert=FUSE, strict=False)
    assert dst.attn.qkv.weight not in dst_opt.state and "attn.qkv.weight.row_var" not in report.loaded
    assert_same_state(dst_opt, dst, src_opt, src, [("head.weight", "head.weight")])
    train(dst, dst_opt, range(3, 4))  # a half-made state would fail here


class OtherNames(nn.Module):
    """The same model written by someone else: other names for every layer."""

    def __init__(self):
        super().__init__()
        self.tok = nn.Linear(3, D)
        self.attention = nn.Module()
        for name in ("query", "key", "value", "output"):
            setattr(self.attention, name, nn.Linear(D, D))
        self.classifier = nn.Linear(D, 2)


OTHER_NAMES = {"tok": "embed", "attention.query": "attn.q", "attention.key": "attn.k", "attention.value": "attn.v"}
OTHER_NAMES |= {"attention.output": "attn.o", "classifier": "head"}


@pytest.mark.parametrize("weights", ["source_model", "state"])
def test_align_matches_the_state_of_another_implementation(weights):
    torch.manual_seed(0)
    src = OtherNames()
    src_opt = torch.optim.Adam(src.parameters())
    for param in src.parameters():
        param.grad = torch.randn_like(param)
    src_opt.step()
    dst = Model()
    dst_opt = torch.optim.Adam(dst.parameters())
    source_model = src if weights == "source_model" else None  # else: each parameter's largest state tensor
    report = sl.load_optimizer(dst_opt, dst, sl.optimizer_state(src_opt, src), source_model=source_model, align=True)
    assert report.ok and len(report.loaded) == 3 * len(params_of(dst))
    pairs = [(f"{OTHER_NAMES[m]}.{leaf}", f"{m}.{leaf}") for m in OTHER_NAMES for leaf in ("weight", "bias")]
    assert_same_state(dst_opt, dst, src_opt, src, pairs)


def test_filter_selects_parameters_by_their_module():
    src, src_opt = trained(OPTIMIZERS["adam"])
    dst = Model()
    dst_opt = OPTIMIZERS["adam"](dst.parameters())
    report = sl.load_optimizer(
        dst_opt, dst, sl.optimizer_state(src_opt, src), filter=lambda path, node: not isinstance(node, Attention)
    )
    assert {p.split(".")[0] for p in report.loaded} == {"embed", "head"} and not dst_opt.state.get(dst.attn.q.weight)


def test_python_number_state_comes_back_as_numbers():
    src, src_opt = trained(OPTIMIZERS["sgd-momentum"])
    for state in src_opt.state.values():
        state["count"], state["scale"] = 3, 0.5  # what some optimizers keep as plain numbers
    dst = Model()
    dst_opt = OPTIMIZERS["sgd-momentum"](dst.parameters())
    assert sl.load_optimizer(dst_opt, dst, sl.optimizer_state(src_opt, src)).ok
    state = state_at(dst_opt, dst, "head.weight")
    assert state["count"] == 3 and type(state["count"]) is int and state["scale"] == 0.5
    assert torch.equal(state["momentum_buffer"], state_at(src_opt, src, "head.weight")["momentum_buffer"])
