"""Stitch existing video files, from any source, with the renderer's blending and colour correction.

Clips are decoded one at a time, in batches (PyAV), through the same OverlapStitcher and SeamMeter
as a render, into one VideoWriter: memory does not grow with the number or length of the clips.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.config import StitchConfig
from pipeline.seams import SeamMeter, SeamReport
from pipeline.stitch import OverlapStitcher
from pipeline.video_io import StreamInfo, VideoWriter, iter_frames, output_format, probe_video


def _describe(clip: StreamInfo) -> str:
    return f"{clip.path} is {clip.width}x{clip.height} at {clip.fps} fps"


def check_clips(clips: Sequence[StreamInfo], resize: bool = False) -> None:
    """ValueError naming both clips if a clip's frame rate, or (unless `resize`) its size, differs from the first's."""
    first = clips[0]
    for clip in clips[1:]:
        if clip.fps != first.fps:
            raise ValueError(f"clips differ in frame rate: {_describe(first)}, {_describe(clip)}; "
                             f"re-time one first (e.g. ffmpeg -i CLIP -r {first.fps} ...)")
        if not resize and (clip.width, clip.height) != (first.width, first.height):
            raise ValueError(f"clips differ in size: {_describe(first)}, {_describe(clip)}; "
                             f"resize (--resize) scales every clip to the first one's size")


def _emit(frames: np.ndarray, writer: VideoWriter, meter: SeamMeter) -> None:
    if not len(frames):
        return
    writer.write(frames)
    meter.add(frames)


def stitch_clips(paths: Sequence[Path], overlap: int, out: Path, config: StitchConfig | None = None,
                 resize: bool = False) -> SeamReport:
    """Stitch clips that share `overlap` frames with their neighbours into one file at `out`.

    The output has sum(len(clip)) - overlap * (len(paths) - 1) frames at the clips' common frame rate,
    at the first clip's size; with `resize`, clips of another size are scaled to it. A different frame
    rate is always an error: retiming changes motion, so it is left to the user. Returns the seam report.
    """
    config = config or StitchConfig()
    if not paths:
        raise ValueError("paths must name at least one clip, got none")
    if overlap < 0:
        raise ValueError(f"overlap must be >= 0 frames, got {overlap}")
    output_format(out, config.codec)
    clips = [probe_video(path) for path in paths]
    check_clips(clips, resize)
    first = clips[0]
    stitcher, meter = OverlapStitcher(config.curve, config.color_correction), SeamMeter()
    with VideoWriter(out, first.width, first.height, first.fps, codec=config.codec, crf=config.crf) as writer:
        for i, clip in enumerate(clips):
            overlap_prev, overlap_next = (overlap if i > 0 else 0), (overlap if i < len(clips) - 1 else 0)
            stitcher.begin(overlap_prev, overlap_next)
            meter.begin_segment(overlap_prev)
            for frames in iter_frames(clip.path, size=(first.width, first.height)):
                _emit(stitcher.feed(frames), writer, meter)
            try:
                stitcher.end()
            except ValueError as err:
                raise ValueError(f"clip {clip.path} is too short: {err}") from err
        _emit(stitcher.finish(), writer, meter)
    return meter.report()
