"""The command line, run through its real entry points."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def structload_command() -> list[str]:
    """The installed ``structload`` script next to this Python, else ``python -m structload``."""
    script = Path(sys.executable).parent / "structload"
    if script.exists():
        return [str(script)]
    found = shutil.which("structload")
    return [found] if found else [sys.executable, "-m", "structload"]


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, "COLUMNS": "100", **(env or {})}
    return subprocess.run([*structload_command(), *args], capture_output=True, text=True, timeout=120, env=environment)


def test_demo_runs_the_main_job_on_one_screen():
    result = run("demo")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert len(out.splitlines()) <= 45
    assert "Custom: 19 loaded, 8 zeroed, 2 missing" in out
    assert "0–3  (each alike, 24 tensors)" in out
    assert "probe  missing (2 tensors)" in out
    assert "structload.LoadError: 3 problems loading into Custom (2 missing, 1 unexpected)" in out
    assert 'pass rename={r"^blocks\\.": "layers."}' in out
    assert "unchanged" in out and "CHANGED" not in out
    assert "\x1b[" not in out  # no colour codes when not on a terminal


def test_python_dash_m_runs_the_same_command():
    result = subprocess.run([sys.executable, "-m", "structload", "demo"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "structload demo" in result.stdout


@pytest.mark.parametrize("args", [[], ["no-such-command"]])
def test_bad_usage_exits_2(args):
    assert run(*args).returncode == 2


# --- inspect, diff, check on real files ---------------------------------------------------

import json  # noqa: E402

import safetensors.torch  # noqa: E402
import torch  # noqa: E402

from helpers import Net, randomized  # noqa: E402

FACTORY_MODULE = """
import sys
sys.path.insert(0, {tests!r})
from helpers import Net

def make():
    return Net(n=3)

def make_wide():
    return Net(n=3, classes=5)
"""


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A folder holding checkpoints of Net(n=3) and a factory module, as a user's project would."""
    source = randomized(Net(n=3), 1)
    state = source.state_dict()
    safetensors.torch.save_file(state, str(tmp_path / "model.safetensors"))
    torch.save({"module." + k: v for k, v in state.items()}, tmp_path / "ddp.pt")
    changed = dict(state)
    changed["head.bias"] = changed["head.bias"] + 1
    changed["extra.weight"] = torch.ones(2)
    torch.save(changed, tmp_path / "changed.pt")
    values_only = {k: v + 1 if k == "head.bias" else v for k, v in state.items()}
    safetensors.torch.save_file(values_only, str(tmp_path / "values_only.safetensors"))
    tests = str(Path(__file__).resolve().parent)
    (tmp_path / "mymodels.py").write_text(FACTORY_MODULE.format(tests=tests))
    return tmp_path


def run_in(folder, *args, env=None):
    environment = {**os.environ, "COLUMNS": "120", **(env or {})}
    environment.pop("FORCE_COLOR", None) if env is None or "FORCE_COLOR" not in env else None
    return subprocess.run(
        [*structload_command(), *args], capture_output=True, text=True, timeout=120, env=environment, cwd=folder
    )


def test_inspect_draws_a_tree_with_shapes_dtypes_sizes_and_totals(workdir):
    result = run_in(workdir, "inspect", "model.safetensors")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "model.safetensors  (21 tensors, 307 params, 1.2 KiB)" in out
    assert "0–2  (6 tensors, 84 params, 336 B, each alike)" in out
    assert "weight  (8, 4)  float32  128 B" in out


def test_inspect_depth_folds_subtrees(workdir):
    out = run_in(workdir, "inspect", "model.safetensors", "--depth", "1").stdout
    assert "blocks  (18 tensors, 252 params, 1008 B)" in out
    assert "fc1" not in out and len(out.splitlines()) == 4


def test_inspect_json_is_machine_readable(workdir):
    result = run_in(workdir, "inspect", "ddp.pt", "--json")
    data = json.loads(result.stdout)
    assert data["module.head.weight"] == {"shape": [3, 4], "dtype": "float32", "nbytes": 48}
    assert len(data) == 21


