"""Converters: values, laziness, and every error of a wrong mapping, found in the plan."""

from __future__ import annotations

import pytest
import safetensors.torch
import torch
import torch.nn as nn
from test_files import ReadLog

import structload as sl
from structload.convert import Apply, Concat, Reshape, Split, Stack, Transpose, Unstack


def load_error(dst, src, **options) -> sl.LoadError:
    with pytest.raises(sl.LoadError) as info:
        sl.load(dst, src, **options)
    return info.value


# --- each converter's values -------------------------------------------------------------


def test_transpose_conv1d_kernel_into_linear():
    kernel = torch.randn(3, 5)  # (in, out), as Conv1D / JAX Dense store it
    dst = nn.Linear(3, 5, bias=False)
    report = sl.load(dst, {"weight": kernel}, convert=[Transpose("weight")])
    assert torch.equal(dst.weight, kernel.t())
    assert [(c.path, c.sources) for c in report.converted] == [("weight", ("weight",))]


def test_transpose_other_dims_and_reshape():
    x = torch.arange(24.0).reshape(2, 3, 4)
    dst = {"t": torch.zeros(4, 3, 2), "r": torch.zeros(6, 4)}
    sl.load(dst, {"t": x, "r": x}, convert=[Transpose("t", dims=(0, 2)), Reshape("r", (-1, 4))])
    assert torch.equal(dst["t"], x.transpose(0, 2)) and torch.equal(dst["r"], x.reshape(6, 4))


def test_split_equal_and_by_sizes():
    fused = torch.arange(12.0).reshape(6, 2)
    dst = {
        "q": torch.zeros(2, 2),
        "k": torch.zeros(2, 2),
        "v": torch.zeros(2, 2),
        "a": torch.zeros(1, 2),
        "b": torch.zeros(5, 2),
    }
    sl.load(
        dst,
        {"qkv": fused, "ab": fused},
        convert=[Split("qkv", into=["q", "k", "v"]), Split("ab", into=["a", "b"], sizes=[1, 5])],
    )
    assert torch.equal(dst["k"], fused[2:4]) and torch.equal(dst["b"], fused[1:])


def test_split_along_a_later_dim():
    fused = torch.arange(12.0).reshape(2, 6)
    dst = {"x": torch.zeros(2, 3), "y": torch.zeros(2, 3)}
    sl.load(dst, {"xy": fused}, convert=[Split("xy", into=["x", "y"], dim=1)])
    assert torch.equal(dst["y"], fused[:, 3:])


def test_concat_writes_each_part_into_its_slice():
    q, k, v = torch.randn(2, 3), torch.randn(2, 3), torch.randn(2, 3)
    dst = nn.ModuleDict({"attn": nn.Linear(3, 6, bias=False)})
    dst.attn.weight.data.zero_()
    src = {"attn.q.weight": q, "attn.k.weight": k, "attn.v.weight": v}
    report = sl.load(dst, src, convert=[Concat(["*.q.weight", "*.k.weight", "*.v.weight"], into="{0}.weight")])
    assert torch.equal(dst.attn.weight, torch.cat([q, k, v]))
    assert report.converted[0].sources == ("attn.q.weight", "attn.k.weight", "attn.v.weight")


def test_unstack_and_stack_round_trip():
    stacked = torch.randn(3, 4, 2)  # a leading layer axis, as in JAX checkpoints
    model = nn.ModuleList(nn.Linear(4, 2, bias=False) for _ in range(3))
    report = sl.load(model, {"kernel": stacked}, convert=[Unstack("kernel", into="{i}.weight"), Transpose("*.weight")])
    assert report.ok and all(torch.equal(model[i].weight, stacked[i].t()) for i in range(3))
    back = {"kernel": torch.zeros(3, 2, 4)}
    sl.load(back, model, convert=[Stack("{i}.weight", into="kernel")])
    assert torch.equal(back["kernel"], stacked.transpose(1, 2))


def test_apply_with_declared_shape():
    dst = {"w": torch.zeros(4)}
    report = sl.load(
        dst, {"w": torch.ones(2, 2)}, convert=[Apply("w", lambda t: t.flatten() * 2, shape=lambda s: (s[0] * s[1],))]
    )
    assert torch.equal(dst["w"], torch.full((4,), 2.0)) and report.converted[0].made_by == "Apply('w') of 'w'"


def test_apply_that_breaks_its_declared_shape_is_a_source_error():
    dst = {"w": torch.zeros(4)}
    with pytest.raises(sl.SourceError, match=r"Apply\('w'\) made shape \(2, 2\) for 'w', but declared \(4,\)"):
        sl.load(dst, {"w": torch.ones(2, 2)}, convert=[Apply("w", lambda t: t, shape=lambda s: (4,))])


