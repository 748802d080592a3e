"""tensorlstm's compiled kernels (tensorlstm/native.cpp; ``cell.gates=native``): the gate math of the fused LSTM /
GRU / tLSTM time loops, built once per machine and called through ctypes.

`kernels(like)` gives the kernels for a tensor's dtype and device, or None where the torch-op path of the loops
must run instead: not a CPU tensor, not float32 / float64, or no library (no C++ compiler, a failed build, a
failed self-check). The library is built with the system's C++ compiler (``$CXX``, else ``c++``) in about 2 s,
into ``$TLSTM_CACHE_DIR`` (default ``$XDG_CACHE_HOME/tensorlstm``, i.e. ``~/.cache/tensorlstm``), named by a hash
of the source, the flags and the compiler's version, so a changed source or compiler builds anew. The build writes
a temporary file and renames it, so processes starting together (DDP ranks) never load a half-written library.
Nothing needs torch headers or a Python extension build: the C functions take raw pointers and row strides (see
native.cpp).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from tensorlstm.errors import UserError

log = logging.getLogger("tensorlstm")

SOURCE = Path(__file__).with_name("native.cpp")
FLAGS = ("-O3", "-fopenmp-simd", "-fno-math-errno", "-fno-trapping-math", "-fPIC", "-shared")
LIBS = ("-lmvec", "-lm")  # glibc's vector math library: the vectorized exp of the loops
MODES = ("native", "torch")
# kernel name -> its operands, in native.cpp's order (None-able ones are optional)
KERNELS = {
    "lstm_forward": ("a", "bias", "c_prev", "c", "tc", "h"),
    "lstm_backward": ("dh", "dc", "a", "c_prev", "tc", "da"),
    # the same with the step's recurrent product transposed (gT, dhT: (4H, B) and (H, B); see native.cpp)
    "lstm_forward_t": ("xw", "bias", "gT", "c_prev", "c", "tc", "h", "a"),
    "lstm_backward_t": ("dc", "g", "dhT", "a", "c_prev", "tc", "da"),
    "gru_forward": ("xw", "bias", "hu", "h_prev", "a", "h"),
    "gru_backward": ("dh", "a", "hu", "h_prev", "g", "dhu", "dn", "carry"),
    "gru_before_rz": ("rz", "hd", "rh"),
    "gru_before_n": ("n", "h_prev", "z", "h"),
    "gru_before_backward_n": ("dh", "z", "n", "h_prev", "dz", "dn"),
    "gru_before_backward_r": ("drh", "hd", "r", "dr", "dh", "z", "g", "carry"),
}
# the tLSTM's (cells/tlstm_fused.py): operands (B, N, width) with rows (b, n); the last one is the int64 index
KERNELS_3D = {
    "tlstm_forward": ("a", "c_prev", "c", "t", "h", "k", "km", "cm", "index"),
    "tlstm_backward": ("dh", "dc_in", "po", "pc", "pgif", "f", "da", "dc_out", "g", "c_prev", "km", "k", "dcm",
                       "index"),
}


def check_mode(mode: str) -> str:
    """`mode` (a cell.gates value) where it is one of MODES, else the one-line UserError."""
    if mode not in MODES:
        raise UserError(f"unknown cell.gates {mode!r}; choose one of: {', '.join(MODES)}")
    return mode


def cache_dir() -> Path:
    env = os.environ.get("TLSTM_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tensorlstm"


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CXX", "c++"))


def _library_path(cxx: str) -> Path:
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=60).stdout
    key = hashlib.sha256("\0".join([SOURCE.read_text(), *FLAGS, *LIBS, version, platform.machine()]).encode())
    return cache_dir() / f"native-{key.hexdigest()[:16]}.so"


def build() -> Path:
    """The compiled library's path, building it first where the cache has none; raises on any failure."""
    cxx = _compiler()
    if cxx is None:
        raise RuntimeError(f"no C++ compiler ({os.environ.get('CXX', 'c++')}) on PATH")
    path = _library_path(cxx)
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem + ".", suffix=".tmp")
    os.close(fd)
    try:
        run = subprocess.run([cxx, *FLAGS, str(SOURCE), "-o", tmp, *LIBS], capture_output=True, text=True,
                             timeout=300)
        if run.returncode != 0:
            raise RuntimeError(f"{cxx} failed: {run.stderr.strip().splitlines()[-1:] or run.returncode}")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _check_rows(t: torch.Tensor) -> None:
    """Every operand of a kernel is read row by row: its columns must be contiguous."""
    if t.stride(-1) != 1:
        raise ValueError("native kernels need rows with contiguous columns")


