"""How the process's C allocator treats freed host memory (``cell.host_memory``).

A training step on a CPU allocates and frees tens of MB of temporaries (gate activations, the input map's output and
its gradient, the weight gradients and the optimizer's work). glibc hands every block above its mmap threshold
(dynamic, at most 32 MB) back to the OS when it is freed, and trims the top of the heap, so the next step takes
those pages again as page faults and zero-fills them: 17,000-24,000 minor faults per step of a factorized cell or
of torch.nn.LSTM at the sequence shape of `tlstm bench` (B32 x T100, 256 -> 512), 338,000 for torch.nn.LSTM + Adam
at its UCF11 shape (57,600 -> 256), which keeping the memory makes 2.4x faster (scripts/bench_process_modes.py).

``keep`` makes glibc keep freed memory in the process for the next allocation, as torch's caching allocator does
for CUDA memory: no mmap for large blocks, no trimming. The process's resident memory then stays at its peak
instead of shrinking between steps. It is a property of the whole process, so it holds for every model in it (in
`tlstm bench`, the torch.nn baselines too), from the first cell built with it on. ``system`` changes nothing: the
C library's defaults stay, unless something else in the process asked for ``keep``. Where the C library is not
glibc (no ``mallopt``), ``keep`` changes nothing either.
"""

from __future__ import annotations

import ctypes
import logging
import sys

from tensorlstm.errors import UserError

log = logging.getLogger("tensorlstm")

MODES = ("keep", "system")
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4  # glibc's mallopt parameters (malloc.h)
_applied: bool | None = None  # whether `keep` took effect in this process (None: not asked yet)


def _mallopt():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None).mallopt  # the C library the process runs on
    except (OSError, AttributeError):
        return None


def tune_glibc(keep: bool) -> bool:
    """keep: no mmap for large blocks and no trimming; else glibc's defaults (128 KB thresholds, mmap allowed).
    True where glibc took the settings. `set_host_memory` is the way in; scripts/bench_process_modes.py switches
    between the two to time them in one process."""
    mallopt = _mallopt()
    if mallopt is None:
        return False
    if keep:
        return bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)) and bool(mallopt(_M_MMAP_MAX, 0))
    return all(mallopt(p, v) for p, v in ((_M_TRIM_THRESHOLD, 128 << 10), (_M_MMAP_THRESHOLD, 128 << 10),
                                          (_M_MMAP_MAX, 65536)))


def set_host_memory(mode: str | None) -> bool:
    """Apply `mode` (keep | system; None = leave as it is) to this process; True where `keep` is in effect."""
    global _applied
    if mode is None or mode == "system":
        return bool(_applied)
    if mode not in MODES:
        raise UserError(f"unknown cell.host_memory {mode!r}; choose one of: {', '.join(MODES)}")
    if _applied is None:
        _applied = tune_glibc(True)
        if _applied:
            log.debug("host memory: freed blocks stay in the process (cell.host_memory=keep)")
    return _applied
