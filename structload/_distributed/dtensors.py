"""Sharded destination tensors (FSDP2, tensor parallel): DTensors and their local blocks.

A destination tensor that is a ``DTensor`` is planned on its global shape and
dtype, so reports and errors read exactly as for an unsharded model; writing
fills only this rank's local shard, reading from the source only the block of
the global tensor that shard holds (`SourceTensor.read_slice_into`). How the
ranks keep in step is `_agreement`'s.
"""

from __future__ import annotations

import sys


def tensor_module():
    """``torch.distributed.tensor`` if anything imported it. Importing it costs most of a
    second, and no DTensor can exist before it is imported, so structload never does."""
    return sys.modules.get("torch.distributed.tensor")


def is_dtensor(tensor) -> bool:
    module = tensor_module()
    return module is not None and isinstance(tensor, module.DTensor)


def dtensor_class() -> type | None:
    """The ``DTensor`` class, or ``None`` while no DTensor can exist (its module is not imported)."""
    module = tensor_module()
    return module.DTensor if module is not None else None


def dtensor_problem(tensor) -> str | None:
    """Why a DTensor destination cannot be loaded as it is, or ``None``."""
    module = tensor_module()
    unsupported = [p for p in tensor.placements if not isinstance(p, (module.Shard, module.Replicate))]
    if unsupported:
        return f"a DTensor with placement {unsupported[0]} cannot be loaded (only Shard and Replicate)"
    if tensor.to_local().is_meta:
        return "a sharded (DTensor) tensor on the meta device; call model.to_empty(device=...) before loading"
    return None


def local_block(tensor) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(starts, sizes)``: the block of the global tensor this rank's shard holds."""
    try:  # the helper DCP itself uses: any mesh, any mix of Shard and Replicate
        from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

        sizes, starts = compute_local_shape_and_global_offset(tensor.shape, tensor.device_mesh, tensor.placements)
        return tuple(starts), tuple(sizes)
    except ImportError:
        return _block_1d(tensor)


def _block_1d(tensor) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The same for a 1-D mesh, as ``torch.chunk`` splits a sharded dim."""
    starts, sizes = [0] * tensor.dim(), list(tensor.shape)
    (placement,) = tensor.placements
    if isinstance(placement, tensor_module().Shard):
        d, n = placement.dim, tensor.device_mesh.size()
        chunk = -(-tensor.shape[d] // n)
        starts[d] = min(tensor.device_mesh.get_local_rank() * chunk, tensor.shape[d])
        sizes[d] = max(0, min(chunk, tensor.shape[d] - starts[d]))
    return tuple(starts), tuple(sizes)
