"""Videos of ``rgb_array`` frames: ``.gif`` through Pillow, ``.mp4`` through imageio-ffmpeg.

The frames come from any family's ``render_frame`` / gymnasium ``render()``
(:mod:`metarl.envs.render`); writing them needs image libraries ``metarl`` does not import, so
the writer lives here. Pillow is installed with matplotlib; ``.mp4`` needs
``pip install imageio-ffmpeg`` (it brings its own ffmpeg binary).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

VIDEO_SUFFIXES = (".gif", ".mp4")


def check_frames(frames: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The frames as contiguous ``[H, W, 3]`` uint8 arrays of one shape, or a ``ValueError``."""
    if len(frames) == 0:
        raise ValueError("frames: got none; a video needs at least one frame")
    out = [np.ascontiguousarray(f) for f in frames]
    first = out[0].shape
    for i, f in enumerate(out):
        if f.dtype != np.uint8 or f.ndim != 3 or f.shape[2] != 3:
            raise ValueError(f"frames[{i}]: shape {f.shape} dtype {f.dtype}, expected "
                             "[H, W, 3] uint8 (an rgb_array frame)")
        if f.shape != first:
            raise ValueError(f"frames[{i}]: shape {f.shape}, but frames[0] is {first}; every "
                             "frame of a video has one size")
    return out


def write_video(frames: Sequence[np.ndarray], path: str | Path, fps: float = 30.0) -> Path:
    """Write ``frames`` to ``path`` as a ``.gif`` or ``.mp4``, ``fps`` frames per second.

    A GIF stores each frame's duration in hundredths of a second, so ``fps`` above 50 plays
    slower than asked in most viewers; Pillow merges identical consecutive frames into one
    longer frame (the timing is kept, the frame count is not).

    Args:
        frames: ``[H, W, 3]`` uint8 arrays, all of one size.
        path: where to write; its suffix picks the format. Missing folders are created.
        fps: frames per second, > 0.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: no frames, frames of the wrong shape or dtype, ``fps <= 0``, or a suffix
            other than ``.gif`` / ``.mp4``.
        RuntimeError: ``.mp4`` without imageio-ffmpeg installed (the message says how to
            install it).

    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in VIDEO_SUFFIXES:
        raise ValueError(f"path={str(path)!r}: the suffix picks the format, expected one of "
                         f"{VIDEO_SUFFIXES}")
    if not fps > 0:
        raise ValueError(f"fps={fps!r}: must be > 0 (frames per second)")
    checked = check_frames(frames)
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".gif":
        _write_gif(checked, path, fps)
    else:
        _write_mp4(checked, path, fps)
    return path


def _write_gif(frames: list[np.ndarray], path: Path, fps: float) -> None:
    from PIL import Image

    images = [Image.fromarray(f) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], loop=0,
                   duration=max(1, round(1000 / fps)))


def _write_mp4(frames: list[np.ndarray], path: Path, fps: float) -> None:
    try:
        imageio_ffmpeg = importlib.import_module("imageio_ffmpeg")
    except ImportError:
        raise RuntimeError(f"{path}: writing .mp4 needs the imageio-ffmpeg package "
                           "(`pip install imageio-ffmpeg`, which brings its own ffmpeg); or "
                           "write a .gif, which needs only Pillow") from None
    height, width = frames[0].shape[:2]
    writer = imageio_ffmpeg.write_frames(str(path), (width, height), fps=fps,
                                         codec="libx264", pix_fmt_out="yuv420p",
                                         macro_block_size=2)  # yuv420p: even sizes
    writer.send(None)  # start the generator
    try:
        for frame in frames:
            writer.send(frame)
    finally:
        writer.close()
