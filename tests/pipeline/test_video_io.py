"""ffmpeg writing and PyAV reading: exact frame count, fps, size, codec; no partial file left."""

from fractions import Fraction

import numpy as np
import pytest

from pipeline.video_io import VideoWriter, iter_frames, probe_video, read_video


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


def test_mp4_has_its_index_first(tmp_path):
    with VideoWriter(tmp_path / "clip.mp4", 48, 32, fps=16) as writer:
        writer.write(_frames(10))
    data = (tmp_path / "clip.mp4").read_bytes()
    assert data.index(b"moov") < data.index(b"mdat"), "+faststart moves the index before the media"


def test_ffv1_in_mkv_is_lossless_with_exact_count_and_rate(tmp_path):
    frames = np.random.default_rng(0).integers(0, 256, (12, 31, 45, 3), dtype=np.uint8)  # odd sizes are fine in RGB
    with VideoWriter(tmp_path / "clip.mkv", 45, 31, fps=Fraction(30000, 1001), codec="ffv1") as writer:
        writer.write(frames)
    decoded, info = read_video(tmp_path / "clip.mkv")
    assert (info.frames, info.fps, info.codec) == (12, Fraction(30000, 1001), "ffv1")
    np.testing.assert_array_equal(decoded, frames)


@pytest.mark.parametrize("name, codec, message", [
    ("clip.mp4", "ffv1", "codec 'ffv1' cannot be written to a .mp4 file .* use .mkv"),
    ("clip.avi", "libx264", "must end in one of .mp4, .mov, .mkv, got '.avi'"),
    ("clip", "libx264", "got 'none'"),
])
def test_codec_container_mismatch_is_a_value_error(tmp_path, name, codec, message):
    with pytest.raises(ValueError, match=message):
        VideoWriter(tmp_path / name, 48, 32, fps=16, codec=codec)
    assert list(tmp_path.iterdir()) == []


def test_frames_are_decoded_in_batches_and_scaled(tmp_path):
    with VideoWriter(tmp_path / "clip.mp4", 48, 32, fps=12) as writer:
        writer.write(_frames(37))
    info = probe_video(tmp_path / "clip.mp4")
    assert (info.width, info.height, info.fps) == (48, 32, 12)
    assert [len(b) for b in iter_frames(tmp_path / "clip.mp4", chunk=16)] == [16, 16, 5]
    assert next(iter_frames(tmp_path / "clip.mp4", chunk=4, size=(24, 16))).shape == (4, 16, 24, 3)


def test_unreadable_clip_is_a_value_error(tmp_path):
    (tmp_path / "notes.mp4").write_text("not a video")
    with pytest.raises(ValueError, match="notes.mp4' cannot be read as video"):
        probe_video(tmp_path / "notes.mp4")
    with pytest.raises(ValueError, match="missing.mp4' cannot be read as video"):
        probe_video(tmp_path / "missing.mp4")
