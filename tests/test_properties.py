"""Property-based tests: random models, random sources derived from them, four invariants.

Models are built from a plain-data *spec* (so a source and a destination can
share an architecture or differ from it): Linear / Conv / norm layers with and
without bias, Sequential / ModuleList / ModuleDict / plain containers, tied
weights, frozen parameters, persistent and non-persistent buffers. Sources are
derived from a built model by dropping, adding, reshaping, recasting, skipping
(None), marking absent (False) and prefixing entries, as flat or nested dicts
or as the module itself.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import structload as sl
from helpers import assert_unchanged, attempt, destination_outcomes, snapshot

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- specs and models ---------------------------------------------------------------------

dims = st.integers(1, 4)

leaf_specs = st.one_of(
    st.tuples(st.just("linear"), dims, dims, st.booleans()),
    st.tuples(st.just("conv1d"), dims, dims, st.integers(1, 2), st.booleans()),
    st.tuples(st.just("layernorm"), dims, st.booleans()),
    st.tuples(st.just("batchnorm"), dims, st.booleans(), st.booleans()),
    st.tuples(st.just("embedding"), dims, dims),
    st.tuples(st.just("buffers"), dims),
)


def container_specs(children):
    names = st.sampled_from(["enc", "dec", "head", "proj", "a", "b"])
    return st.one_of(
        st.tuples(st.just("sequential"), st.lists(children, min_size=1, max_size=3)),
        st.tuples(st.just("modulelist"), st.lists(children, min_size=1, max_size=3)),
        st.tuples(st.just("moduledict"), st.dictionaries(names, children, min_size=1, max_size=3)),
        st.tuples(st.just("plain"), st.dictionaries(names, children, min_size=1, max_size=3)),
    )


model_specs = st.recursive(leaf_specs, container_specs, max_leaves=6)


class WithBuffers(nn.Module):
    def __init__(self, n: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(n))
        self.register_buffer("stat", torch.zeros(n))
        self.register_buffer("scratch", torch.zeros(n), persistent=False)


@st.composite
def variant(draw, spec):
    """The same architecture with bias / affine / running-stats flags flipped at random (rule R3)."""
    kind, *args = spec
    flip = lambda flag: flag != draw(st.booleans())  # noqa: E731
    if kind in ("linear", "conv1d", "layernorm"):
        return (kind, *args[:-1], flip(args[-1]))
    if kind == "batchnorm":
        return (kind, args[0], flip(args[1]), flip(args[2]))
    if kind in ("sequential", "modulelist"):
        return (kind, [draw(variant(s)) for s in args[0]])
    if kind in ("moduledict", "plain"):
        return (kind, {k: draw(variant(s)) for k, s in args[0].items()})
    return spec


def build(spec) -> nn.Module:
    kind, *args = spec
    if kind == "linear":
        return nn.Linear(args[0], args[1], bias=args[2])
    if kind == "conv1d":
        return nn.Conv1d(args[0], args[1], args[2], bias=args[3])
    if kind == "layernorm":
        return nn.LayerNorm(args[0], bias=args[1])
    if kind == "batchnorm":
        return nn.BatchNorm1d(args[0], affine=args[1], track_running_stats=args[2])
    if kind == "embedding":
        return nn.Embedding(args[0] + 1, args[1])
    if kind == "buffers":
        return WithBuffers(args[0])
    if kind == "sequential":
        return nn.Sequential(*(build(s) for s in args[0]))
    if kind == "modulelist":
        return nn.ModuleList(build(s) for s in args[0])
    if kind == "moduledict":
        return nn.ModuleDict({k: build(s) for k, s in args[0].items()})
    plain = nn.Module()
    for name, child in args[0].items():
        plain.add_module(name, build(child))
    return plain


def fill(model: nn.Module, seed: int) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in model.state_dict(keep_vars=True).values():
            if tensor.is_floating_point():
                tensor.copy_(torch.randn(tensor.shape, generator=generator))
            else:
                tensor.fill_(seed % 7)
    return model


@st.composite
def models(draw, spec=None):
    """A built, filled model; with tied weights and frozen parameters drawn at random."""
    spec = spec if spec is not None else draw(model_specs)
    model = fill(build(spec), draw(st.integers(0, 1000)))
    params = [(owner, name, p) for owner in model.modules() for name, p in owner._parameters.items() if p is not None]
    if len(params) >= 2 and draw(st.booleans()):  # tie two parameters of one shape
        i, j = draw(st.lists(st.integers(0, len(params) - 1), min_size=2, max_size=2, unique=True))
        (_, _, first), (owner, name, second) = params[i], params[j]
        if first.shape == second.shape:
            setattr(owner, name, first)
    for _, _, p in params:
        if draw(st.integers(0, 4)) == 0:
            p.requires_grad_(False)
    return model


# --- sources derived from a model ------------------------------------------------------------


@st.composite
def sources(draw, model: nn.Module):
    """A source for loading into a model shaped like `model`, with random damage."""
    flat = {k: v.detach().clone() for k, v in model.state_dict().items()}
    keys = list(flat)
    for key in keys:
        action = draw(st.sampled_from(["keep"] * 6 + ["drop", "shape", "dtype", "none", "false"]))
        if action == "drop":
            del flat[key]
        elif action == "shape":
            flat[key] = torch.zeros(*(d + 1 for d in flat[key].shape), 1)
        elif action == "dtype" and flat[key].is_floating_point():
            flat[key] = flat[key].to(draw(st.sampled_from([torch.float64, torch.float16, torch.bfloat16])))
        elif action == "none":
            flat[key] = None
        elif action == "false":
            flat[key] = False
    for extra in draw(st.lists(st.sampled_from(["extra.w", "head.extra", "0.unexpected", "zz"]), max_size=2)):
        flat[extra] = torch.ones(2)
    if draw(st.booleans()):
        flat = {"module." + k: v for k, v in flat.items()}
    form = draw(st.sampled_from(["flat", "nested"]))
    return flat if form == "flat" else _nested(flat)


def _nested(flat: dict) -> dict:
    tree: dict = {}
    for key, value in flat.items():
        *parents, name = key.split(".")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                return flat  # a key is both a leaf and a node: keep the flat form
        node[name] = value
    return tree


def state_paths(model: nn.Module) -> list[str]:
    return list(model.state_dict())


def parameter_objects(model: nn.Module) -> dict[str, int]:
    return {name: id(p) for name, p in model.named_parameters(remove_duplicate=False)}


# --- the invariants ------------------------------------------------------------------------


def draw_load_case(data):
    """A destination (a variant of a random spec) and a damaged source derived from that spec."""
    spec = data.draw(model_specs)
    dst = data.draw(models(data.draw(variant(spec))))
    src = data.draw(sources(data.draw(models(spec))))
    return dst, src


@SETTINGS
@given(st.data())
def test_strict_load_succeeds_or_leaves_the_destination_bitwise_unchanged(data):
    spec = data.draw(model_specs)
    source_model = data.draw(models(spec))
    dst = data.draw(models(data.draw(variant(spec))))
    src = data.draw(sources(source_model))
    before = snapshot(dst)
    rename = data.draw(st.sampled_from([None, {r"^module\.": ""}]))
    report, error = attempt(lambda: sl.load(dst, src, rename=rename))
    if error is not None:
        assert error.problems and not error.report.applied
        assert_unchanged(dst, before)
    else:
        assert report.ok and report.applied
        assert parameter_objects(dst) == before["ids"]


@SETTINGS
@given(st.data())
def test_non_strict_report_partitions_the_destination_paths(data):
    dst, src = draw_load_case(data)
    exclude = data.draw(st.sampled_from([None, "*.bias", "0", "enc.*"]))
    report = sl.load(dst, src, strict=False, exclude=exclude)
    every = destination_outcomes(report)
    assert sorted(every) == sorted(state_paths(dst))  # tied paths: each listed, once
    assert len(every) == len(set(every))
    assert not set(report.unexpected) & set(report.loaded)


@SETTINGS
@given(st.data())
def test_state_round_trip_and_loading_twice(data):
    spec = data.draw(model_specs)
    a, b = data.draw(models(spec)), data.draw(models(spec))
    ties_of_a = {k for k, v in parameter_objects(a).items() if list(parameter_objects(a).values()).count(v) > 1}
    ties_of_b = {k for k, v in parameter_objects(b).items() if list(parameter_objects(b).values()).count(v) > 1}
    first = sl.load(b, sl.state(a), strict=False)
    after_once = {k: v.clone() for k, v in b.state_dict().items()}
    second = sl.load(b, sl.state(a), strict=False)
    assert first.to_dict() == second.to_dict()
    assert all(torch.equal(after_once[k], v) for k, v in b.state_dict().items())
    if ties_of_a == ties_of_b:  # same structure, same ties: b now equals a everywhere
        assert first.ok
        state_a, state_b = a.state_dict(), b.state_dict()
        assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)


@SETTINGS
@given(st.data())
def test_round_trip_where_structures_differ(data):
    a = data.draw(models())
    b = data.draw(models())
    report = sl.load(b, sl.state(a), strict=False)
    state_a, state_b = a.state_dict(), b.state_dict()
    for path in report.loaded:
        if path in state_a and not report.tied:
            assert torch.equal(state_b[path], state_a[path].to(state_b[path].dtype)), path


@SETTINGS
@given(st.data())
def test_dry_run_changes_nothing_and_predicts_the_real_report(data):
    dst, src = draw_load_case(data)
    strict = data.draw(st.booleans())
    before = snapshot(dst)
    predicted, predicted_error = attempt(lambda: sl.load(dst, src, strict=strict, dry_run=True))
    if predicted_error is not None:
        assert_unchanged(dst, before)
        with pytest.raises(sl.LoadError) as actual:
            sl.load(dst, src, strict=strict)
        assert str(actual.value) == str(predicted_error)
        return
    assert_unchanged(dst, before)
    actual = sl.load(dst, src, strict=strict)
    assert predicted.to_dict() | {"applied": True} == actual.to_dict()


# --- the source tree of dotted names ---------------------------------------------------------

dotted_names = st.lists(st.sampled_from(["a", "b", "0", "1", ""]), min_size=1, max_size=4).map(".".join)
tree_values = st.one_of(
    st.integers(0, 9).map(lambda i: torch.full((1,), float(i))),
    st.dictionaries(st.sampled_from(["w", "b", "a.w"]), st.just(torch.zeros(1)), max_size=2),
)


@SETTINGS
@given(st.lists(st.tuples(dotted_names, tree_values), max_size=12, unique_by=lambda item: item[0]))
def test_the_source_tree_of_dotted_names_is_the_one_insert_builds_name_by_name(items):
    """Building a tree finds known parents without `insert`; it must build exactly what inserting
    each name in turn builds, conflicts, leading dots, empty names and subtree values included."""
    from structload.sources import SourceTensor, to_source_tree
    from structload.sources.nesting import insert

    def leaves(tree):  # comparable: values, or the text of a BadLeaf
        if type(tree) is dict:
            return {name: leaves(child) for name, child in tree.items()}
        return repr(tree) if not isinstance(tree, SourceTensor) else float(tree.read().sum())

    expected: dict = {}
    for name, value in items:
        insert(expected, name, to_source_tree(value))
    assert leaves(to_source_tree(dict(items))) == leaves(expected)
