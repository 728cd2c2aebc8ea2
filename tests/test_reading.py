"""Reading has one owner (`structload.sources.reading`) and a source tree knows its source.

Issue 21, items 1, 2 and the `sources/` part of 4: the code that plans and writes imports
nothing of how files are read; a `ReadSession` made from the list of reads checks the files,
reads with or without mmap and says which tensors can be mmap views; every format reader
returns a `SourceTree` whose `SourceInfo` holds its origin, format, open files and pickled
types; local and remote files are two implementations of one `ByteSource` protocol.
"""

from __future__ import annotations

import argparse
import ast
import os
import typing
from pathlib import Path

import pytest
import safetensors.torch
import torch

import structload as sl
from structload.sources import MemoryTensor, SourceInfo, views
from structload.sources._io import local as _local
from structload.sources._io.byte_source import ByteSource
from structload.sources._io.local import LocalFile
from structload.sources._io.remote import RemoteFile
from structload.sources.reading import Read, ReadSession, mmap_dtype, reads_from_file

PACKAGE = Path(sl.__file__).parent


def _imports_of(path: Path) -> list[str]:
    """Every module a file imports from, as written (``..sources._local``, ``sources._leaves``)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            module = "." * node.level + (node.module or "")
            found += [f"{module}.{alias.name}" if module.endswith("sources") else module for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
    return found


def test_no_module_outside_sources_imports_how_sources_read():
    """Only `structload.sources`' public surface (and its leaf types, `_leaves`) is used outside it."""
    private = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if "sources" in path.relative_to(PACKAGE).parts:
            continue
        for module in _imports_of(path):
            inside = module.split("sources.", 1)[1] if "sources." in module else ""
            if inside.startswith("_") and not inside.startswith("_leaves"):
                private.append(f"{path.relative_to(PACKAGE)}: {module}")
    assert private == []


def _file(tmp_path, state, name="w.safetensors") -> str:
    path = str(tmp_path / name)
    safetensors.torch.save_file(state, path)
    return path


def test_a_session_checks_the_files_it_reads_and_none_for_tensors_in_memory(tmp_path):
    path = _file(tmp_path, {"w": torch.arange(6.0), "v": torch.ones(2)})
    tree = sl.open(path)
    in_memory = MemoryTensor(torch.ones(3))
    assert ReadSession([Read(in_memory)]).files == []
    session = ReadSession([Read(tree["w"]), Read(tree["v"]), Read(in_memory)])
    assert session.files == [tree["w"].file] and isinstance(session.files[0], LocalFile)
    target = torch.zeros(6)
    with session:
        session.read_into(tree["w"], target)
    assert torch.equal(target, torch.arange(6.0))
    session.check_after()  # unchanged: nothing to say
    safetensors.torch.save_file({"w": torch.zeros(6), "v": torch.ones(2)}, path + ".new")
    os.replace(path + ".new", path)
    with pytest.raises(sl.SourceError, match="changed since it was opened"):
        session.check_after()
    with pytest.raises(sl.SourceError, match="changed since it was opened"):  # before the first write
        ReadSession([Read(tree["w"])]).__enter__()


def test_with_mmap_a_session_casts_from_mmaps_and_otherwise_through_buffers(tmp_path, monkeypatch):
    values = torch.randn(4, 3).bfloat16()
    leaf = sl.open(_file(tmp_path, {"w": values}))["w"]
    used = []
    original = _local.LocalFile.cast_from_mmap
    monkeypatch.setattr(_local.LocalFile, "cast_from_mmap", lambda *a: (used.append(1), original(*a))[1])
    for mmap in (False, True):
        target = torch.zeros(4, 3)
        with ReadSession([Read(leaf)], mmap=mmap) as session:
            session.read_into(leaf, target)
        assert torch.equal(target, values.float()) and len(used) == int(mmap)


def test_mmap_dtype_says_which_leaves_can_be_views_of_the_files_mmap(tmp_path):
    leaf = sl.open(_file(tmp_path, {"w": torch.randn(4, 3).half()}))["w"]
    assert mmap_dtype(leaf) == torch.float16 and reads_from_file(leaf)
    assert mmap_dtype(views.transpose(leaf, 0, 1)) is None  # strided: not one contiguous range
    assert mmap_dtype(MemoryTensor(torch.ones(2))) is None and not reads_from_file(MemoryTensor(torch.ones(2)))
    with ReadSession([Read(leaf, view=True)]) as session:
        view = session.mmap_view(leaf)
    assert torch.equal(view, leaf.read()) and view.dtype == torch.float16


def test_the_source_tree_carries_its_origin_format_files_and_pickled_types(tmp_path):
    path = str(tmp_path / "lightning.ckpt")
    hparams = argparse.Namespace(lr=0.1)
    torch.save({"state_dict": {"fc.weight": torch.ones(2, 2)}, "hyper_parameters": hparams}, path)
    tree = sl.open(path)
    info = tree.info
    assert (info.origin, info.format) == (path, "torch")
    assert [type(f) for f in info.files] == [LocalFile] and info.files[0].path == path
    assert info.pickled == {"hyper_parameters": "argparse.Namespace"}
    assert tree["state_dict"].info is info and tree["state_dict"].types == {}
    assert tree.types == {"hyper_parameters": "argparse.Namespace"}
    assert sl.load({"fc": {"weight": torch.zeros(2, 2)}}, tree["state_dict"]).pickled == {}
    assert sl.load({"fc": {"weight": torch.zeros(2, 2)}}, path, rename={"^state_dict.": ""}, strict=False).pickled == {
        "hyper_parameters": "argparse.Namespace"
    }
    safetensors_path = _file(tmp_path, {"w": torch.ones(1)}, "model.safetensors")
    by_directory = sl.open(str(tmp_path / "model.safetensors")).info, sl.open(str(tmp_path)).info
    assert [(i.format, i.pickled) for i in by_directory] == [("safetensors", {}), ("safetensors", {})]
    assert [i.origin for i in by_directory] == [safetensors_path, str(tmp_path)]  # as the user named it
    assert sl.open({"w": torch.ones(1)}).info == SourceInfo()


def test_local_and_remote_files_are_two_byte_sources_not_one_a_kind_of_the_other(tmp_path):
    fsspec = pytest.importorskip("fsspec")
    with fsspec.open("memory://structload/reading.bin", "wb") as f:
        f.write(b"0123456789")
    (tmp_path / "reading.bin").write_bytes(b"0123456789")
    local, remote = LocalFile(str(tmp_path / "reading.bin")), RemoteFile("memory://structload/reading.bin")
    assert not issubclass(RemoteFile, LocalFile) and not issubclass(LocalFile, RemoteFile)
    members = [name for name in dir(ByteSource) if not name.startswith("_")] + list(typing.get_type_hints(ByteSource))
    for file in (local, remote):
        assert all(hasattr(file, name) for name in members), type(file).__name__
        assert file.read_bytes(3, 4) == b"3456" and file.size == 10
        file.check_unchanged()
