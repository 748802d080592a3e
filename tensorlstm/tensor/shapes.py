"""Mode shapes of factorized maps: balanced factorizations, validation, gate modes.

A size n is written as n = n_1 * n_2 * ... * n_d ("modes"). `factorize` picks the most balanced
modes (smallest sum of modes for the fixed product), largest first; `check_modes` validates a
user's modes and proposes a fix; `gate_modes` multiplies the first or last output mode by the
number of gates G (J = G*H for the stacked gates of an LSTM/GRU).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from tensorlstm.errors import UserError


def _divisors(n: int) -> list[int]:
    small, large = [], []
    for k in range(1, math.isqrt(n) + 1):
        if n % k == 0:
            small.append(k)
            if k != n // k:
                large.append(n // k)
    return small + large[::-1]


def factorize(n: int, d: int) -> list[int]:
    """d modes whose product is n, as balanced as possible (minimal sum), largest first.

    Example: factorize(57600, 4) == [20, 20, 12, 12]; factorize(256, 4) == [4, 4, 4, 4].
    When n has fewer than d prime factors the list is padded with 1s.
    """
    if int(n) != n or n < 1:
        raise UserError(f"cannot factorize {n!r}: the size must be a positive integer")
    if int(d) != d or d < 1:
        raise UserError(f"cannot split {n} into {d!r} modes: the number of modes must be >= 1")
    n, d = int(n), int(d)
    divisors = _divisors(n)
    best: tuple[int, list[int]] | None = None

    def search(rest: int, k: int, cap: int, acc: list[int]) -> None:
        # modes are chosen non-increasing: each next mode <= cap
        nonlocal best
        if k == 1:
            if rest <= cap:
                cand = acc + [rest]
                key = sum(cand)
                if best is None or key < best[0]:
                    best = (key, cand)
            return
        low = math.ceil(rest ** (1.0 / k) - 1e-9)
        for m in divisors:
            if m > cap or m > rest:
                break
            if m < low or rest % m:
                continue
            if best is not None and sum(acc) + m + (k - 1) > best[0]:
                continue
            search(rest // m, k - 1, m, acc + [m])

    search(n, d, n, [])
    assert best is not None
    return best[1]


def _join(modes: Sequence[int]) -> str:
    return "x".join(str(m) for m in modes)


def check_modes(modes: Sequence[int], size: int, what: str) -> list[int]:
    """Return `modes` as a new list of ints after checking that their product is `size`.

    `what` names the setting in the message (e.g. "in_modes"). On a mismatch the one-line error
    proposes a valid factorization: the user's modes with one mode changed when that works,
    otherwise `factorize(size, len(modes))`.
    """
    try:
        out = [int(m) for m in modes]
    except (TypeError, ValueError):
        raise UserError(f"{what}: modes must be a list of positive integers, got {modes!r}") from None
    if not out:
        raise UserError(f"{what}: at least one mode is needed, got an empty list")
    if any(m < 1 or m != mm for m, mm in zip(out, modes)):
        raise UserError(f"{what}: modes must be positive integers, got {list(modes)!r}")
    prod = math.prod(out)
    if prod != size:
        suggestion = None
        for k in range(len(out) - 1, -1, -1):
            others = prod // out[k]
            if size % others == 0:
                suggestion = out[:k] + [size // others] + out[k + 1 :]
                break
        if suggestion is None:
            suggestion = factorize(size, len(out))
        raise UserError(
            f"{what}: modes {_join(out)} multiply to {prod}, not {size}; try {_join(suggestion)} "
            f"({what}=[{','.join(str(m) for m in suggestion)}])"
        )
    return out


def gate_modes(hidden_modes: Sequence[int], gates: int, where: str) -> list[int]:
    """Output modes of the stacked gate map: the hidden modes with the first or last one times `gates`.

    Returns a new list (the caller's list is never modified). `where` is "first" (Yang 2017,
    Ye 2018: 4x4x4x4 -> 16x4x4x4 for an LSTM) or "last" (Tjandra 2017/2018: 8x4x4x4 -> 8x4x4x12 for a GRU).
    """
    modes = [int(m) for m in hidden_modes]
    if not modes:
        raise UserError("hidden modes: at least one mode is needed, got an empty list")
    if int(gates) != gates or gates < 1:
        raise UserError(f"gates must be a positive integer, got {gates!r}")
    if where == "first":
        modes[0] *= int(gates)
    elif where == "last":
        modes[-1] *= int(gates)
    else:
        raise UserError(f"gate_mode must be 'first' or 'last', got {where!r}")
    return modes
