"""Seam report: how visible each switch from one segment to the next is in the stitched video.

A *step* is the mean absolute difference, in levels (0..255), between two consecutive output frames
(over all pixels and channels; large frames are measured on a strided subsample). The *seam region*
of the seam between segments i and i+1 runs from the last output frame made only of segment i to the
first output frame made only of segment i+1: with an overlap of n frames that is n + 2 frames and
n + 1 steps (the n crossfaded frames in between); with no overlap it is the single step where the
output switches from segment i to segment i+1. A seam's *step* is the largest step in its region, its
*typical* step the median of the steps inside the two neighbouring segments (outside any seam region),
and its *jump* their ratio: about 1 when the seam moves like the video around it, much larger for a
cut. The meter keeps one subsampled frame and one float per output frame, whatever the resolution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

MIN_TYPICAL_STEP = 0.1  # levels; a still video would otherwise make any seam's jump infinite
MAX_PIXELS = 65536  # frames larger than this are measured on a strided subsample


def thumbnail(frame: np.ndarray, max_pixels: int = MAX_PIXELS, lut: np.ndarray | None = None) -> np.ndarray:
    """The strided int16 subsample of a uint8 frame (h, w, 3) that steps are measured on; with `lut` (a per-channel
    lookup table, uint8 (3, 256)), of the frame mapped through it (the subsample is mapped: the same values)."""
    stride = max(1, math.ceil(math.sqrt(frame.shape[0] * frame.shape[1] / max_pixels)))
    small = frame[::stride, ::stride]
    if lut is not None:
        small = lut[np.arange(3), small]
    return small.astype(np.int16)


@dataclass(frozen=True)
class Seam:
    """The seam between segment `index` and `index + 1`.

    `frame`: the first output frame not made of segment `index` alone (where the crossfade starts, or
    the first frame of segment `index + 1` when there is no overlap); `overlap`: crossfaded frames;
    `step` and `typical`: levels (see the module docstring); `jump`: step / typical.
    """

    index: int
    frame: int
    overlap: int
    step: float
    typical: float
    jump: float


@dataclass(frozen=True)
class SeamReport:
    """Every seam of a stitched video, in order, and the number of frames measured."""

    frames: int
    seams: tuple[Seam, ...]

    @property
    def worst(self) -> Seam | None:
        """The seam with the largest jump (None when there are no seams)."""
        measured = [s for s in self.seams if not math.isnan(s.jump)]
        return max(measured, key=lambda s: s.jump, default=None)


@dataclass
class _OpenSeam:
    frame: int
    overlap: int
    steps: list[float] = field(default_factory=list)


class SeamMeter:
    """Builds a SeamReport from the stitched frames, fed in output order.

    Call `begin_segment(overlap_prev)` before the output frames that start with a segment's overlap
    with the previous one (what `OverlapStitcher.add` or `begin`/`feed` return for it), and `add`
    for every output frame batch.
    """

    def __init__(self, max_pixels: int = MAX_PIXELS):
        if max_pixels < 1:
            raise ValueError(f"max_pixels must be >= 1, got {max_pixels}")
        self.max_pixels = max_pixels
        self.frames = 0
        self._previous: np.ndarray | None = None
        self._interior: list[list[float]] = []
        self._seams: list[_OpenSeam] = []
        self._seam_steps_left = 0

    def begin_segment(self, overlap_prev: int) -> None:
        """The next output frames belong to a new segment whose first `overlap_prev` frames are crossfaded."""
        if overlap_prev < 0:
            raise ValueError(f"overlap_prev must be >= 0, got {overlap_prev}")
        if self._interior:
            self._seams.append(_OpenSeam(self.frames, overlap_prev))
            self._seam_steps_left = overlap_prev + 1
        self._interior.append([])

    def add(self, frames: np.ndarray) -> None:
        """Measure output frames, uint8 (n, h, w, 3), that follow those already added."""
        if not self._interior:
            raise RuntimeError("add() called before begin_segment()")
        for frame in frames:
            thumb = self._thumb(frame)
            if self._previous is not None:
                self._record(float(np.abs(thumb - self._previous).mean()))
            self._previous = thumb
            self.frames += 1

    def add_measured(self, steps: list[float] | tuple[float, ...], last: np.ndarray) -> None:
        """Count `len(steps)` output frames that follow the last one added, measured elsewhere (e.g. where a
        piece was encoded) with `thumbnail` at this meter's `max_pixels`: `steps[k]` is the step into the
        k-th of them, and `last` (uint8 (h, w, 3)) is the final one."""
        if self._previous is None:
            raise RuntimeError("add_measured() needs a frame added before it")
        for step in steps:
            self._record(float(step))
            self.frames += 1
        if steps:
            self._previous = self._thumb(last)

    def _thumb(self, frame: np.ndarray) -> np.ndarray:
        return thumbnail(frame, self.max_pixels)

    def _record(self, step: float) -> None:
        if self._seam_steps_left:
            self._seams[-1].steps.append(step)
            self._seam_steps_left -= 1
        else:
            self._interior[-1].append(step)

    def report(self) -> SeamReport:
        """The seams measured so far; a seam or neighbourhood with no steps yet measures NaN."""
        return SeamReport(self.frames, tuple(self._seam(i, s) for i, s in enumerate(self._seams)))

    def _seam(self, index: int, seam: _OpenSeam) -> Seam:
        around = self._interior[index] + self._interior[index + 1]
        step = max(seam.steps) if seam.steps else math.nan
        typical = max(float(np.median(around)), MIN_TYPICAL_STEP) if around else math.nan
        return Seam(index, seam.frame, seam.overlap, step, typical, step / typical)
