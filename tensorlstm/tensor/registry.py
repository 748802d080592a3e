"""The registry of map formats: one class per format, registered once with `@register_format`.

A format class is a `LinearMap` with a classmethod `from_spec(in_modes, out_modes, rank, blocks, mode)` that
checks its own rank (and blocks) and builds the map. `build_map`, the cells (`cell.format=<name>`), the bench
and DRAW's decoder shorthand all read their lists from here, so a new format is one decorated class in a module
that `tensorlstm/tensor/__init__.py` imports.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence

from tensorlstm.errors import UserError
from tensorlstm.tensor.base import LinearMap

MAP_FORMATS: dict[str, type[LinearMap]] = {}


def register_format(name: str, default_rank: int | None) -> Callable[[type[LinearMap]], type[LinearMap]]:
    """Class decorator: make `cls` the format `name`; `default_rank` is used when build_map gets rank=None."""

    def register(cls: type[LinearMap]) -> type[LinearMap]:
        if name in MAP_FORMATS:
            raise ValueError(f"map format {name!r} registered twice ({MAP_FORMATS[name].__name__}, {cls.__name__})")
        cls.format_name = name
        cls.default_rank = default_rank
        MAP_FORMATS[name] = cls
        return cls

    return register


def map_format(name: str) -> type[LinearMap]:
    if name not in MAP_FORMATS:
        raise UserError(f"unknown map format {name!r}; choose one of: {', '.join(MAP_FORMATS)}")
    return MAP_FORMATS[name]


def factorized_formats() -> tuple[str, ...]:
    """The formats that factorize W (every registered one except dense)."""
    return tuple(name for name, cls in MAP_FORMATS.items() if cls.default_rank is not None)


def positive_ranks(rank: object, fmt: str) -> int | list[int]:
    """A rank given as one positive integer or a list of them (each format then checks the length)."""
    if isinstance(rank, bool):
        raise UserError(f"rank must be a positive integer or a list of them, got {rank!r}")
    if isinstance(rank, numbers.Integral):
        if rank < 1:
            raise UserError(f"rank must be >= 1, got {rank} (format {fmt}); e.g. rank=4")
        return int(rank)
    if isinstance(rank, Sequence) and not isinstance(rank, str):
        ranks = []
        for r in rank:
            if isinstance(r, bool) or not isinstance(r, numbers.Integral):
                raise UserError(f"ranks must be integers, got {list(rank)!r} (format {fmt})")
            if r < 1:
                raise UserError(f"every rank must be >= 1, got {list(rank)!r} (format {fmt})")
            ranks.append(int(r))
        return ranks
    raise UserError(f"rank must be a positive integer or a list of them, got {rank!r} (format {fmt})")


def single_rank(rank: object, fmt: str) -> int:
    """Formats with one rank R (bt, cp)."""
    r = positive_ranks(rank, fmt)
    if not isinstance(r, int):
        raise UserError(f"{fmt} takes a single rank R, got {r!r}")
    return r
