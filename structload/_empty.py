"""`init_empty_weights`: build a big model without memory for its weights, then load them.

Inside the block, every parameter a module registers goes to the ``meta``
device (no memory, no initialisation cost), while buffers stay real until the
block ends: non-persistent buffers are not in any checkpoint, the model
computes them when built (rotary ``inv_freq``, causal masks, ``position_ids``),
and a meta one would make the first forward fail. Persistent buffers, which a
checkpoint does hold, go to meta when the block ends, so that whatever the
constructors computed from them (BROS' and MRA's ``token_type_ids``, made with
``device=`` of the persistent ``position_ids``) is real, as under accelerate's
``init_empty_weights(include_buffers=False)``.

Two more things keep constructors working that compute from parameters:

- a tensor factory (``torch.arange``, ``zeros``, ``empty``, ``*_like``...) asked
  for the meta device makes a real CPU tensor: its values come from Python
  numbers, not from any weight, and a buffer filled from it must have them
  (timm's Swin V2 computes its relative-position tables on
  ``self.proj.weight.device`` and copies them into real buffers);
- an out-of-place operation mixing meta and real tensors runs on meta (timm's
  hybrid ViTs run their CNN backbone on a real ``torch.zeros`` input in
  ``__init__`` to learn its output shape, which meta gives).

Initializing a meta tensor computes nothing, yet costs as much as any other
operator call on meta (``normal_`` on meta runs torch's Python reference
implementation): GPT-2-medium's constructor spent three quarters of its 56 ms
there. Inside the block, initializers called on a meta tensor return it at
once, as ``from_pretrained``'s own skipping of initialization does.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

#: In-place initializers (``torch.nn.init``'s and ``Tensor``'s, and any library's wrapper of the same
#: name) that have nothing to compute on a meta tensor: each returns the tensor it fills.
INITIALIZERS = frozenset(
    {
        *("uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_", "sparse_"),
        *("xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_"),
        *("zero_", "fill_", "random_", "exponential_", "bernoulli_", "cauchy_", "log_normal_", "geometric_"),
    }
)


#: Factories whose values come from their arguments alone: asked for meta inside the block, they
#: make a real CPU tensor (see the module's docstring).
FACTORIES = frozenset(
    {
        *("empty", "zeros", "ones", "full", "arange", "range", "linspace", "logspace", "eye", "tensor"),
        *("empty_like", "zeros_like", "ones_like", "full_like", "empty_strided", "tril_indices", "triu_indices"),
    }
)
_LIKE = frozenset({"empty_like", "zeros_like", "ones_like", "full_like"})

#: The attribute `built_empty` reads on a non-persistent buffer the block had to leave on meta.
_LEFT_ON_META = "_structload_left_on_meta"


class _EmptyBuild(TorchFunctionMode):
    """Inside the block: initializers on meta tensors return them (`INITIALIZERS`), factories asked
    for meta make real tensors (`FACTORIES`), out-of-place operations mixing meta and real
    tensors run on meta; everything else runs as it is."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", None)
        if name in INITIALIZERS:
            tensor = args[0] if args else kwargs.get("tensor", kwargs.get("self"))
            if isinstance(tensor, torch.Tensor) and tensor.is_meta:
                return tensor
        elif name in FACTORIES:
            kwargs = _real_factory(name, args, kwargs)
        elif _mixes_meta_and_real(args) and not _in_place(name, args, kwargs):
            args = tuple(_to_meta(a) for a in args)
        return func(*args, **kwargs)


def _real_factory(name: str, args: tuple, kwargs: dict) -> dict:
    """The keyword arguments of a factory call, with a meta device turned into the CPU."""
    device = kwargs.get("device")
    if device is None and name in _LIKE and args and isinstance(args[0], torch.Tensor) and args[0].is_meta:
        return {**kwargs, "device": "cpu"}
    if device is not None and torch.device(device).type == "meta":
        return {**kwargs, "device": "cpu"}
    return kwargs


def _tensors(args: tuple) -> Iterator[torch.Tensor]:
    for arg in args:
        if isinstance(arg, torch.Tensor):
            yield arg
        elif isinstance(arg, (list, tuple)):
            yield from (a for a in arg if isinstance(a, torch.Tensor))


def _mixes_meta_and_real(args: tuple) -> bool:
    meta = real = False
    for tensor in _tensors(args):
        if tensor.is_meta:
            meta = True
        else:
            real = True
    return meta and real


