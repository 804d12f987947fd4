"""Overlap blending, colour-drift correction and the streaming stitcher, on synthetic frames of known content."""

import numpy as np
import pytest

from pipeline.stitch import IDENTITY_LUT, OverlapStitcher, blend_overlap, blend_weights, channel_stats, fit_color_match
from pipeline.testsrc import moving_pattern


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
    stitcher = OverlapStitcher(color_correction=False)  # the crossfade's arithmetic alone
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


def _stitch(segments, overlaps, **kwargs):
    """Stitch whole segments that share overlaps[i] frames with their successor; all output frames."""
    stitcher = OverlapStitcher(**kwargs)
    shared = [0, *overlaps, 0]
    out = [stitcher.add(seg, shared[i], shared[i + 1]) for i, seg in enumerate(segments)]
    return np.concatenate([*out, stitcher.finish()])


def _drifted(frames, offset, gain=1.0):
    """frames with every level x replaced by 120 + gain * (x - 120) + offset (no clipping in 50..190)."""
    return np.clip(np.rint(120 + gain * (frames.astype(np.float64) - 120) + offset), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("color_correction", [True, False])
def test_keyframes_boundary_frame_appears_once(color_correction):
    video = moving_pattern(0, 30, 16, 16)
    out = _stitch([video[:12], video[11:]], [1], color_correction=color_correction)
    np.testing.assert_array_equal(out, video)


def test_identical_overlaps_give_back_the_video():
    video = moving_pattern(0, 90, 16, 16)
    for curve in ("linear", "cosine"):
        np.testing.assert_array_equal(_stitch([video[:40], video[32:70], video[62:]], [8, 8], curve=curve), video)


def test_color_correction_removes_brightness_drift():
    video = moving_pattern(0, 80, 32, 32)
    segments = [video[:40], _drifted(video[32:], +30)]
    corrected = _stitch(segments, [8])
    assert np.abs(corrected.astype(int) - video).mean() < 3
    uncorrected = _stitch(segments, [8], color_correction=False)
    assert np.abs(uncorrected[40:].astype(int) - video[40:]).mean() > 25


def test_chain_cannot_drift():
    video = moving_pattern(0, 5 * 32 + 8, 32, 32)
    segments = [_drifted(video[32 * k: 32 * k + 40], 8 * k, 1.05**k) for k in range(5)]
    out = _stitch(segments, [8] * 4)
    errors = np.abs(out.astype(int) - video).mean(axis=(1, 2, 3))
    assert errors.max() < 3, f"worst frame {errors.argmax()} is {errors.max():.1f} levels off"
    drifted = _stitch(segments, [8] * 4, color_correction=False)
    assert np.abs(drifted[-32:].astype(int) - video[-32:]).mean() > 25


def test_color_match_of_identical_frames_is_identity():
    frames = moving_pattern(0, 4, 16, 16)
    np.testing.assert_array_equal(fit_color_match(frames, frames), IDENTITY_LUT)


def test_feeding_in_pieces_equals_whole_segments():
    video = moving_pattern(0, 90, 16, 16)
    segments = [video[:40], _drifted(video[32:70], 20), _drifted(video[62:], -10)]
    whole = _stitch(segments, [8, 8])
    stitcher, out, shared = OverlapStitcher(), [], [0, 8, 8, 0]
    for i, seg in enumerate(segments):
        stitcher.begin(shared[i], shared[i + 1])
        out += [stitcher.feed(seg[j: j + 3]) for j in range(0, len(seg), 3)]
        stitcher.end()
    np.testing.assert_array_equal(np.concatenate(out), whole)


def test_stitcher_rejects_a_segment_shorter_than_its_overlaps():
    stitcher = OverlapStitcher()
    stitcher.add(_clip([1, 2, 3]), 0, 2)
    stitcher.begin(2, 2)
    stitcher.feed(_clip([1, 2, 3]))
    with pytest.raises(ValueError, match="overlaps 2\\+2 exceed the segment's 3 frames"):
        stitcher.end()


def test_unknown_curve_is_rejected_up_front():
    with pytest.raises(ValueError, match="curve must be 'linear' or 'cosine', got 'sine'"):
        OverlapStitcher("sine")


def test_channel_stats_are_each_channels_exact_mean_and_spread():
    rng = np.random.default_rng(3)
    frames = rng.integers(0, 256, (3, 300, 400, 3), dtype=np.uint8)  # more pixels than one histogram chunk
    frames[..., 1] //= 4  # channels that differ
    for view in (frames, frames[:, ::3, 1::2]):  # and a strided view
        mean, spread = channel_stats(view)
        exact = view.reshape(-1, 3).astype(np.float64)
        np.testing.assert_allclose(mean, exact.mean(axis=0), rtol=1e-12)
        np.testing.assert_allclose(spread, exact.std(axis=0), rtol=1e-9)
