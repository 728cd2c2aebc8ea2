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

    Decided without importing anything: a transformers model can only exist once
    ``transformers.modeling_utils`` (where ``PreTrainedModel`` lives) is imported.
    """
    modeling = sys.modules.get("transformers.modeling_utils")  # where PreTrainedModel lives, once imported
    if modeling is None or not isinstance(dst, torch.nn.Module):
        return None
    base = modeling.PreTrainedModel
    return "transformers" if any(isinstance(module, base) for module in dst.modules()) else None
