"""User images as keyframes (no torch: the ingress and the runner import this)."""

from __future__ import annotations

import numpy as np
from PIL import Image


def load_keyframe_image(path: str, width: int, height: int) -> np.ndarray:
    """A user's keyframe image as uint8 (height, width, 3), resized to the plan's size."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB").resize((width, height), Image.Resampling.LANCZOS))
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise ValueError(f"image {path!r} cannot be read as a keyframe: {err}") from err
