"""The bench's machinery (no timings asserted): rounds rotate the case order, ratios pair cases of the same
round, and its cells are the ones `tlstm train` composes (the Contract cases of issue 13)."""

from __future__ import annotations

import torch

from tensorlstm import bench
from tensorlstm.cli import compose, to_dict


def test_rounds_rotate_the_order_and_warm_up_once():
    calls: list[str] = []
    cases = {n: (lambda n=n: calls.append(n)) for n in "abc"}
    times = bench.interleave(cases, 4, bench.Timer("wall", torch.device("cpu")))
    assert calls[:3] == list("abc")  # warm-up
    assert calls[3:] == list("abc" "bca" "cab" "abc")
    assert all(len(t) == 4 for t in times.values())


def test_ratio_is_the_median_of_per_round_ratios():
    assert bench.ratio([2.0, 4.0, 9.0], [1.0, 1.0, 3.0]) == (3.0, 2.0, 4.0)


def test_contract_cells_are_the_composed_cell_group():
    """`tlstm train --cfg job --resolve cell=<...>`'s cell group builds the bench's Contract cells."""
    for override, fmt, extra in ((["cell=tt", "rank=4"], "tt", {"rank": 4}),
                                 (["cell=bt", "rank=4", "cell.blocks=2"], "bt", {"rank": 4, "blocks": 2})):
        composed = to_dict(compose(override))["cell"]
        net = bench.factorized(fmt, "lstm", bench.SEQ, **extra)
        ref = bench.build_cell(composed, 256, 512, [4, 4, 4, 4], [8, 4, 4, 4])
        assert net.describe() == ref.describe()
        assert [p.shape for p in net.parameters()] == [p.shape for p in ref.parameters()]
