"""How the CPU treats denormal floats (``cell.denormals``).

A float32 below 1.2e-38 in magnitude is denormal. IEEE arithmetic keeps such values (gradual underflow), and the
CPU runs every operation that meets one in a slow microcode path. A training step can fill whole tensors with
them: a saturated sigmoid gives exp(-x) terms far below that bound, and its gradients follow. On this project's
machine a dense LSTM at UCF11's shape then slowed from ~0.3 s to ~1.8 s per step within ten steps. Its weight
gradient's GEMM, (57,600 x 96) @ (96 x 1,024), went from ~0.2 s to 0.8 s, and `nn.LSTM` + Adam from ~1.0 s to
1.5-1.8 s (Intel Xeon, 1 thread, `tlstm bench`'s UCF11 step repeated on one batch).

``flush`` (the YAML default) sets the CPU's flush-to-zero and denormals-are-zero modes for the process
(``torch.set_flush_denormal``): such values, as inputs or results, become 0, so a result differs from IEEE's only
where a denormal arose on the way to it. It is a property of each thread's floating-point state: `build_cell` sets
it, and `tlstm train` sets it first thing, before torch starts its intra-op threads, which inherit it (threads
started earlier keep their mode). It then holds for every model in the process (in `tlstm bench`, the torch.nn
baselines too). ``ieee`` restores IEEE gradual underflow. Runs saved before the key resume on ``ieee``, bit for bit.
"""

from __future__ import annotations

import torch

from tensorlstm.errors import UserError

MODES = ("flush", "ieee")


def set_denormals(mode: str | None) -> bool:
    """Apply `mode` (flush | ieee; None = leave as it is) to this process; True where denormals are flushed now."""
    if mode is None:
        return flushed()
    if mode not in MODES:
        raise UserError(f"unknown cell.denormals {mode!r}; choose one of: {', '.join(MODES)}")
    return torch.set_flush_denormal(mode == "flush") and mode == "flush"


def flushed() -> bool:
    """Whether this thread flushes denormal float32 values to zero now."""
    tiny = torch.tensor([1e-39], dtype=torch.float32)  # a denormal
    return bool((tiny * 1.0).item() == 0.0)
