"""The transformers zoo, tiny: every architecture transformers registers for ``AutoModel``, built
from a shrunken config, perturbed with seeded noise, saved with ``save_pretrained`` and loaded back
three ways (``from_pretrained``, a strict ``sl.load`` into a model built normally, and one into a
model built under ``sl.init_empty_weights()``).

Used by ``tests/test_zoo.py`` and runnable on its own for the full sweep::

    PYTHONPATH=. python tests/zoo.py [model_type ...]   # one line per architecture, then the counts
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

import structload as sl

# Size fields and what they shrink to; anything with these names, at any depth of the config.
_SMALL = {
    "hidden_size": 32, "d_model": 32, "n_embd": 32, "embed_dim": 32, "dim": 32, "hidden_dim": 32,
    "intermediate_size": 37, "ffn_dim": 37, "d_ff": 37, "n_inner": 37, "encoder_ffn_dim": 37,
    "decoder_ffn_dim": 37, "moe_intermediate_size": 16, "shared_expert_intermediate_size": 16,
    "num_hidden_layers": 2, "num_layers": 2, "n_layer": 2, "n_layers": 2, "encoder_layers": 2,
    "decoder_layers": 2, "num_decoder_layers": 2, "num_encoder_layers": 2, "depth": 2,
    "num_attention_heads": 4, "n_head": 4, "n_heads": 4, "encoder_attention_heads": 4,
    "decoder_attention_heads": 4, "num_heads": 4, "num_key_value_heads": 2,
    "num_experts": 4, "num_local_experts": 4, "n_routed_experts": 4, "num_experts_per_tok": 2,
    "vocab_size": 99, "max_position_embeddings": 64, "image_size": 32, "patch_size": 4,
}  # fmt: skip

# Caps: a field with one of these names keeps its value when it is already smaller.
_CAPS = {"vocab_size", "max_position_embeddings", "num_experts", "num_local_experts", "n_routed_experts"}


@dataclass
class Outcome:
    """What happened to one architecture: ``passed``, ``skipped`` or ``failed``, and why."""

    model_type: str
    status: str
    reason: str = ""

    def __str__(self) -> str:
        return f"{self.model_type}: {self.status}" + (f" ({self.reason})" if self.reason else "")


def architectures() -> list[str]:
    """The model types transformers registers for ``AutoModel``, sorted."""
    from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

    return sorted(MODEL_MAPPING_NAMES)


# Fields derived from the layer count or the backbone's stages: dropped so the config recomputes them.
_DERIVED = {"layer_types", "out_features", "out_indices", "stage_names", "mlp_layer_types", "layers_block_type"}
# Settings that would need another package (timm) or a download.
_OFFLINE = {"use_timm_backbone": False, "use_pretrained_backbone": False}


def _shrink_dict(data: dict, names: frozenset[str]) -> None:
    """Shrink the size fields among `names` of a config's ``to_dict()``, at every depth, in place."""
    if data.get("model_type") == "timm_backbone":  # timm is not installed: transformers' own ResNet instead
        data.clear()
        data.update(_RESNET)
        return
    for name in list(data):
        value = data[name]
        if isinstance(value, dict):
            _shrink_dict(value, names)
        elif name in _DERIVED and "num_hidden_layers" in names:
            del data[name]
        elif name in _OFFLINE:
            data[name] = _OFFLINE[name]
        elif name in names and name in _SMALL and isinstance(value, int) and not isinstance(value, bool):
            data[name] = min(value, _SMALL[name]) if name in _CAPS else _SMALL[name]
        elif name in names and name in _HEAD_DIMS and isinstance(value, int):
            data[name] = 8
    token_ids = [v for k, v in data.items() if str(k).endswith(("_token_id", "_token_index")) and isinstance(v, int)]
    if isinstance(data.get("vocab_size"), int) and token_ids:  # special tokens must stay inside the vocabulary
        data["vocab_size"] = max(data["vocab_size"], max(token_ids) + 1)


