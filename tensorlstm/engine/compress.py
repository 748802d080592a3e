"""`tlstm compress <dense run> cell=tt|bt|cp|tucker rank=R`: initialise a factorized cell from a trained dense one.

The CLI turns the positional run dir into the config key ``compress.source`` and puts the dense run's own
overrides (``.hydra/overrides.yaml``) in front of the user's, so the fine-tune run rebuilds the same task. The run
itself is an ordinary `train` run: before its first step the trainer calls `warm_start`, which

1. rebuilds the dense model from the source checkpoint (``compress.checkpoint``: best.pt or last.pt) with the
   trainer's task object, and evaluates it on the test split (the metric before compression);
2. decomposes, per recurrent net and layer, the input-to-hidden matrix (and with ``cell.factorize_hidden`` the
   hidden-to-hidden one) into the new cell's map (`tensorlstm.tensor.decompose`, same modes, same factor layout),
   copies W_hh when it stays dense, the biases (torch's two LSTM/GRU bias vectors folded into the cell's one
   bias, the GRU's b_hn kept apart) and every weight outside the recurrent nets;
3. evaluates the compressed model on the test split (the metric right after compression);

and returns the facts that go into summary.json (and every checkpoint, so a resumed run keeps them).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from tensorlstm.cells.base import RecurrentNet
from tensorlstm.cells.recurrent import FusedRecurrent, RecurrentLayer, StackedRecurrent
from tensorlstm.engine.build import CellFactory, primary_net
from tensorlstm.engine.checkpoint import find_checkpoint, load_checkpoint, run_dir_of
from tensorlstm.errors import UserError
from tensorlstm.tensor.decompose import decompose_into
from tensorlstm.tensor.dense import DenseMap

log = logging.getLogger("tensorlstm")

FORMATS = ("tt", "bt", "cp", "tucker")
# cell keys that define the function of the recurrence: the factorized cell must keep the dense run's values
SAME_CELL_KEYS = ("base", "layers", "gate_activation")  # (GRU reset_after: checked per layer)


def _key(override: str) -> str:
    return override.lstrip("+~").partition("=")[0]


def source_config(source: str | Path, checkpoint: str = "best.pt") -> tuple[Path, dict]:
    """(checkpoint path, its resolved config) of a dense LSTM/GRU run; a one-line error for anything else."""
    path = find_checkpoint(source, checkpoint) if Path(source).is_file() or \
        (run_dir_of(source) / "checkpoints" / checkpoint).exists() else find_checkpoint(source, "last.pt")
    cfg = load_checkpoint(path)["config"]
    cell = cfg["cell"]
    if cell.get("format") != "dense" or cell.get("base") not in ("lstm", "gru"):
        raise UserError(f"{source} is a cell={cell.get('name')} run; tlstm compress needs a run of a dense "
                        "lstm or gru (cell=lstm|gru)")
    return path, cfg


def source_overrides(source: str, overrides: list[str]) -> list[str]:
    """The overrides of the fine-tune run: the dense run's own (minus the keys given now), then the user's, then
    compress.source. A run dir that is not a dense LSTM/GRU run, or no target format, is a one-line error."""
    from omegaconf import OmegaConf

    keys = {_key(o) for o in overrides}
    if "cell" not in keys:
        raise UserError(f"tlstm compress needs the target format: cell={'|'.join(FORMATS)} (and rank=R)")
    for o in overrides:
        if _key(o) == "cell":
            for name in o.partition("=")[2].split(","):
                if name not in FORMATS:
                    raise UserError(f"cell={name} is dense or no LSTM/GRU map; compress into one of "
                                    f"cell={'|'.join(FORMATS)}")
    if "task" in keys or "experiment" in keys:
        raise UserError("tlstm compress fine-tunes on the dense run's own task; drop task=/experiment= "
                        "(task.* settings such as task.batch_size may change)")
    source_config(source)
    run = run_dir_of(source)
    saved = run / ".hydra" / "overrides.yaml"
    if not saved.is_file():
        raise UserError(f"{run} has no .hydra/overrides.yaml; pass a run directory written by tlstm train")
    kept = [o for o in OmegaConf.to_container(OmegaConf.load(saved))
            if not o.startswith(("hydra.", "resume=", "compress.source=")) and _key(o) not in keys]
    return [*kept, *overrides, f"compress.source={run.resolve()}"]


def check_target(cfg: dict, source_cfg: dict) -> None:
    """The fine-tune config must be a factorized cell on the dense run's task with the same recurrence."""
    cell = cfg["cell"]
    if cell["format"] not in FORMATS:
        raise UserError(f"cell={cell['name']} is dense; compress into one of cell={'|'.join(FORMATS)}")
    if cfg["task"]["name"] != source_cfg["task"]["name"]:
        raise UserError(f"task {cfg['task']['name']} is not the dense run's task {source_cfg['task']['name']}; "
                        "compress fine-tunes on the task the dense model was trained on")
    for k in SAME_CELL_KEYS:
        if cell[k] != source_cfg["cell"].get(k, cell[k]):
            raise UserError(f"cell.{k}={cell[k]} differs from the dense run's {source_cfg['cell'][k]}; the "
                            f"compressed cell keeps the dense one's recurrence (drop cell.{k}=)")