def test_captures_reused_across_converters_and_paths():
    src = {f"layers_{i}.dense.kernel": torch.full((2, 3), float(i)) for i in range(2)}
    model = nn.ModuleDict({"blocks": nn.ModuleList(nn.Linear(2, 3, bias=False) for _ in range(2))})
    convert = [Transpose("layers_*.dense.kernel"), Reshape("layers_*.dense.kernel", (3, 2))]
    report = sl.load(
        model, src, convert=convert, rename={r"^layers_(\d+)\.dense\.kernel$": r"blocks.\1.weight"}, strict=False
    )
    assert not report.ok  # renamed first, so the converters' patterns match nothing
    rename_after = {r"^layers_(\d+)\.dense\.kernel$": r"layers_\1.dense.kernel"}
    report = sl.load(
        model,
        src,
        rename=rename_after,
        convert=[
            Transpose("layers_*.dense.kernel"),
            Split("layers_*.dense.kernel", into=["blocks.{0}.weight"]),
        ],
    )
    assert report.ok and torch.equal(model.blocks[1].weight, torch.ones(3, 2))


# --- wrong mappings: path-aware problems in the plan, before any data is read ----------------


@pytest.fixture
def file_source(tmp_path):
    state = {
        "h.0.c_attn.weight": torch.randn(4, 12),
        "h.0.c_attn.bias": torch.randn(12),
        "h.1.c_attn.weight": torch.randn(4, 12),
    }
    path = tmp_path / "fused.safetensors"
    safetensors.torch.save_file(state, str(path))
    return str(path), state


def qkv_model(layers: int = 2, d: int = 4) -> nn.Module:
    return nn.ModuleDict(
        {"h": nn.ModuleList(nn.ModuleDict({n: nn.Linear(d, d, bias=False) for n in "qkv"}) for _ in range(layers))}
    )


QKV_SPLIT = Split("h.*.c_attn.weight", into=["h.{0}.q.weight", "h.{0}.k.weight", "h.{0}.v.weight"])


def test_wrong_split_sizes_name_converter_source_and_shape(file_source, monkeypatch):
    path, _ = file_source
    opened = sl.open(path)
    log = ReadLog(monkeypatch)
    bad = Split("h.*.c_attn.weight", into=["h.{0}.q.weight", "h.{0}.k.weight"], sizes=[4, 4], dim=1)
    error = load_error(qkv_model(), opened, convert=[bad], exclude="*.v.*")
    first = error.problems[0]
    assert (first.kind, first.path) == ("shape", "h.0.c_attn.weight")
    assert first.message == (
        "Split('h.*.c_attn.weight'): sizes [4, 4] add up to 8, not to dim 1's size 12 "
        "(source 'h.0.c_attn.weight' has shape (4, 12))"
    )
    assert log.ranges == []  # nothing read


def test_converted_shape_that_does_not_fit_the_destination(tmp_path, monkeypatch):
    conv1d = torch.randn(4, 6)  # (in, 3 * out) for q, k, v of Linear(4, 2)
    safetensors.torch.save_file({"c_attn.weight": conv1d}, str(tmp_path / "c.safetensors"))
    opened = sl.open(str(tmp_path / "c.safetensors"))
    log = ReadLog(monkeypatch)
    model = nn.ModuleDict({n: nn.Linear(4, 2, bias=False) for n in "qkv"})
    split = Split("c_attn.weight", into=["q.weight", "k.weight", "v.weight"], dim=1)  # forgot the Transpose
    error = load_error(model, opened, convert=[split])
    assert [(p.kind, p.path) for p in error.problems] == [
        ("shape", "q.weight"),
        ("shape", "k.weight"),
        ("shape", "v.weight"),
    ]
    assert error.problems[1].message.startswith(
        "shape (2, 4) in destination, (4, 2) in source (made by Split('c_attn.weight') of 'c_attn.weight'); "
        "the source stores matrices transposed"
    )
    assert log.ranges == []  # found in the plan: nothing read, nothing written
    assert sl.load(
        model,
        opened,
        convert=[Transpose("c_attn.weight"), Split("c_attn.weight", into=["q.weight", "k.weight", "v.weight"])],
    ).ok
    assert torch.equal(model["v"].weight, conv1d.t()[4:])


def test_pattern_matching_nothing(file_source):
    error = load_error(qkv_model(), file_source[0], convert=[Transpose("transformer.h.*.c_attn.weight"), QKV_SPLIT])
    problem = error.problems[0]
    assert (problem.kind, problem.path) == ("source", "transformer.h.*.c_attn.weight")
    assert problem.message == "Transpose('transformer.h.*.c_attn.weight'): matches no source path"


