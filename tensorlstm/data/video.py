"""Video decoding with OpenCV: frames as RGB uint8 arrays, resized, optionally resampled in time.

OpenCV (``opencv-python-headless``) decodes through its bundled FFmpeg, so MPEG-1/2 (UCF11's ``.mpg``),
H.264 ``.mp4`` and the usual ``.avi`` codecs all work without a system FFmpeg.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tensorlstm.errors import UserError


class VideoDecodeError(Exception):
    """A clip that cannot be opened or yields no frame (a per-clip problem: callers skip and list it)."""


def _cv2():
    try:
        import cv2
    except ImportError as exc:  # pragma: no cover - cv2 is a dependency
        raise UserError("OpenCV is missing; install it with `pip install opencv-python-headless`") from exc
    return cv2


def quiet_opencv() -> None:
    """Silence OpenCV/FFmpeg warnings (a corrupt clip is reported by us, once, not by FFmpeg per frame)."""
    cv2 = _cv2()
    try:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    except AttributeError:  # pragma: no cover - very old OpenCV builds
        pass


def resize_frames(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize (T, H, W, 3) uint8 frames to ``size`` = (width, height); area interpolation when shrinking."""
    cv2 = _cv2()
    width, height = size
    if frames.shape[1:3] == (height, width):
        return frames
    shrink = width <= frames.shape[2] and height <= frames.shape[1]
    interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    out = np.empty((frames.shape[0], height, width, frames.shape[3]), dtype=frames.dtype)
    for i, frame in enumerate(frames):
        out[i] = cv2.resize(frame, (width, height), interpolation=interp)
    return out


def resample_indices(n_frames: int, src_fps: float | None, dst_fps: float | None) -> np.ndarray:
    """Indices of the frames to keep so that a clip of ``n_frames`` at ``src_fps`` plays at ``dst_fps``.

    Frame k of the output is the source frame shown at time k / dst_fps (floor). Without a known source
    rate, or when dst_fps is None or not below src_fps, every frame is kept (no frame is ever duplicated).
    """
    if n_frames <= 0:
        return np.zeros(0, dtype=np.int64)
    if not dst_fps or not src_fps or src_fps <= 0 or dst_fps >= src_fps:
        return np.arange(n_frames, dtype=np.int64)
    step = src_fps / dst_fps
    count = int(np.ceil(n_frames / step - 1e-9))
    idx = np.floor(np.arange(count) * step + 1e-9).astype(np.int64)
    return idx[idx < n_frames]


def read_video(
    path: str | Path,
    size: tuple[int, int] | None = (160, 120),
    max_frames: int | None = None,
) -> tuple[np.ndarray, float | None]:
    """Decode a clip into RGB uint8 frames (T, height, width, 3) and its frame rate (None if unknown).

    ``size`` = (width, height) resizes every frame (None keeps the stored size). Decoding stops at the
    first frame FFmpeg cannot read (a truncated file keeps its readable prefix); a clip with no readable
    frame raises VideoDecodeError.
    """
    cv2 = _cv2()
    path = Path(path)
    if not path.is_file():
        raise VideoDecodeError(f"{path}: no such file")
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise VideoDecodeError(f"{path}: OpenCV/FFmpeg cannot open it (corrupt or unknown codec)")
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        frames = []
        while max_frames is None or len(frames) < max_frames:
            ok, bgr = cap.read()
            if not ok or bgr is None:
                break
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            if size is not None and rgb.shape[:2] != (size[1], size[0]):
                shrink = size[0] <= rgb.shape[1] and size[1] <= rgb.shape[0]
                interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
                rgb = cv2.resize(rgb, tuple(size), interpolation=interp)
            frames.append(rgb)
    finally:
        cap.release()
    if not frames:
        raise VideoDecodeError(f"{path}: no frame could be decoded (corrupt or empty clip)")
    return np.stack(frames), (fps if 0.0 < fps < 1000.0 else None)


def write_video(path: str | Path, frames: np.ndarray, fps: float = 25.0) -> None:
    """Write RGB uint8 frames (T, H, W, 3) as a video; ``.mpg`` gives MPEG-1 (UCF11's codec), ``.avi`` Motion
    JPEG (OpenCV's own encoder, no FFmpeg needed), else mp4v.

    Used by tests and demos to make tiny clips in the real formats.
    """
    cv2 = _cv2()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    fourcc = "PIM1" if suffix in (".mpg", ".mpeg") else "MJPG" if suffix == ".avi" else "mp4v"
    height, width = frames.shape[1:3]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), float(fps), (width, height))
    if not writer.isOpened():
        raise VideoDecodeError(f"{path}: OpenCV cannot open a {fourcc} writer")
    try:
        for frame in frames:
            writer.write(cv2.cvtColor(np.ascontiguousarray(frame, dtype=np.uint8), cv2.COLOR_RGB2BGR))
    finally:
        writer.release()