def test_diff_exit_status_and_output(workdir):
    same = run_in(workdir, "diff", "model.safetensors", "model.safetensors", "--values")
    assert (
        same.returncode == 0 and "no differences: 21 tensors compared by path, shape, dtype and values" in same.stdout
    )
    # without --values it says so, instead of a bare "no differences" while values differ
    unsure = run_in(workdir, "diff", "model.safetensors", "values_only.safetensors")
    assert unsure.returncode == 0
    assert "compared by path, shape and dtype (values not compared; pass --values)" in unsure.stdout.replace("\n", " ")
    assert run_in(workdir, "diff", "model.safetensors", "values_only.safetensors", "--values").returncode == 1
    shallow = run_in(workdir, "diff", "model.safetensors", "changed.pt")
    assert shallow.returncode == 1 and "extra.weight" in shallow.stdout and "only in b" in shallow.stdout
    deep = run_in(workdir, "diff", "model.safetensors", "changed.pt", "--values", "--json")
    assert deep.returncode == 1
    data = json.loads(deep.stdout)
    assert data["values"] == ["head.bias"] and data["only_in_b"] == ["extra.weight"] and data["ok"] is False


def test_check_passes_for_a_matching_checkpoint(workdir):
    result = run_in(workdir, "check", "mymodels:make", "model.safetensors")
    assert result.returncode == 0, result.stderr
    assert "Net: 21 loaded (nothing written)" in result.stdout


def test_check_strict_failure_prints_problems_and_exits_1(workdir):
    result = run_in(workdir, "check", "mymodels:make", "ddp.pt")
    assert result.returncode == 1
    assert "pass --rename '^module\\.='" in result.stdout.replace("\n", "")  # the CLI's own syntax
    fixed = run_in(workdir, "check", "mymodels:make", "ddp.pt", "--rename", r"^module\.=")
    assert fixed.returncode == 0, fixed.stdout


def test_check_no_strict_include_exclude(workdir):
    wide = run_in(workdir, "check", "mymodels:make_wide", "model.safetensors", "--no-strict")
    assert wide.returncode == 1 and "shape (5, 4) in destination, (3, 4) in source" in wide.stdout
    excluded = run_in(workdir, "check", "mymodels:make_wide", "model.safetensors", "--exclude", "head")
    assert excluded.returncode == 0 and "excluded" in excluded.stdout
    included = run_in(
        workdir, "check", "mymodels:make_wide", "model.safetensors", "--include", "blocks.*", "--include", "embed"
    )
    assert included.returncode == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["inspect", "missing.safetensors"], "structload: missing.safetensors: no such file or directory"),
        (["check", "nosuchmodule:make", "model.safetensors"], "structload: cannot import 'nosuchmodule'"),
        (["check", "mymodels", "model.safetensors"], "structload: FACTORY must look like package.module:callable"),
        (["check", "mymodels:make", "model.safetensors", "--rename", "x"], "structload: --rename takes REGEX=REPL"),
        (["diff", "model.safetensors", "nothing.pt"], "structload: nothing.pt: no such file or directory"),
    ],
)
def test_errors_are_one_clear_message_and_exit_2(workdir, args, message):
    result = run_in(workdir, *args)
    assert result.returncode == 2
    assert result.stderr.startswith(message), result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_debug_shows_the_traceback(workdir):
    result = run_in(workdir, "--debug", "inspect", "missing.safetensors")
    assert result.returncode == 2 and "Traceback" in result.stderr and "SourceError" in result.stderr


def test_colour_only_on_terminals_and_never_with_no_color(workdir):
    coloured = run_in(workdir, "inspect", "model.safetensors", env={"FORCE_COLOR": "1"}).stdout
    assert "\x1b[3" in coloured  # a colour code (cyan shapes, green dtypes)
    plain = run_in(workdir, "inspect", "model.safetensors", env={"FORCE_COLOR": "1", "NO_COLOR": "1"}).stdout
    assert "\x1b[3" not in plain
    assert "\x1b[" not in run_in(workdir, "inspect", "model.safetensors").stdout


