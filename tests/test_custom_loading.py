"""Modules that customise loading run their own code, with ``load_state_dict``'s result and R6 kept
(issue 22, API.md §10).

Every case compares a strict `sl.load` with what ``load_state_dict`` gives, bit for bit, into a
model built normally and into one built under `sl.init_empty_weights()`. torchvision has no working
wheel here: its modules are faithful plain-torch copies of their loading code; transformers' are
its own classes, built tiny."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn

import structload as sl
from helpers import assert_unchanged, randomized, snapshot

# --- stand-ins for torchvision's modules (their loading code as torchvision writes it) ---------------


class FrozenBatchNorm2d(nn.Module):
    """torchvision.ops.FrozenBatchNorm2d: drops ``num_batches_tracked`` of a BatchNorm checkpoint."""

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        num_batches_tracked_key = prefix + "num_batches_tracked"
        if num_batches_tracked_key in state_dict:
            del state_dict[num_batches_tracked_key]
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


class FeaturePyramidNetwork(nn.Module):
    """torchvision.ops.FeaturePyramidNetwork: version 2 wrapped each block in a
    ``Conv2dNormActivation``; checkpoints of version 1 name ``inner_blocks.0.weight``."""

    _version = 2

    def __init__(self, in_channels_list=(4, 8), out_channels=4):
        super().__init__()
        self.inner_blocks = nn.ModuleList(nn.Sequential(nn.Conv2d(c, out_channels, 1)) for c in in_channels_list)
        self.layer_blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(out_channels, out_channels, 3, padding=1)) for _ in in_channels_list
        )

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        version = local_metadata.get("version", None)
        if version is None or version < 2:
            num_blocks = len(self.inner_blocks)
            for block in ["inner_blocks", "layer_blocks"]:
                for i in range(num_blocks):
                    for type in ["weight", "bias"]:
                        old_key = f"{prefix}{block}.{i}.{type}"
                        new_key = f"{prefix}{block}.{i}.0.{type}"
                        if old_key in state_dict:
                            state_dict[new_key] = state_dict.pop(old_key)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


class MNASNet(nn.Module):
    """torchvision.models.MNASNet: refuses checkpoints without a version; version 1 with
    ``alpha != 1`` rebuilds its stem (changes the module: never predictable)."""

    _version = 2

    def __init__(self, alpha: float = 1.0):
        super().__init__()
        self.alpha = alpha
        self.layers = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
        self.classifier = nn.Linear(4, 3)

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        version = local_metadata.get("version", None)
        if version not in [1, 2]:
            raise ValueError(f"version {version} of MNasNet is not supported")
        if version == 1 and self.alpha != 1.0:
            self.layers = nn.Sequential(nn.Conv2d(3, 2, 3), nn.BatchNorm2d(2), nn.ReLU())
            self._version = 1
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


class Backbone(nn.Module):
    """A ResNet stem as detection models freeze it: BatchNorm replaced by FrozenBatchNorm2d."""

    def __init__(self, norm=FrozenBatchNorm2d):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, bias=False)
        self.bn1 = norm(4)
        self.layer1 = nn.Sequential(nn.Conv2d(4, 4, 1, bias=False), norm(4))


def _loaded_both_ways(factory, source, reference_source=None):
    """`factory()` loaded by ``load_state_dict`` (the reference), and by a strict `sl.load` into a model
    built normally and one built under `sl.init_empty_weights()`; every state equal, bit for bit."""
    reference = factory()
    if reference_source is None:
        reference_source = source.state_dict() if isinstance(source, nn.Module) else source
    reference.load_state_dict(reference_source)
    for empty in (False, True):
        if empty:
            with sl.init_empty_weights():
                model = factory()
        else:
            model = factory()
        if isinstance(source, dict):  # a failing strict load first: nothing written (R6)
            before = None if empty else snapshot(model)
            with pytest.raises(sl.LoadError, match="not_in_the_model"):
                sl.load(model, {**source, "not_in_the_model": torch.zeros(1)})
            if empty:
                assert all(p.is_meta for p in model.parameters())
            else:
                assert_unchanged(model, before)
        report = sl.load(model, source)
        assert report.ok
        assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])
        expected = reference.state_dict()
        assert list(model.state_dict()) == list(expected)
        for key, value in expected.items():
            assert torch.equal(model.state_dict()[key], value), key
    return reference


def _batchnorm_checkpoint() -> dict:
    trained = randomized(Backbone(norm=nn.BatchNorm2d))
    trained.bn1.num_batches_tracked.fill_(11)
    return trained.state_dict()


@pytest.mark.parametrize(
    "norm",
    ["torchvision", "DabDetrFrozenBatchNorm2d", "TableTransformerFrozenBatchNorm2d", "DetrFrozenBatchNorm2d"],
)
def test_frozen_batchnorms_drop_num_batches_tracked_as_load_state_dict_does(norm):
    if norm == "torchvision":
        cls = FrozenBatchNorm2d
    else:
        transformers = pytest.importorskip("transformers")
        module = {"Dab": "dab_detr", "Tab": "table_transformer", "Det": "detr"}[norm[:3]]
        cls = getattr(getattr(transformers.models, module), f"modeling_{module}").__dict__[norm]
    checkpoint = _batchnorm_checkpoint()
    assert "bn1.num_batches_tracked" in checkpoint
    _loaded_both_ways(lambda: Backbone(norm=cls), checkpoint)
    with pytest.raises(sl.LoadError):  # the override is what makes it load: without it, unexpected
        sl.load(Backbone(norm=cls), {**checkpoint, "bn1.other": torch.zeros(1)})


def test_fpn_loads_current_checkpoints_and_migrates_version_1_names():
    trained = randomized(FeaturePyramidNetwork())
    _loaded_both_ways(FeaturePyramidNetwork, trained.state_dict())  # version 2 in its metadata
    _loaded_both_ways(FeaturePyramidNetwork, trained)  # a module source: its versions
    old = {k.replace(".0.", "."): v for k, v in trained.state_dict().items()}  # version 1 names, no metadata
    assert "inner_blocks.0.weight" in old
    _loaded_both_ways(FeaturePyramidNetwork, old)
    report = sl.load(FeaturePyramidNetwork(), old)
    assert report.loaded[0] == "inner_blocks.0.0.weight"  # destination paths, as always


def test_mnasnet_loads_versioned_state_and_refuses_what_load_state_dict_refuses():
    trained = randomized(MNASNet())
    _loaded_both_ways(MNASNet, trained.state_dict())
    _loaded_both_ways(MNASNet, trained)
    unversioned = dict(trained.state_dict())  # a plain dict (a safetensors file's): no version
    with pytest.raises(ValueError, match="version None"):
        MNASNet().load_state_dict(unversioned)
    model = randomized(MNASNet(), 3)
    before = snapshot(model)
    with pytest.raises(sl.LoadError) as info:
        sl.load(model, unversioned)
    [problem] = info.value.problems
    assert problem.path == "" and "raised ValueError: version None of MNasNet is not supported" in problem.message
    assert_unchanged(model, before)


def test_mnasnet_version_1_rebuilding_its_stem_is_a_problem_not_a_guess():
    trained = MNASNet(alpha=0.5)
    state = trained.state_dict()
    state._metadata[""]["version"] = 1
    model = MNASNet(alpha=0.5)
    stem = model.layers
    with pytest.raises(sl.LoadError) as info:
        sl.load(model, state)
    [problem] = info.value.problems
    assert problem.path == "" and "writes into tensors in place" in problem.message  # building its new stem
    assert model.layers is stem and model._version == 2  # the stem it built went to the shadow


# --- transformers' key hooks, on its own classes ------------------------------------------------------


def _tiny(name: str, **extra):
    transformers = pytest.importorskip("transformers")
    config = getattr(transformers, f"{name}Config")(
        hidden_size=16, num_hidden_layers=2, vocab_size=40, intermediate_size=32, **extra
    )
    model_class = getattr(transformers, f"{name}Model")

    def build():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return model_class(config)

    return build


@pytest.mark.parametrize(
    "name, extra",
    [("Mamba", {"state_size": 4}), ("Mamba2", {"state_size": 4, "num_heads": 4, "head_dim": 8, "n_groups": 1})],
)
def test_mamba_hooks_rename_old_embedding_keys(name, extra):
    build = _tiny(name, **extra)
    state = randomized(build()).state_dict()
    _loaded_both_ways(build, state)
    old = {k.replace("embeddings.", "embedding."): v for k, v in state.items()}  # the original checkpoints
    assert "embedding.weight" in old
    _loaded_both_ways(build, old)


def test_a_mamba_checkpoint_from_save_pretrained_loads_as_from_pretrained_does(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.MambaConfig(hidden_size=16, num_hidden_layers=2, vocab_size=40, state_size=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        randomized(transformers.MambaForCausalLM(config)).save_pretrained(tmp_path)
        reference = transformers.MambaForCausalLM.from_pretrained(tmp_path)
    for empty in (False, True):
        if empty:
            with sl.init_empty_weights():
                model = transformers.MambaForCausalLM(config)
        else:
            model = transformers.MambaForCausalLM(config)
        assert sl.load(model, str(tmp_path)).ok
        for key, value in reference.state_dict().items():
            assert torch.equal(model.state_dict()[key], value), key


def test_esm_hook_moves_per_layer_inv_freq_to_the_shared_buffer():
    build = _tiny("Esm", num_attention_heads=2, position_embedding_type="rotary", pad_token_id=1)
    state = dict(randomized(build()).state_dict())
    inv_freq = state.pop("rotary_embeddings.inv_freq")
    old = {**state, **{f"encoder.layer.{i}.attention.self.rotary_embeddings.inv_freq": inv_freq for i in range(2)}}
    _loaded_both_ways(build, old)
    _loaded_both_ways(build, {**state, "rotary_embeddings.inv_freq": inv_freq})


# --- a user's own module with a pre- and a post-hook ---------------------------------------------------


class Hooked(nn.Module):
    """Renames ``w`` to ``proj.weight`` in a pre-hook, counts and records in a post-hook."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(3, 2)
        self.pre_calls = 0
        self.post_calls: list = []
        self.register_load_state_dict_pre_hook(Hooked.rename)
        self.register_load_state_dict_post_hook(Hooked.after)

    def rename(self, state_dict, prefix, *args):
        self.pre_calls += 1
        if prefix + "w" in state_dict:
            state_dict[prefix + "proj.weight"] = state_dict.pop(prefix + "w")

    def after(self, incompatible_keys):
        self.post_calls.append((list(incompatible_keys.missing_keys), self.proj.weight.detach().clone()))