# --- dense weights in the cell's layout ---------------------------------------------------------------------
def dense_layers(net: RecurrentNet) -> list[dict]:
    """Per layer (float64, CPU): W_ih (I x G*H) and W_hh (H x G*H) as RecurrentLayer multiplies them (x @ W),
    its single bias (G*H) and the reset-after GRU's b_hn (H) or None."""
    def f64(t: torch.Tensor) -> torch.Tensor:
        return t.detach().cpu().double()

    layers = []
    if isinstance(net, FusedRecurrent):
        H = net.rnn.hidden_size
        for i in range(net.rnn.num_layers):
            w_ih, w_hh, b_ih, b_hh = (f64(getattr(net.rnn, f"{n}_l{i}"))
                                      for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
            if net.base == "lstm":  # both biases add up before the gates
                bias, bias_hn = b_ih + b_hh, None
            else:  # torch's GRU: b_hr, b_hz add to the gates; b_hn sits inside r * (h U_n + b_hn)
                bias = b_ih + torch.cat([b_hh[: 2 * H], b_hh.new_zeros(H)])
                bias_hn = b_hh[2 * H:]
            layers.append({"w_ih": w_ih.T, "w_hh": w_hh.T, "bias": bias, "bias_hn": bias_hn, "base": net.base,
                           "reset_after": net.base == "gru"})
        return layers
    if isinstance(net, StackedRecurrent) and all(isinstance(la.input_map, DenseMap) for la in net.layers):
        for la in net.layers:
            layers.append({"w_ih": f64(la.input_map.weight), "w_hh": f64(la.recurrent_weight()), "bias": f64(la.bias),
                           "bias_hn": None if la.bias_hn is None else f64(la.bias_hn), "base": la.base,
                           "reset_after": la.reset_after})
        return layers
    raise UserError(f"{type(net).__name__} is not a dense LSTM/GRU; tlstm compress needs a run of cell=lstm|gru")


def _decompose(target, w: torch.Tensor, name: str, ccfg: dict) -> dict:
    try:
        err = decompose_into(target, w, iterations=int(ccfg["iterations"]), tol=float(ccfg["tol"]),
                             seed=int(ccfg["seed"]))
    except ValueError as e:  # shapes: the task's sizes changed since the dense run
        raise UserError(f"{name}: {e}; keep the dense run's task.* and cell.hidden_size settings") from e
    return {"matrix": name, "shape": list(w.shape), "in_modes": list(target.in_modes),
            "out_modes": list(target.out_modes), "reconstruction_error": err,
            "params_before": w.numel(), "params_after": target.num_params}


def compress_net(dense: RecurrentNet, net: RecurrentNet, name: str, ccfg: dict) -> list[dict]:
    """Load the factorized `net` from the dense one; one record per decomposed matrix."""
    src = dense_layers(dense)
    if not isinstance(net, StackedRecurrent) or len(net.layers) != len(src):
        raise UserError(f"{name}: the factorized net does not have the dense net's {len(src)} layer(s)")
    records = []
    with torch.no_grad():
        for i, (s, layer) in enumerate(zip(src, net.layers)):
            layer: RecurrentLayer
            if (layer.base, layer.reset_after) != (s["base"], s["reset_after"]):
                raise UserError(f"{name}.layers.{i}: a {layer.base} layer (reset_after={layer.reset_after}) cannot "
                                f"take the dense {s['base']} (reset_after={s['reset_after']}); keep cell.base")
            records.append(_decompose(layer.input_map, s["w_ih"], f"{name}.layers.{i}.input_map", ccfg))
            if layer.hidden_map is not None:
                records.append(_decompose(layer.hidden_map, s["w_hh"], f"{name}.layers.{i}.hidden_map", ccfg))
            else:
                layer.weight_hh.copy_(s["w_hh"])
            layer.bias.copy_(s["bias"])
            if layer.bias_hn is not None:
                layer.bias_hn.copy_(s["bias_hn"])
    return records


def _prefixes(model: nn.Module, nets: list[RecurrentNet]) -> list[str]:
    names = {id(m): n for n, m in model.named_modules()}
    return [names[id(net)] + "." if names[id(net)] else "" for net in nets]


def copy_other_weights(dense: nn.Module, model: nn.Module, dense_nets: list, nets: list) -> int:
    """Copy every parameter/buffer outside the recurrent nets by name; returns how many tensors were copied."""
    def outside(state: dict, prefixes: list[str]) -> dict:
        return {k: v for k, v in state.items() if not any(k.startswith(p) for p in prefixes)}

    src = outside(dense.state_dict(), _prefixes(dense, dense_nets))
    dst = outside(model.state_dict(), _prefixes(model, nets))
    if set(src) != set(dst) or any(src[k].shape != dst[k].shape for k in dst):
        bad = sorted(set(src) ^ set(dst)) or [k for k in dst if src[k].shape != dst[k].shape]
        raise UserError(f"the model around the recurrent net differs from the dense run's ({bad[0]}); keep the "
                        "dense run's task.* settings")
    with torch.no_grad():
        for k, v in dst.items():
            v.copy_(src[k])
    return len(dst)


def warm_start(cfg: dict, task, model: nn.Module, factory: CellFactory, device: torch.device) -> dict:
    """Steps 1-3 of the module docstring; returns the facts for summary.json."""
    from tensorlstm.engine.trainer import evaluate

    ccfg = cfg["compress"]
    ckpt_path, source_cfg = source_config(ccfg["source"], ccfg["checkpoint"])
    check_target(cfg, source_cfg)
    dense_factory = CellFactory(dict(source_cfg["cell"]))
    dense = task.build_model(dense_factory)
    try:
        dense.load_state_dict(load_checkpoint(ckpt_path)["model"])
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise UserError(f"the dense checkpoint {ckpt_path} does not fit this task config ({first}); keep the "
                        "dense run's task.* settings") from e
    dense.to(device)
    if len(dense_factory.built) != len(factory.built):
        raise UserError(f"the task built {len(factory.built)} recurrent nets, the dense run {len(dense_factory.built)}")
    before = evaluate(task, dense, "test")
    matrices = []
    for i, (d_net, net) in enumerate(zip(dense_factory.built, factory.built)):
        matrices += compress_net(d_net, net, _prefixes(model, [net])[0].rstrip(".") or f"net{i}", ccfg)
    copied = copy_other_weights(dense, model, dense_factory.built, factory.built)
    after = evaluate(task, model, "test")
    main = _prefixes(model, [primary_net(model, factory)])[0].rstrip(".")
    first = next(m for m in matrices if m["matrix"] == f"{main or 'net0'}.layers.0.input_map")
    facts = {
        "compressed_from": str(ckpt_path),
        "reconstruction_error": first["reconstruction_error"],
        "params_before": sum(m["params_before"] for m in matrices),
        "params_after": sum(m["params_after"] for m in matrices),
        "metric_before_compression": before.get(task.metric),
        "metric_before_finetune": after.get(task.metric),
        "test_before_compression": before,
        "test_before_finetune": after,
        "matrices": matrices,
    }
    log.info("compressed %s: %d matrices (%s), %d other tensors copied; test %s %s -> %s", ckpt_path,
             len(matrices), ", ".join(f"{m['matrix']} err {m['reconstruction_error']:.4f}" for m in matrices),
             copied, task.metric, facts["metric_before_compression"], facts["metric_before_finetune"])
    return facts
