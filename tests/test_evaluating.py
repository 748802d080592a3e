"""Evaluation mode is switched in one place (tasks.common.evaluating): every task's evaluate runs its model in
eval mode without autograd and hands the model back in the mode it came in, also when the evaluation raises."""

from __future__ import annotations

import pytest
import tiny
import torch
from conftest import TINY_RUN
from torch import nn

from tensorlstm.cli import load_config
from tensorlstm.engine.build import build
from tensorlstm.engine.trainer import evaluate
from tensorlstm.tasks import TASKS
from tensorlstm.tasks.common import evaluating


def test_evaluating_restores_the_mode_also_on_an_exception():
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))
    with evaluating(model):
        assert not model.training and not model[1].training and not torch.is_grad_enabled()
    assert model.training and model[1].training and torch.is_grad_enabled()
    with pytest.raises(ZeroDivisionError), evaluating(model):
        raise ZeroDivisionError
    assert model.training and torch.is_grad_enabled()
    model.eval()
    with evaluating(model):
        pass
    assert not model.training  # the mode it came in, not train()


class Seen(Exception):
    pass


@pytest.mark.parametrize("task_name", sorted(TASKS))
def test_every_task_evaluates_in_eval_mode_and_restores_train_mode(task_name, tmp_path):
    _, cfg = load_config([*TINY_RUN, f"task={task_name}", "cell=lstm", *tiny.overrides(task_name, tmp_path)])
    task, model, _ = build(cfg, prepare=True)
    task.device = torch.device("cpu")
    seen = []
    hook = model.register_forward_pre_hook(lambda m, args: seen.append((m.training, torch.is_grad_enabled())))
    model.train()
    task.evaluate(model, "valid")  # called directly, without the trainer's wrapper
    assert seen and set(seen) == {(False, False)}
    assert model.training and all(m.training for m in model.modules())
    hook.remove()

    def fail(m, args):
        raise Seen

    model.register_forward_pre_hook(fail)
    with pytest.raises(Seen):
        evaluate(task, model, "valid")
    assert model.training and all(m.training for m in model.modules())
