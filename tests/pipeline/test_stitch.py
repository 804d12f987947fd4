"""Overlap blending and the streaming stitcher, on synthetic frames of known content."""

import numpy as np
import pytest

from pipeline.stitch import OverlapStitcher, blend_overlap, blend_weights


def _clip(values, size=4):
    """A clip whose frame i is flat grey at values[i]."""
    return np.stack([np.full((size, size, 3), v, np.uint8) for v in values])


@pytest.mark.parametrize("curve", ["linear", "cosine"])
def test_weights_rise_strictly_inside_zero_one(curve):
    w = blend_weights(6, curve)
    assert np.all(np.diff(w) > 0) and 0 < w[0] and w[-1] < 1
    np.testing.assert_allclose(w + w[::-1], 1.0, atol=1e-6)


def test_blend_is_a_crossfade():
    out = blend_overlap(_clip([0, 0, 0]), _clip([200, 200, 200]))
    np.testing.assert_array_equal(out[:, 0, 0, 0], [50, 100, 150])


def test_stitcher_streams_exact_frames_with_blended_seams():
    stitcher = OverlapStitcher()
    a = _clip([10, 20, 30, 40, 50, 60])
    b = _clip([100, 110, 120, 130, 140])
    first = stitcher.add(a, overlap_prev=0, overlap_next=2)
    second = stitcher.add(b, overlap_prev=2, overlap_next=0)
    out = np.concatenate([first, second, stitcher.finish()])[:, 0, 0, 0]
    # 6 + 5 - 2 frames; the two shared frames mix 50->100 (w=1/3) and 60->110 (w=2/3).
    np.testing.assert_array_equal(out, [10, 20, 30, 40, round(50 + 50 / 3), round(60 + 100 / 3), 120, 130, 140])


def test_stitcher_rejects_mismatched_overlap():
    stitcher = OverlapStitcher()
    stitcher.add(_clip([1, 2, 3]), 0, 1)
    with pytest.raises(ValueError, match="overlaps 2 frames but 1 are held"):
        stitcher.add(_clip([1, 2, 3]), 2, 0)
