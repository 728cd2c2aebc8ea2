"""Rules on the module kinds PyTorch ships: never zero what is not a bias, never bypass a module's
own loading, never report ok with work left undone (issue 11, API.md §8)."""

from __future__ import annotations

import warnings

import pytest
import safetensors.torch
import torch
import torch.nn as nn

import structload as sl
from helpers import Net, assert_unchanged, randomized, snapshot

warnings.filterwarnings("ignore", message=".*quantiz.*deprecated", category=UserWarning)


# --- R3 applies to additive offsets only ------------------------------------------------------


def test_an_absent_norm_weight_is_a_problem_not_a_zero():
    dst = randomized(nn.LayerNorm(6))
    before = snapshot(dst)
    with pytest.raises(sl.LoadError) as info:
        sl.load(dst, nn.LayerNorm(6, elementwise_affine=False))
    assert [(p.kind, p.path) for p in info.value.problems] == [("absent", "weight")]  # the bias is an offset
    assert "not a bias" in info.value.problems[0].message
    assert_unchanged(dst, before)
    report = sl.load(dst, nn.LayerNorm(6, elementwise_affine=False), strict=False)
    assert report.missing == ["weight"] and report.zeroed == ["bias"]
    assert not torch.equal(dst.weight, torch.zeros(6))


def test_a_layernorm_without_bias_still_zeroes_the_bias():
    src, dst = randomized(nn.LayerNorm(6, bias=False)), randomized(nn.LayerNorm(6))
    report = sl.load(dst, src)
    assert report.ok and report.zeroed == ["bias"] and torch.equal(dst.weight, src.weight)
    x = torch.randn(3, 6)
    assert torch.allclose(dst(x), src(x))


def test_untracked_running_statistics_are_a_problem_not_zeros():
    dst = randomized(nn.BatchNorm1d(4))
    with pytest.raises(sl.LoadError) as info:
        sl.load(dst, nn.BatchNorm1d(4, track_running_stats=False))
    assert {p.path for p in info.value.problems if p.kind == "absent"} == {
        "running_mean",
        "running_var",
        "num_batches_tracked",
    }
    report = sl.load(dst, nn.BatchNorm1d(4, track_running_stats=False), strict=False)
    assert "running_var" in report.missing and not torch.equal(dst.running_var, torch.zeros(4))


class CausalAttention(nn.Module):
    """GPT-2's attention before transformers made the mask non-persistent: a buffer named bias."""

    def __init__(self, d: int = 4, n: int = 5):
        super().__init__()
        self.c_attn = nn.Linear(d, 3 * d)
        self.register_buffer("bias", torch.tril(torch.ones(n, n)).view(1, 1, n, n))


def test_a_persistent_buffer_called_bias_is_never_zeroed():
    dst = CausalAttention()
    checkpoint = {"c_attn.weight": torch.ones(12, 4), "c_attn.bias": torch.zeros(12)}
    with pytest.raises(sl.LoadError) as info:
        sl.load(dst, checkpoint)
    assert [(p.kind, p.path) for p in info.value.problems] == [("missing", "bias")]
    report = sl.load(dst, checkpoint, strict=False)
    assert report.missing == ["bias"] and report.zeroed == []
    assert torch.equal(dst.bias, torch.tril(torch.ones(5, 5)).view(1, 1, 5, 5))


# --- extra state read from files -----------------------------------------------------------------


class WithTensorState(nn.Module):
    def __init__(self, state=None):
        super().__init__()
        self.fc = nn.Linear(2, 2)
        self.state = state
        self.received = None

    def get_extra_state(self):
        return self.state

    def set_extra_state(self, state):
        self.received = state


def test_extra_state_from_a_torch_file_reaches_set_extra_state_as_tensors(tmp_path):
    src = WithTensorState({"scale": torch.arange(3.0), "steps": [torch.ones(2), 5], "name": "x"})
    torch.save(src.state_dict(), tmp_path / "extra.pt")
    dst = WithTensorState()
    assert sl.load(dst, str(tmp_path / "extra.pt")).ok
    assert type(dst.received["scale"]) is torch.Tensor and torch.equal(dst.received["scale"], torch.arange(3.0))
    assert type(dst.received["steps"][0]) is torch.Tensor and dst.received["steps"][1] == 5
    assert dst.received["name"] == "x"