class Outer(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = Hooked()
        self.head = nn.Linear(2, 2)
        self.order: list = []
        self._register_load_state_dict_pre_hook(lambda sd, prefix, *args: self.order.append("pre"))
        self.register_load_state_dict_post_hook(lambda module, keys: self.order.append("post"))


def _hooked_checkpoint() -> dict:
    state = randomized(Outer()).state_dict()
    return {("block.w" if k == "block.proj.weight" else k): v for k, v in state.items()}


def test_a_users_pre_and_post_hooks_run_once_each_with_load_state_dicts_result():
    checkpoint = _hooked_checkpoint()
    reference = _loaded_both_ways(Outer, checkpoint)
    model = Outer()
    sl.load(model, checkpoint)
    assert model.block.pre_calls == reference.block.pre_calls == 1
    assert len(model.block.post_calls) == len(reference.block.post_calls) == 1
    missing, weight_seen = model.block.post_calls[0]
    assert missing == [] and torch.equal(weight_seen, checkpoint["block.w"])  # post-hooks run after the writes
    assert model.order == reference.order == ["pre", "post"]


def test_a_dry_run_runs_pre_hooks_on_the_recording_only_and_no_post_hook():
    model = Outer()
    before = snapshot(model)
    report = sl.load(model, _hooked_checkpoint(), dry_run=True)
    assert report.ok and "block.proj.weight" in report.loaded
    assert model.block.pre_calls == 1 and model.block.post_calls == [] and model.order == ["pre"]
    assert_unchanged(model, before)


def test_a_failing_strict_load_runs_no_post_hook_and_leaves_the_model_unchanged():
    model = randomized(Outer(), 5)
    before = snapshot(model)
    bad = {**_hooked_checkpoint(), "head.weight": torch.zeros(3, 3)}
    with pytest.raises(sl.LoadError) as info:
        sl.load(model, bad)
    assert [p.path for p in info.value.problems] == ["head.weight"]
    assert model.block.post_calls == [] and model.order == ["pre"]
    assert_unchanged(model, before)


def test_post_hooks_of_a_non_strict_load_see_the_missing_keys():
    model = Outer()
    checkpoint = _hooked_checkpoint()
    del checkpoint["head.weight"]
    report = sl.load(model, checkpoint, strict=False)
    assert report.missing == ["head.weight"] and model.block.post_calls[0][0] == ["head.weight"]


# --- what a recording cannot predict stays a problem at the module's path ----------------------------


class ReadsValues(nn.Linear):
    def _load_from_state_dict(self, state_dict, prefix, *args):
        if bool(state_dict[prefix + "weight"].abs().sum() > 1e3):  # decides on values
            state_dict[prefix + "weight"] = state_dict[prefix + "weight"] / 1e3
        super()._load_from_state_dict(state_dict, prefix, *args)


class Computes(nn.Linear):
    def _load_from_state_dict(self, state_dict, prefix, *args):
        state_dict[prefix + "weight"] = state_dict[prefix + "weight"].t()  # a new tensor
        super()._load_from_state_dict(state_dict, prefix, *args)


class WritesItself(nn.Linear):
    def _load_from_state_dict(self, state_dict, prefix, *args):
        super()._load_from_state_dict(state_dict, prefix, *args)
        self.weight.data.mul_(2)


class LoadsWithoutTorch(nn.Linear):
    def _load_from_state_dict(self, state_dict, prefix, *args):
        with torch.no_grad():
            self.weight.copy_(state_dict[prefix + "weight"])


class NoSuper(nn.Linear):
    def _load_from_state_dict(self, state_dict, prefix, *args):
        pass  # loads nothing at all


class Raises(nn.Linear):
    def __init__(self):
        super().__init__(2, 2)
        self.register_load_state_dict_pre_hook(self.check)

    def check(self, module, state_dict, prefix, *args):
        raise KeyError("no version")


@pytest.mark.parametrize(
    "cls, why",
    [
        (ReadsValues, "raised RuntimeError: Tensor.item() cannot be called on meta tensors (it reads the checkpoint's"),
        (Computes, "puts a value the recording did not predict at '0.weight'"),
        (WritesItself, "writes into tensors in place (mul_)"),
        (LoadsWithoutTorch, "writes into tensors in place (copy_)"),
        (NoSuper, "does not pass its state to torch's _load_from_state_dict"),
        (Raises, "raised KeyError"),
    ],
)
def test_code_a_recording_cannot_check_is_a_problem_at_its_path_and_nothing_is_written(cls, why):
    model = randomized(nn.Sequential(cls() if cls is Raises else cls(2, 2), nn.Linear(2, 2)))
    before = snapshot(model)
    source = randomized(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)), 1).state_dict()
    with pytest.raises(sl.LoadError) as info:
        sl.load(model, source)
    [problem] = info.value.problems
    assert problem.path == "0" and problem.kind == "type" and why in problem.message
    assert "model.0.load_state_dict(...)" in problem.message and 'exclude="0"' in problem.message
    assert_unchanged(model, before)
    assert sl.load(model, source, exclude="0").ok  # the way out the message names


