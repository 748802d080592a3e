"""Seeding and RNG state capture, so that a resumed CPU run is bit-for-bit an uninterrupted one."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from tensorlstm.errors import UserError


def seed_everything(seed: int, deterministic: bool = True) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def resolve_device(name: str) -> torch.device:
    """'auto' -> CUDA when present (else MPS, else CPU); anything else as torch understands it."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise UserError(f"device={name!r} is not a device ({e}); use auto, cpu, cuda or cuda:N") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device={name} asked for but no CUDA device is visible; use device=auto or device=cpu")
    return device


def set_tf32(enabled: bool) -> None:
    """One TF32 setting for both kinds of GEMM: cuDNN's (the fused nn.LSTM/GRU baselines; torch's default is
    on) and cuBLAS's (our cells and maps; torch's default is off). Mixed defaults would run the baseline in TF32
    against our cells in full fp32 (speed ratios and CPU-vs-CUDA comparisons skewed). No effect on the CPU."""
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
