"""Temporal overlap blending and colour-drift correction: segments in, final frames out, streaming.

Segments arrive in order. Each holds back the frames that the next segment overlaps; when the next
arrives, its colour is matched to the held frames, then the held frames and its head are crossfaded.
Memory is one overlap plus what the caller feeds at once, whatever the length of the video.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

Curve = Literal["linear", "cosine"]

MIN_SPREAD = 1.0  # levels added to both spreads, so a flat overlap does not divide by ~0
GAIN_RANGE = (0.5, 2.0)  # bounds on the spread ratio: unrelated overlaps must not blow the contrast up


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
    out = np.empty_like(incoming)
    for i, w in enumerate(blend_weights(len(incoming), curve)):  # frame by frame: stays in cache, ~4x faster
        mixed = outgoing[i].astype(np.float32) * (np.float32(1.0) - w) + incoming[i].astype(np.float32) * w
        out[i] = mixed + np.float32(0.5)
    return out


STATS_CHUNK = 1 << 18  # pixels per histogram pass: their uint16 codes stay in cache
CHANNEL_OFFSETS = np.array([0, 256, 512], np.uint16)  # channel c's level v is bin 256 * c + v


def channel_stats(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation, in levels (0..255), of uint8 frames (..., 3).

    Computed exactly from 256-bin histograms, so no float copy of the frames is made: all three channels in one
    bincount per chunk of pixels (about 1.7x faster than one strided pass per channel).
    """
    pixels = np.ascontiguousarray(frames).reshape(-1, 3)
    counts = np.zeros(768, np.int64)
    for start in range(0, len(pixels), STATS_CHUNK):
        counts += np.bincount((pixels[start:start + STATS_CHUNK] + CHANNEL_OFFSETS).ravel(), minlength=768)
    hist = counts.reshape(3, 256).astype(np.float64)
    levels = np.arange(256, dtype=np.float64)
    count = hist.sum(axis=1)
    mean = hist @ levels / count
    var = hist @ levels**2 / count - mean**2
    return mean, np.sqrt(np.maximum(var, 0.0))


