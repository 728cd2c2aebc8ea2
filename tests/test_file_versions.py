"""Module versions travel with ``torch.save`` files (API.md §10): a state dict's ``_metadata``, which
``torch.load`` + ``load_state_dict`` hand to a module's own loading code as ``local_metadata``, reaches it
when structload reads the file (zip and legacy formats), so a migration of old checkpoints (torchvision's
MNASNet and FPN, a user's module with a ``_version``) does from a file what it does from ``torch.load``.

The reference is always torch's own: ``load_state_dict(torch.load(path))`` into a twin model."""

from __future__ import annotations

import argparse

import pytest
import torch
from torch import nn

import structload as sl


class Migrating(nn.Module):
    """The pattern of torchvision's MNASNet and FPN: version 2 keeps its projection in a ``Sequential``
    (``proj.0.weight``), version 1 stored it bare (``proj.weight``) and is migrated by renaming; a state
    dict without a version is refused, as MNASNet refuses it."""

    _version = 2

    def __init__(self):
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(4, 3))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
        version = local_metadata.get("version", None)
        if version not in (1, 2):
            raise ValueError(f"version should be 1 or 2, not {version}")
        if version == 1:
            for name in ("weight", "bias"):
                if f"{prefix}proj.{name}" in state_dict:
                    state_dict[f"{prefix}proj.0.{name}"] = state_dict.pop(f"{prefix}proj.{name}")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing, unexpected, errors)


def network(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(2, 4), Migrating())


def old_state(model: nn.Module):
    """`model`'s state dict as version 1 wrote it: the old names, the old version in ``_metadata``."""
    state = model.state_dict()
    for name in ("weight", "bias"):
        state[f"1.proj.{name}"] = state.pop(f"1.proj.0.{name}")
    state._metadata["1"]["version"] = 1
    return state


def torch_loaded(path) -> nn.Module:
    reference = network(seed=7)
    reference.load_state_dict(torch.load(path, weights_only=True))
    return reference


def assert_same_state(model: nn.Module, reference: nn.Module) -> None:
    mine, theirs = model.state_dict(), reference.state_dict()
    assert list(mine) == list(theirs)
    assert all(torch.equal(mine[k], theirs[k]) for k in mine), "values differ"


FORMATS = {"zip": {}, "legacy": {"_use_new_zipfile_serialization": False}}


@pytest.mark.parametrize("layout", ["old", "current"])
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_a_module_migrates_a_file_as_torch_load_gives_it(tmp_path, fmt, layout):
    saved = network(seed=0)
    state = old_state(saved) if layout == "old" else saved.state_dict()
    path = tmp_path / "weights.pth"
    torch.save(state, path, **FORMATS[fmt])
    model = network(seed=1)
    report = sl.load(model, str(path))
    assert report.ok
    assert_same_state(model, torch_loaded(path))
    assert_same_state(model, saved)


def test_versions_of_a_state_dict_inside_a_checkpoint_follow_its_subtree(tmp_path):
    saved = network(seed=0)
    path = tmp_path / "checkpoint.pt"
    torch.save({"model": old_state(saved), "epoch": 3}, path)
    model = network(seed=1)
    sl.load(model, sl.open(str(path))["model"])
    assert_same_state(model, saved)
    whole = nn.ModuleDict({"model": network(seed=2)})
    sl.load(whole, str(path), exclude="epoch")  # the same versions, at their place in the file
    assert_same_state(whole["model"], saved)


def test_a_file_without_versions_is_refused_as_load_state_dict_refuses_it(tmp_path):
    """A plain dict (``{**state_dict}``) has no ``_metadata``: the module's own code raises, a problem at its path."""
    path = tmp_path / "plain.pt"
    torch.save(dict(old_state(network(seed=0))), path)
    with pytest.raises(ValueError, match="not None"):
        network(seed=7).load_state_dict(torch.load(path, weights_only=True))
    model = network(seed=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(sl.LoadError) as caught:
        sl.load(model, str(path))
    assert any(p.path == "1" and "not None" in p.message for p in caught.value.problems), caught.value
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing written


def test_metadata_that_is_not_plain_data_is_not_kept(tmp_path):
    """``_metadata`` naming a class (here ``argparse.Namespace``) stays unimported and is not handed to any module."""
    state = old_state(network(seed=0))
    state._metadata["1"]["version"] = argparse.Namespace(version=1)
    path = tmp_path / "odd.pt"
    torch.save(state, path)
    with pytest.raises(sl.LoadError) as caught:
        sl.load(network(seed=1), str(path))
    assert any(p.path == "1" and "not None" in p.message for p in caught.value.problems), caught.value