def test_a_source_given_as_a_file_runs_the_hooks_too(tmp_path):
    import safetensors.torch

    checkpoint = _hooked_checkpoint()
    safetensors.torch.save_file(checkpoint, str(tmp_path / "hooked.safetensors"))
    _loaded_both_ways(Outer, str(tmp_path / "hooked.safetensors"), reference_source=checkpoint)


def test_the_recording_leaves_a_shared_source_tree_as_it_was():
    tree = sl.state(randomized(Backbone(norm=nn.BatchNorm2d)))
    assert "num_batches_tracked" in tree["bn1"]
    sl.load(Backbone(), tree)
    assert "num_batches_tracked" in tree["bn1"]  # the source the user holds is not edited


# --- a refused module is one problem, without knock-ons for its tensors ------------------------------


class MigratesAndTransposes(nn.Linear):
    """A user's migration of an older layout: ``w`` stored (in, out), renamed and transposed."""

    def _load_from_state_dict(self, state_dict, prefix, *args):
        if prefix + "w" in state_dict:
            state_dict[prefix + "weight"] = state_dict.pop(prefix + "w").t()  # a new tensor: refused
        super()._load_from_state_dict(state_dict, prefix, *args)


def test_a_refused_module_is_reported_once_at_its_path_without_missing_or_unexpected_knock_ons():
    layers = {"embed": nn.Linear(3, 3), "old": MigratesAndTransposes(2, 3), "head": nn.Linear(3, 4)}
    model = randomized(nn.ModuleDict(layers))
    before = snapshot(model)
    old = {"embed.weight": torch.ones(3, 3), "embed.bias": torch.ones(3)}
    old |= {"old.w": torch.ones(2, 3), "old.bias": torch.ones(3)}
    with pytest.raises(sl.LoadError) as info:  # head really is missing: still said
        sl.load(model, old)
    assert [(p.kind, p.path) for p in info.value.problems] == [("type", "old"), ("missing", "head")]
    assert "puts a value the recording did not predict at 'old.weight'" in info.value.problems[0].message
    assert "old.w:" not in str(info.value) and "old.weight:" not in str(info.value)
    assert_unchanged(model, before)
    report = sl.load(model, old, strict=False)
    assert [(p.kind, p.path) for p in report.problems] == [("type", "old"), ("missing", "head")]
    assert report.missing == ["old.weight", "head.weight", "head.bias"] and report.unexpected == ["old.w"]


