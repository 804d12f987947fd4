"""A smooth moving test pattern of known content, for tests and benchmarks (like ffmpeg's `testsrc`)."""

from __future__ import annotations

import numpy as np


def moving_pattern(start: int, count: int, height: int, width: int, seed: int = 0, period: int = 240) -> np.ndarray:
    """Frames `start .. start + count - 1` of a drifting pattern: uint8 (count, height, width, 3).

    Per channel, a horizontal and a vertical sinusoidal grating (1-3 cycles across the frame, phases
    from `seed`) drift one cycle every `period` frames, in opposite directions; levels stay within
    50..190, so a brightness shift of +-50 does not clip. The pattern repeats every `period` frames.
    The mean absolute step between consecutive frames is about 180 / period levels; different seeds give
    unrelated pictures.
    """
    if count < 0 or height < 1 or width < 1 or period < 1:
        raise ValueError(f"need count >= 0 and positive sizes, got count={count} {width}x{height} period={period}")
    rng = np.random.default_rng(seed)
    cycles = rng.integers(1, 4, size=(2, 3))
    phase = rng.uniform(0, 2 * np.pi, size=(2, 3))
    x = np.arange(width)[:, None] / width
    y = np.arange(height)[:, None] / height
    out = np.empty((count, height, width, 3), dtype=np.uint8)
    for i in range(count):
        t = (start + i) / period
        across = 40 * np.sin(2 * np.pi * (cycles[0] * x + t) + phase[0])  # (width, 3)
        down = 30 * np.sin(2 * np.pi * (cycles[1] * y - t) + phase[1])  # (height, 3)
        out[i] = np.rint(120 + down[:, None] + across[None])
    return out
