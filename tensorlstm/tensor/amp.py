"""Mixed precision inside custom autograd Functions.

Autocast (CUDA fp16/bf16, CPU bf16) casts the inputs of eligible ops such as ``bmm`` as they run, but a
custom ``autograd.Function``'s saved tensors keep their own dtypes and its backward runs with autocast
off. Ops with ``out=`` and in-place ops are never autocast. So a Function that mixes them fails
("expected m1 and m2 to have the same dtype", "Bad in-place call"). The Functions of this package pick one
compute dtype up front (`compute_dtype`), cast their operands to it, run their products with autocast
disabled (`no_autocast`), and keep gradient accumulators in the dtype of the tensor they belong to.
"""

from __future__ import annotations

import contextlib

import torch

# autocast leaves float64 (and integer) operands alone; so do we
_AUTOCAST_ELIGIBLE = (torch.float32, torch.float16, torch.bfloat16)


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """The dtype autocast would run a product of `tensors` in: the autocast dtype of their device when it is
    enabled and every operand is eligible, else the promoted dtype of the operands."""
    device_type = tensors[0].device.type
    if torch.is_autocast_enabled(device_type) and all(t.dtype in _AUTOCAST_ELIGIBLE for t in tensors):
        return torch.get_autocast_dtype(device_type)
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def no_autocast(device_type: str) -> contextlib.AbstractContextManager:
    """Autocast off on `device_type` (the operands are already cast)."""
    return torch.autocast(device_type, enabled=False)
