"""Every option of `load`: strict, include, exclude, filter, rename, convert, device, dry_run, progress."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn as nn
from rich.console import Console

import structload as sl
from helpers import Net, assert_same_state, assert_unchanged, randomized, snapshot


def test_strict_false_loads_what_matches_and_lists_the_rest():
    src, dst = randomized(Net(n=2), 1), randomized(Net(n=3), 2)
    third = dst.blocks[2].fc1.weight.detach().clone()
    report = sl.load(dst, src, strict=False)
    assert torch.equal(dst.blocks[1].fc2.weight, src.blocks[1].fc2.weight)
    assert torch.equal(dst.blocks[2].fc1.weight, third)
    assert report.missing == [k for k in dst.state_dict() if k.startswith("blocks.2.")]
    assert report.missing_keys is report.missing and report.unexpected_keys is report.unexpected
    assert not report.ok and report.applied


def test_include_loads_and_expects_only_matching_paths():
    src = {"blocks": sl.state(randomized(Net(), 1))["blocks"], "other": {"w": torch.ones(1)}}
    dst = randomized(Net(), 2)
    head = dst.head.weight.detach().clone()
    report = sl.load(dst, src, include="blocks.*")
    assert torch.equal(dst.blocks[0].fc1.weight, src["blocks"]["0"]["fc1"]["weight"])
    assert torch.equal(dst.head.weight, head)
    assert report.ok and report.excluded == ["embed.weight", "head.weight", "head.bias"]
    assert report.unexpected == []  # 'other' would not be included anyway


def test_include_pattern_matching_a_module_covers_it():
    dst = randomized(Net(), 2)
    report = sl.load(dst, {"head": {"weight": torch.ones(3, 4), "bias": torch.ones(3)}}, include=["head"])
    assert report.loaded == ["head.weight", "head.bias"] and report.ok


def test_exclude_neither_loads_nor_expects_and_hides_source_entries():
    src = randomized(Net(classes=5), 1)  # a different head
    dst = randomized(Net(classes=3), 2)
    before = dst.head.weight.detach().clone()
    report = sl.load(dst, src, exclude="head")
    assert torch.equal(dst.head.weight, before)
    assert torch.equal(dst.embed.weight, src.embed.weight)
    assert report.ok and report.excluded == ["head.weight", "head.bias"] and report.unexpected == []


def test_exclude_glob_crosses_dots():
    dst = Net()
    report = sl.load(dst, randomized(Net(), 1), exclude=["*.norm.*", "embed*"])
    assert "blocks.1.norm.weight" in report.excluded and "embed.weight" in report.excluded
    assert "blocks.1.fc1.weight" in report.loaded


def test_filter_is_called_on_modules_and_tensors_and_prunes_subtrees():
    seen = []

    def keep(path, node):
        seen.append((path, type(node).__name__))
        return not isinstance(node, nn.LayerNorm)

    src, dst = randomized(Net(n=1), 1), randomized(Net(n=1), 2)
    norm = dst.blocks[0].norm.weight.detach().clone()
    report = sl.load(dst, src, filter=keep)
    assert torch.equal(dst.blocks[0].norm.weight, norm)
    assert report.excluded == ["blocks.0.norm.weight", "blocks.0.norm.bias"]
    assert ("blocks.0", "Block") in seen and ("blocks.0.fc1.weight", "Parameter") in seen
    assert ("blocks.0.norm", "LayerNorm") in seen and ("blocks.0.norm.weight", "Parameter") not in seen


def test_rename_mapping_applies_in_order():
    src = {f"encoder.{k}": v for k, v in randomized(Net(), 1).state_dict().items()}
    src = {k.replace(".fc1.", ".dense_in."): v for k, v in src.items()}
    dst = Net()
    report = sl.load(dst, src, rename={r"^encoder\.": "", r"\.dense_in\.": ".fc1."})
    assert report.ok and torch.equal(dst.blocks[0].fc1.weight, src["encoder.blocks.0.dense_in.weight"])


def test_rename_callable_can_drop_entries():
    state = randomized(Net(), 1).state_dict()
    state["optimizer_step"] = torch.tensor(3)

    def rename(path):
        return None if path == "optimizer_step" else path

    assert sl.load(Net(), state, rename=rename).ok


def test_rename_onto_one_path_twice_is_a_source_problem():
    dst = nn.Linear(2, 2)
    src = {"weight": torch.ones(2, 2), "w": torch.ones(2, 2), "bias": torch.ones(2)}
    with pytest.raises(sl.LoadError) as info:
        sl.load(dst, src, rename={"^w$": "weight"})
    [problem] = info.value.problems
    assert problem.kind == "source" and problem.path == "weight" and "'weight' and 'w'" in problem.message


def test_rename_rejects_bad_arguments():
    with pytest.raises(TypeError, match="rename must be"):
        sl.load(nn.Linear(2, 2), {}, rename=["x"])
    with pytest.raises(ValueError, match="invalid regular expression"):
        sl.load(nn.Linear(2, 2), {}, rename={"(": ""})


def test_convert_takes_converters_only():
    with pytest.raises(TypeError, match="convert= takes a list of converters"):
        sl.load(nn.Linear(2, 2), {}, convert=[object()])


def test_device_places_materialized_meta_tensors():
    with torch.device("meta"):
        dst = nn.Linear(2, 2)
    sl.load(dst, {"weight": torch.ones(2, 2), "bias": torch.ones(2)}, device=torch.device("cpu"))
    assert dst.weight.device.type == "cpu" and torch.equal(dst.weight, torch.ones(2, 2))


def test_device_does_not_move_real_tensors():
    dst = nn.Linear(2, 2).to(torch.float64)
    sl.load(dst, {"weight": torch.ones(2, 2), "bias": torch.ones(2)}, device="meta")
    assert dst.weight.device.type == "cpu" and dst.weight.dtype == torch.float64


def test_dry_run_writes_nothing_and_predicts_the_report():
    src, dst = randomized(Net(n=2), 1), randomized(Net(n=3), 2)
    before = snapshot(dst)
    predicted = sl.load(dst, src, strict=False, dry_run=True)
    assert_unchanged(dst, before)
    actual = sl.load(dst, src, strict=False)
    assert predicted.to_dict() | {"applied": True} == actual.to_dict()
    assert predicted.applied is False


def test_strict_dry_run_raises_like_the_real_load():
    with pytest.raises(sl.LoadError):
        sl.load(Net(n=3), Net(n=2), dry_run=True)


def test_dry_run_leaves_meta_tensors_on_meta():
    with torch.device("meta"):
        dst = Net()
    sl.load(dst, Net(), dry_run=True)
    assert all(p.is_meta for p in dst.parameters())


def test_progress_true_draws_a_bar_on_stderr(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr("structload._render.progress.Console", lambda stderr: Console(file=stream, force_terminal=True))
    sl.load(Net(), randomized(Net(), 1), progress=True)
    assert "loading Net" in stream.getvalue()


def test_progress_none_stays_quiet_for_small_loads(capfd):
    sl.load(Net(), randomized(Net(), 1))
    assert capfd.readouterr().err == ""


def test_include_exclude_must_be_strings():
    with pytest.raises(TypeError, match="patterns must be strings"):
        sl.load(Net(), Net(), include=[3])


def test_loading_twice_is_the_same_as_once():
    src = randomized(Net(), 1)
    dst = Net()
    first = sl.load(dst, src).to_dict()
    second = sl.load(dst, src).to_dict()
    assert first == second
    assert_same_state(dst, src)


def test_wrong_option_types_are_clear_errors_naming_the_option():
    with pytest.raises(TypeError, match=r"include= takes a glob pattern or a list of them, got int 3"):
        sl.load(nn.Linear(2, 2), nn.Linear(2, 2), include=3)
    with pytest.raises(ValueError, match=r"device= takes a torch device such as 'cpu' or 'cuda:0', got 'gpu'"):
        sl.load(nn.Linear(2, 2), nn.Linear(2, 2), device="gpu")


def test_an_error_raised_by_a_users_rename_or_filter_callable_names_the_path_it_was_given():
    source = {"fc.weight": torch.ones(2, 2), "fc.bias": torch.ones(2)}
    model = nn.ModuleDict({"fc": nn.Linear(2, 2)})
    with pytest.raises(AttributeError) as raised:  # the user's own error, kept as it is
        sl.load(model, source, rename=lambda path: path.removeprefx("module."))  # a typo in their code
    assert "structload: raised by the rename= callable, given source path 'fc.weight'" in raised.value.__notes__
    with pytest.raises(ZeroDivisionError) as raised:
        sl.load(model, source, filter=lambda path, node: 1 / path.count("."))  # no dot in 'fc'
    assert "structload: raised by the filter= callable, asked about 'fc'" in raised.value.__notes__
