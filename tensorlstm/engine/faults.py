"""Test-only fault injection for the kill tests: `TLSTM_FAULT=<point>:<n>` sends SIGKILL to this process
halfway through the n-th write at <point> (`metrics`: an append to metrics.jsonl, `checkpoint`: a checkpoint
save, after part of the temporary file is on disk). Without the variable (every real run) nothing happens."""

from __future__ import annotations

import os
import signal

_count: dict[str, int] = {}


def armed(point: str) -> bool:
    """True when this call is the n-th at `point` that TLSTM_FAULT names: the caller writes half, then kill()."""
    spec = os.environ.get("TLSTM_FAULT")
    if not spec:
        return False
    name, _, n = spec.partition(":")
    if name != point:
        return False
    _count[point] = _count.get(point, 0) + 1
    return _count[point] == int(n or 1)


def kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)
