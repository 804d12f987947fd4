"""Temporal overlap blending: segments in, final frames out, streaming.

Segments arrive in order. Each holds back the frames that the next segment overlaps; when the next
arrives, the held frames and its head are crossfaded. Memory is one overlap, whatever the length.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

Curve = Literal["linear", "cosine"]


def blend_weights(n: int, curve: Curve = "linear") -> np.ndarray:
    """Weight (0..1, exclusive) of the incoming segment at each of `n` overlapping frames."""
    ramp = np.arange(1, n + 1, dtype=np.float32) / (n + 1)
    if curve == "cosine":
        return (0.5 - 0.5 * np.cos(np.pi * ramp)).astype(np.float32)
    if curve != "linear":
        raise ValueError(f"curve must be 'linear' or 'cosine', got {curve!r}")
    return ramp


def blend_overlap(outgoing: np.ndarray, incoming: np.ndarray, curve: Curve = "linear") -> np.ndarray:
    """Crossfade two uint8 runs of equal shape (n, h, w, 3): outgoing fades out, incoming fades in."""
    if outgoing.shape != incoming.shape:
        raise ValueError(f"overlap shapes differ: {outgoing.shape} vs {incoming.shape}")
    w = blend_weights(len(incoming), curve)[:, None, None, None]
    mixed = outgoing.astype(np.float32) * (1.0 - w) + incoming.astype(np.float32) * w
    return (mixed + 0.5).astype(np.uint8)


class OverlapStitcher:
    """Turns overlapping segments into a stream of final frames.

    `add(frames, overlap_prev, overlap_next)` returns the frames that are final now; the last
    `overlap_next` frames are held until the next segment arrives.
    """

    def __init__(self, curve: Curve = "linear"):
        self.curve = curve
        self._held = np.zeros((0,), dtype=np.uint8)

    def add(self, frames: np.ndarray, overlap_prev: int, overlap_next: int) -> np.ndarray:
        if overlap_prev != len(self._held):
            raise ValueError(f"segment overlaps {overlap_prev} frames but {len(self._held)} are held")
        if overlap_prev + overlap_next > len(frames):
            raise ValueError(f"overlaps {overlap_prev}+{overlap_next} exceed the segment's {len(frames)} frames")
        frames = frames.copy()
        if overlap_prev:
            frames[:overlap_prev] = blend_overlap(self._held, frames[:overlap_prev], self.curve)
        keep = len(frames) - overlap_next
        self._held = frames[keep:]
        return frames[:keep]

    def finish(self) -> np.ndarray:
        """Frames still held (non-empty only if the last segment declared an overlap_next)."""
        held, self._held = self._held, np.zeros((0,), dtype=np.uint8)
        return held
