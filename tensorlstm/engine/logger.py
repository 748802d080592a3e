"""Run logging: metrics.jsonl in the run dir (always) and Weights & Biases (online/offline/disabled).

W&B never blocks or crashes a run: no API key -> offline with a one-line notice; any W&B failure ->
a one-line notice and the run goes on with the jsonl log only.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from tensorlstm.errors import UserError

log = logging.getLogger("tensorlstm")


def _has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


class RunLogger:
    def __init__(self, run_dir: Path, cfg: dict, logger_cfg: dict, run_id: str | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.start = time.time()
        self.wandb = None
        self.run_id = run_id
        if os.environ.get("WANDB_MODE") == "":  # an empty value is "unset" to us, invalid to wandb
            del os.environ["WANDB_MODE"]
        mode = os.environ.get("WANDB_MODE") or logger_cfg.get("mode", "offline")
        if mode not in ("online", "offline", "disabled"):
            raise UserError(f"logger.mode={mode!r}; choose online, offline or disabled")
        self.mode = mode
        if mode == "disabled":
            return
        if mode == "online" and not _has_api_key():
            print("tensorlstm: no W&B API key found (wandb login / WANDB_API_KEY); logging to W&B offline instead")
            mode = self.mode = "offline"
        try:
            os.environ.setdefault("WANDB_SILENT", "true")
            import wandb

            self.wandb = wandb.init(
                project=logger_cfg.get("project", "tensorlstm"),
                entity=logger_cfg.get("entity"),
                tags=list(logger_cfg.get("tags") or []),
                name=cfg.get("run_name"),
                config=cfg,
                dir=str(self.run_dir),
                mode=mode,
                id=run_id,
                resume="allow",
                reinit=True,
                settings=wandb.Settings(init_timeout=30, silent=True),
            )
            self.run_id = self.wandb.id
        except Exception as e:  # noqa: BLE001 - W&B must never stop a run
            print(f"tensorlstm: W&B unavailable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                  "metrics go to metrics.jsonl only")
            self.wandb = None

    def log(self, record: dict[str, Any], images: list[Path] | None = None) -> None:
        record = {**record, "wall_time": round(time.time() - self.start, 3)}
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.wandb is not None:
            try:
                split = record.get("split", "train")
                payload = {f"{split}/{k}": v for k, v in record.items()
                           if k not in ("step", "split") and isinstance(v, (int, float))}
                for img in images or []:
                    import wandb

                    payload[f"{split}/{Path(img).stem.rstrip('0123456789_')}"] = wandb.Image(str(img))
                self.wandb.log(payload, step=int(record.get("step", 0)))
            except Exception as e:  # noqa: BLE001
                log.warning("W&B log failed (%s); continuing", e)

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
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
