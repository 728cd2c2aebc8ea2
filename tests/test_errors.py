"""LoadError messages: every problem by path, collapsed where the trees diverge, with hints."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import structload as sl
from helpers import Net, assert_unchanged, randomized, snapshot


def load_error(dst, src, **options) -> sl.LoadError:
    with pytest.raises(sl.LoadError) as info:
        sl.load(dst, src, **options)
    return info.value


def test_error_is_a_value_error_with_summary_then_one_line_per_problem():
    state = randomized(Net(), 1).state_dict()
    state["blocks.2.fc1.weight"] = torch.zeros(8, 5)
    state["lm_head.bias"] = state.pop("head.bias")
    error = load_error(Net(), state)
    assert isinstance(error, ValueError)
    lines = str(error).splitlines()
    assert lines == [
        "2 problems loading into Net (1 shape, 1 unexpected)",
        "  blocks.2.fc1.weight: shape (8, 4) in destination, (8, 5) in source",
        "  lm_head.bias: unexpected in source; did you mean 'head.bias'?",
    ]
    assert [p.kind for p in error.problems] == ["shape", "unexpected"]
    assert error.report.unexpected == ["lm_head.bias"] and error.report.zeroed == ["head.bias"]


def test_all_problems_are_collected_not_only_the_first():
    state = randomized(Net(), 1).state_dict()
    for key in ("embed.weight", "blocks.0.fc1.weight", "blocks.2.norm.bias"):
        state[key] = torch.zeros(1)
    error = load_error(Net(), state)
    assert [p.path for p in error.problems] == ["embed.weight", "blocks.0.fc1.weight", "blocks.2.norm.bias"]
    assert str(error).startswith("3 problems loading into Net (3 shape)")


def test_whole_missing_submodule_is_one_problem_with_its_tensor_count():
    state = randomized(Net(), 1).state_dict()
    for key in [k for k in state if k.startswith("blocks.1.")]:
        del state[key]
    error = load_error(Net(), state)
    [problem] = error.problems
    assert (problem.kind, problem.path) == ("missing", "blocks.1")
    assert problem.message == "missing in source (whole subtree, 6 tensors)"
    assert len(error.report.missing) == 6


def test_shorter_module_list_is_one_problem_at_the_list():
    error = load_error(Net(n=12), Net(n=6))
    [problem] = error.problems
    assert problem.path == "blocks"
    assert problem.message == "destination has 12 entries, source has 6; 6–11 missing in source (36 tensors)"


def test_longer_source_list_is_one_problem_naming_both_counts():
    error = load_error(Net(n=2), Net(n=4))
    [problem] = error.problems
    assert (problem.kind, problem.path) == ("unexpected", "blocks")
    assert problem.message == "destination has 2 entries, source has 4; 2–3 unexpected in source (12 tensors)"
    assert len(error.report.unexpected) == 12


def test_renamed_submodule_gets_a_did_you_mean():
    class Renamed(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(10, 4)
            self.layers = nn.ModuleList(nn.Linear(4, 4) for _ in range(2))

    class Original(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(10, 4)
            self.layer = nn.ModuleList(nn.Linear(4, 4) for _ in range(2))

    error = load_error(Renamed(), Original())
    messages = [str(p) for p in error.problems]
    assert messages == [
        "layers: missing in source (whole subtree, 4 tensors); did you mean 'layer' in source?",
        "layer: unexpected in source (4 tensors); did you mean 'layers'?",
    ]


@pytest.mark.parametrize(
    ("prefix", "who"),
    [("module.", "DistributedDataParallel"), ("_orig_mod.", "torch.compile"), ("model.", "training wrappers")],
)
def test_source_with_extra_prefix_gets_the_exact_rename(prefix, who):
    src = {prefix + k: v for k, v in randomized(Net(), 1).state_dict().items()}
    dst = randomized(Net(), 2)
    before = snapshot(dst)
    error = load_error(dst, src)
    assert_unchanged(dst, before)
    escaped = prefix.replace(".", r"\.")
    rename_text = f'rename={{r"^{escaped}": ""}}'
    unexpected = [p for p in error.problems if p.kind == "unexpected"]
    assert len(unexpected) == 1 and unexpected[0].path == prefix[:-1]
    assert rename_text in unexpected[0].message and who in unexpected[0].message
    assert error.report.hints and rename_text in error.report.hints[0]
    # the hint is exactly what fixes it
    assert sl.load(dst, src, rename={f"^{escaped}": ""}).ok


def test_source_missing_the_destination_prefix_gets_the_exact_rename():
    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = Net()

    src = randomized(Net(), 1).state_dict()
    error = load_error(Wrapper(), src)
    [missing] = [p for p in error.problems if p.kind == "missing"]
    assert missing.path == "model"
    assert 'rename={r"^": "model."}' in missing.message
    assert sl.load(Wrapper(), src, rename={"^": "model."}).ok


def test_compile_and_ddp_prefixes_together():
    src = {"_orig_mod.module." + k: v for k, v in Net().state_dict().items()}
    error = load_error(Net(), src)
    assert r'rename={r"^_orig_mod\.module\.": ""}' in str(error)


def test_error_messages_name_the_destination_class():
    error = load_error({"w": torch.zeros(2)}, {"w": torch.zeros(3)})
    assert str(error).splitlines()[0] == "1 problem loading into dict (1 shape)"


def test_source_error_is_a_load_error_naming_the_file(tmp_path):
    path = tmp_path / "weights.bin"
    error = load_error(nn.Linear(2, 2), str(path))
    assert isinstance(error, sl.SourceError) and str(path) in str(error)
    assert error.problems[0].kind == "source"


def test_subtree_laid_out_like_a_missing_one_gets_the_exact_rename():
    from structload._demo import Custom, Pretrained

    checkpoint = Pretrained().state_dict()
    error = load_error(Custom(), checkpoint, exclude="probe")
    [missing, unexpected] = error.problems
    assert (missing.path, unexpected.path) == ("layers", "blocks")
    assert unexpected.message.endswith(
        "'blocks' in source is laid out like 'layers' in destination; pass rename={r\"^blocks\\.\": \"layers.\"}"
    )
    assert "rename" not in missing.message
    report = sl.load(Custom(), checkpoint, exclude="probe", rename={r"^blocks\.": "layers."})
    assert report.ok and len(report.zeroed) == 8


def test_a_path_given_as_the_destination_says_the_destination_comes_first(tmp_path):
    import safetensors.torch

    model = torch.nn.Linear(2, 2)
    safetensors.torch.save_file(model.state_dict(), str(tmp_path / "model.safetensors"))
    with pytest.raises(TypeError, match=r"cannot load into str; .*the destination comes first: load\(model, path\)"):
        sl.load(str(tmp_path / "model.safetensors"), model)
    with pytest.raises(TypeError, match=r"cannot load into PosixPath; .*the destination comes first"):
        sl.load(tmp_path / "model.safetensors", model)