class Kernels:
    """The kernels of one dtype, named as in KERNELS and KERNELS_3D: ``k.lstm_forward(H, a, bias, c_prev, c, tc, h)``
    (B from the first operand's rows) and ``k.tlstm_forward(B, N, M, taps, ...)``; every operand a tensor of that
    dtype on the CPU whose rows have contiguous columns, or None where native.cpp allows it."""

    def __init__(self, lib: ctypes.CDLL, dtype: torch.dtype) -> None:
        suffix = {torch.float32: "f32", torch.float64: "f64"}[dtype]
        self.dtype = dtype
        for name, operands in KERNELS.items():
            fn = getattr(lib, f"{name}_{suffix}")
            n = len(operands)
            fn.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p * n, ctypes.c_long * n]
            fn.restype = None
            setattr(self, name, functools.partial(self._call, fn, ctypes.c_void_p * n, ctypes.c_long * n))
        for name, operands in KERNELS_3D.items():
            fn = getattr(lib, f"{name}_{suffix}")
            n = len(operands)
            fn.argtypes = [ctypes.c_long] * 4 + [ctypes.c_void_p * n, ctypes.c_long * (2 * n)]
            fn.restype = None
            setattr(self, name, functools.partial(StepCall, fn, ctypes.c_void_p * n, ctypes.c_long * (2 * n)))

    @staticmethod
    def _call(fn, ptrs_t, strides_t, H: int, *mats: torch.Tensor | None) -> None:
        for m in mats:
            if m is not None:
                _check_rows(m)
        first = mats[0]
        fn(first.shape[0], H, ptrs_t(*[0 if m is None else m.data_ptr() for m in mats]),
           strides_t(*[0 if m is None else m.stride(0) for m in mats]))


class StepCall:
    """A kernel of KERNELS_3D bound to its operands for a whole time loop: ``call(s)`` runs it at step s.

    ``k.tlstm_forward(B, N, M, taps, *operands)`` makes one. Each operand is None; a tensor that is the same at every
    step (a (B, N, width) tensor, or the 1-D int64 index); or ``(buffer, shift)``: step s + shift of a
    (steps, B, N, width) buffer. Pointers and strides are worked out once, so a step costs a few integer additions
    and the foreign call (~3 us, against ~25 us for reading nine tensors' pointers and strides from Python)."""

    def __init__(self, fn, ptrs_t, strides_t, B: int, N: int, M: int, taps: int, *ops) -> None:
        ptrs, strides, self.moving = [], [], []
        for i, op in enumerate(ops):
            t, shift = op if isinstance(op, tuple) else (op, None)
            if t is None or t.dim() == 1:  # absent, or the index
                ptrs.append(0 if t is None else t.data_ptr())
                strides += (0, 0)
                continue
            _check_rows(t)
            ptrs.append(t.data_ptr())
            if shift is None:
                strides += (t.stride(0), t.stride(1))
            else:
                strides += (t.stride(1), t.stride(2))
                self.moving.append((i, t.data_ptr(), t.stride(0) * t.element_size(), shift))
        self.fn, self.args, self.ops = fn, (B, N, M, taps), ops  # ops: keeps the tensors alive
        self.ptrs, self.strides = ptrs_t(*ptrs), strides_t(*strides)

    def __call__(self, s: int) -> None:
        ptrs = self.ptrs
        for i, base, step, shift in self.moving:
            ptrs[i] = base + (s + shift) * step
        self.fn(*self.args, ptrs, self.strides)


def _self_check(k: Kernels) -> bool:
    """One LSTM step through the library against the same formula in torch ops (a wrong build never runs)."""
    g = torch.Generator().manual_seed(0)
    B, H = 3, 5
    a = torch.randn(B, 4 * H, generator=g, dtype=k.dtype) * 3
    bias = torch.randn(4 * H, generator=g, dtype=k.dtype)
    cp = torch.randn(B, H, generator=g, dtype=k.dtype)
    c, tc, h = (torch.empty(B, H, dtype=k.dtype) for _ in range(3))
    pre = a + bias
    act = torch.cat([pre[:, : 2 * H].sigmoid(), pre[:, 2 * H : 3 * H].tanh(), pre[:, 3 * H :].sigmoid()], 1)
    want_c = act[:, H : 2 * H] * cp + act[:, :H] * act[:, 2 * H : 3 * H]
    k.lstm_forward(H, a, bias.expand(B, -1), cp, c, tc, h)
    tol = 1e-5 if k.dtype == torch.float32 else 1e-12
    return (torch.allclose(a, act, atol=tol) and torch.allclose(c, want_c, atol=tol)
            and torch.allclose(h, act[:, 3 * H :] * want_c.tanh(), atol=tol))


@functools.cache
def _load() -> dict[torch.dtype, Kernels] | None:
    try:
        lib = ctypes.CDLL(str(build()))
        out = {dt: Kernels(lib, dt) for dt in (torch.float32, torch.float64)}
    except (OSError, RuntimeError, subprocess.SubprocessError, AttributeError) as e:
        log.warning("cell.gates=native: the fused gate kernels are not available here (%s); the cells run on "
                    "torch ops (cell.gates=torch silences this)", e)
        return None
    if not all(_self_check(k) for k in out.values()):
        log.warning("cell.gates=native: the compiled gate kernels failed their self-check; the cells run on "
                    "torch ops")
        return None
    return out


def available() -> bool:
    """Whether the library builds and loads here (builds it on the first call)."""
    return _load() is not None


def kernels(like: torch.Tensor) -> Kernels | None:
    """The kernels for `like`'s dtype on the CPU, else None (the torch-op path)."""
    if like.device.type != "cpu" or like.dtype not in (torch.float32, torch.float64):
        return None
    lib = _load()
    return None if lib is None else lib[like.dtype]
