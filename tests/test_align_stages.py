"""Named stages against a list (API.md §11): transformers' `ResNetModel` (``encoder.stages.0..3``,
each a list of layers of ConvLayers) into a torchvision-style ResNet written in plain torch
(``conv1`` / ``bn1`` / ``layer1..4``, BasicBlock / Bottleneck with ``downsample.0`` / ``.1``), and
back. Convs are told apart by their positions among the convs of the same shape, each norm
follows its conv, and ``code()`` writes the stage offset as a small function. Forward outputs
are compared with the reference."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn
from align_check import code_loads_what_align_loads  # noqa: F401  (every alignment's code() is executed)

import structload as sl
from helpers import assert_unchanged, randomized, snapshot

transformers = pytest.importorskip("transformers")

PIXELS = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(inplanes, planes, 1, bias=False), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False), nn.BatchNorm2d(planes)
        self.conv3, self.bn3 = nn.Conv2d(planes, planes * 4, 1, bias=False), nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU()
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


class TorchvisionResNet(nn.Module):
    """torchvision's layout (without the classifier, to compare with `ResNetModel`'s features)."""

    def __init__(self, block, depths: list[int], widths: list[int], stem: int = 8):
        super().__init__()
        self.inplanes = stem
        self.conv1, self.bn1 = nn.Conv2d(3, stem, 7, 2, 3, bias=False), nn.BatchNorm2d(stem)
        self.relu, self.maxpool = nn.ReLU(), nn.MaxPool2d(3, 2, 1)
        for i, (depth, width) in enumerate(zip(depths, widths)):
            setattr(self, f"layer{i + 1}", self._stage(block, width, depth, 1 if i == 0 else 2))

    def _stage(self, block, planes: int, depth: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            conv = nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False)
            downsample = nn.Sequential(conv, nn.BatchNorm2d(planes * block.expansion))
        blocks = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        blocks += [block(self.inplanes, planes) for _ in range(1, depth)]
        return nn.Sequential(*blocks)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def with_statistics(module: nn.Module) -> nn.Module:
    """Random weights and running statistics (positive variances), in eval mode."""
    randomized(module)
    for sub in module.modules():
        if isinstance(sub, nn.BatchNorm2d):
            sub.running_var.abs_().add_(0.5)
    return module.eval()


def features(module: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        out = module(PIXELS)
    return out if isinstance(out, torch.Tensor) else out.last_hidden_state


BASIC = {"embedding_size": 8, "hidden_sizes": [8, 16, 24, 32], "depths": [2, 2, 2, 2], "layer_type": "basic"}


def test_transformers_resnet_into_a_torchvision_style_resnet_and_back():
    reference = with_statistics(transformers.ResNetModel(transformers.ResNetConfig(**BASIC)))
    model = TorchvisionResNet(BasicBlock, [2, 2, 2, 2], [8, 16, 24, 32]).eval()
    alignment = sl.align(model, reference)
    assert alignment.ok, alignment.code()
    by_dst = {m.dst: m.src for m in alignment.matched}
    assert by_dst["layer1.1.conv2.weight"] == ("encoder.stages.0.layers.1.layer.1.convolution.weight",)
    assert by_dst["layer3.0.bn2.running_var"] == ("encoder.stages.2.layers.0.layer.1.normalization.running_var",)
    assert by_dst["layer4.0.downsample.1.weight"] == ("encoder.stages.3.layers.0.shortcut.normalization.weight",)
    assert by_dst["bn1.bias"] == ("embedder.embedder.normalization.bias",)
    assert sl.load(model, reference, align=alignment).ok
    assert torch.allclose(features(model), features(reference), atol=1e-5)

    back = transformers.ResNetModel(transformers.ResNetConfig(**BASIC)).eval()
    assert sl.load(back, model, align=True).ok
    assert torch.allclose(features(back), features(reference), atol=1e-5)


def test_the_stage_offset_is_one_small_function_per_pattern_in_code():
    """``stages.0`` is ``layer1``: a regex dict cannot add one, so code() writes a lambda, one rule
    per pattern (not one line per block), no look-ahead, no intermediate path."""
    reference = transformers.ResNetModel(transformers.ResNetConfig(**BASIC))
    model = TorchvisionResNet(BasicBlock, [2, 2, 2, 2], [8, 16, 24, 32])
    alignment = sl.align(model, reference)
    code = alignment.code()
    written = json.loads(json.dumps(alignment.to_dict()))["rename"].values()  # --json writes the function's code
    assert any(value.startswith('lambda m: f"layer{int(m[1]) + 1}.') for value in written)
    rules = [line for line in code.splitlines() if line.startswith("    r")]
    assert len(rules) == 6, code  # stem conv, stem norm; convs, norms, shortcut conv, shortcut norm
    assert r'r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d+)\.convolution\.": lambda m: ' in code
    assert 'f"layer{int(m[1]) + 1}.{m[2]}.conv{int(m[3]) + 1}."' in code
    assert "(?=" not in code and "@" not in code
    export = sl.align(transformers.ResNetModel(transformers.ResNetConfig(**BASIC)), model).code()
    assert 'f"encoder.stages.{int(m[1]) - 1}.layers.{m[2]}.layer.{int(m[3]) - 1}.convolution."' in export


def test_a_stage_with_as_many_blocks_as_the_list_has_stages_is_not_taken_for_it():
    """Bottleneck blocks, depths 1, 4, 1, 1: ``layer2`` has 4 blocks, as ``encoder.stages`` has 4
    stages; counting entries would pair them. Named stages are aligned as stages."""
    config = {"embedding_size": 8, "hidden_sizes": [16, 32, 48, 64], "depths": [1, 4, 1, 1]}
    reference = with_statistics(transformers.ResNetModel(transformers.ResNetConfig(**config, layer_type="bottleneck")))
    model = TorchvisionResNet(Bottleneck, [1, 4, 1, 1], [4, 8, 12, 16]).eval()
    alignment = sl.align(model, reference)
    assert alignment.ok, alignment.code()
    assert {m.dst: m.src for m in alignment.matched}["layer2.3.conv3.weight"] == (
        "encoder.stages.1.layers.3.layer.2.convolution.weight",
    )
    assert sl.load(model, reference, align=alignment).ok
    assert torch.allclose(features(model), features(reference), atol=1e-5)


def test_a_resnet_that_does_not_fit_fails_in_a_few_lines_and_changes_nothing():
    """Other widths from the second stage on: the error names subtrees, not 200 tensors."""
    reference = transformers.ResNetModel(transformers.ResNetConfig(**BASIC))
    model = TorchvisionResNet(BasicBlock, [2, 2, 2, 2], [8, 12, 20, 28]).eval()
    before = snapshot(model)
    with pytest.raises(sl.LoadError) as info:
        sl.load(model, reference, align=True)
    problems = {p.path: p.message for p in info.value.problems}
    assert problems == {
        **{f"layer{i}": "no source tensor matches any of its 30 tensors" for i in (2, 3, 4)},
        **{f"encoder.stages.{i}": "none of its 30 tensors matches a destination tensor" for i in (1, 2, 3)},
    }
    assert_unchanged(model, before)