def _in_place(name: str | None, args: tuple, kwargs: dict) -> bool:
    """Whether the operation writes into one of its arguments: a real tensor written from a meta one
    would hold no values, so torch's own error ("Cannot copy out of meta tensor") is the right answer."""
    if "out" in kwargs or name is None:
        return True
    return (name.endswith("_") and not name.startswith("__")) or name in ("__setitem__", "__iadd__", "__imul__")


def _to_meta(arg):
    if isinstance(arg, torch.Tensor):
        return arg if arg.is_meta else arg.to("meta")
    if isinstance(arg, (list, tuple)) and any(isinstance(a, torch.Tensor) for a in arg):
        return type(arg)(_to_meta(a) for a in arg)
    return arg


def built_empty(tensor: torch.Tensor) -> bool:
    """Whether `tensor` is a non-persistent buffer that a module built under `init_empty_weights`
    computed from meta tensors, so that it stayed on meta (for the message that says what to do)."""
    return bool(getattr(tensor, _LEFT_ON_META, False))


@contextlib.contextmanager
def init_empty_weights() -> Iterator[None]:
    """Build modules with their parameters and persistent buffers on ``meta``, the rest real.

    While the block runs, ``nn.Module.register_parameter`` and
    ``register_buffer`` (which attribute assignment uses too) are wrapped for
    every module, in every thread; they are restored when it ends, and the
    persistent buffers registered meanwhile move to meta then. In the thread
    that entered the block, initializers (`INITIALIZERS`: ``normal_``,
    ``kaiming_uniform_``, ``zero_``...) called on a meta tensor return it without
    running, tensor factories asked for meta make real tensors, and operations
    mixing meta and real tensors run on meta.

    Examples:
        >>> import torch, structload as sl
        >>> class Rotary(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.proj = torch.nn.Linear(4, 4)
        ...         self.register_buffer("inv_freq", torch.arange(2.0), persistent=False)
        >>> with sl.init_empty_weights():
        ...     model = Rotary()
        >>> model.proj.weight.is_meta, model.inv_freq.is_meta
        (True, False)
        >>> report = sl.load(model, {"proj.weight": torch.ones(4, 4), "proj.bias": torch.zeros(4)})
        >>> report.ok, model.proj.weight.is_meta, float(model.proj.weight.sum())
        (True, False, 16.0)
    """
    register_parameter = nn.Module.register_parameter
    register_buffer = nn.Module.register_buffer
    buffers: list[tuple[nn.Module, str]] = []  # every buffer registered in the block, for its end

    def parameter_on_meta(module: nn.Module, name: str, param) -> None:
        register_parameter(module, name, param)
        param = module._parameters.get(name)
        if param is not None and not param.is_meta:
            kind = type(param)
            extra = dict(param.__dict__)
            module._parameters[name] = kind(param.to("meta"), requires_grad=param.requires_grad)
            module._parameters[name].__dict__.update(extra)

    def buffer_registered(module: nn.Module, name: str, tensor, persistent: bool = True) -> None:
        register_buffer(module, name, tensor, persistent=persistent)
        buffers.append((module, name))

    nn.Module.register_parameter = parameter_on_meta  # type: ignore[assignment]
    nn.Module.register_buffer = buffer_registered  # type: ignore[assignment]
    try:
        with _EmptyBuild():
            yield
    finally:
        nn.Module.register_parameter = register_parameter  # type: ignore[method-assign]
        nn.Module.register_buffer = register_buffer  # type: ignore[method-assign]
        _settle_buffers(buffers)


def _settle_buffers(buffers: list[tuple[nn.Module, str]]) -> None:
    """At the end of the block: persistent buffers to meta (a buffer shared by several modules stays
    one tensor), and non-persistent ones that had to stay on meta marked for `built_empty`."""
    on_meta: dict[int, torch.Tensor] = {}
    for module, name in buffers:
        buffer = module._buffers.get(name)
        if not isinstance(buffer, torch.Tensor):
            continue
        if name in module._non_persistent_buffers_set:
            if buffer.is_meta:
                setattr(buffer, _LEFT_ON_META, True)
        elif not buffer.is_meta:
            if id(buffer) not in on_meta:
                on_meta[id(buffer)] = buffer.to("meta")
            module._buffers[name] = on_meta[id(buffer)]
