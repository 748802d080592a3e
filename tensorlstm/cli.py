"""`tlstm`: train | eval | info | sample | reproduce | bench.

`train` runs under Hydra (so `-m` sweeps, launchers and `--cfg job` work as usual). Before Hydra starts,
a preflight composes the config once to turn mistakes into one-line errors (exit code 2): an unknown
task/cell/experiment, a key that does not exist, a value of the wrong type, rank < 1, and to point
`resume=auto` at the newest unfinished run of the same config. HYDRA_FULL_ERROR=1 shows tracebacks.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path

from tensorlstm.errors import ArgumentParser, UserError
from tensorlstm.paths import check_config_dir, config_dir, register_resolvers, source_root

CONFIG_DIR = config_dir()  # configs/ of a checkout, the packaged copy, or $TLSTM_CONFIG_DIR
register_resolvers()  # at import: a submitit job process imports this module before Hydra names its folder
GROUPS = ("task", "cell", "optim", "trainer", "logger", "experiment")
USAGE = """usage: tlstm <command> [args]

  train [overrides...] [-m]        train a task x cell, e.g. tlstm train task=addition cell=bt rank=4
  eval <run dir | ckpt> [overrides] evaluate a checkpoint on the test split; writes eval.json
  info [overrides...]              build the model without data and print parameter counts as JSON
  compress <dense run dir> cell=tt rank=4 [overrides] [-m]
                                   decompose a trained lstm/gru into tt|bt|cp|tucker and fine-tune it
  sample <run dir | ckpt> [--n N]  draw samples from a trained generative model (draw_mnist)
  reproduce <table> [--rows A,B] [--folds 0,1|all] [--collect] [--publish] [overrides]
                                   (--rows again for more rows; a name with a comma is matched whole first)
                                   run the rows of configs/table/<table>.yaml; write table.md/.csv,
                                   report.md, params_vs_metric.png, curves.png (--publish: to docs/results/)
  reproduce --publish              regenerate README's results section and docs/results.md from docs/results/
  bench [--quick] [--out F]        speed benchmark of the maps and cells (ratios to dense baselines)

configs: {config_dir}  (TLSTM_CONFIG_DIR=<dir> uses a folder of your own)
"""


# ---------------------------------------------------------------------------------------------------------
# config composition and preflight checks
# ---------------------------------------------------------------------------------------------------------
def _choices(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def _check_group_choices(overrides: list[str]) -> None:
    check_config_dir(CONFIG_DIR)
    for ov in overrides:
        key, sep, value = ov.lstrip("+~").partition("=")
        if not sep or key not in GROUPS or value in ("null", ""):
            continue
        for v in value.split(",") if not value.startswith(("[", "range(", "choice(", "glob(")) else []:
            if v not in _choices(key):
                raise UserError(f"unknown {key} {v!r}; choose one of: {', '.join(_choices(key))}")


def compose(overrides: list[str], hydra: bool = False):
    """Compose the `train` config with Hydra's compose API (no run directory, no logging set-up)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    _check_group_choices(overrides)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return hydra_compose("train", overrides=overrides, return_hydra_config=hydra)
    except Exception as e:  # Hydra/OmegaConf errors -> one line, naming the override that does not parse
        raise UserError(f"{_unparsable(overrides) or ''}{_one_line(e)}; check the spelling against "
                        "`tlstm train --cfg job`") from e


def _unparsable(overrides: list[str]) -> str | None:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for ov in overrides:
        try:
            parser.parse_overrides([ov])
        except Exception:  # noqa: BLE001
            return f"{ov}: "
    return None


def _one_line(e: Exception) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return " ".join(lines[:2]) if lines else type(e).__name__


def to_dict(cfg) -> dict:
    from omegaconf import OmegaConf, open_dict

    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.pop("hydra", None)
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except Exception as e:
        raise UserError(f"config does not resolve: {_one_line(e)}; check the ${{...}} references") from e


