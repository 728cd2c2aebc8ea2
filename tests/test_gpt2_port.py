"""The GPT-2 recipe of docs/recipes.md: a Hugging Face GPT-2 layout checkpoint (Conv1D shapes,
fused q/k/v) into a nanoGPT-style model with separate q/k/v layers; the logits must equal a
reference forward computed from the same weights. The test runs the recipe's own code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import structload as sl

RECIPES = Path(__file__).resolve().parent.parent / "docs" / "recipes.md"


@pytest.fixture(scope="module")
def recipe() -> dict:
    text = RECIPES.read_text(encoding="utf-8")
    section = text[text.index("## Port a Hugging Face GPT-2 checkpoint") :]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)
    namespace: dict = {"__name__": "gpt2_recipe"}
    exec(compile(code, "docs/recipes.md (GPT-2 port)", "exec"), namespace)
    return namespace


def test_logits_equal_the_reference_forward(recipe):
    logits, expected = recipe["logits"], recipe["expected"]
    assert logits.shape == (2, recipe["C"], recipe["V"])
    assert torch.allclose(logits, expected, atol=1e-5)
    assert (logits - expected).abs().max() < 1e-5 and logits.abs().max() > 0.1  # not trivially equal


def test_every_destination_was_loaded_from_the_checkpoint(recipe):
    model, hf, report = recipe["model"], recipe["hf"], recipe["report"]
    assert report.ok and report.missing == [] and report.unexpected == []
    assert torch.equal(model.h[1].attn.k.weight, hf["transformer.h.1.attn.c_attn.weight"][:, 32:64].t())
    assert torch.equal(model.h[0].mlp.proj.weight, hf["transformer.h.0.mlp.c_proj.weight"].t())
    assert model.lm_head.weight is model.wte.weight
    converted = {c.path: c for c in report.converted}
    assert len(converted) == 18
    assert converted["h.1.attn.v.bias"].sources == ("h.1.attn.c_attn.bias",)  # source paths after rename
    assert converted["h.0.mlp.fc.weight"].made_by == "Transpose('h.*.mlp.fc.weight') of 'h.0.mlp.fc.weight'"


def test_forgetting_a_transpose_is_caught_in_the_plan(recipe):
    convert = [c for c in recipe["convert"] if str(c) != "Transpose('h.*.mlp.fc.weight')"]
    fresh = recipe["GPT"]()
    before = fresh.h[0].mlp.fc.weight.detach().clone()
    with pytest.raises(sl.LoadError) as info:
        sl.load(fresh, recipe["path"], rename=recipe["rename"], convert=convert)
    problem = info.value.problems[0]
    assert problem.path == "h.0.mlp.fc.weight"
    assert problem.message.startswith("shape (128, 32) in destination, (32, 128) in source; the source stores")
    assert "square matrices of the same role need the same" in problem.message
    assert [p.path for p in info.value.problems] == ["h.0.mlp.fc.weight", "h.1.mlp.fc.weight"]
    assert torch.equal(fresh.h[0].mlp.fc.weight, before)
