"""Which module of the model is compared with which module of the reference.

Without a mapping, modules pair by path. With one (``rename=``, an `Alignment`, ``align=True``),
the mapping sends reference tensor paths to model tensor paths, and modules pair through the
tensors they own:

1. a model module owning tensors pairs with the reference module whose tensors all of its own
   tensors come from, when that module's tensors go nowhere else (a fused ``qkv`` split into
   ``q``, ``k``, ``v`` pairs with none of them: its output is not theirs);
2. a module owning no tensor itself pairs with the module of the other side that holds the images
   of its paired descendants, when it is the lowest module holding them (a block, an attention);
3. a module with no tensors at all pairs when the mapping renames its path (``rename`` rules
   written per module) or, without a mapping, by path. The roots always pair.

>>> import torch.nn as nn
>>> model = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
>>> reference = nn.ModuleDict({"fc": nn.Linear(2, 2), "act": nn.ReLU()})
>>> module_pairs(model, reference, lambda path: path.replace("fc.", "0."))
{'': '', '0': 'fc'}
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Mapping = Callable[[str], "str | None"]  # reference tensor path -> model tensor path (None: not mapped)


def module_pairs(model: torch.nn.Module, reference: torch.nn.Module, mapping: Mapping | None) -> dict[str, str]:
    """``{model module path: reference module path}``, for modules that can run (a ``ModuleList`` or
    ``ModuleDict`` has no forward: a counterpart paired with it would wait for it in vain)."""
    model_paths = {path for path, module in model.named_modules() if _runs(module)}
    reference_paths = [path for path, module in reference.named_modules() if _runs(module)]
    if mapping is None:
        return {path: path for path in reference_paths if path in model_paths}
    owners = _owner_images(model, reference, mapping)
    pairs = {"": ""}
    for model_path, reference_path in owners.items():
        pairs.setdefault(model_path, reference_path)
    _pair_containers(pairs, model_paths, reference_paths)
    taken = set(pairs.values())
    for path in reference_paths:  # tensorless modules renamed by per-module rules
        image = _renamed_module(path, mapping)
        if image is not None and image in model_paths and image not in pairs and path not in taken:
            pairs[image] = path
    return pairs


def _owner_images(model, reference, mapping: Mapping) -> dict[str, str]:
    """Model module -> reference module, for owners of tensors that the mapping sends one to one."""
    model_tensors = set(model.state_dict(keep_vars=True))
    sources: dict[str, set[str]] = {}  # model owner -> reference owners its tensors come from
    images: dict[str, set[str]] = {}  # reference owner -> model owners its tensors go to
    for path in reference.state_dict(keep_vars=True):
        try:
            image = mapping(path)
        except Exception:  # a callable rename that does not expect this path
            image = None
        if image is None or image not in model_tensors:
            continue
        model_owner, reference_owner = _owner(image), _owner(path)
        sources.setdefault(model_owner, set()).add(reference_owner)
        images.setdefault(reference_owner, set()).add(model_owner)
    pairs = {}
    for model_owner, from_owners in sources.items():
        if len(from_owners) == 1:
            [reference_owner] = from_owners
            if images[reference_owner] == {model_owner}:
                pairs[model_owner] = reference_owner
    return pairs


def _pair_containers(pairs: dict[str, str], model_paths: set[str], reference_paths: list[str]) -> None:
    """Rule 2: a reference module that is the lowest common ancestor of two or more paired
    descendants pairs with the lowest common ancestor of their images."""
    leaves = dict(pairs)
    taken = set(pairs.values())
    for path in reversed(reference_paths):  # deepest first
        if path in taken:
            continue
        inside = {r: m for m, r in leaves.items() if r and _within(r, path)}
        if len(inside) < 2 or _common(list(inside)) != path:
            continue
        image = _common(list(inside.values()))
        outside = [m for m, r in leaves.items() if m and _within(m, image) and not _within(r, path)]
        if image in model_paths and image not in pairs and not outside:
            pairs[image] = path
            taken.add(path)


def _renamed_module(path: str, mapping: Mapping) -> str | None:
    """Where the mapping sends a module path, probed as a tensor of that module."""
    probe = f"{path}.__module__" if path else "__module__"
    try:
        image = mapping(probe)
    except Exception:
        return None
    if not isinstance(image, str) or not image.endswith("__module__"):
        return None
    return image.removesuffix("__module__").removesuffix(".")


def _runs(module: torch.nn.Module) -> bool:
    return type(module).forward is not torch.nn.Module.forward


def _owner(path: str) -> str:
    return path.rpartition(".")[0]


def _within(path: str, ancestor: str) -> bool:
    return not ancestor or path == ancestor or path.startswith(ancestor + ".")


def _common(paths: list[str]) -> str:
    """The longest common module prefix of dotted paths."""
    parts = [p.split(".") if p else [] for p in paths]
    common = []
    for names in zip(*parts):
        if len(set(names)) != 1:
            break
        common.append(names[0])
    return ".".join(common)