def test_a_quantized_destination_is_one_problem_not_one_per_packed_tensor():
    from torch.ao.nn import quantized as nnq

    model = nn.Sequential(nnq.Linear(4, 3), nn.Linear(3, 2))
    state = model.state_dict()  # what torch itself saves for it: packed params, scale, zero point
    float_state = {"0.weight": torch.ones(3, 4), "0.bias": torch.ones(3), "1.weight": torch.ones(2, 3)}
    for source in (state, float_state):
        with pytest.raises(sl.LoadError) as info:
            sl.load(model, source)
        [problem] = [p for p in info.value.problems if p.path.split(".")[0] == "0"]
        assert (problem.kind, problem.path) == ("type", "0") and 'exclude="0"' in problem.message


# --- a non-strict load writes nothing inside a refused module ----------------------------------------


def test_a_non_strict_load_leaves_a_refused_module_exactly_as_it_was():
    """The migration's ``old.w`` cannot be followed, so ``old.bias`` (which torch's names would
    load) is not written either: no half-loaded module. The rest of the model loads."""
    model = randomized(nn.ModuleDict({"embed": nn.Linear(3, 3), "old": MigratesAndTransposes(2, 3)}))
    before = snapshot(model.old)
    old = {"embed.weight": torch.ones(3, 3), "embed.bias": torch.ones(3), "old.w": torch.ones(2, 3)}
    report = sl.load(model, {**old, "old.bias": torch.ones(3)}, strict=False)
    assert_unchanged(model.old, before)
    assert torch.equal(model.embed.weight, torch.ones(3, 3)) and torch.equal(model.embed.bias, torch.ones(3))
    assert report.loaded == ["embed.weight", "embed.bias"] and report.skipped == ["old.bias"]
    assert [(p.kind, p.path) for p in report.problems] == [("type", "old")]  # the reason, at the module
    assert report.missing == ["old.weight"] and report.unexpected == ["old.w"]