def test_help_exits_0():
    result = run("--help")
    assert result.returncode == 0 and "inspect" in result.stdout and "Exit status" in result.stdout


def test_inspect_a_dcp_checkpoint(tmp_path):
    import torch.distributed.checkpoint as dcp

    dcp.save({"model": Net(n=1).state_dict(), "step": 5}, checkpoint_id=str(tmp_path / "dcp"))
    result = run_in(tmp_path, "inspect", "dcp", "--depth", "1")
    assert result.returncode == 0, result.stderr
    assert "dcp  (9 tensors, 139 params, 556 B)" in result.stdout and "model" in result.stdout


def test_check_include_typo_is_a_problem_and_exits_1(workdir):
    result = run_in(workdir, "check", "mymodels:make", "model.safetensors", "--include", "embd")
    assert result.returncode == 1
    assert "include pattern matches no destination path; did you mean 'embed'?" in result.stdout.replace("\n", "")


def test_check_builds_a_transformers_model_from_its_directory_or_config(tmp_path):
    import transformers

    config = transformers.BertConfig(
        vocab_size=50, hidden_size=8, num_hidden_layers=2, num_attention_heads=2, intermediate_size=16
    )
    transformers.BertModel(config).save_pretrained(tmp_path / "bert")
    for factory in ("bert", "bert/config.json"):
        result = run_in(tmp_path, "check", factory, "bert/model.safetensors")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "BertModel:" in result.stdout and "loaded" in result.stdout
    wrong = run_in(
        tmp_path, "check", "bert", "bert/model.safetensors", "--exclude", "pooler.*", "--include", "encodr.*"
    )
    assert wrong.returncode == 1 and "--include" not in wrong.stderr


ALIGN_FACTORY = """
import sys
sys.path.insert(0, {tests!r})
from ports import SplitGPT

def make():
    return SplitGPT(97, 16, 32, 2, 4)
"""


def test_align_prints_the_mapping_as_python_and_exits_by_ok(tmp_path):
    from ports import tiny_gpt2

    tiny_gpt2().save_pretrained(tmp_path / "gpt2")
    (tmp_path / "custom.py").write_text(ALIGN_FACTORY.format(tests=str(Path(__file__).resolve().parent)))
    result = run_in(tmp_path, "align", "custom:make", "gpt2/model.safetensors")
    assert result.returncode == 0, result.stderr
    namespace: dict = {}
    exec(result.stdout, namespace)
    assert any("attn" in key for key in namespace["rename"]) and namespace["convert"]
    as_json = json.loads(run_in(tmp_path, "align", "custom:make", "gpt2/model.safetensors", "--json").stdout)
    assert as_json["ok"] is True and as_json["code"] == result.stdout
    unrelated = run_in(tmp_path, "align", "custom:make", "gpt2/model.safetensors", "--hint", "nothing.*=x")
    assert unrelated.returncode == 1 and "# hint 'nothing.*' matches no destination path" in unrelated.stdout


def test_a_factory_that_raises_is_named_as_the_cause_not_an_internal_error(workdir, monkeypatch, capsys):
    (workdir / "attention_models.py").write_text(
        "import torch\n\n"
        "def make():  # 30 is not divisible by 4 heads: torch's own MultiheadAttention refuses it\n"
        "    return torch.nn.MultiheadAttention(30, 4)\n"
    )
    from structload._cli import main

    monkeypatch.chdir(workdir)  # as a user runs it from their project, in process (no interpreter start)
    assert main(["check", "attention_models:make", "model.safetensors"]) == 2
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr, stderr
    message = " ".join(stderr.split())
    assert message.startswith("structload: attention_models:make raised AssertionError: embed_dim must be divisible")
    assert "internal error" not in message
