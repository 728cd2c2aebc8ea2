"""The options of a load as one typed record, and hints as data the command line writes as flags."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import pickle

import pytest
import torch
import torch.nn as nn
from test_process_state import process_wide_state

import structload as sl
from helpers import Net, assert_unchanged, randomized, snapshot
from structload import _cli
from structload._options import LoadOptions
from structload._plan.plan import make_plan
from structload._render.text import Hint


def test_the_record_holds_exactly_the_keywords_of_load():
    keywords = {
        name for name, p in inspect.signature(sl.load).parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY
    }
    fields = {f.name for f in dataclasses.fields(LoadOptions) if f.init}
    assert fields == keywords | {"meta_is_final"}  # structload check's: a model built on meta to dry-run
    with pytest.raises(TypeError):
        LoadOptions(True)  # type: ignore[misc]  # by name only
    options = LoadOptions(exclude="head")
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.strict = False  # type: ignore[misc]


def test_bad_options_raise_before_the_source_is_opened(tmp_path):
    missing = tmp_path / "nowhere.safetensors"
    dst = randomized(Net(), 1)
    before = snapshot(dst)
    with pytest.raises(TypeError, match="align must be True, an Alignment or a dict of structload.align options"):
        sl.load(dst, missing, align=7)  # checked with the others, not after the file failed to open
    with pytest.raises(TypeError, match='dtype must be a torch.dtype, "auto" or None'):
        sl.load(dst, missing, dtype="half")
    with pytest.raises(TypeError, match="rename must be"):
        sl.load(dst, missing, rename=3)
    with pytest.raises(sl.SourceError):  # good options: the file is the problem
        sl.load(dst, missing)
    assert_unchanged(dst, before)


def test_load_optimizer_checks_its_options_through_the_same_record():
    model = nn.Linear(2, 2)
    adam = torch.optim.Adam(model.parameters())
    with pytest.raises(TypeError, match="align must be True, an Alignment or a dict of structload.align options"):
        sl.load_optimizer(adam, model, sl.optimizer_state(adam, model), align=7)
    with pytest.raises(TypeError, match="patterns must be strings"):
        sl.load_optimizer(adam, model, sl.optimizer_state(adam, model), include=[3])


def test_the_plan_takes_its_options_by_name():
    parameters = inspect.signature(make_plan).parameters
    for name in ("dtype", "meta_is_final", "mmap", "metadata"):  # mmap and dtype cannot be swapped by position
        assert parameters[name].kind is inspect.Parameter.KEYWORD_ONLY


def test_structload_check_builds_the_same_record(tmp_path, monkeypatch, capsys):
    (tmp_path / "checkmodels.py").write_text("import torch\n\ndef make():\n    return torch.nn.Linear(2, 3)\n")
    torch.save({"module.weight": torch.ones(3, 2), "module.bias": torch.ones(3)}, tmp_path / "ddp.pt")
    monkeypatch.chdir(tmp_path)
    seen = []

    def recording(dst, src, options):
        seen.append(options)
        return real(dst, src, options)

    real = _cli.run_load
    monkeypatch.setattr(_cli, "run_load", recording)
    status = _cli.main(["check", "checkmodels:make", "ddp.pt", "--rename", r"^module\.=", "--exclude", "bias"])
    assert status == _cli.OK, capsys.readouterr()
    [options] = seen
    assert isinstance(options, LoadOptions)
    assert (options.rename, options.exclude, options.strict) == ({r"^module\.": ""}, ["bias"], True)
    assert options.dry_run and not options.meta_is_final


def ddp_error() -> sl.LoadError:
    src = {"module." + k: v for k, v in randomized(Net(), 1).state_dict().items()}
    with pytest.raises(sl.LoadError) as info:
        sl.load(randomized(Net(), 2), src)
    return info.value


def test_a_hint_naming_an_option_is_data_written_as_python_or_as_flags():
    error = ddp_error()
    [unexpected] = [p for p in error.problems if p.kind == "unexpected"]
    python, flags = 'rename={r"^module\\.": ""}', "--rename '^module\\.='"
    assert isinstance(unexpected.hint, Hint) and unexpected.hint.option == "rename"
    assert unexpected.message.endswith(f"; pass {python}") and python in str(error)  # the API's text, as before
    assert unexpected.message_in("cli").endswith(f"; pass {flags}") and python not in unexpected.message_in("cli")
    assert unexpected.message_in("python") == unexpected.message
    [hint] = error.report.hints
    assert hint == unexpected.hint and hint.text("cli").endswith(flags)
    assert error.report.to_dict()["hints"] == [str(hint)]  # plain text in JSON


def test_hints_survive_copies_and_pickles():
    report = ddp_error().report
    for copied in (copy.deepcopy(report), pickle.loads(pickle.dumps(report))):
        assert copied.hints == report.hints and copied.hints[0].text("cli") == report.hints[0].text("cli")
        assert [p.message_in("cli") for p in copied.problems] == [p.message_in("cli") for p in report.problems]


def test_a_new_head_hint_and_a_module_that_loads_its_own_way_name_exclude_as_flags():
    wide = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 5))
    with pytest.raises(sl.LoadError) as info:
        sl.load(wide, nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 3)).state_dict())
    head = next(p for p in info.value.problems if p.path == "1.weight")
    assert 'keep the destination\'s own with exclude="1"' in head.message
    assert head.message_in("cli").endswith("keep the destination's own with --exclude 1")

    quantized = nn.Sequential(nn.Linear(2, 2), torch.ao.nn.quantized.Linear(2, 2))
    report = sl.load(quantized, {"0.weight": torch.ones(2, 2), "0.bias": torch.ones(2)}, strict=False)
    [own] = [p for p in report.problems if p.path == "1"]
    assert own.message.endswith('or leave it out (exclude="1")')
    assert own.message_in("cli").endswith("or leave it out (--exclude 1)")


def test_a_failed_load_on_the_command_line_prints_its_hints_as_flags(capsys):
    error = ddp_error()
    args = _cli.build_parser().parse_args(["diff", "a", "b"])
    assert _cli._fail(args, error) == _cli.USAGE
    printed = capsys.readouterr().err.replace("\n", "")
    assert "pass --rename '^module\\.='" in printed and "rename={" not in printed


def test_no_context_variable_decides_how_messages_are_written():
    import contextvars

    names = [name for name in process_wide_state().values() if name.endswith("HINT_SYNTAX")]
    assert names == []
    from structload._render import text as _text

    assert not any(isinstance(v, contextvars.ContextVar) for v in vars(_text).values())
