"""Run logging: metrics.jsonl in the run dir (always) and Weights & Biases (online/offline/disabled).

W&B never blocks or crashes a run: online without an API key, without a route to the server (probed for
PROBE_TIMEOUT_S), or with a key or server that fails wandb.init (INIT_TIMEOUT_S) -> an offline W&B run with a
one-line notice naming the `wandb sync` command; any other W&B failure -> a notice and the jsonl log only.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from tensorlstm.engine import faults
from tensorlstm.errors import UserError

log = logging.getLogger("tensorlstm")


PROBE_TIMEOUT_S = 2.0  # no answer from the W&B server within this: offline at once
INIT_TIMEOUT_S = 8.0   # a server that answers but does not finish wandb.init within this: offline
ENV_MODES = {"online": "online", "run": "online", "offline": "offline", "dryrun": "offline", "disabled": "disabled"}


def _has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def wandb_mode(logger_cfg: dict) -> str:
    """The W&B mode of a run: $WANDB_MODE when set (W&B's own variable wins), else logger.mode."""
    if os.environ.get("WANDB_MODE") == "":  # an empty value is "unset" to us, invalid to wandb
        del os.environ["WANDB_MODE"]
    env = os.environ.get("WANDB_MODE")
    if env is not None:
        if env not in ENV_MODES:
            raise UserError(f"environment variable WANDB_MODE={env!r} is not a W&B mode; unset it or set "
                            "online, offline or disabled")
        return ENV_MODES[env]
    mode = logger_cfg["mode"]
    if mode not in ("online", "offline", "disabled"):
        raise UserError(f"logger.mode={mode!r}; choose online, offline or disabled")
    return mode


def _server_unreachable() -> str | None:
    """Why the W&B server cannot be reached (no route, refused, no DNS) within PROBE_TIMEOUT_S, or None.
    Checked first because wandb.init itself retries for its whole init_timeout before giving up."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai")
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname or "", port), timeout=PROBE_TIMEOUT_S).close()
    except OSError as e:
        return f"{url.hostname}:{port} unreachable: {e.strerror or type(e).__name__}"
    return None


class RunLogger:
    def __init__(self, run_dir: Path, cfg: dict, logger_cfg: dict, run_id: str | None = None,
                 elapsed: float = 0.0) -> None:
        self.run_dir = Path(run_dir)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.start = time.time() - elapsed  # wall_time continues across resumes
        self.wandb = None
        self.run_id = run_id
        mode = self.mode = wandb_mode(logger_cfg)
        if mode == "disabled":
            return
        reason = None
        if mode == "online":
            reason = "no API key (wandb login / WANDB_API_KEY)" if not _has_api_key() else _server_unreachable()
        try:
            os.environ.setdefault("WANDB_SILENT", "true")
            import wandb

            def init(mode: str):
                return wandb.init(
                    project=logger_cfg["project"],
                    entity=logger_cfg["entity"],
                    tags=list(logger_cfg["tags"] or []),
                    name=cfg["run_name"],
                    config=cfg,
                    dir=str(self.run_dir),
                    mode=mode,
                    id=run_id,
                    resume="allow",
                    reinit=True,
                    settings=wandb.Settings(init_timeout=INIT_TIMEOUT_S, silent=True),
                )

            if mode == "online" and reason is None:
                try:
                    self.wandb = init("online")
                except Exception as e:  # noqa: BLE001 - invalid key, server error, timeout: offline instead
                    reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:160]
            if self.wandb is None:
                self.wandb = init("offline")
                if mode == "online":
                    print(f"tensorlstm: W&B online unavailable ({reason}); logging offline, upload later with "
                          f"`wandb sync {self.run_dir}/wandb/offline-run-*`")
                    self.mode = "offline"
            self.run_id = self.wandb.id
        except Exception as e:  # noqa: BLE001 - W&B must never stop a run
            print(f"tensorlstm: W&B unavailable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                  "metrics go to metrics.jsonl only")
            self.wandb = None

    def elapsed(self) -> float:
        return time.time() - self.start

    def log(self, record: dict[str, Any], images: list[Path] | None = None) -> None:
        record = {**record, "wall_time": round(time.time() - self.start, 3)}
        line = json.dumps(record) + "\n"
        with open(self.metrics_path, "a") as f:
            if faults.armed("metrics"):  # test hook: die mid-append, half a line written
                f.write(line[: len(line) // 2])
                f.flush()
                faults.kill()
            f.write(line)
        if self.wandb is not None:
            try:
                split = record.get("split", "train")
                payload = {f"{split}/{k}": v for k, v in record.items()
                           if k not in ("step", "split") and isinstance(v, (int, float))}
                payload.update(self._images(split, images))
                self.wandb.log(payload, step=int(record.get("step", 0)))
            except Exception as e:  # noqa: BLE001
                log.warning("W&B log failed (%s); continuing", e)

    def _images(self, split: str, images: list[Path] | None) -> dict:
        import wandb

        return {f"{split}/{Path(img).stem.rstrip('0123456789_')}": wandb.Image(str(img)) for img in images or []}

    def log_images(self, images: list[Path], step: int) -> None:
        """Figures (loss.png) to W&B as media under `plots/`; metrics.jsonl is for numbers only."""
        if self.wandb is not None:
            try:
                self.wandb.log(self._images("plots", images), step=int(step))
            except Exception as e:  # noqa: BLE001
                log.warning("W&B image log failed (%s); continuing", e)
    def summary(self, summary: dict[str, Any]) -> None:
        if self.wandb is not None:
            try:
                for k, v in summary.items():
                    if isinstance(v, (int, float, str)):
                        self.wandb.summary[k] = v
            except Exception as e:  # noqa: BLE001
                log.warning("W&B summary failed (%s)", e)

    def finish(self, exit_code: int = 0) -> None:
        if self.wandb is not None:
            try:
                self.wandb.finish(exit_code=exit_code)
            except Exception as e:  # noqa: BLE001
                log.warning("W&B finish failed (%s)", e)
            self.wandb = None


def read_metrics(run_dir: Path) -> list[dict]:
    """The records of metrics.jsonl; a line cut short by a kill mid-append is skipped, not an error."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def rewrite_metrics(run_dir: Path, keep) -> None:
    """Atomically replace metrics.jsonl by its records for which keep(record) is true (temp file + rename)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return
    tmp = path.with_name(".metrics.jsonl.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in read_metrics(run_dir) if keep(r)))
    os.replace(tmp, path)