def test_a_tensor_extra_state_in_a_safetensors_file_loads(tmp_path):
    src = WithTensorState(torch.arange(4.0))
    safetensors.torch.save_file(src.state_dict(), str(tmp_path / "extra.safetensors"))
    dst = WithTensorState()
    report = sl.load(dst, str(tmp_path / "extra.safetensors"))
    assert report.ok and "_extra_state" in report.loaded
    assert type(dst.received) is torch.Tensor and torch.equal(dst.received, torch.arange(4.0))


# --- modules that customise loading -------------------------------------------------------------


def quantized_modules() -> dict[str, nn.Module]:
    from torch.ao.nn import quantized as nnq
    from torch.ao.nn.quantized import dynamic as nnqd

    return {
        "quantized.Linear": nnq.Linear(4, 3),
        "quantized.Conv2d": nnq.Conv2d(2, 3, 3),
        "dynamic.Linear": nnqd.Linear(4, 3),
        "quantized.Embedding": nnq.Embedding(10, 4),
    }


@pytest.mark.parametrize("kind", list(quantized_modules()))
def test_a_quantized_source_never_loads_nothing_and_reports_ok(kind):
    src = quantized_modules()[kind]
    float_twin = {
        "quantized.Linear": nn.Linear(4, 3),
        "quantized.Conv2d": nn.Conv2d(2, 3, 3),
        "dynamic.Linear": nn.Linear(4, 3),
        "quantized.Embedding": nn.Embedding(10, 4),
    }[kind]
    before = snapshot(float_twin)
    with pytest.raises(sl.LoadError) as info:
        sl.load(float_twin, src)
    assert info.value.problems  # the packed state is judged like a checkpoint's: nothing matches silently
    assert_unchanged(float_twin, before)
    report = sl.load(float_twin, src, strict=False)
    assert not report.ok and "weight" not in report.loaded  # packed or quantized: never loaded as it is
    assert any(p.path.startswith(("weight", "_packed_params")) for p in report.problems)


@pytest.mark.parametrize("kind", list(quantized_modules()))
def test_a_quantized_destination_is_reported_by_path_with_what_to_do(kind):
    model = nn.Sequential(nn.Linear(4, 4), quantized_modules()[kind])
    with pytest.raises(sl.LoadError) as info:
        sl.load(model, {"0.weight": torch.ones(4, 4), "0.bias": torch.zeros(4), "1": {}})
    [problem] = [p for p in info.value.problems if p.path.startswith("1") and p.kind == "type"]
    assert "_load_from_state_dict" in problem.message and "load_state_dict(...)" in problem.message
    assert f'exclude="{problem.path}"' in problem.message
    report = sl.load(model, {"0.weight": torch.ones(4, 4), "0.bias": torch.zeros(4)}, exclude="1")
    assert report.ok and torch.equal(model[0].weight, torch.ones(4, 4))


def other_ao_modules() -> dict[str, object]:
    from torch.ao import quantization as q
    from torch.ao.nn import quantized as nnq
    from torch.ao.nn.quantized import dynamic as nnqd
    from torch.ao.nn.quantized import reference as nnqr

    return {
        "EmbeddingBag": lambda: nnq.EmbeddingBag(10, 4),
        "Conv1d": lambda: nnq.Conv1d(2, 2, 3),
        "Conv3d": lambda: nnq.Conv3d(2, 2, 3),
        "ConvTranspose2d": lambda: nnq.ConvTranspose2d(2, 2, 3),
        "QFunctional": lambda: nnq.QFunctional(),
        "dynamic.LSTM": lambda: nnqd.LSTM(4, 4),
        "dynamic.GRUCell": lambda: nnqd.GRUCell(4, 4),
        "reference.Linear": lambda: nnqr.Linear(4, 3),
        "MinMaxObserver": lambda: q.MinMaxObserver(),
        "PerChannelMinMaxObserver": lambda: q.PerChannelMinMaxObserver(),
        "HistogramObserver": lambda: q.HistogramObserver(),
        "FakeQuantize": lambda: q.FakeQuantize(),
        "qat.ConvBn2d": lambda: torch.ao.nn.intrinsic.qat.ConvBn2d(2, 2, 3, qconfig=q.get_default_qat_qconfig()),
    }


@pytest.mark.parametrize("kind", list(other_ao_modules()))
def test_other_torch_ao_modules_with_their_own_loading_are_reported(kind):
    model = nn.Sequential(other_ao_modules()[kind]())
    with pytest.raises(sl.LoadError) as info:
        sl.load(model, {"0": {}})
    [problem] = [p for p in info.value.problems if p.kind == "type"]
    assert problem.path in ("0", "0._packed_params") and "_load_from_state_dict" in problem.message