_HEAD_DIMS = {"head_dim", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim", "attention_head_dim"}
_RESNET = {"model_type": "resnet", "embedding_size": 8, "hidden_sizes": [8, 16, 16, 32], "depths": [1, 1, 1, 1]}
_RESNET["out_features"] = ["stage1", "stage2", "stage3", "stage4"]
_LAYERS = frozenset(k for k in _SMALL if "layer" in k or k == "depth")
# From the smallest build to the mildest: the first that builds (and stays small) is used.
_VARIANTS = (
    frozenset(_SMALL) | _HEAD_DIMS,
    frozenset(_SMALL) - {"hidden_size", "d_model", "n_embd", "embed_dim", "dim", "hidden_dim"} - _LAYERS | _LAYERS,
    _LAYERS | {"vocab_size", "max_position_embeddings", "num_experts", "num_local_experts", "n_routed_experts"},
    _LAYERS,
)
_MAX_PARAMETERS = 100_000_000


_CONFIGS: dict[str, object] = {}


def tiny_config(model_type: str):
    """A shrunken default config of `model_type`: the smallest of a few shrinking variants that
    builds (on meta, to check) with at most 100M parameters. Cached for the session; raises with
    the first variant's error when none builds."""
    import copy

    from transformers import CONFIG_MAPPING

    if model_type not in _CONFIGS:
        config_class = CONFIG_MAPPING[model_type]
        first_error: Exception | None = None
        for names in _VARIANTS:
            try:
                data = config_class().to_dict()
                _shrink_dict(data, names)
                config = config_class.from_dict(data)
                with _quiet(), sl.init_empty_weights():
                    size = sum(p.numel() for p in _build(model_type, config).parameters())
                if size <= _MAX_PARAMETERS:
                    _CONFIGS[model_type] = config
                    break
                first_error = first_error or ValueError(f"{size / 1e6:.0f}M parameters even shrunk")
            except Exception as error:
                first_error = first_error or error
        else:
            _CONFIGS[model_type] = first_error
    if isinstance(_CONFIGS[model_type], Exception):
        raise _CONFIGS[model_type]  # type: ignore[misc]
    return copy.deepcopy(_CONFIGS[model_type])


def _quiet():
    """transformers' warnings and progress bars, silenced for a sweep."""
    stack = contextlib.ExitStack()
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    return stack


def perturb(model: torch.nn.Module, seed: int = 0) -> None:
    """Add seeded noise to every floating tensor of the state, so a tensor the load skipped cannot
    pass by equalling a fresh init."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point() and tensor.device.type != "meta":
                noise = torch.randn(tensor.shape, generator=generator, dtype=torch.float32)
                tensor.add_(noise.to(tensor.dtype))


def _build(model_type: str, config):
    from transformers import AutoModel

    torch.manual_seed(1)
    return AutoModel.from_config(config)


def saved(model_type: str, directory: Path):
    """Build, perturb and save one architecture; returns its config and its state (cloned), or an
    `Outcome` (skipped)."""
    try:
        config = tiny_config(model_type)
        with _quiet():
            model = _build(model_type, config)
    except Exception as error:  # what cannot be built tiny, or needs another package
        return Outcome(model_type, "skipped", f"cannot build tiny: {type(error).__name__}: {_line(error)}")
    perturb(model)
    try:
        with _quiet():
            model.save_pretrained(directory)
    except Exception as error:
        return Outcome(model_type, "skipped", f"save_pretrained fails: {type(error).__name__}: {_line(error)}")
    return config, {path: tensor.clone() for path, tensor in _full_state(model).items()}


def _line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else "")[:160]


def reference_state(directory: Path) -> dict[str, torch.Tensor] | Outcome:
    """``from_pretrained``'s state (parameters and all buffers), or why it cannot be the reference."""
    from transformers import AutoModel

    with _quiet():
        model, info = AutoModel.from_pretrained(directory, output_loading_info=True)
    if info.get("missing_keys") or info.get("mismatched_keys"):
        missing = sorted(info.get("missing_keys", ())) + sorted(info.get("mismatched_keys", ()))
        return Outcome(directory.name, "skipped", f"from_pretrained itself does not restore {missing[:3]}")
    return _full_state(model)


def _full_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    state = dict(model.state_dict(keep_vars=False))
    for name, buffer in model.named_buffers():
        state.setdefault(name, buffer)
    return state


def difference(state: dict, reference: dict) -> str | None:
    """The first path where two states differ (names, shapes, dtypes, devices or bits), or None."""
    if set(state) != set(reference):
        return f"paths differ: {sorted(set(state) ^ set(reference))[:4]}"
    for path, expected in reference.items():
        actual = state[path]
        if actual.device.type == "meta":
            return f"{path} is still on meta"
        if actual.shape != expected.shape or actual.dtype != expected.dtype:
            return f"{path}: {actual.dtype}{tuple(actual.shape)} vs {expected.dtype}{tuple(expected.shape)}"
        if not torch.equal(actual.view(-1).view(torch.uint8), expected.view(-1).view(torch.uint8)):
            return f"{path} differs in value"
    return None


def check(model_type: str, directory: Path) -> Outcome:
    """One architecture of the sweep: strict loads, normal and meta-built, against from_pretrained.

    A `LoadError` is a failure naming its first problem; any other difference is a silent
    difference (the one outcome that must never happen)."""
    built = saved(model_type, directory)
    if isinstance(built, Outcome):
        return built
    config, saved_state = built
    try:
        reference = reference_state(directory)
    except Exception as error:
        return Outcome(model_type, "skipped", f"from_pretrained fails: {type(error).__name__}: {_line(error)}")
    if isinstance(reference, Outcome):
        return Outcome(model_type, "skipped", reference.reason)
    note = ""
    if (where := difference(reference, saved_state)) is not None:  # transformers changes values after loading
        note, reference = f"from_pretrained does not give back the saved model ({where}); compared with it", saved_state
    for how in ("normal", "meta"):
        with _quiet():
            if how == "meta":
                with sl.init_empty_weights():
                    model = _build(model_type, config)
            else:
                model = _build(model_type, config)
        try:
            sl.load(model, str(directory))
        except sl.LoadError as error:
            problems = error.problems
            first = str(problems[0]) if problems else str(error).splitlines()[0]
            return Outcome(model_type, "failed", f"{how}: LoadError, {len(problems)} problem(s): {first[:300]}")
        if (where := difference(_full_state(model), reference)) is not None:
            return Outcome(model_type, "silent", f"{how}: {where}")
    return Outcome(model_type, "passed", note)


def sweep(model_types: list[str], root: Path) -> list[Outcome]:
    """`check` every model type, one line each on stdout as it goes."""
    logging.disable(logging.WARNING)
    outcomes = []
    for model_type in model_types:
        try:
            outcome = check(model_type, root / model_type)
        except Exception as error:  # a crash of the harness itself is a failure to look at
            outcome = Outcome(model_type, "crashed", f"{type(error).__name__}: {_line(error)}")
        print(outcome, flush=True)
        outcomes.append(outcome)
    print(dict(Counter(o.status for o in outcomes)), flush=True)
    return outcomes


if __name__ == "__main__":
    import tempfile

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        sweep(sys.argv[1:] or architectures(), Path(tmp))
