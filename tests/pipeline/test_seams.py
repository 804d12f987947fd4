"""Seam report: a good blend of one smooth video scores about 1, a cut between unrelated clips far more."""

import math

import numpy as np
import pytest

from pipeline.seams import SeamMeter
from pipeline.stitch import OverlapStitcher
from pipeline.testsrc import moving_pattern


def _report(segments, overlap, **stitcher_kwargs):
    """Stitch segments sharing `overlap` frames at every seam, measuring the output frames as they come."""
    stitcher, meter = OverlapStitcher(**stitcher_kwargs), SeamMeter()
    shared = [0] + [overlap] * (len(segments) - 1) + [0]
    for i, segment in enumerate(segments):
        frames = stitcher.add(segment, shared[i], shared[i + 1])
        meter.begin_segment(shared[i])
        meter.add(frames)
    return meter.report()


@pytest.mark.parametrize("curve", ["linear", "cosine"])
def test_blended_cut_of_one_smooth_video_jumps_like_a_normal_step(curve):
    video = moving_pattern(0, 128, 64, 64)
    report = _report([video[:68], video[60:]], 8, curve=curve)  # the 8 overlap frames are in both clips
    (seam,) = report.seams
    assert (report.frames, seam.index, seam.frame, seam.overlap) == (128, 0, 60, 8)
    assert 0.8 < seam.jump < 1.2


def test_hard_cut_between_unrelated_clips_jumps_far_above_a_normal_step():
    first, second = moving_pattern(0, 60, 64, 64, seed=1), moving_pattern(0, 60, 64, 64, seed=2)
    assert _report([first, second], 0).seams[0].jump > 20
    assert _report([first, second], 8).seams[0].jump > 4, "a crossfade between unrelated clips still shows"


def test_seam_without_overlap_in_a_continuous_video_scores_one():
    video = moving_pattern(0, 120, 64, 64)
    (seam,) = _report([video[:40], video[40:80], video[80:]], 0).seams[:1]
    assert seam.frame == 40 and 0.9 < seam.jump < 1.1


def test_worst_seam_is_found():
    video = moving_pattern(0, 150, 32, 32)
    other = moving_pattern(0, 150, 32, 32, seed=5)
    report = _report([video[:58], video[50:108], other[100:]], 8)
    assert [s.frame for s in report.seams] == [50, 100]
    assert report.worst is report.seams[1] and report.seams[0].jump < 1.2


def test_large_frames_are_measured_on_a_subsample():
    video = moving_pattern(0, 40, 720, 1280, period=60)
    full, sampled = SeamMeter(max_pixels=10**7), SeamMeter()
    for meter in (full, sampled):
        meter.begin_segment(0)
        meter.add(video[:20])
        meter.begin_segment(0)
        meter.add(video[20:])
    assert abs(full.report().seams[0].jump - sampled.report().seams[0].jump) < 0.05


def test_unmeasured_seam_is_nan():
    meter = SeamMeter()
    meter.begin_segment(0)
    meter.add(moving_pattern(0, 5, 8, 8))
    meter.begin_segment(2)
    assert math.isnan(meter.report().seams[0].jump) and meter.report().worst is None


def test_frames_before_any_segment_are_refused():
    with pytest.raises(RuntimeError, match="begin_segment"):
        SeamMeter().add(np.zeros((1, 8, 8, 3), np.uint8))