def _check_types(base, full, path: str = "") -> None:
    """A value of another type than the default (e.g. trainer.max_steps=abc) is an error."""
    if isinstance(full, dict) and isinstance(base, dict):
        for k, v in full.items():
            if k in base:
                _check_types(base[k], v, f"{path}.{k}" if path else k)
        return
    if base is None or full is None or isinstance(base, str) or path.split(".")[-1] in ("rank", "P", "decoder_cell"):
        return
    if isinstance(base, bool):
        ok, want = isinstance(full, bool), "true or false"
    elif isinstance(base, int):
        ok, want = isinstance(full, int) and not isinstance(full, bool), "an integer"
    elif isinstance(base, float):
        ok, want = isinstance(full, (int, float)) and not isinstance(full, bool), "a number"
    elif isinstance(base, list):
        ok, want = isinstance(full, list), "a list like [1,2]"
    else:
        return
    if not ok:
        raise UserError(f"{path}={full!r} has the wrong type: expected {want} (default {base!r})")


def _flat_keys(d: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.append(key)
        if isinstance(v, dict):
            out += _flat_keys(v, key + ".")
    return out


# old key -> (new key, its values): refused with a one-line hint (runs saved with the old key still load)
RENAMED_KEYS = {"cell.mode": ("cell.forward", "factorized | reconstruct | auto")}


def _check_keys(overrides: list[str], base: dict) -> None:
    """Every override names a key of the composed defaults: a misspelled or invented key (`+trainer.maxsteps=5`,
    which Hydra would add and nothing would read) is refused, with the closest real key."""
    import difflib

    keys = set(_flat_keys(base))
    for ov in overrides:
        raw, sep, _ = ov.partition("=")
        key = raw.lstrip("+~")
        if "/" in key or "@" in key or key in GROUPS or key.split(".")[0] == "hydra":
            continue
        if raw.startswith("~"):
            raise UserError(f"{ov}: config keys cannot be deleted; set {key}=null (where null is allowed) instead")
        if not sep:
            raise UserError(f"{ov!r} is not an override: write key=value, e.g. trainer.max_steps=100")
        if key in keys:
            continue
        if key in RENAMED_KEYS:
            new, values = RENAMED_KEYS[key]
            raise UserError(f"{key} was renamed {new} ({values}); write {new}={ov.partition('=')[2]}")
        close = difflib.get_close_matches(key, sorted(keys), n=1, cutoff=0.6)
        hint = f"did you mean {close[0]}?" if close else "the keys are listed by `tlstm train --cfg job`"
        raise UserError(f"unknown config key {key} in {ov!r}; {hint}")


_DEFAULTS: dict[tuple, dict] = {}


def load_config(overrides: list[str], hydra: bool = False):
    """Compose, check keys and types, validate; returns (the composed config, its resolved dict)."""
    from tensorlstm.engine.build import validate

    group_only = [o for o in overrides if o.lstrip("+~").partition("=")[0] in GROUPS]
    key = (str(CONFIG_DIR), tuple(group_only))
    if key not in _DEFAULTS:  # the defaults of these groups (read only below), composed once per process
        _DEFAULTS[key] = to_dict(compose(group_only))
    base = _DEFAULTS[key]
    _check_keys(overrides, base)
    full = compose(overrides, hydra=hydra)
    cfg = to_dict(full)
    _check_types(base, cfg)
    validate(cfg)
    return full, cfg


def preflight(overrides: list[str], showing: bool = False) -> list[str]:
    """Validate the overrides of a single run; return them with hydra.run.dir set when resuming.

    `resume=<run dir or .pt>` starts from that run's own overrides (.hydra/overrides.yaml), so the same
    task and cell are rebuilt; overrides given now come after them (e.g. a larger trainer.max_steps), and the
    run's saved values follow where today's defaults differ (`_resume_pins`), so an old run trains as it did.
    `showing` (--cfg): validate only; nothing is created or resumed."""
    from tensorlstm.engine.build import check_fits

    now = overrides
    overrides = [*_saved_overrides(now), *now]
    full, cfg = load_config(overrides, hydra=True)
    if showing:
        return overrides
    check_fits(cfg)
    resume = cfg["resume"]
    explicit_dir = any(o.startswith("hydra.run.dir=") for o in overrides)
    if resume in (None, "", "none", "null"):
        _check_writable(Path(full.hydra.run.dir), "hydra.run.dir")
        return overrides
    if explicit_dir and resume == "auto":  # e.g. tlstm reproduce: this very dir, resumed when it holds a run
        run_dir, pins = Path(full.hydra.run.dir), []
        if (run_dir / "checkpoints" / "last.pt").exists():
            pins = _say_pins(run_dir, _resume_pins(run_dir, _run_overrides(run_dir), now, cfg, same_command=True) or [])
        if not pins:
            _check_writable(run_dir, "hydra.run.dir")
        return [*overrides, *pins]
    run_dir, pins = _resume_dir(str(resume), Path(full.hydra.run.dir), cfg, now)
    if run_dir is None:
        _check_writable(Path(full.hydra.run.dir), "hydra.run.dir")
        print("tensorlstm: resume=auto found no unfinished run of this config; starting a new run")
        return overrides
    return [*overrides, *pins] if explicit_dir else [*overrides, *pins, f"hydra.run.dir={run_dir}"]


def preflight_sweep(overrides: list[str], showing: bool = False) -> None:
    """`-m`: every job of the sweep is validated as a single run would be, before the first one starts."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from tensorlstm.engine.build import check_fits

    _check_group_choices(overrides)
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as e:  # noqa: BLE001 - Hydra's parse errors -> one line
        raise UserError(f"{_one_line(e)}; a sweep is written key=a,b (e.g. cell=lstm,tt rank=2,4)") from e
    if any(o.startswith("hydra/sweeper=") for o in overrides):  # Optuna & co. draw the points themselves:
        parsed = [o for o in parsed if not o.is_sweep_override()]  # check the fixed part once
        overrides = [o.input_line for o in parsed]
    jobs = [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]
    swept = {o.key_or_group for o in parsed if o.is_sweep_override()}
    full = None
    for i, job in enumerate(jobs):
        try:
            full, cfg = load_config(job, hydra=True)
            if not showing:
                check_fits(cfg)
        except UserError as e:
            point = " ".join(o for o in job if o.lstrip("+").partition("=")[0] in swept)
            raise UserError(f"sweep job {i} of {len(jobs)} ({point}): {e}") from None
    if full is not None and not showing:
        _check_writable(Path(full.hydra.sweep.dir), "hydra.sweep.dir")


def _check_writable(path: Path, key: str) -> None:
    """The run (or sweep) directory can be made and written; the probe leaves nothing behind."""
    made = not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".tlstm_write_probe"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise UserError(f"{key}={path}: cannot create or write there ({e.strerror or e}); "
                        f"choose a writable folder, e.g. {key}=outputs/my_run") from None
    finally:
        if made and path.is_dir():
            try:
                path.rmdir()
            except OSError:
                pass


def _saved_overrides(overrides: list[str]) -> list[str]:
    """The overrides a run was started with, when `resume=` names a run dir or a checkpoint in one."""
    value = next((o.partition("=")[2] for o in overrides if o.startswith("resume=")), None)
    if value in (None, "", "auto", "null", "none"):
        return []
    from tensorlstm.engine.checkpoint import run_dir_of

    return _run_overrides(run_dir_of(value))


def _run_overrides(run_dir: Path) -> list[str]:
    """A run's own overrides (.hydra/overrides.yaml) without the hydra.* and resume= ones, in today's key names
    (engine.checkpoint.RENAMED; REMOVED keys dropped); [] without the file."""
    from omegaconf import OmegaConf

    from tensorlstm.engine.checkpoint import REMOVED, RENAMED

    saved = run_dir / ".hydra" / "overrides.yaml"
    if not saved.is_file():
        return []
    out = []
    for o in OmegaConf.to_container(OmegaConf.load(saved)):
        prefix = o[: len(o) - len(o.lstrip("+~"))]
        key, sep, value = o[len(prefix):].partition("=")
        if o.startswith(("hydra.", "resume=")) or key in REMOVED:
            continue
        out.append(f"{prefix}{RENAMED.get(key, key)}{sep}{value}")
    return out


def _saved_config(run_dir: Path) -> dict | None:
    from omegaconf import OmegaConf

    saved = run_dir / ".hydra" / "config.yaml"
    return OmegaConf.to_container(OmegaConf.load(saved), resolve=True) if saved.is_file() else None


def _override_value(value) -> str:
    """A value as Hydra's override grammar reads it back (null, true, 3, 1e-05, 'text', [1,2])."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_override_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_override_value(v)}" for k, v in value.items()) + "}"
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def _resume_pins(run_dir: Path, run_overrides: list[str], now: list[str], cfg: dict,
                 same_command: bool = False) -> list[str] | None:
    """Overrides that keep a run's saved values of the keys whose defaults moved since it was saved (see
    engine.checkpoint: the ADDED table and resume_pins), so it resumes and trains as before; keys the user sets
    now (`now`, or changed by it against the run's own overrides) are not pinned. [] when nothing moved. With
    `same_command` (resume=auto) the run qualifies only when its own overrides compose, today, to `cfg` up to
    keys that may change on resume; else None."""
    from tensorlstm.engine.checkpoint import config_differences, leaf_values, resume_pins

    saved = _saved_config(run_dir)
    differences = config_differences(saved, cfg) if saved is not None else []
    if not differences:
        return []
    base = to_dict(compose(run_overrides))  # the run's own command, composed today
    if same_command and config_differences(base, cfg):
        return None
    named = {o.lstrip("+~").partition("=")[0] for o in now if "=" in o}
    named = {k for k in named if k not in GROUPS and "/" not in k and not k.startswith("hydra.")}
    today, before = leaf_values(cfg), leaf_values(base)
    named |= {k for k, v in today.items() if k not in before or before[k] != v}
    pins = resume_pins(saved, cfg, named)
    if same_command and any(d.partition(":")[0] not in pins for d in differences):
        return None  # pinning leaves a difference: another run
    return [f"{k}={_override_value(v)}" for k, v in pins.items()]


def _say_pins(run_dir: Path, pins: list[str]) -> list[str]:
    if pins:
        print(f"tensorlstm: resume: {run_dir} keeps its saved values where today's defaults differ: {' '.join(pins)}")
    return pins


def _resume_dir(resume: str, new_run_dir: Path, cfg: dict, now: list[str]) -> tuple[Path | None, list[str]]:
    """The run to continue and the overrides that pin its saved values (`_resume_pins`)."""
    from tensorlstm.engine.checkpoint import check_resumable, load_checkpoint, run_dir_of

    if resume != "auto":
        run_dir = run_dir_of(resume)
        if not (run_dir / "checkpoints" / "last.pt").exists() and not resume.endswith(".pt"):
            raise UserError(f"resume={resume}: no checkpoints/last.pt there; pass a run dir of tlstm train")
        load_checkpoint(resume if resume.endswith(".pt") else run_dir / "checkpoints" / "last.pt", mmap=True)
        saved = _saved_config(run_dir)
        if saved is None:
            return run_dir, []
        own = _run_overrides(run_dir)
        pins = _say_pins(run_dir, _resume_pins(run_dir, own, now, cfg))
        if pins:
            _, cfg = load_config([*own, *now, *pins])
        check_resumable(saved, cfg, str(run_dir))  # checked before Hydra rewrites the run's .hydra/ files
        return run_dir, pins
    found = []
    for d in new_run_dir.parent.glob("*"):
        if (d / "checkpoints" / "last.pt").exists() and not (d / "summary.json").exists() and \
                (d / ".hydra" / "config.yaml").exists():
            pins = _resume_pins(d, _run_overrides(d), now, cfg, same_command=True)
            if pins is not None:
                found.append((d, pins))
    if not found:
        return None, []
    run_dir, pins = max(found, key=lambda f: (f[0] / "checkpoints" / "last.pt").stat().st_mtime)
    return run_dir, _say_pins(run_dir, pins)


# ---------------------------------------------------------------------------------------------------------
# commands
# ---------------------------------------------------------------------------------------------------------
HYDRA_HELP_FLAGS = ("--help", "-h", "--hydra-help", "--info", "-i", "--shell-completion", "-sc")
CFG_CHOICES = ("job", "hydra", "all")


def _split_train_args(args: list[str], command: str = "train") -> tuple[list[str], list[str]]:
    """Hydra's flags of `tlstm train` (-m, --cfg X, --package X, --resolve) and the key=value overrides."""
    parser = ArgumentParser(f"tlstm {command}", add_help=False)  # --help goes to Hydra (cmd_train)
    parser.add_argument("-m", "--multirun", action="store_true")
    parser.add_argument("-c", "--cfg", choices=CFG_CHOICES)
    parser.add_argument("-p", "--package")
    parser.add_argument("--resolve", action="store_true")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    ns = parser.parse_intermixed_args(args)
    flags = [*(["-m"] if ns.multirun else []), *(["--cfg", ns.cfg] if ns.cfg else []),
             *(["--package", ns.package] if ns.package else []), *(["--resolve"] if ns.resolve else [])]
    return flags, ns.overrides


def cmd_train(args: list[str]) -> int:
    import hydra
    from hydra.core.hydra_config import HydraConfig

    from tensorlstm.engine import distributed

    world = distributed.env_world()
    if world.enabled:  # torchrun: rank 0 runs Hydra (run dir, logs) and hands the config to the other ranks
        if any(a in ("-m", "--multirun", "--cfg", "-c", *HYDRA_HELP_FLAGS) for a in args):
            raise UserError("under torchrun, tlstm train runs one job: no -m sweeps, --cfg or --help (sweep with "
                            "hydra/launcher=slurm and start torchrun inside each job instead)")
        distributed.init()
        if not world.main:
            return _train_follower(world)
    if not any(a in HYDRA_HELP_FLAGS for a in args):  # Hydra's own help and info need no checks
        flags, overrides = _split_train_args(args)
        showing = "--cfg" in flags or "-c" in flags
        if "-m" in flags or "--multirun" in flags:
            preflight_sweep(overrides, showing)
            overrides = [*overrides, *_sweeper_direction(overrides)]
        else:
            overrides = preflight(overrides, showing)
        args = [*flags, *overrides]

    @hydra.main(config_path=str(CONFIG_DIR), config_name="train", version_base="1.3")
    def job(cfg) -> float | None:
        from tensorlstm.engine.trainer import TrainingStopped, train

        run_dir = Path(HydraConfig.get().runtime.output_dir)
        try:
            resolved = to_dict(cfg)
            distributed.broadcast((resolved, str(run_dir)), world)
            summary = train(resolved, run_dir)
            distributed.barrier(world)  # the other ranks wait for rank 0's test evaluation, then all tear down
        except UserError as e:
            _discard_unstarted(run_dir)
            _fail(e)
        except TrainingStopped as e:
            print(f"tensorlstm: {e}", file=sys.stderr)
            sys.exit(e.exit_code)
        except (MemoryError, RuntimeError) as e:
            if not _out_of_memory(e):
                raise
            _discard_unstarted(run_dir)
            _fail(UserError(f"out of memory ({_one_line(e)[:120]}); lower task.batch_size or task.hidden_size, "
                            "or use a factorized cell (cell=tt|bt|cp|tucker)"))
        print(f"run dir: {run_dir}")
        print(f"final metrics: {json.dumps(final_metrics(summary))}")
        return summary["best_valid"]  # the task's validation metric: what a sweeper (Optuna) optimises

    # optuna 2.10 (the newest hydra-optuna-sweeper allows) imports a name SQLAlchemy 2 moved: noise, not a fault
    warnings.filterwarnings("ignore", message=r"The ``declarative_base\(\)`` function is now available")
    sys.argv = ["tlstm train", *args]
    try:
        job()
    finally:
        distributed.shutdown()
    return 0


def _train_follower(world) -> int:
    """A rank > 0 of a torchrun launch: no Hydra, no run dir of its own; rank 0's config and run dir."""
    from tensorlstm.engine import distributed
    from tensorlstm.engine.trainer import TrainingStopped, train

    try:
        cfg, run_dir = distributed.broadcast(None, world)
        train(cfg, Path(run_dir))
        distributed.barrier(world)  # leave together with rank 0 (see cmd_train), not while it still evaluates
    except TrainingStopped as e:
        sys.exit(e.exit_code)  # rank 0 says why
    finally:
        distributed.shutdown()
    return 0


def _sweeper_direction(overrides: list[str]) -> list[str]:
    """With an Optuna sweeper (hydra/sweeper=optuna or a config built on it), the direction the task's
    validation metric wants (maximize accuracy, minimize bpc/nll), unless hydra.sweeper.direction is given."""
    if not any(o.startswith("hydra/sweeper=") for o in overrides) or \
            any(o.startswith("hydra.sweeper.direction=") for o in overrides):
        return []
    from tensorlstm.tasks import task_class

    picks = [o for o in overrides if o.partition("=")[0] in ("task", "experiment", "hydra/sweeper") and "," not in o]
    full = compose(picks, hydra=True)
    if "optuna" not in str(full.hydra.sweeper.get("_target_", "")):
        return []
    name = to_dict(full)["task"]["name"]
    return [f"hydra.sweeper.direction={'maximize' if task_class(name).higher_is_better else 'minimize'}"]


def final_metrics(summary: dict) -> dict:
    """The end-of-run line: best validation and test metrics, named by split and rounded to 4 significant digits."""
    out = {f"best_valid_{summary['metric']}": summary["best_valid"]}
    out.update({f"test_{k}": v for k, v in summary["test"].items()})
    return {k: float(f"{v:.4g}") if isinstance(v, float) else v for k, v in out.items()}


def _out_of_memory(e: BaseException) -> bool:
    text = str(e).lower()
    return isinstance(e, MemoryError) or "out of memory" in text or "can't allocate memory" in text


def _discard_unstarted(run_dir: Path) -> None:
    """A run that failed before its first checkpoint or record leaves no half-made run directory: remove what
    Hydra wrote (.hydra/, train.log), and the folder if nothing else is in it. Anything else is kept."""
    if (run_dir / "checkpoints").exists() or (run_dir / "metrics.jsonl").exists():
        return
    for name in (".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml", "train.log"):
        (run_dir / name).unlink(missing_ok=True)
    for folder in (run_dir / ".hydra", run_dir):
        try:
            folder.rmdir()
        except OSError:
            pass


def cmd_compress(args: list[str]) -> int:
    """`tlstm train` with the dense run's overrides first and compress.source set (see engine/compress.py)."""
    from tensorlstm.engine.compress import source_overrides

    if not args or args[0].startswith("-") or "=" in args[0]:
        raise UserError("tlstm compress needs the run dir of a dense lstm/gru run first, e.g. "
                        "tlstm compress outputs/smnist/lstm/<time> cell=tt rank=4")
    flags, overrides = _split_train_args(args[1:], "compress <dense run dir>")
    return cmd_train([*flags, *source_overrides(args[0], overrides)])


def _parse(command: str, args: list[str], *flags: tuple[tuple[str, ...], dict], target: str | None = None):
    """`tlstm <command>` arguments: an optional leading `target` (a run dir, a table), the `flags`
    ((names, add_argument keywords)) and key=value overrides, through the one ArgumentParser."""
    parser = ArgumentParser(f"tlstm {command}")
    if target:
        parser.add_argument(target, nargs="?")
    for names, kwargs in flags:
        parser.add_argument(*names, **kwargs)
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    return parser.parse_intermixed_args(args)


def cmd_info(args: list[str]) -> int:
    from tensorlstm.engine.build import build, model_info, primary_net

    _, cfg = load_config(_parse("info", args).overrides)
    _, model, factory = build(cfg)
    info = model_info(model, factory)
    info["cell"] = {**cfg["cell"], **primary_net(model, factory).describe()}
    print(json.dumps(info, indent=2, default=str))
    return 0


def _load_for_eval(target: str, overrides: list[str], name: str):
    import torch
    from omegaconf import OmegaConf

    from tensorlstm.engine.build import build
    from tensorlstm.engine.checkpoint import find_checkpoint, load_checkpoint, run_dir_of
    from tensorlstm.engine.seeding import resolve_device

    path = Path(target)
    ckpt_path = find_checkpoint(path, name) if path.is_file() or (path / "checkpoints" / name).exists() \
        else find_checkpoint(path, "last.pt")
    ckpt = load_checkpoint(ckpt_path)
    base = OmegaConf.create(ckpt["config"])
    OmegaConf.set_struct(base, True)  # a misspelled key is an error, not a new key
    try:
        cfg = OmegaConf.to_container(OmegaConf.merge(base, OmegaConf.from_dotlist(overrides)))
    except Exception as e:
        raise UserError(f"{' '.join(overrides)}: {_one_line(e)}; keys are those of the run's config") from e
    _check_types(ckpt["config"], cfg)
    task, model, _ = build(cfg, prepare=True)
    device = resolve_device(cfg["device"])
    model.load_state_dict(ckpt["model"])
    model.to(device)  # the task's evaluate/sample switch to eval mode (tasks.common.evaluating)
    task.device = device
    torch.manual_seed(int(cfg["seed"]))
    return task, model, cfg, ckpt_path, run_dir_of(ckpt_path)


def cmd_eval(args: list[str]) -> int:
    from tensorlstm.engine.trainer import test_evaluation

    ns = _parse("eval", args, target="run")
    if not ns.run:
        raise UserError("tlstm eval needs a run directory or a checkpoint: tlstm eval outputs/<task>/<cell>/<time>")
    task, model, cfg, ckpt_path, run_dir = _load_for_eval(ns.run, ns.overrides, "best.pt")
    metrics, _ = test_evaluation(task, model, run_dir)  # as at the end of training: also the task's test files
    out = {"checkpoint": str(ckpt_path), "split": "test", **metrics}
    (run_dir / "eval.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out))
    return 0


def cmd_sample(args: list[str]) -> int:
    ns = _parse("sample", args, (("--n",), dict(default="64", help="number of samples")), target="run")
    if not ns.run:
        raise UserError("tlstm sample needs a run directory or a checkpoint of a generative task (draw_mnist)")
    if not ns.n.isdigit() or int(ns.n) < 1:
        raise UserError(f"--n {ns.n}: give the number of samples as a positive integer, e.g. --n 64")
    n = int(ns.n)
    task, model, cfg, _, run_dir = _load_for_eval(ns.run, ns.overrides, "best.pt")
    if not hasattr(task, "sample"):
        raise UserError(f"task {cfg['task']['name']} cannot sample; pass a run of a generative task (task=draw_mnist)")
    from datetime import datetime

    out = task.sample(model, run_dir / f"sample_{datetime.now():%Y%m%d_%H%M%S}.png", n)
    print(out)
    return 0


def cmd_reproduce(args: list[str]) -> int:
    from tensorlstm.reproduce.table import publish_index, reproduce

    if args == ["--publish"]:  # only regenerate README's results section and docs/results.md from docs/results/
        changed = publish_index(_source_checkout())
        print("regenerated: " + (", ".join(str(p) for p in changed) if changed else "nothing (already up to date)"))
        return 0
    ns = _parse("reproduce", args,
                (("--rows",), dict(action="append", metavar="ROWS", help="row names, comma-separated or repeated")),
                (("--folds",), dict(help="0,1,2 | all")),
                (("--collect",), dict(action="store_true", help="only read finished runs")),
                (("--publish",), dict(action="store_true", help="write docs/results/ and the README")),
                target="table")
    if not ns.table:
        raise UserError(f"tlstm reproduce needs a table name; choose one of: {', '.join(_choices('table'))}")
    return reproduce(ns.table, CONFIG_DIR, ns.overrides, collect_only=ns.collect, only_rows=ns.rows, folds=ns.folds,
                     publish_to=_source_checkout() if ns.publish else None, check=load_config)


def _source_checkout() -> Path:
    """The source checkout `--publish` writes into (its docs/results/, README.md and docs/results.md)."""
    checkout = source_root()
    if not all((checkout / f).exists() for f in ("configs/train.yaml", "docs/results", "README.md")):
        raise UserError("--publish writes into a source checkout's docs/results/ and README.md; run it from a "
                        "git clone of tensorlstm (pip install -e .)")
    return checkout


def cmd_bench(args: list[str]) -> int:
    from tensorlstm.bench import main as bench_main

    return bench_main(args)


COMMANDS = {"train": cmd_train, "eval": cmd_eval, "info": cmd_info, "sample": cmd_sample,
            "reproduce": cmd_reproduce, "bench": cmd_bench, "compress": cmd_compress}


def _fail(e: UserError) -> None:
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise e
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] not in COMMANDS and argv[0] not in ("-h", "--help", "help"):
        print(f"error: unknown command {argv[0]!r}; choose one of: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    try:
        if not argv or argv[0] not in COMMANDS:
            print(USAGE.format(config_dir=CONFIG_DIR))
            return 0
        return COMMANDS[argv[0]](argv[1:]) or 0
    except UserError as e:
        _fail(e)
    except BrokenPipeError:  # e.g. `tlstm info ... | head`
        sys.stderr.close()
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
