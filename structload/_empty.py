"""`init_empty_weights`: build a big model without memory for its weights, then load them.

Inside the block, every parameter and every persistent buffer a module
registers goes to the ``meta`` device (no memory, no initialisation cost),
while non-persistent buffers stay real: they are not in any checkpoint, the
model computes them when built (rotary ``inv_freq``, causal masks,
``position_ids``), and a meta one would make the first forward fail. This is
accelerate's ``init_empty_weights(include_buffers=False)``, except that
persistent buffers, which a checkpoint does hold, go to meta too.

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


class _MetaInitSkipped(TorchFunctionMode):
    """Calls of `INITIALIZERS` on a meta tensor return the tensor; everything else runs."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__name__", None) in INITIALIZERS:
            tensor = args[0] if args else kwargs.get("tensor", kwargs.get("self"))
            if isinstance(tensor, torch.Tensor) and tensor.is_meta:
                return tensor
        return func(*args, **kwargs)


@contextlib.contextmanager
def init_empty_weights() -> Iterator[None]:
    """Build modules with their parameters and persistent buffers on ``meta``, the rest real.

    While the block runs, ``nn.Module.register_parameter`` and
    ``register_buffer`` (which attribute assignment uses too) are wrapped for
    every module, in every thread; they are restored when it ends. In the
    thread that entered the block, initializers (`INITIALIZERS`: ``normal_``,
    ``kaiming_uniform_``, ``zero_``...) called on a meta tensor return it without
    running: they have no values to fill.

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

    def parameter_on_meta(module: nn.Module, name: str, param) -> None:
        register_parameter(module, name, param)
        param = module._parameters.get(name)
        if param is not None and not param.is_meta:
            kind = type(param)
            extra = dict(param.__dict__)
            module._parameters[name] = kind(param.to("meta"), requires_grad=param.requires_grad)
            module._parameters[name].__dict__.update(extra)

    def buffer_on_meta(module: nn.Module, name: str, tensor, persistent: bool = True) -> None:
        register_buffer(module, name, tensor, persistent=persistent)
        buffer = module._buffers.get(name)
        if persistent and isinstance(buffer, torch.Tensor) and not buffer.is_meta:
            module._buffers[name] = buffer.to("meta")

    nn.Module.register_parameter = parameter_on_meta  # type: ignore[assignment]
    nn.Module.register_buffer = buffer_on_meta  # type: ignore[assignment]
    try:
        with _MetaInitSkipped():
            yield
    finally:
        nn.Module.register_parameter = register_parameter  # type: ignore[method-assign]
        nn.Module.register_buffer = register_buffer  # type: ignore[method-assign]