def test_two_converters_writing_one_destination():
    src = {"a": torch.ones(2, 2), "b": torch.ones(2, 2)}
    error = load_error(
        {"w": torch.zeros(2, 2)}, src, convert=[Reshape("a", (2, 2)), Split("a", into=["w"]), Split("b", into=["w"])]
    )
    problem = next(p for p in error.problems if p.kind == "source")
    assert problem.path == "w"
    assert problem.message == "'w' is written by both Reshape('a') then Split('a') and Split('b')"


def test_converter_output_colliding_with_a_source_entry():
    error = load_error(
        {"w": torch.zeros(2)}, {"w": torch.ones(2), "x": torch.ones(2)}, convert=[Split("x", into=["w"])]
    )
    assert "'w' is written by both the source itself and Split('x')" in str(error)


def test_destination_left_unwritten_is_missing():
    model = qkv_model(layers=1)
    error = load_error(
        model,
        {"h.0.c_attn.weight": torch.randn(8, 4)},
        convert=[Split("h.*.c_attn.weight", into=["h.{0}.q.weight", "h.{0}.k.weight"])],
    )
    assert [(p.kind, p.path) for p in error.problems] == [("missing", "h.0.v.weight")]


def test_concat_and_stack_mapping_errors():
    error = load_error(
        {"qk": torch.zeros(4, 2)},
        {"q": torch.ones(2, 2), "k": torch.ones(3, 3)},
        convert=[Concat(["q", "k"], into="qk")],
    )
    assert "'k' has shape (3, 3), which does not concatenate with (2, 2) along dim 0" in str(error)
    error = load_error({"qk": torch.zeros(4, 2)}, {"q": torch.ones(2, 2)}, convert=[Concat(["q", "k"], into="qk")])
    assert "'k' is not a tensor of the source (needed with 'q')" in str(error)
    error = load_error(
        {"s": torch.zeros(3, 2)}, {"l.0": torch.ones(2), "l.2": torch.ones(2)}, convert=[Stack("l.{i}", into="s")]
    )
    assert "entries [0, 2] are not 0..1 (missing [1])" in str(error)


def test_bad_declarations_fail_at_construction():
    with pytest.raises(ValueError, match="uses \\{1\\}, but its pattern has 1"):
        Split("h.*.w", into=["{0}.a", "{1}.b"])
    with pytest.raises(ValueError, match="needs '\\{i\\}'"):
        Unstack("k", into="layers.weight")
    with pytest.raises(ValueError, match="'\\{i\\}' is only for"):
        Transpose("{i}.weight")
    with pytest.raises(ValueError, match="one target per part"):
        Split("w", into=["a", "b"], sizes=[1])


def test_out_of_range_dim_is_a_problem():
    error = load_error({"w": torch.zeros(2)}, {"w": torch.ones(2)}, convert=[Transpose("w")])
    assert "Transpose('w'): dim 1 is out of range for a 1-d tensor" in str(error)


# --- laziness: slices are read, not whole tensors ---------------------------------------------


def test_split_reads_only_its_slice_from_a_file(tmp_path, monkeypatch):
    fused = torch.randn(300, 64)
    safetensors.torch.save_file({"qkv": fused}, str(tmp_path / "f.safetensors"))
    opened = sl.open(str(tmp_path / "f.safetensors"))
    log = ReadLog(monkeypatch)
    dst = {"k": torch.zeros(100, 64)}
    report = sl.load(dst, opened, convert=[Split("qkv", into=["q", "k", "v"])], strict=False)
    assert torch.equal(dst["k"], fused[100:200]) and report.unexpected == ["q", "v"]
    assert log.bytes_read() == 100 * 64 * 4


def test_unstack_reads_only_the_layers_it_loads(tmp_path, monkeypatch):
    stacked = torch.randn(8, 16, 16)
    safetensors.torch.save_file({"kernel": stacked}, str(tmp_path / "stacked.safetensors"))
    opened = sl.open(str(tmp_path / "stacked.safetensors"))
    log = ReadLog(monkeypatch)
    model = nn.ModuleList(nn.Linear(16, 16, bias=False) for _ in range(8))
    sl.load(model, opened, convert=[Unstack("kernel", into="{i}.weight")], include=["2.*", "5.*"])
    assert torch.equal(model[5].weight, stacked[5])
    assert log.bytes_read() == 2 * 16 * 16 * 4


def test_dry_run_with_converters_reads_nothing(file_source, monkeypatch):
    opened = sl.open(file_source[0])
    log = ReadLog(monkeypatch)
    report = sl.load(
        qkv_model(), opened, convert=[Transpose("h.*.c_attn.weight"), QKV_SPLIT], strict=False, dry_run=True
    )
    assert log.ranges == [] and "h.1.k.weight" in report.loaded


def test_a_failed_conversion_never_loads_its_input_unconverted():
    dst = {"w": torch.zeros(4, 4)}
    report = sl.load(dst, {"w": torch.ones(4, 4)}, convert=[Split("w", into=["w"], sizes=[3])], strict=False)
    assert torch.equal(dst["w"], torch.zeros(4, 4))
    assert report.missing == ["w"] and [p.kind for p in report.problems] == ["shape", "missing"]