@pytest.mark.parametrize("empty", [False, True])
def test_a_refused_modules_tensors_are_skipped_in_a_model_built_normally_or_empty(empty):
    """Every tensor torch's names would load into a refused module is skipped; built under
    `sl.init_empty_weights()` they stay on meta, the refusal the one problem that names them."""
    source = randomized(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)), 1).state_dict()
    if empty:
        with sl.init_empty_weights():
            model = nn.Sequential(ReadsValues(2, 2), nn.Linear(2, 2))
    else:
        model = randomized(nn.Sequential(ReadsValues(2, 2), nn.Linear(2, 2)))
        before = snapshot(model[0])
    report = sl.load(model, source, strict=False)
    assert report.skipped == ["0.weight", "0.bias"] and report.loaded == ["1.weight", "1.bias"]
    assert [(p.kind, p.path) for p in report.problems] == [("type", "0")]
    assert "reads the checkpoint's values" in report.problems[0].message
    assert torch.equal(model[1].weight, source["1.weight"])
    if empty:
        assert model[0].weight.is_meta and model[0].bias.is_meta
    else:
        assert_unchanged(model[0], before)


def test_a_tensor_tied_to_a_refused_modules_tensor_is_not_written_either():
    """Writing a tied path outside the refused module would change the module through the shared tensor."""
    model = randomized(nn.ModuleDict({"old": ReadsValues(2, 3), "head": nn.Linear(2, 3, bias=False)}))
    model.head.weight = model.old.weight
    before = snapshot(model)
    source = {"old.weight": torch.ones(3, 2), "old.bias": torch.ones(3), "head.weight": torch.ones(3, 2)}
    report = sl.load(model, source, strict=False)
    assert_unchanged(model, before)
    assert report.skipped == ["old.weight", "old.bias", "head.weight"] and report.loaded == []
    assert [(p.kind, p.path) for p in report.problems] == [("type", "old")]


def test_a_refused_modules_post_hook_does_not_run_in_a_non_strict_load():
    calls = []
    model = nn.Sequential(Raises(), nn.Linear(2, 2))
    model[0].register_load_state_dict_post_hook(lambda module, keys: calls.append(keys))
    source = randomized(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)), 1).state_dict()
    report = sl.load(model, source, strict=False)
    assert calls == [] and report.loaded == ["1.weight", "1.bias"] and report.skipped == ["0.weight", "0.bias"]
