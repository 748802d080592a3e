"""Optimizer kernels (optim.implementation): auto picks torch's fused kernel where it has one, the fused step
equals torch's per-parameter loop, and a bad choice is a one-line error."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tensorlstm.defaults import group_config
from tensorlstm.engine.optim import build_optimizer
from tensorlstm.errors import UserError


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))


@pytest.mark.parametrize("name,kernel", [("adam", "fused"), ("adamw", "fused"), ("sgd", "fused"),
                                         ("rmsprop", "foreach")])
def test_auto_picks_fused_where_torch_has_it(name, kernel):
    opt = build_optimizer(_model(), group_config("optim", "adam", name=name))
    assert opt.defaults["fused" if kernel == "fused" else "foreach"] is True


@pytest.mark.parametrize("impl", ["fused", "foreach"])
@pytest.mark.parametrize("name", ["adam", "adamw", "sgd"])
def test_kernels_match_the_loop(name, impl):
    x, y = torch.randn(16, 5), torch.randn(16, 3)
    params = []
    for which in ("loop", impl):
        model = _model()
        opt = build_optimizer(model, group_config("optim", "adam", name=name, implementation=which,
                                                  weight_decay=0.01))
        for _ in range(5):
            opt.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            opt.step()
        params.append([p.detach() for p in model.parameters()])
    for a, b in zip(*params):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_default_leaves_the_kernel_to_torch():
    """implementation=default (configs saved before the key): no kernel argument, so torch picks as it did then
    (the per-parameter loop on a CPU); bit-identical to implementation=loop here."""
    opt = build_optimizer(_model(), group_config("optim", "adam", implementation="default"))
    assert opt.defaults["foreach"] is None and opt.defaults["fused"] is None
    x, y = torch.randn(16, 5), torch.randn(16, 3)
    params = []
    for which in ("loop", "default"):
        model = _model()
        opt = build_optimizer(model, group_config("optim", "adam", implementation=which))
        for _ in range(3):
            opt.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            opt.step()
        params.append([p.detach() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*params))


def test_bad_implementation_is_a_user_error():
    with pytest.raises(UserError, match="optim.implementation"):
        build_optimizer(_model(), group_config("optim", "adam", implementation="fast"))
    with pytest.raises(UserError, match="no fused rmsprop"):
        build_optimizer(_model(), group_config("optim", "adam", name="rmsprop", implementation="fused"))
