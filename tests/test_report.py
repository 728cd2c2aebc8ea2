"""LoadReport contents, serialisation and rendering."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn
from rich.console import Console

import structload as sl
from helpers import Net, TiedLM, destination_outcomes, randomized


def render(renderable, width: int = 120) -> str:
    console = Console(width=width, record=True, color_system=None)
    console.print(renderable)
    return console.export_text()


def messy_load(n_dst: int = 4, n_src: int = 3):
    """A non-strict load with one of every outcome."""
    src = sl.state(randomized(Net(n=n_src), 1))
    src["blocks"]["0"]["fc1"]["weight"] = torch.zeros(8, 3)  # mismatched
    src["blocks"]["1"]["norm"] = None  # skipped
    src["head"]["bias"] = False  # zeroed
    src["blocks"]["2"]["fc2"]["weight"] = src["blocks"]["2"]["fc2"]["weight"].double()  # cast
    src["extra"] = {"w": torch.ones(1), "b": torch.ones(1)}  # unexpected
    dst = Net(n=n_dst)
    return sl.load(dst, src, strict=False, exclude="embed"), dst


def test_each_destination_path_lands_in_exactly_one_list():
    report, dst = messy_load()
    every = destination_outcomes(report)
    assert sorted(every) == sorted(dst.state_dict())
    assert len(every) == len(set(every))
    assert report.unexpected == ["extra.w", "extra.b"]
    assert report.skipped == ["blocks.1.norm.weight", "blocks.1.norm.bias"]
    assert report.zeroed == ["head.bias"] and report.excluded == ["embed.weight"]
    assert [c.path for c in report.cast] == ["blocks.2.fc2.weight"]


def test_lists_follow_module_order():
    report, dst = messy_load()
    order = list(dst.state_dict())
    assert report.loaded == sorted(report.loaded, key=order.index)
    assert report.missing == sorted(report.missing, key=order.index)


def test_to_dict_is_json_serialisable_and_complete():
    report, _ = messy_load()
    data = json.loads(json.dumps(report.to_dict()))
    assert data["ok"] is False and data["applied"] is True
    assert data["mismatched"] == [
        {"path": "blocks.0.fc1.weight", "kind": "shape", "dst_shape": [8, 4], "src_shape": [8, 3]}
    ]
    assert data["cast"] == [{"path": "blocks.2.fc2.weight", "src_dtype": "float64", "dst_dtype": "float32"}]
    assert {p["kind"] for p in data["problems"]} == {"shape", "missing", "unexpected"}
    assert data["missing"] == report.missing


def test_str_is_summary_then_problems():
    report, _ = messy_load()
    lines = str(report).splitlines()
    assert lines[0].startswith("Net: ") and "1 zeroed" in lines[0] and "1 cast" in lines[0]
    assert "  blocks.0.fc1.weight: shape (8, 4) in destination, (8, 3) in source" in lines
    assert "  blocks: destination has 4 entries, source has 3; 3 missing in source (6 tensors)" in lines
    assert "  extra: unexpected in source (2 tensors)" in lines


def test_rich_tree_shows_outcomes_and_messages():
    report, _ = messy_load()
    text = render(report)
    assert "fc1" in text and "mismatched  shape (8, 4) in destination, (8, 3) in source" in text
    assert "norm  skipped (2 tensors)" in text
    assert "extra  unexpected (2 tensors)  unexpected in source (2 tensors)" in text
    assert "bias  zeroed" in text and "embed  excluded (1 tensor)" in text


def test_rich_tree_of_a_300_layer_model_fits_a_screen():
    src, dst = randomized(Net(n=300), 1), Net(n=300)
    assert len(render(sl.load(dst, src)).splitlines()) <= 5
    state = src.state_dict()
    state["blocks.150.fc2.bias"] = torch.zeros(5)
    report = sl.load(dst, state, strict=False)
    text = render(report)
    assert len(text.splitlines()) <= 20
    assert "0–149  loaded (900 tensors)" in text and "151–299  loaded (894 tensors)" in text
    assert "shape (4,) in destination, (5,) in source" in text


def test_rich_tree_lists_tied_groups_and_hints():
    report = sl.load(TiedLM(), {"wte.weight": torch.ones(7, 4)})
    assert "tied: wte.weight = lm_head.weight" in render(report)
    bad = {"module." + k: v for k, v in Net().state_dict().items()}
    report = sl.load(Net(), bad, strict=False)
    assert "hint: the source paths carry the prefix" in render(report, width=200)


def test_report_of_failed_strict_load_says_nothing_was_written():
    with pytest.raises(sl.LoadError) as info:
        sl.load(nn.Linear(2, 2), {})
    report = info.value.report
    assert report.applied is False and report.summary().endswith("(nothing written)")
    assert report.missing == ["weight", "bias"]


def test_rich_tree_folds_identical_mixed_layers():
    report = sl.load(Net(n=300, bias=True), Net(n=300, bias=False))
    text = render(report)
    assert "0–299  (each alike, 1800 tensors)" in text
    assert len(text.splitlines()) <= 15
