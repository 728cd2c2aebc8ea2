"""What other libraries declare about their own models, applied by `load`.

A library's module is imported only when the destination is one of its models:
`declared_library` recognises a transformers model by the classes of its
modules (no import), and only then does `load` import
`structload.integrations.transformers`, which imports transformers.

Examples:
    >>> import torch
    >>> declared_library(torch.nn.Linear(2, 2)) is None
    True
"""

from __future__ import annotations

import sys

import torch


def declared_library(dst) -> str | None:
    """``"transformers"`` when `dst` is or contains a transformers ``PreTrainedModel``, else ``None``.

    Decided from the classes of `dst`'s modules, without importing anything: a model of a
    library can only exist once that library is imported.
    """
    if "transformers" not in sys.modules or not isinstance(dst, torch.nn.Module):
        return None
    for module in dst.modules():
        for cls in type(module).__mro__:
            if cls.__name__ == "PreTrainedModel" and cls.__module__ == "transformers.modeling_utils":
                return "transformers"
    return None
