"""The same model as transformers' ``from_pretrained``, bit for bit: built on meta with
``from_config`` under `init_empty_weights`, then ``sl.load`` (copying or ``mmap=True``)."""

from __future__ import annotations

import pytest
import torch

import structload as sl

IDS = torch.tensor([[1, 5, 9, 22, 40, 3, 7, 8]])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("mmap", [False, True], ids=["copy", "mmap"])
def test_logits_equal_from_pretrained_bit_for_bit(tmp_path, monkeypatch, dtype, mmap):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import transformers
    from ports import tiny_llama

    tiny_llama().to(dtype).save_pretrained(tmp_path / "llama")
    reference = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "llama", dtype=dtype).eval()
    config = transformers.AutoConfig.from_pretrained(tmp_path / "llama")
    with sl.init_empty_weights():
        model = transformers.AutoModelForCausalLM.from_config(config)
    report = sl.load(model, str(tmp_path / "llama"), mmap=mmap, dtype="auto")
    assert report.ok and (report.mapped == report.loaded if mmap else report.mapped == [])
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(IDS).logits, reference(IDS).logits)
