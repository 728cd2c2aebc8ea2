"""transformers' declared checkpoint conversions (API.md §10): a strict ``sl.load(model, save_pretrained_dir)``
gives ``from_pretrained``'s state for checkpoints transformers keeps in their historical layout, because the
model's library declares how to convert them; and nothing of transformers is imported otherwise.

The models are transformers' own classes from tiny configs (``tests/zoo.py``), saved with their own
``save_pretrained``; the expected values are computed here from the saved file, independently of structload."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import structload as sl

transformers = pytest.importorskip("transformers")
import zoo  # noqa: E402  (after the importorskip: it needs transformers)

_SAVED: dict[str, tuple] = {}


@pytest.fixture(scope="module")
def saved_dir(tmp_path_factory):
    """`saved_dir(model_type)` -> (directory, config, from_pretrained's state), built once per module."""

    def get(model_type: str):
        if model_type not in _SAVED:
            directory = tmp_path_factory.mktemp(model_type.replace("-", "_")) / model_type
            built = zoo.saved(model_type, directory)
            assert not isinstance(built, zoo.Outcome), built
            reference = zoo.reference_state(directory)
            assert not isinstance(reference, zoo.Outcome), reference
            _SAVED[model_type] = (directory, built[0], reference)
        return _SAVED[model_type]

    return get


def build(model_type: str, config, meta: bool):
    if meta:
        with sl.init_empty_weights():
            return zoo._build(model_type, config)
    return zoo._build(model_type, config)


def assert_same_state(model, reference):
    assert (where := zoo.difference(zoo._full_state(model), reference)) is None, where


@pytest.mark.parametrize("meta", [False, True], ids=["built", "meta"])
@pytest.mark.parametrize(
    ("model_type", "old_key", "new_key"),
    [
        ("beit", "encoder.layer.1.attention.attention.key.weight", "layers.1.attention.k_proj.weight"),
        ("deit", "encoder.layer.0.attention.attention.key.weight", "layers.0.attention.k_proj.weight"),
        ("dinov2", "encoder.layer.0.attention.attention.key.weight", "encoder.layer.0.attention.k_proj.weight"),
        ("gemma3", "language_model.model.embed_tokens.weight", "language_model.embed_tokens.weight"),
        ("aya_vision", "language_model.model.embed_tokens.weight", "language_model.embed_tokens.weight"),
        ("fuyu", "language_model.model.embed_tokens.weight", "language_model.embed_tokens.weight"),
    ],
)
def test_renamings_give_from_pretrained_state_and_map_with_mmap(saved_dir, model_type, old_key, new_key, meta):
    directory, config, reference = saved_dir(model_type)
    on_disk = load_file(directory / "model.safetensors")
    assert old_key in on_disk and new_key not in on_disk  # the historical layout, as on the hub
    model = build(model_type, config, meta)
    report = sl.load(model, str(directory), mmap=meta)
    assert_same_state(model, reference)
    assert torch.equal(model.state_dict()[new_key], on_disk[old_key])
    assert report.converted == [] and any("WeightRenaming" in line for line in report.declared)
    if meta:  # renamed entries are still the file's bytes: mapped, not copied
        assert report.mapped and set(report.mapped) == set(report.loaded)


def experts(on_disk: dict, layer: str, name: str, n: int) -> torch.Tensor:
    return torch.stack([on_disk[f"{layer}.experts.{e}.{name}.weight"] for e in range(n)])


@pytest.mark.parametrize("meta", [False, True], ids=["built", "meta"])
@pytest.mark.parametrize(
    ("model_type", "layer", "gate", "up", "down"),
    [
        ("mixtral", "layers.0.block_sparse_moe", "w1", "w3", "w2"),
        ("qwen2_moe", "layers.0.mlp", "gate_proj", "up_proj", "down_proj"),
        ("deepseek_v2", "layers.1.mlp", "gate_proj", "up_proj", "down_proj"),
    ],
)
def test_per_expert_weights_fuse_into_gate_up_proj(saved_dir, model_type, layer, gate, up, down, meta):
    directory, config, reference = saved_dir(model_type)
    on_disk = load_file(directory / "model.safetensors")
    model = build(model_type, config, meta)
    report = sl.load(model, str(directory), mmap=meta)
    assert_same_state(model, reference)
    fused = layer.replace("block_sparse_moe", "mlp") + ".experts"
    n = model.get_submodule(fused).gate_up_proj.shape[0]
    expected = torch.cat([experts(on_disk, layer, gate, n), experts(on_disk, layer, up, n)], dim=1)
    assert torch.equal(model.get_submodule(fused).gate_up_proj, expected)
    assert torch.equal(model.get_submodule(fused).down_proj, experts(on_disk, layer, down, n))
    made = {c.path: c for c in report.converted}
    assert f"{layer}.experts.0.{gate}.weight" in made[f"{fused}.gate_up_proj"].sources
    assert "MergeModulelist" in made[f"{fused}.gate_up_proj"].made_by
    if meta:  # gathered tensors are copied; everything else is mapped
        assert f"{fused}.gate_up_proj" not in report.mapped and len(report.mapped) == len(report.loaded) - len(made)


def test_detr_backbone_renamed_and_frozen_batch_norm_left_to_its_own_code(saved_dir):
    directory, config, reference = saved_dir("detr")
    on_disk = load_file(directory / "model.safetensors")
    assert "backbone.conv_encoder.model.embedder.embedder.convolution.weight" in on_disk
    model = build("detr", config, meta=False)
    # DetrFrozenBatchNorm2d loads through its own _load_from_state_dict (issue 22, part A): excluded here
    report = sl.load(model, str(directory), exclude="*normalization*")
    assert any("'backbone.conv_encoder' -> 'backbone'" in line for line in report.declared)
    for path, tensor in model.state_dict().items():
        if "normalization" not in path:
            assert torch.equal(tensor, reference[path]), path
    assert torch.equal(
        model.backbone.model.embedder.embedder.convolution.weight,
        on_disk["backbone.conv_encoder.model.embedder.embedder.convolution.weight"],
    )


def test_a_broken_checkpoint_is_a_load_error_and_nothing_is_written(saved_dir, tmp_path):
    directory, config, _ = saved_dir("mixtral")
    on_disk = load_file(directory / "model.safetensors")
    del on_disk["layers.1.block_sparse_moe.experts.2.w3.weight"]  # one expert short on one side
    on_disk["layers.0.block_sparse_moe.experts.1.w1.weight"] = on_disk["layers.0.block_sparse_moe.experts.1.w1.weight"][
        :, :-1
    ]
    torch.save(on_disk, tmp_path / "broken.bin")
    model = build("mixtral", config, meta=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(sl.LoadError) as caught:
        sl.load(model, str(tmp_path / "broken.bin"))
    paths = {p.path for p in caught.value.problems}
    assert "layers.0.mlp.experts.gate_up_proj" in paths  # an expert of another shape: cannot stack
    assert "layers.1.mlp.experts.gate_up_proj" in paths  # 4 gates and 3 ups do not make the fused tensor
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_module_source_is_taken_in_its_own_layout(saved_dir):
    directory, config, reference = saved_dir("mixtral")
    source = build("mixtral", config, meta=False)
    sl.load(source, str(directory))
    model = build("mixtral", config, meta=True)
    report = sl.load(model, source)
    assert report.declared == [] and report.converted == []
    assert_same_state(model, reference)
    # a state dict already in the model's layout: the declaration applies and leaves it as it is
    model = build("mixtral", config, meta=True)
    report = sl.load(model, source.state_dict())
    assert report.converted == [] and report.declared == []  # nothing matched: nothing listed
    assert_same_state(model, reference)


def test_a_model_inside_a_plain_module_gets_its_declaration_under_its_path(saved_dir):
    directory, config, reference = saved_dir("deit")
    wrapper = torch.nn.ModuleDict({"backbone": build("deit", config, meta=False), "head": torch.nn.Linear(32, 3)})
    on_disk = {f"backbone.{k}": v for k, v in load_file(directory / "model.safetensors").items()}
    on_disk |= {"head.weight": torch.ones(3, 32), "head.bias": torch.zeros(3)}
    report = sl.load(wrapper, on_disk)
    assert any(line.startswith("transformers DeiTModel at 'backbone'") for line in report.declared)
    assert_same_state(wrapper["backbone"], reference)
    assert "declared: transformers DeiTModel at 'backbone'" in str(report)


def test_user_renames_run_first_as_from_pretrained_key_mapping(saved_dir):
    directory, config, reference = saved_dir("deit")
    wrapped = {f"module.{k}": v for k, v in load_file(directory / "model.safetensors").items()}  # saved under DDP
    model = build("deit", config, meta=True)
    report = sl.load(model, wrapped, rename={r"^module\.": ""})
    assert_same_state(model, reference)
    assert any("attention.key" in line for line in report.declared)


def test_two_entries_renamed_onto_one_name_is_a_problem(saved_dir):
    directory, config, _ = saved_dir("deit")
    on_disk = load_file(directory / "model.safetensors")
    on_disk["layers.0.attention.k_proj.weight"] = on_disk["encoder.layer.0.attention.attention.key.weight"] + 1
    model = build("deit", config, meta=False)
    with pytest.raises(sl.LoadError) as caught:
        sl.load(model, on_disk)
    assert any(
        p.path == "encoder.layer.0.attention.attention.key.weight"
        and "both become 'layers.0.attention.k_proj.weight'" in p.message
        for p in caught.value.problems
    ), caught.value


def test_operations_without_a_lazy_form_run_transformers_own_code(tmp_path):
    """A declaration registered through transformers' public API, with ``PermuteForRope`` (no lazy form here:
    transformers' code runs when the tensor is read) and ``Chunk`` (narrowed views of the file)."""
    from transformers import LlamaConfig, LlamaModel
    from transformers.conversion_mapping import register_checkpoint_conversion_mapping
    from transformers.core_model_loading import Chunk, PermuteForRope, WeightConverter, WeightRenaming

    class StructloadRopeLlama(LlamaModel):
        pass

    register_checkpoint_conversion_mapping(
        "StructloadRopeLlama",
        [
            WeightRenaming(r"\.attention\.", ".self_attn."),
            WeightConverter(r"self_attn\.wq", "self_attn.q_proj", operations=[PermuteForRope()]),
            WeightConverter("self_attn.kv.weight", ["self_attn.k_proj.weight", "self_attn.v_proj.weight"], [Chunk(0)]),
        ],
        overwrite=True,
    )
    config = LlamaConfig(hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=2, vocab_size=32)  # fmt: skip
    original = StructloadRopeLlama(config)
    zoo.perturb(original)
    state = dict(original.state_dict())
    q, k, v = (state.pop(f"layers.0.self_attn.{n}_proj.weight") for n in "qkv")
    interleaved = q.view(2, 2, 4, 16).transpose(1, 2).reshape(16, 16)  # rotate-half -> interleaved, by hand
    state |= {"layers.0.attention.wq.weight": interleaved, "layers.0.attention.kv.weight": torch.cat([k, v])}
    from safetensors.torch import save_file

    save_file({n: t.contiguous() for n, t in state.items()}, tmp_path / "model.safetensors")
    with sl.init_empty_weights():
        model = StructloadRopeLlama(config)
    report = sl.load(model, str(tmp_path / "model.safetensors"), mmap=True)
    assert_same_state(model, zoo._full_state(original))
    made = {c.path: c.made_by for c in report.converted}
    assert "PermuteForRope" in made["layers.0.self_attn.q_proj.weight"]
    assert "layers.0.self_attn.v_proj.weight" in made and "layers.0.self_attn.q_proj.weight" not in report.mapped


def test_nothing_of_transformers_is_imported_for_other_models(tmp_path):
    code = textwrap.dedent(
        """
        import sys, torch, structload as sl
        model = torch.nn.Sequential(torch.nn.Linear(2, 3))
        torch.save(model.state_dict(), sys.argv[1])
        report = sl.load(torch.nn.Sequential(torch.nn.Linear(2, 3)), sys.argv[1])
        assert report.ok and report.declared == []
        loaded = sorted(m for m in sys.modules if m.startswith(("transformers", "structload.integrations.")))
        print(loaded)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "plain.pt")], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


def test_the_report_lists_what_was_applied(saved_dir):
    directory, config, _ = saved_dir("mixtral")
    report = sl.load(build("mixtral", config, meta=True), str(directory), dry_run=True)
    assert report.declared[0] == "transformers MixtralModel: 3 of the 8 declared transforms"
    assert "transformers MixtralModel: WeightRenaming('.block_sparse_moe.' -> '.mlp.') on" in report.declared[1]
    assert report.to_dict()["declared"] == report.declared
    from rich.console import Console

    console = Console(record=True, width=400)
    console.print(report)
    assert "declared: transformers MixtralModel: WeightConverter" in console.export_text()


def test_zoo_helpers_find_the_saved_layout(saved_dir):
    directory, _, _ = saved_dir("vit")
    assert Path(directory, "config.json").exists()


def _chains():
    from transformers.core_model_loading import Chunk, Concatenate, MergeModulelist, Transpose, WeightConverter

    return {
        "merge+concat": WeightConverter(["e.*.a", "e.*.b"], "fused", [MergeModulelist(0), Concatenate(1)]),
        "merge": WeightConverter("e.*.a", "stacked", [MergeModulelist(0)]),
        "merge dim 1": WeightConverter("e.*.a", "stacked", [MergeModulelist(1)]),
        "concat": WeightConverter(["x", "y"], "xy", [Concatenate(-1)]),
        "chunk": WeightConverter("qkv", ["q", "k", "v"], [Chunk(0)]),
        "transpose": WeightConverter("w", "wt", [Transpose(0, 1)]),
    }


@pytest.mark.parametrize("from_file", [False, True], ids=["memory", "file"])
@pytest.mark.parametrize("chain", list(_chains()))
def test_lazy_forms_agree_with_transformers_own_operations(chain, from_file, tmp_path):
    """The fast path (structload views and gathers) against the general one (transformers' code), bit for bit."""
    from safetensors.torch import save_file

    from structload.integrations import _ops
    from structload.sources import MemoryTensor

    converter = _chains()[chain]
    generator = torch.Generator().manual_seed(0)
    shapes = {"e.*.a": (3, 5), "e.*.b": (3, 5), "x": (4, 2), "y": (4, 3), "qkv": (6, 4), "w": (3, 7)}
    count = {"e.*.a": 4, "e.*.b": 4}
    tensors = {
        f"{p}{i}": torch.randn(shapes[p], generator=generator)
        for p in converter.source_patterns
        for i in range(count.get(p, 1))
    }
    if from_file:
        save_file(tensors, tmp_path / "t.safetensors")
        opened = sl.open(str(tmp_path / "t.safetensors"))
        get = lambda name: opened[name]  # noqa: E731
    else:
        get = lambda name: MemoryTensor(tensors[name])  # noqa: E731
    leaves = {p: [get(f"{p}{i}") for i in range(count.get(p, 1))] for p in converter.source_patterns}
    target = converter.target_patterns[0]
    fast = _ops.lazy(converter, target, leaves)
    planned = _ops.on_meta(converter, target, None, leaves)
    general = _ops.computed(converter, target, None, leaves, planned)
    assert fast is not None and list(fast) == list(general)
    for name in general:
        expected = general[name].read()
        assert tuple(fast[name].shape) == tuple(expected.shape) == tuple(planned[name].shape)
        written = torch.empty(expected.shape, dtype=expected.dtype)
        fast[name].read_into(written)
        assert torch.equal(written, expected) and torch.equal(fast[name].read(), expected)


def _tiny_llama(cls, seed: int = 0):
    from transformers import LlamaConfig

    config = LlamaConfig(hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=2, vocab_size=32)  # fmt: skip
    torch.manual_seed(seed)
    model = cls(config)
    zoo.perturb(model)
    return model


def _llama_class(name: str):
    from transformers import LlamaModel

    return type(name, (LlamaModel,), {})


def test_a_mapping_registered_after_a_load_is_honoured():
    """The declaration is read once per kind of model; registering (or replacing) a mapping later still counts."""
    from transformers.conversion_mapping import register_checkpoint_conversion_mapping
    from transformers.core_model_loading import WeightRenaming

    cls = _llama_class("StructloadLateLlama")
    original = _tiny_llama(cls)
    state = {k.replace(".self_attn.", ".attn."): v for k, v in original.state_dict().items()}
    model = _tiny_llama(cls, seed=1)
    with pytest.raises(sl.LoadError, match="layers.0.attn: unexpected"):  # nothing declared yet: refused
        sl.load(model, state)
    register_checkpoint_conversion_mapping("StructloadLateLlama", [WeightRenaming(r"\.attn\.", ".self_attn.")])
    sl.load(model, state)
    assert_same_state(model, zoo._full_state(original))
    renamed = {k.replace(".self_attn.", ".attention."): v for k, v in original.state_dict().items()}
    replacing = [WeightRenaming(r"\.attention\.", ".self_attn.")]
    register_checkpoint_conversion_mapping("StructloadLateLlama", replacing, overwrite=True)
    other = _tiny_llama(cls, seed=2)
    report = sl.load(other, renamed)
    assert_same_state(other, zoo._full_state(original))
    assert any("attention" in line for line in report.declared)


def test_stateful_renamings_start_afresh_each_load():
    """``GroupWeightRename`` activates on its guard key; a second load (of a checkpoint already in the new layout)
    must not inherit the first load's activation, or it would rename ``input_layernorm`` onto
    ``post_attention_layernorm``."""
    from transformers.conversion_mapping import register_checkpoint_conversion_mapping
    from transformers.core_model_loading import GroupWeightRename

    cls = _llama_class("StructloadGuardedLlama")
    guarded = GroupWeightRename([r"\.a_norm", r"\.input_layernorm"], [".input_layernorm", ".post_attention_layernorm"])
    register_checkpoint_conversion_mapping("StructloadGuardedLlama", [guarded], overwrite=True)
    original = _tiny_llama(cls)
    new_layout = dict(original.state_dict())
    old_layout = {k: v for k, v in new_layout.items() if "layernorm" not in k}
    old_layout["layers.0.a_norm.weight"] = new_layout["layers.0.input_layernorm.weight"]
    old_layout["layers.0.input_layernorm.weight"] = new_layout["layers.0.post_attention_layernorm.weight"]
    for state in (old_layout, new_layout, old_layout, new_layout):
        model = _tiny_llama(cls, seed=1)
        sl.load(model, state)
        assert_same_state(model, zoo._full_state(original))