def fit_color_match(reference: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per-channel lookup table, uint8 (3, 256), mapping `target`'s levels onto `reference`'s.

    An affine map per channel that gives `target` the mean and spread (standard deviation) of
    `reference`; the spread ratio is clipped to GAIN_RANGE. Both are uint8 frames (..., 3) showing
    the same content, e.g. the two versions of an overlap.
    """
    ref_mean, ref_spread = channel_stats(reference)
    tgt_mean, tgt_spread = channel_stats(target)
    gain = np.clip((ref_spread + MIN_SPREAD) / (tgt_spread + MIN_SPREAD), *GAIN_RANGE)
    offset = ref_mean - gain * tgt_mean
    levels = np.arange(256, dtype=np.float64)
    return np.clip(np.rint(gain[:, None] * levels + offset[:, None]), 0, 255).astype(np.uint8)


def apply_color_match(frames: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """uint8 frames (n, h, w, 3) mapped through a per-channel lookup table (3, 256); a new array."""
    out = np.empty_like(frames)
    for i, frame in enumerate(frames):  # frame by frame: stays in cache, about 1.5x faster than whole-array
        for c in range(3):
            out[i, ..., c] = lut[c][frame[..., c]]
    return out


IDENTITY_LUT = np.tile(np.arange(256, dtype=np.uint8), (3, 1))


class OverlapStitcher:
    """Turns overlapping segments into a stream of final frames.

    Whole segments: `add(frames, overlap_prev, overlap_next)` returns the frames that are final now;
    the last `overlap_next` frames are held until the next segment arrives. Segments in pieces (e.g.
    decoded clips): `begin(overlap_prev, overlap_next)`, then `feed(chunk)` any number of times (each
    returns the frames now final), then `end()`. `finish()` returns what is still held.

    With `color_correction`, each segment is mapped through `fit_color_match(held, its overlap)`: the
    held frames were corrected already, so the correction of segment i composes with those before it
    and a chain cannot drift. A segment with no overlap keeps the previous segment's correction.
    """

    def __init__(self, curve: Curve = "linear", color_correction: bool = True):
        blend_weights(1, curve)  # rejects an unknown curve now, not at the first seam
        self.curve = curve
        self.color_correction = color_correction
        self._held = np.zeros((0,), dtype=np.uint8)
        self._lut = IDENTITY_LUT
        self._open = False

    def add(self, frames: np.ndarray, overlap_prev: int, overlap_next: int) -> np.ndarray:
        """Stitch one whole segment, uint8 (n, h, w, 3); returns the frames that are final now."""
        if overlap_prev + overlap_next > len(frames):
            raise ValueError(f"overlaps {overlap_prev}+{overlap_next} exceed the segment's {len(frames)} frames")
        self.begin(overlap_prev, overlap_next)
        out = self.feed(frames)
        self.end()
        return out

    def join(self, head: np.ndarray, tail: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Stitch a segment of which only the edges are here: its first `overlap_prev` frames (`head`) and its
        last `overlap_next` (`tail`). Returns the lead (the crossfaded head, final now) and the lookup table
        its body (the frames in between) must be mapped through; the corrected tail is held as `add` holds it.
        The lead, the mapped body and what follows are exactly what `add` returns for the whole segment."""
        frames = np.concatenate([head, tail]) if len(head) else tail
        lead = self.add(frames, len(head), len(tail))
        return lead, self._lut

    @property
    def lut(self) -> np.ndarray:
        """The lookup table of the latest segment's colour correction (IDENTITY_LUT when none)."""
        return self._lut

    def begin(self, overlap_prev: int, overlap_next: int) -> None:
        """Start a segment that shares `overlap_prev` frames with the previous one and `overlap_next` with the next."""
        if self._open:
            raise RuntimeError("begin() called before end() of the previous segment")
        if overlap_prev < 0 or overlap_next < 0:
            raise ValueError(f"overlaps must be >= 0, got overlap_prev={overlap_prev} overlap_next={overlap_next}")
        if overlap_prev != len(self._held):
            raise ValueError(f"segment overlaps {overlap_prev} frames but {len(self._held)} are held")
        self._open = True
        self._overlap_prev, self._overlap_next = overlap_prev, overlap_next
        self._head: list[np.ndarray] = []
        self._pending = np.zeros((0,), dtype=np.uint8)
        self._count = 0

    def feed(self, frames: np.ndarray) -> np.ndarray:
        """Append the segment's next frames, uint8 (n, h, w, 3); returns the frames that are final now."""
        if not self._open:
            raise RuntimeError("feed() called outside begin()/end()")
        self._count += len(frames)
        if self._count - len(frames) < self._overlap_prev:  # still gathering the overlap with the held frames
            self._head.append(frames)
            if self._count < self._overlap_prev:
                return frames[:0]
            frames = self._join(self._head[0] if len(self._head) == 1 else np.concatenate(self._head))
        else:
            frames = self._correct(frames)
        return self._release(frames)

    def end(self) -> None:
        """Close the segment: its last `overlap_next` frames are held for the next one."""
        if self._count < self._overlap_prev + self._overlap_next:
            raise ValueError(
                f"overlaps {self._overlap_prev}+{self._overlap_next} exceed the segment's {self._count} frames"
            )
        self._held, self._open = self._pending, False

    def finish(self) -> np.ndarray:
        """Frames still held (non-empty only if the last segment declared an overlap_next)."""
        held, self._held = self._held, np.zeros((0,), dtype=np.uint8)
        return held

    def _correct(self, frames: np.ndarray) -> np.ndarray:
        if self._lut is IDENTITY_LUT or not len(frames):
            return frames
        return apply_color_match(frames, self._lut)

    def _join(self, frames: np.ndarray) -> np.ndarray:
        """Correct a segment's first frames (at least its whole overlap) and crossfade the overlap; a new array."""
        n = self._overlap_prev
        if self.color_correction:
            lut = fit_color_match(self._held, frames[:n])
            self._lut = IDENTITY_LUT if np.array_equal(lut, IDENTITY_LUT) else lut
        frames = frames.copy() if self._lut is IDENTITY_LUT else apply_color_match(frames, self._lut)
        frames[:n] = blend_overlap(self._held, frames[:n], self.curve)
        self._held = np.zeros((0,), dtype=np.uint8)
        return frames

    def _release(self, frames: np.ndarray) -> np.ndarray:
        """Hold back the last `overlap_next` frames seen so far; return those before them."""
        if len(self._pending):
            frames = np.concatenate([self._pending, frames])
        keep = max(len(frames) - self._overlap_next, 0)
        self._pending = frames[keep:].copy()
        return frames[:keep]
