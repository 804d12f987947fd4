"""Video I/O: raw RGB frames piped into one ffmpeg process (ffmpeg-python), PyAV for decoding.

ffmpeg is the system binary when one is on PATH, else the one imageio-ffmpeg ships (libx264).
The container follows the output's suffix (.mp4, .mov, .mkv); lossless FFV1 goes in .mkv.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import ffmpeg
import numpy as np

logger = logging.getLogger(__name__)

CONTAINERS = {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska"}
# FFV1 belongs in Matroska: the bundled FFmpeg 9 also puts it in MP4, but older builds (a system ffmpeg on
# PATH wins) refuse to, and players cannot read it there.
CODEC_CONTAINERS = {"ffv1": (".mkv",)}
# Lossless codecs keep full RGB; the rest get the yuv420p that every player decodes.
CODEC_PIX_FMTS = {"ffv1": "bgr0"}


def ffmpeg_binary() -> str:
    """Path of the ffmpeg executable: the system one, else imageio-ffmpeg's bundled binary."""
    system = shutil.which("ffmpeg")
    if system:
        return system
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def output_format(path: Path, codec: str) -> str:
    """The ffmpeg muxer for `path`'s suffix; ValueError if the suffix is unknown or cannot hold `codec`."""
    suffix = Path(path).suffix.lower()
    if suffix not in CONTAINERS:
        raise ValueError(f"out {str(path)!r} must end in one of {', '.join(CONTAINERS)}, got {suffix or 'none'!r}")
    allowed = CODEC_CONTAINERS.get(codec, tuple(CONTAINERS))
    if suffix not in allowed:
        raise ValueError(f"codec {codec!r} cannot be written to a {suffix} file ({path}); use {' or '.join(allowed)}")
    return CONTAINERS[suffix]


class VideoWriter:
    """Stream uint8 RGB frames (height, width, 3) into a video file at `fps` frames per second.

    The container follows `path`'s suffix (see `output_format`); MP4 and MOV get `+faststart` (index
    first, so playback can start while downloading). Writes `<path>.partial` and renames it to `path`
    only in `close()` after ffmpeg exits cleanly; `abort()` (or leaving the `with` block on an
    exception) kills ffmpeg and removes the partial.
    """

    def __init__(self, path: Path, width: int, height: int, fps: int | Fraction, codec: str = "libx264",
                 crf: int = 18):
        container = output_format(path, codec)
        pix_fmt = CODEC_PIX_FMTS.get(codec, "yuv420p")
        if pix_fmt == "yuv420p" and (width % 2 or height % 2):
            raise ValueError(f"width and height must be even for yuv420p, got {width}x{height}")
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.width, self.height = width, height
        self.frames_written = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        stream = ffmpeg.input("pipe:", format="rawvideo", pix_fmt="rgb24", s=f"{width}x{height}", r=str(fps))
        out_args = dict(vcodec=codec, pix_fmt=pix_fmt, r=str(fps), format=container)
        if container in ("mp4", "mov"):
            out_args["movflags"] = "+faststart"
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
            self._proc.stdin.write(np.ascontiguousarray(frames).data)  # the buffer itself: no bytes copy
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


@dataclass(frozen=True)
class StreamInfo:
    """A file's first video stream, from its header: size (pixels) and rate (frames/s)."""

    path: Path
    width: int
    height: int
    fps: Fraction


def _open(path: Path):
    import av

    try:
        container = av.open(str(path))
    except (OSError, av.FFmpegError) as err:
        raise ValueError(f"clip {str(path)!r} cannot be read as video: {err}") from err
    if not container.streams.video:
        container.close()
        raise ValueError(f"clip {str(path)!r} has no video stream")
    return container


def probe_video(path: Path) -> StreamInfo:
    """Size and frame rate of `path`'s first video stream, without decoding; ValueError if unreadable."""
    with _open(path) as container:
        stream = container.streams.video[0]
        fps = stream.average_rate or stream.guessed_rate
        if not fps:
            raise ValueError(f"clip {str(path)!r} does not say its frame rate")
        return StreamInfo(Path(path), stream.codec_context.width, stream.codec_context.height, Fraction(fps))


def iter_frames(path: Path, chunk: int = 16, size: tuple[int, int] | None = None) -> Iterator[np.ndarray]:
    """Decode `path` lazily: uint8 RGB batches (<= chunk, height, width, 3), scaled to `size` (width, height) if given.

    Only one batch is in memory at a time, whatever the clip's length.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    width, height = size if size else (None, None)
    with _open(path) as container:
        batch = []
        for frame in container.decode(container.streams.video[0]):
            batch.append(frame.to_ndarray(format="rgb24", width=width, height=height))
            if len(batch) == chunk:
                yield np.stack(batch)
                batch = []
        if batch:
            yield np.stack(batch)


def ffmpeg_version() -> str:
    """First line of `ffmpeg -version`, for logs and benchmark records."""
    out = subprocess.run([ffmpeg_binary(), "-version"], capture_output=True, text=True, check=True)
    return out.stdout.splitlines()[0]
