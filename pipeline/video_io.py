"""Video I/O: raw RGB frames piped into one ffmpeg process (ffmpeg-python), PyAV for decoding.

ffmpeg is the system binary when one is on PATH, else the one imageio-ffmpeg ships (libx264).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import ffmpeg
import numpy as np

logger = logging.getLogger(__name__)


def ffmpeg_binary() -> str:
    """Path of the ffmpeg executable: the system one, else imageio-ffmpeg's bundled binary."""
    system = shutil.which("ffmpeg")
    if system:
        return system
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


class VideoWriter:
    """Stream uint8 RGB frames (height, width, 3) into an MP4.

    Writes `<path>.partial` and renames it to `path` only in `close()` after ffmpeg exits cleanly;
    `abort()` (or leaving the `with` block on an exception) kills ffmpeg and removes the partial.
    """

    def __init__(self, path: Path, width: int, height: int, fps: int, codec: str = "libx264", crf: int = 18):
        if width % 2 or height % 2:
            raise ValueError(f"width and height must be even for yuv420p, got {width}x{height}")
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.width, self.height = width, height
        self.frames_written = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        stream = ffmpeg.input("pipe:", format="rawvideo", pix_fmt="rgb24", s=f"{width}x{height}", r=fps)
        out_args = dict(vcodec=codec, pix_fmt="yuv420p", r=fps, movflags="+faststart", format="mp4")
        if codec in ("libx264", "libx265"):
            out_args["crf"] = crf
        stream = ffmpeg.output(stream, str(self.partial), **out_args).overwrite_output().global_args(
            "-loglevel", "error"
        )
        self._proc = ffmpeg.run_async(stream, cmd=ffmpeg_binary(), pipe_stdin=True, pipe_stderr=True)

    def write(self, frames: np.ndarray) -> None:
        """Append frames: uint8 (n, height, width, 3) or a single (height, width, 3)."""
        frames = frames[None] if frames.ndim == 3 else frames
        if frames.dtype != np.uint8 or frames.shape[1:] != (self.height, self.width, 3):
            raise ValueError(
                f"frames must be uint8 (n, {self.height}, {self.width}, 3), got {frames.dtype} {frames.shape}"
            )
        try:
            self._proc.stdin.write(np.ascontiguousarray(frames).tobytes())
        except BrokenPipeError as err:
            raise RuntimeError(f"ffmpeg stopped while encoding {self.path}: {self._stderr()}") from err
        self.frames_written += len(frames)

    def _stderr(self) -> str:
        self._proc.wait()
        return self._proc.stderr.read().decode(errors="replace").strip()

    def close(self) -> Path:
        """Finish the file; returns the final path. Raises RuntimeError if ffmpeg failed."""
        self._proc.stdin.close()
        if self._proc.wait() != 0:
            message = self._stderr()
            self.partial.unlink(missing_ok=True)
            raise RuntimeError(f"ffmpeg failed writing {self.path}: {message}")
        os.replace(self.partial, self.path)
        return self.path

    def abort(self) -> None:
        self._proc.kill()
        self._proc.wait()
        self.partial.unlink(missing_ok=True)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


@dataclass(frozen=True)
class VideoInfo:
    """What a decoded file holds: frame count, rate (frames/s), size (pixels), codec, duration (s)."""

    frames: int
    fps: Fraction
    width: int
    height: int
    codec: str
    pix_fmt: str
    duration_s: float


def read_video(path: Path) -> tuple[np.ndarray, VideoInfo]:
    """Decode every frame: uint8 (n, height, width, 3) RGB, plus the stream's info."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)])
        fps = stream.average_rate
        info = VideoInfo(
            frames=len(frames), fps=fps, width=stream.codec_context.width, height=stream.codec_context.height,
            codec=stream.codec_context.name, pix_fmt=stream.codec_context.pix_fmt,
            duration_s=float(len(frames) / fps),
        )
    return frames, info


def ffmpeg_version() -> str:
    """First line of `ffmpeg -version`, for logs and benchmark records."""
    out = subprocess.run([ffmpeg_binary(), "-version"], capture_output=True, text=True, check=True)
    return out.stdout.splitlines()[0]