class HookedLinear(nn.Linear):
    def __init__(self):
        super().__init__(2, 2)
        self._register_load_state_dict_pre_hook(self.rename_old_keys)

    def rename_old_keys(self, state_dict, prefix, *args):
        if prefix + "w" in state_dict:
            state_dict[prefix + "weight"] = state_dict.pop(prefix + "w")


class CustomLoading(nn.Linear):
    def __init__(self):
        super().__init__(2, 2)

    def _load_from_state_dict(self, state_dict, prefix, *args):
        state_dict[prefix + "weight"] = state_dict[prefix + "weight"] * 2
        super()._load_from_state_dict(state_dict, prefix, *args)


class PostHooked(nn.Linear):
    def __init__(self):
        super().__init__(2, 2)
        self.register_load_state_dict_post_hook(lambda module, keys: None)


@pytest.mark.parametrize("cls", [HookedLinear, CustomLoading, PostHooked])
def test_a_module_that_customises_loading_is_never_bypassed_silently(cls):
    # API.md §10: its own code runs (issue 22); code whose effect the plan cannot check is a problem
    model = nn.Sequential(cls())
    state = {"0.weight": torch.ones(2, 2), "0.bias": torch.zeros(2)}
    if cls is CustomLoading:  # computes a new tensor from the checkpoint's values
        with pytest.raises(sl.LoadError) as info:
            sl.load(model, state)
        assert info.value.problems[0].path == "0" and cls.__name__ in info.value.problems[0].message
    else:
        reference = nn.Sequential(cls())
        reference.load_state_dict(state)
        assert sl.load(model, state).ok and torch.equal(model[0].weight, reference[0].weight)
    assert sl.load(model, {"0": None}).ok  # skipped on purpose: fine
    assert sl.load(model, state, exclude="0").ok  # left out: fine


def test_batchnorm_without_num_batches_tracked_loads_as_load_state_dict_does():
    src = randomized(nn.BatchNorm1d(3))
    old = {k: v for k, v in src.state_dict().items() if k != "num_batches_tracked"}  # before PyTorch 0.4.1
    dst, reference = nn.BatchNorm1d(3), nn.BatchNorm1d(3)
    dst.num_batches_tracked.fill_(7)
    reference.num_batches_tracked.fill_(7)
    reference.load_state_dict(old)
    report = sl.load(dst, old)
    assert report.ok and report.skipped == ["num_batches_tracked"]
    for key, value in reference.state_dict().items():
        assert torch.equal(dst.state_dict()[key], value), key


def test_instancenorm_running_stats_into_one_that_tracks_none_are_refused_like_load_state_dict():
    src = randomized(nn.InstanceNorm1d(3, track_running_stats=True))
    dst = nn.InstanceNorm1d(3)
    with pytest.raises(RuntimeError):
        dst.load_state_dict(src.state_dict())
    with pytest.raises(sl.LoadError) as info:
        sl.load(dst, src)
    assert {p.path for p in info.value.problems} >= {"running_mean", "running_var"}


def test_lazy_modules_take_the_source_shape_as_load_state_dict_does():
    src = randomized(nn.Linear(3, 4))
    dst, reference = nn.LazyLinear(4), nn.LazyLinear(4)
    weight = dst.weight
    reference.load_state_dict(src.state_dict())
    report = sl.load(dst, src)
    assert report.ok and report.loaded == ["weight", "bias"]
    assert dst.weight is weight and dst.weight.shape == (4, 3)  # same Parameter object, materialized
    x = torch.randn(2, 3)
    assert torch.equal(dst(x), reference(x)) and torch.equal(dst(x), src(x))


def test_an_uninitialized_lazy_module_as_a_source_is_a_clear_problem():
    with pytest.raises(sl.LoadError, match="uninitialized parameter of a lazy module"):
        sl.load(nn.Linear(3, 4), nn.LazyLinear(4))


def test_a_lazy_module_the_source_misses_is_reported_not_a_raw_error():
    """The suggestions compare shapes; an uninitialized parameter has none yet (asking it raises)."""
    dst = nn.Module()
    dst.fc = nn.LazyLinear(2, bias=False)
    with pytest.raises(sl.LoadError) as info:
        sl.load(dst, {"weight": torch.ones(2, 3)})
    assert [(p.kind, p.path) for p in info.value.problems] == [("missing", "fc.weight"), ("unexpected", "weight")]
    assert isinstance(dst.fc.weight, nn.UninitializedParameter)  # nothing written


