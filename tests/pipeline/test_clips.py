"""stitch_clips: decoding clips in batches gives exactly what stitching whole segments in memory gives."""

import numpy as np

from pipeline.clips import stitch_clips
from pipeline.config import StitchConfig
from pipeline.stitch import OverlapStitcher
from pipeline.testsrc import moving_pattern
from pipeline.video_io import VideoWriter, read_video


def test_streamed_clips_match_in_memory_stitching(tmp_path):
    video = moving_pattern(0, 120, 32, 48)
    segments = [video[:50], np.clip(video[42:90].astype(int) + 20, 0, 255).astype(np.uint8), video[82:]]
    paths = []
    for i, segment in enumerate(segments):
        paths.append(tmp_path / f"{i}.mkv")
        with VideoWriter(paths[-1], 48, 32, fps=16, codec="ffv1") as writer:
            writer.write(segment)
    report = stitch_clips(paths, 8, tmp_path / "out.mkv", StitchConfig(codec="ffv1", curve="cosine"))
    stitcher, shared = OverlapStitcher("cosine"), [0, 8, 8, 0]
    expected = np.concatenate([stitcher.add(s, shared[i], shared[i + 1]) for i, s in enumerate(segments)])
    np.testing.assert_array_equal(read_video(tmp_path / "out.mkv")[0], expected)
    assert report.frames == 120 and [s.frame for s in report.seams] == [42, 82]
    assert max(s.jump for s in report.seams) < 1.3
