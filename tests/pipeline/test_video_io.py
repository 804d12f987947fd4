"""ffmpeg writing and PyAV reading: exact frame count, fps, size, codec; no partial file left."""

import numpy as np
import pytest

from pipeline.video_io import VideoWriter, read_video


def _frames(n, h=32, w=48):
    """Smooth frames a codec keeps well: a gradient whose level steps up with the frame index."""
    ramp = np.linspace(0, 120, w, dtype=np.float32)[None, :, None].repeat(h, 0).repeat(3, 2)
    return np.stack([(ramp + 3 * i).astype(np.uint8) for i in range(n)])


def test_round_trip_keeps_count_rate_size(tmp_path):
    out = tmp_path / "clip.mp4"
    frames = _frames(37)
    with VideoWriter(out, 48, 32, fps=16) as writer:
        writer.write(frames[:20])
        writer.write(frames[20:])
        assert not out.exists() and writer.partial.exists()
    decoded, info = read_video(out)
    assert (info.frames, info.fps, info.width, info.height) == (37, 16, 48, 32)
    assert (info.codec, info.pix_fmt) == ("h264", "yuv420p")
    errors = np.abs(decoded[:, None].astype(int) - frames[None]).mean(axis=(2, 3, 4))
    assert errors.diagonal().max() < 1.5, "lossy, but close"
    assert (errors.argmin(axis=1) == np.arange(37)).all(), "every decoded frame is nearest its own source"
    assert not (tmp_path / "clip.mp4.partial").exists()


def test_failure_leaves_no_file(tmp_path):
    out = tmp_path / "clip.mp4"
    with pytest.raises(RuntimeError, match="boom"):
        with VideoWriter(out, 48, 32, fps=16) as writer:
            writer.write(_frames(5))
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_bad_encoder_fails_with_reason(tmp_path):
    out = tmp_path / "clip.mp4"
    with pytest.raises(RuntimeError, match="ffmpeg"):
        with VideoWriter(out, 48, 32, fps=16, codec="no-such-codec") as writer:
            writer.write(_frames(30))
    assert list(tmp_path.iterdir()) == []


def test_wrong_frame_shape_is_rejected(tmp_path):
    with VideoWriter(tmp_path / "x.mp4", 48, 32, fps=16) as writer, pytest.raises(ValueError, match="uint8"):
        writer.write(np.zeros((1, 32, 40, 3), np.uint8))
