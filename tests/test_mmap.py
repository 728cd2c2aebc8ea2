"""``load(mmap=True)``: meta tensors become copy-on-write views of the mapped file (API.md §1)."""

from __future__ import annotations

import os
import sys

import pytest
import safetensors.torch
import torch
import torch.nn as nn

import structload as sl
from helpers import Net, TiedLM, randomized
from structload.sources._io.local import LocalFile


def storage_of(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage().data_ptr()


def on_meta(make):
    with sl.init_empty_weights():
        return make()


def test_meta_tensors_become_views_of_the_mapped_file_and_the_file_never_changes(tmp_path):
    src = randomized(Net(n=2))
    path = str(tmp_path / "net.safetensors")
    safetensors.torch.save_file(src.state_dict(), path)
    dst = on_meta(lambda: Net(n=2))
    report = sl.load(dst, path, mmap=True)
    assert report.ok and report.mapped == list(src.state_dict())
    for name, tensor in dst.state_dict().items():
        assert torch.equal(tensor, src.state_dict()[name]), name
    assert storage_of(dst.head.weight) == storage_of(dst.embed.weight)  # one mapping for the whole file
    assert isinstance(dst.head.weight, nn.Parameter) and dst.head.weight.requires_grad
    with torch.no_grad():
        dst.head.weight.add_(1.0)  # copy-on-write: this process only
    assert torch.equal(sl.open(path)["head.weight"].read(), src.head.weight)


def test_casts_fall_back_to_reading_unless_dtype_auto_keeps_the_files(tmp_path):
    src = randomized(Net(n=1))
    path = str(tmp_path / "bf16.safetensors")
    safetensors.torch.save_file({k: v.to(torch.bfloat16) for k, v in src.state_dict().items()}, path)
    cast = sl.load(on_meta(lambda: Net(n=1)), path, mmap=True)
    assert cast.ok and cast.mapped == [] and len(cast.cast) == len(src.state_dict())
    dst = on_meta(lambda: Net(n=1))
    kept = sl.load(dst, path, mmap=True, dtype="auto")
    assert kept.ok and kept.mapped == list(src.state_dict()) and dst.head.weight.dtype == torch.bfloat16


def test_casts_under_mmap_read_from_mappings_that_are_gone_after_the_load(tmp_path, monkeypatch):
    src = randomized(Net(n=1))
    path = str(tmp_path / "bf16.safetensors")
    bf16 = {k: v.to(torch.bfloat16) for k, v in src.state_dict().items()}
    safetensors.torch.save_file(bf16, path)
    read: list[int] = []
    original = LocalFile.read_range

    def counted(self, buffer, offset):
        read.append(len(buffer))
        return original(self, buffer, offset)

    monkeypatch.setattr(LocalFile, "read_range", counted)
    dst = on_meta(lambda: Net(n=1))
    report = sl.load(dst, path, mmap=True)
    assert report.ok and report.mapped == [] and len(report.cast) == len(bf16)
    for name, tensor in dst.state_dict().items():
        assert tensor.dtype == torch.float32 and torch.equal(tensor, bf16[name].float()), name
    data = sum(t.numel() * t.element_size() for t in bf16.values())
    assert sum(read) <= os.path.getsize(path) - data  # the header only: no tensor went through a read
    if sys.platform == "linux":  # every mapping was released: the file's pages are not the process's
        with open("/proc/self/maps") as maps:
            assert path not in maps.read()
    read.clear()
    sl.load(on_meta(lambda: Net(n=1)), path)  # without mmap=True: read through a buffer, never mapped
    assert sum(read) >= data


def test_a_file_cut_short_before_a_mapped_cast_is_a_source_error(tmp_path):
    src = randomized(Net(n=1))
    path = str(tmp_path / "bf16.safetensors")
    safetensors.torch.save_file({k: v.to(torch.bfloat16) for k, v in src.state_dict().items()}, path)
    tree = sl.open(path)  # the header is read now
    os.truncate(path, os.path.getsize(path) // 2)
    with pytest.raises(sl.SourceError) as info:
        sl.load(on_meta(lambda: Net(n=1)), tree, mmap=True)
    assert "bf16.safetensors" in str(info.value) and info.value.report.loaded != list(src.state_dict())


def test_real_destinations_are_copied_into_and_keep_their_parameters(tmp_path):
    src = randomized(Net(n=1))
    path = str(tmp_path / "net.safetensors")
    safetensors.torch.save_file(src.state_dict(), path)
    dst = Net(n=1)
    weight = dst.head.weight
    report = sl.load(dst, path, mmap=True)
    assert report.ok and report.mapped == [] and dst.head.weight is weight
    assert torch.equal(dst.head.weight, src.head.weight)


def test_torch_files_sharded_checkpoints_and_tied_weights_map_too(tmp_path):
    src = randomized(TiedLM())
    torch.save(src.state_dict(), tmp_path / "lm.pt")
    dst = on_meta(TiedLM)
    report = sl.load(dst, str(tmp_path / "lm.pt"), mmap=True)
    assert report.ok and report.mapped == ["wte.weight"]
    assert dst.lm_head.weight is dst.wte.weight and torch.equal(dst.wte.weight, src.wte.weight)
    net = randomized(Net(n=2))
    (tmp_path / "sharded").mkdir()
    state = net.state_dict()
    names = list(state)
    halves = {"model-1.safetensors": names[: len(names) // 2], "model-2.safetensors": names[len(names) // 2 :]}
    for file, keys in halves.items():
        safetensors.torch.save_file({k: state[k] for k in keys}, str(tmp_path / "sharded" / file))
    index = {"weight_map": {k: file for file, keys in halves.items() for k in keys}}
    (tmp_path / "sharded" / "model.safetensors.index.json").write_text(__import__("json").dumps(index))
    dst = on_meta(lambda: Net(n=2))
    report = sl.load(dst, str(tmp_path / "sharded"), mmap=True)
    assert report.ok and report.mapped == names
    assert torch.equal(dst.blocks[1].fc2.weight, net.blocks[1].fc2.weight)


def test_converted_tensors_are_read_and_a_dry_run_only_says_what_would_be_mapped(tmp_path):
    path = str(tmp_path / "t.safetensors")
    safetensors.torch.save_file({"weight": torch.arange(6.0).reshape(3, 2), "bias": torch.ones(2)}, path)
    dst = on_meta(lambda: nn.Linear(3, 2))
    preview = sl.load(dst, path, mmap=True, dry_run=True, convert=[sl.convert.Transpose("weight")])
    assert preview.mapped == ["bias"] and dst.weight.is_meta and dst.bias.is_meta
    report = sl.load(dst, path, mmap=True, convert=[sl.convert.Transpose("weight")])
    assert report.mapped == ["bias"] and torch.equal(dst.weight, torch.arange(6.0).reshape(3, 2).T)