def test_weight_norm_old_names_get_the_rename_that_load_state_dict_applies():
    from torch.nn.utils import parametrizations

    src = randomized(nn.Linear(3, 4))
    old = {"fc.weight_g": src.weight.norm(dim=1, keepdim=True), "fc.weight_v": src.weight, "fc.bias": src.bias}
    dst = nn.Module()
    dst.fc = parametrizations.weight_norm(nn.Linear(3, 4))
    with pytest.raises(sl.LoadError) as info:
        sl.load(dst, old)
    hint = r'rename={r"\.weight_g$": ".parametrizations.weight.original0"'
    assert any(hint in p.message for p in info.value.problems)
    rename = {
        r"\.weight_g$": ".parametrizations.weight.original0",
        r"\.weight_v$": ".parametrizations.weight.original1",
    }
    assert sl.load(dst, old, rename=rename).ok
    assert torch.allclose(dst.fc.weight, src.weight)


def test_weight_norm_and_spectral_norm_load_like_load_state_dict():
    from torch.nn.utils import parametrizations, spectral_norm

    for wrap in (parametrizations.weight_norm, spectral_norm):
        src, dst = randomized(wrap(nn.Linear(3, 4)), 1), wrap(nn.Linear(3, 4))
        assert sl.load(dst, src).ok
        for key, value in src.state_dict().items():
            assert torch.equal(dst.state_dict()[key], value), (wrap.__name__, key)


# --- numbers, strides --------------------------------------------------------------------------


