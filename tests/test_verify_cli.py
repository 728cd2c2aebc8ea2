"""``structload verify``: one checkpoint loaded into two implementations, compared module by module
(run in-process through the command line's `main`, to spare a fresh interpreter per call)."""

from __future__ import annotations

import json
from pathlib import Path

from structload._cli import main

FACTORIES = """
import sys
sys.path.insert(0, {tests!r})
from ports import NanoGPT

def nano():
    return NanoGPT(97, 16, 32, 2, 4)
"""


def test_verify_loads_both_and_exits_by_ok(tmp_path, monkeypatch, capsys):
    from ports import tiny_gpt2

    tiny_gpt2().save_pretrained(tmp_path / "gpt2")
    (tmp_path / "custom_verify.py").write_text(FACTORIES.format(tests=str(Path(__file__).resolve().parent)))
    monkeypatch.chdir(tmp_path)
    command = ["verify", "custom_verify:nano", "gpt2/model.safetensors", "--reference", "gpt2"]
    assert main([*command, "--align"]) == 0
    assert "all agree" in capsys.readouterr().out
    assert main([*command, "--align", "--json"]) == 0
    as_json = json.loads(capsys.readouterr().out)
    assert as_json["ok"] is True and len(as_json["compared"]) > 15
    assert main(command) == 2  # by name only, GPT-2's (in, out) matrices do not fit nn.Linear
    assert "shape" in capsys.readouterr().err
    assert main([*command, "--input", "x"]) == 2
    assert "--input takes a shape" in capsys.readouterr().err


def test_verify_takes_the_rename_its_own_hint_names(tmp_path, monkeypatch, capsys):
    import safetensors.torch
    from ports import tiny_gpt2

    model = tiny_gpt2(layers=1)
    model.save_pretrained(tmp_path / "gpt2")
    under_ddp = {f"module.{k}": v for k, v in model.state_dict().items() if k != "lm_head.weight"}  # tied
    safetensors.torch.save_file(under_ddp, str(tmp_path / "ddp.safetensors"))
    monkeypatch.chdir(tmp_path)
    command = ["verify", "gpt2", "ddp.safetensors", "--reference", "gpt2"]
    assert main(command) == 2
    assert "pass --rename '^module\\.='" in " ".join(capsys.readouterr().err.split())
    assert main([*command, "--rename", "^module\\.="]) == 0  # the option the hint names exists
    assert "all agree" in capsys.readouterr().out