def test_a_converter_failing_while_writing_reports_exactly_what_was_written():
    def explode(tensor):
        raise ValueError("bad weights")

    dst = {"a": torch.zeros(2), "b": torch.zeros(2), "c": torch.zeros(2)}
    src = {"a": torch.ones(2), "b": torch.ones(2), "c": torch.ones(2)}
    with pytest.raises(sl.LoadError) as info:
        sl.load(dst, src, convert=[Apply("b", explode)])
    error = info.value
    assert not isinstance(error, sl.SourceError) and isinstance(error.__cause__, ValueError)
    assert str(error) == (
        "writing 'b' failed: ValueError: bad weights; the load stopped at 'b' after writing 1 of 3 tensors "
        "(report.loaded lists them)"
    )
    assert error.report.loaded == ["a"] and error.report.converted == []
    assert torch.equal(dst["a"], torch.ones(2)) and torch.equal(dst["c"], torch.zeros(2))


# --- converters named before rename=, and convert= of the wrong type ------------------------------


def test_a_converter_named_by_its_path_before_rename_says_so_and_names_the_renamed_path():
    from ports import tiny_gpt2

    from helpers import assert_unchanged, snapshot

    gpt2 = tiny_gpt2(layers=1)  # transformers' Conv1D stores (in, out)
    saved_under_ddp = {f"module.{k}": v for k, v in gpt2.transformer.state_dict().items()}
    model = nn.ModuleDict({"proj": nn.Linear(32, 32)})  # a user's own layer for h.0.attn.c_proj
    before = snapshot(model)
    rename = {r"^module\.h\.0\.attn\.c_proj\.": "proj.", r"^module\.(?!h\.0\.attn\.c_proj\.)": None}
    error = load_error(model, saved_under_ddp, rename=rename, convert=[Transpose("module.h.0.attn.c_proj.weight")])
    [problem] = error.problems
    assert (problem.kind, problem.path) == ("source", "module.h.0.attn.c_proj.weight")
    assert problem.message == (
        "Transpose('module.h.0.attn.c_proj.weight'): matches no source path after rename= (converters see "
        "renamed paths); it matches 'module.h.0.attn.c_proj.weight' before renaming, renamed to "
        "'proj.weight': name the renamed paths in the converter"
    )
    assert_unchanged(model, before)
    assert sl.load(model, saved_under_ddp, rename=rename, convert=[Transpose("proj.weight")]).ok  # as it says
    assert torch.equal(model["proj"].weight, gpt2.transformer.h[0].attn.c_proj.weight.T)


def test_a_converter_matching_nothing_even_before_rename_keeps_the_plain_message():
    error = load_error(
        nn.Linear(2, 2),
        {"module.weight": torch.ones(2, 2), "module.bias": torch.ones(2)},
        rename={r"^module\.": ""},
        convert=[Transpose("fc.weight")],
    )
    [problem] = error.problems
    assert problem.message == "Transpose('fc.weight'): matches no source path"


@pytest.mark.parametrize(
    "convert, says",
    [
        ({}, "got an empty dict ({}): pass convert=[] or leave it out"),
        ({"w": Transpose("weight")}, "got a dict of 1 converter: pass them as a list"),
        (
            Transpose("weight"),
            "got a single converter, Transpose('weight'): put it in a list, convert=[Transpose('weight')]",
        ),
        ("weight", "got the string 'weight'"),
        (
            [Transpose],
            'its item 0 is the class Transpose, not a converter: make one with its pattern, such as Transpose("fc.weight")',
        ),
        ([Transpose("weight"), "bias"], "its item 1 is the string 'bias', not a converter"),
        ([None], "its item 0 is None (NoneType), not a converter"),
    ],
)
def test_convert_of_the_wrong_type_is_refused_up_front_naming_what_was_passed(tmp_path, convert, says):
    expected = 'convert= takes a list of converters from structload.convert, such as convert=[Transpose("fc.weight")]'
    absent_file = tmp_path / "never_opened.safetensors"  # checked before the source is opened
    with pytest.raises(TypeError) as info:
        sl.load(nn.Linear(2, 2), absent_file, convert=convert)
    assert str(info.value).startswith(expected) and says in str(info.value), str(info.value)
    with pytest.raises(TypeError, match="convert= takes a list"):  # align= used to drop an empty dict silently
        sl.load(nn.Linear(2, 2), nn.Linear(2, 2), align=True, convert=convert)
    model = nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with pytest.raises(TypeError, match="convert= takes a list"):
        sl.load_optimizer(optimizer, model, sl.optimizer_state(optimizer, model), convert=convert)