class Counter(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("scale", torch.zeros(()))


def test_a_python_float_into_an_int_buffer_reports_the_cast():
    dst = Counter()
    report = sl.load(dst, {"steps": 2.7, "scale": 3})
    assert int(dst.steps) == 2 and float(dst.scale) == 3.0
    assert [(c.path, c.src_dtype, c.dst_dtype) for c in report.cast] == [("steps", torch.float64, torch.long)]


def test_materializing_a_meta_tensor_keeps_its_strides():
    src = randomized(nn.Conv2d(3, 8, 3))
    with torch.device("meta"):
        dst = nn.Conv2d(3, 8, 3).to(memory_format=torch.channels_last)
    assert sl.load(dst, src).ok
    assert dst.weight.is_contiguous(memory_format=torch.channels_last) and not dst.weight.is_contiguous()
    assert torch.equal(dst.weight, src.weight)


# --- patterns must match ---------------------------------------------------------------------


class EncoderHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Linear(2, 2)
        self.head = nn.Linear(2, 3)


def test_an_include_or_exclude_typo_is_a_pattern_problem_with_a_suggestion():
    src, dst = randomized(EncoderHead(), 1), EncoderHead()
    before = snapshot(dst)
    with pytest.raises(sl.LoadError) as info:
        sl.load(dst, src, include="encodr")
    [problem] = info.value.problems
    assert (problem.kind, problem.path) == ("pattern", "encodr") and "did you mean 'encoder'?" in problem.message
    assert_unchanged(dst, before)
    report = sl.load(dst, src, include="encodr.*", strict=False)
    assert not report.ok and report.loaded == []
    with pytest.raises(sl.LoadError, match="exclude pattern matches no destination path; did you mean 'head'"):
        sl.load(dst, src, exclude="haed")
    assert sl.load(dst, src, include="encoder").ok


def test_an_exclude_that_only_matches_source_entries_is_not_a_typo():
    src = {**randomized(EncoderHead()).state_dict(), "optimizer.step": torch.ones(1)}
    assert sl.load(EncoderHead(), src, exclude="optimizer").ok


def test_a_rename_key_that_matches_nothing_is_a_problem_and_none_drops_entries():
    src, dst = randomized(EncoderHead(), 1), EncoderHead()
    with pytest.raises(sl.LoadError) as info:
        sl.load(dst, {"model." + k: v for k, v in src.state_dict().items()}, rename={r"^modle\.": ""})
    assert info.value.problems[0].kind == "pattern" and "did you mean 'model'" in info.value.problems[0].message
    state = {**src.state_dict(), "encoder.position_ids": torch.arange(3)}
    report = sl.load(dst, state, rename={r"position_ids$": None})
    assert report.ok and report.unexpected == []


def test_non_persistent_buffers_in_the_source_are_ignored_not_problems():
    import transformers

    config = transformers.BertConfig(
        vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16
    )
    src, dst = transformers.BertModel(config), transformers.BertModel(config)
    state = {**src.state_dict(), "embeddings.position_ids": torch.arange(512).expand(1, -1)}  # as older versions saved
    report = sl.load(dst, state)
    assert report.ok and report.ignored == ["embeddings.position_ids"]
    assert torch.equal(dst.embeddings.position_ids, src.embeddings.position_ids)


def test_a_flat_key_that_is_also_a_prefix_loads_and_the_longer_key_is_unexpected():
    dst = nn.Sequential()
    dst.add_module("fc1", nn.Linear(2, 2))
    src = {"fc1.weight": torch.ones(2, 2), "fc1.weight.extra": torch.ones(1), "fc1.bias": torch.zeros(2)}
    report = sl.load(dst, src, strict=False)
    assert report.loaded == ["fc1.weight", "fc1.bias"] and report.unexpected == ["fc1.weight.extra"]
    assert torch.equal(dst.fc1.weight, torch.ones(2, 2))
    reference = nn.Sequential()
    reference.add_module("fc1", nn.Linear(2, 2))
    assert reference.load_state_dict(src, strict=False).unexpected_keys == ["fc1.weight.extra"]


# --- meta loads complete ---------------------------------------------------------------------


class Rotary(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)
        self.register_buffer("inv_freq", 1.0 / (10000 ** (torch.arange(0, 4, 2).float() / 4)), persistent=False)

    def forward(self, x):
        return self.head(self.proj(x) * self.inv_freq.repeat(2))


def test_a_non_persistent_buffer_left_on_meta_is_a_problem_naming_the_fix():
    src = randomized(Rotary())
    with torch.device("meta"):
        dst = Rotary()
    with pytest.raises(sl.LoadError) as info:
        sl.load(dst, src)
    [problem] = info.value.problems
    assert problem.path == "inv_freq" and "structload.init_empty_weights()" in problem.message


def test_init_empty_weights_keeps_computed_buffers_real_and_the_load_completes():
    src = Rotary()
    with torch.no_grad():
        for param in src.parameters():
            param.normal_()
    with sl.init_empty_weights():
        dst = Rotary()
    assert dst.proj.weight.is_meta and not dst.inv_freq.is_meta
    assert sl.load(dst, src).ok
    assert not any(t.is_meta for t in [*dst.parameters(), *dst.buffers()])
    x = torch.randn(3, 4)
    assert torch.equal(dst(x), src(x))


def normal_(tensor: torch.Tensor, calls: list) -> torch.Tensor:
    """An initializer as libraries write them (transformers wraps torch's): dispatches torch functions."""
    if torch.overrides.has_torch_function_unary(tensor):
        return torch.overrides.handle_torch_function(normal_, (tensor,), tensor, calls)
    calls.append(tuple(tensor.shape))
    with torch.no_grad():
        return tensor.normal_()


class Initialized(nn.Module):
    def __init__(self, calls: list):
        super().__init__()
        self.proj = nn.Linear(4, 3)
        normal_(self.proj.weight, calls)
        self.register_buffer("mask", normal_(torch.empty(2), calls).fill_(1.0), persistent=False)


def test_init_empty_weights_skips_initializers_on_meta_tensors_and_runs_them_on_real_ones():
    calls: list = []
    Initialized(calls)
    assert calls == [(3, 4), (2,)]
    calls.clear()
    with sl.init_empty_weights():
        model = Initialized(calls)
    assert calls == [(2,)]  # the real buffer was initialized, the meta weight was not
    assert model.proj.weight.is_meta and torch.equal(model.mask, torch.ones(2))
    calls.clear()
    Initialized(calls)  # the block is over: initializers run again
    assert calls == [(3, 4), (2,)]


def test_an_excluded_tensor_left_on_meta_is_a_problem():
    with sl.init_empty_weights():
        dst = Rotary()
    with pytest.raises(sl.LoadError) as info:
        sl.load(dst, randomized(Rotary()).state_dict(), exclude="head")
    assert [p.path for p in info.value.problems] == ["head.weight", "head.bias"]
    assert "still on the meta device" in info.value.problems[0].message


def test_dtype_chooses_what_meta_tensors_become():
    src = {k: v.to(torch.bfloat16) for k, v in randomized(Rotary()).state_dict().items()}
    for option, expected in ((None, torch.float32), ("auto", torch.bfloat16), (torch.float16, torch.float16)):
        with sl.init_empty_weights():
            dst = Rotary()
        report = sl.load(dst, src, dtype=option)
        assert dst.proj.weight.dtype == expected, option
        assert {c.dst_dtype for c in report.cast} == ({expected} if expected != torch.bfloat16 else set())
        assert torch.equal(dst.proj.weight.to(torch.bfloat16), src["proj.weight"])


# --- interrupted writes ----------------------------------------------------------------------


def test_ctrl_c_during_a_load_reraises_with_what_was_written():
    from structload.convert import Apply

    def interrupt(tensor):
        raise KeyboardInterrupt

    src = randomized(Net(n=2)).state_dict()
    with pytest.raises(KeyboardInterrupt) as info:
        sl.load(Net(n=2), src, convert=[Apply("blocks.1.fc1.weight", interrupt)])
    [note] = info.value.__notes__
    assert "interrupted after writing 7 of 15 tensors; the last was 'blocks.0.norm.bias'" in note


class Frozen(nn.Module):
    """A buffer that cannot be written in place (every element is one memory location)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("frozen", torch.zeros(1).expand(3))


def test_plain_copies_are_made_in_batches_and_a_failing_one_is_named_with_what_was_written(monkeypatch):
    from structload import _apply

    batches = []
    foreach = _apply._foreach_copy
    monkeypatch.setattr(_apply, "_foreach_copy", lambda dst, src: (batches.append(len(dst)), foreach(dst, src)))
    src = randomized(Net(n=2)).state_dict()
    dst = Net(n=2)
    assert sl.load(dst, src).ok and batches == [len(src)]  # one call for every copy
    assert all(torch.equal(dst.state_dict()[k], v) for k, v in src.items())

    dst = nn.Sequential(nn.Linear(3, 3), Frozen(), nn.Linear(3, 3))
    before = snapshot(dst)["values"]
    src = {k: v + 1 for k, v in before.items()}
    with pytest.raises(sl.LoadError) as info:
        sl.load(dst, src)
    error = info.value
    assert "writing '1.frozen' failed: RuntimeError" in str(error)
    assert "the load stopped at '1.frozen' after writing 2 of 5 tensors" in str(error)
    assert error.report.loaded == ["0.weight", "0.bias"]
    assert torch.equal(dst[0].weight, src["0.weight"]) and torch.equal(dst[2].weight, before["2.weight"])


def test_a_batch_of_plain_copies_casts_and_reads_strided_sources_as_copy_does(monkeypatch):
    from structload import _apply

    batches = []
    foreach = _apply._foreach_copy
    monkeypatch.setattr(_apply, "_foreach_copy", lambda dst, src: (batches.append(len(dst)), foreach(dst, src)))
    # one batch holds casts (fp64 -> fp32, fp32 -> fp16, fp64 -> int64 truncates), a transposed
    # source, a broadcast-free expanded view and a scalar: each gets exactly what copy_ gives
    dst = nn.Module()
    dst.register_buffer("halves", torch.zeros(4, 3, dtype=torch.float16))
    dst.register_buffer("steps", torch.zeros(3, dtype=torch.int64))
    dst.register_buffer("scalar", torch.zeros(()))
    dst.lin = nn.Linear(3, 4)
    torch.manual_seed(1)
    src = {
        "halves": torch.randn(3, 4).t(),  # not contiguous, fp32 into fp16
        "steps": torch.tensor([1.7, -2.5, 3.2], dtype=torch.float64),
        "scalar": torch.tensor(2.5, dtype=torch.float64),
        "lin.weight": torch.randn(4, 3, dtype=torch.float64),
        "lin.bias": torch.randn(1).expand(4),  # one memory location read four times
    }
    expected = {k: torch.empty_like(t).copy_(src[k]) for k, t in dst.state_dict().items()}
    report = sl.load(dst, src)
    assert report.ok and len(report.cast) == 4 and batches == [5]
    assert all(torch.equal(dst.state_dict()[k], v) for k, v in expected.items())
    assert dst.steps.tolist() == [1, -2, 3]


# --- first-hour dead ends --------------------------------------------------------------------


def test_a_head_with_another_number_of_classes_gets_the_exclude_hint():
    src, dst = randomized(Net(classes=10), 1), Net(classes=3)
    with pytest.raises(sl.LoadError) as info:
        sl.load(dst, src)
    messages = [p.message for p in info.value.problems]
    assert all('pass exclude="head"' not in m for m in messages)  # no "pass": the wording says "keep ... with"
    assert all('exclude="head"' in m and "3 in destination, 10 in source" in m for m in messages)
    assert sl.load(dst, src, exclude="head").ok
