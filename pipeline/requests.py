"""What a shard group is asked to render: plain data (numpy only), so the driver and tests need no model library."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SegmentRequest:
    """What one segment needs: its prompt, seed, length (frames) and size (pixels), and the frames
    that condition its first and (optionally) last frame."""

    prompt: str
    seed: int
    num_frames: int
    width: int
    height: int
    first: np.ndarray
    last: np.ndarray | None = None
    steps: int | None = None
    guidance: float | None = None
