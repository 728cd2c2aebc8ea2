"""What a meta destination tensor is materialized as: its dtype, under ``load(dtype=...)``.

Asked by the plan (a cast to report, a file tensor ``mmap=True`` can map) and by apply (the
tensor it makes), so both decide alike.

>>> import torch
>>> meta = torch.empty(2, device="meta")
>>> materialized_dtype(meta, torch.bfloat16, "auto"), materialized_dtype(torch.zeros(2), torch.bfloat16, "auto")
(torch.bfloat16, torch.float32)
"""

from __future__ import annotations

import torch


def materialized_dtype(tensor: torch.Tensor, source_dtype: torch.dtype | None, option) -> torch.dtype:
    """The dtype a destination tensor ends up in: its own, or for a meta tensor the `load(dtype=)`
    option (``"auto"``: the source's dtype, when it has one)."""
    if not tensor.is_meta or option is None:
        return tensor.dtype
    if option == "auto":
        return source_dtype if source_dtype is not None else tensor.dtype
    return option
