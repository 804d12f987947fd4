"""`minutereel stitch` through the CLI's main(): exact frame counts, seam report, clear errors (exit 2)."""

import numpy as np
import pytest

from orchestrator.cli import main
from pipeline.testsrc import moving_pattern
from pipeline.video_io import VideoWriter, read_video


def _write(path, frames, fps=16, codec="libx264"):
    with VideoWriter(path, frames.shape[2], frames.shape[1], fps=fps, codec=codec) as writer:
        writer.write(frames)
    return str(path)


@pytest.fixture
def video():
    return moving_pattern(0, 100, 48, 64)


def test_two_clips_with_overlap_give_exact_frame_count(tmp_path, video, capsys):
    a, b = _write(tmp_path / "a.mp4", video[:60]), _write(tmp_path / "b.mp4", video[52:])
    out = tmp_path / "out.mp4"
    assert main(["stitch", a, b, "--overlap", "8", "--out", str(out)]) == 0
    frames, info = read_video(out)
    assert (info.frames, info.width, info.height, info.fps, info.codec) == (60 + 48 - 8, 64, 48, 16, "h264")
    stdout = capsys.readouterr().out
    assert "seam 0|1 at frame 52 (overlap 8)" in stdout
    assert stdout.strip().splitlines()[-1].startswith(f"wrote {out}: 100 frames, 64x48 at 16 fps")
    assert np.abs(frames.astype(int) - video).mean() < 6, "two lossy yuv420p encodes, but the same pictures"


def test_three_clips_end_to_end_without_overlap(tmp_path, video):
    clips = [_write(tmp_path / f"{i}.mp4", video[30 * i: 30 * i + 30]) for i in range(3)]
    assert main(["stitch", *clips, "--overlap", "0", "--out", str(tmp_path / "out.mp4")]) == 0
    assert read_video(tmp_path / "out.mp4")[1].frames == 90


def _fails(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    return err


def test_clips_of_different_size_are_an_error_naming_both(tmp_path, video, capsys):
    a = _write(tmp_path / "a.mp4", video[:40])
    b = _write(tmp_path / "b.mp4", moving_pattern(0, 40, 32, 32))
    err = _fails(["stitch", a, b, "--overlap", "8", "--out", str(tmp_path / "out.mp4")], capsys)
    assert f"{a} is 64x48 at 16 fps" in err and f"{b} is 32x32 at 16 fps" in err and "--resize" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4", "b.mp4"]


def test_resize_scales_to_the_first_clip(tmp_path, video):
    a = _write(tmp_path / "a.mp4", video[:40])
    b = _write(tmp_path / "b.mp4", moving_pattern(0, 40, 96, 128))
    assert main(["stitch", a, b, "--overlap", "4", "--resize", "--out", str(tmp_path / "out.mp4")]) == 0
    info = read_video(tmp_path / "out.mp4")[1]
    assert (info.frames, info.width, info.height) == (76, 64, 48)


def test_different_frame_rates_are_an_error_even_with_resize(tmp_path, video, capsys):
    a, b = _write(tmp_path / "a.mp4", video[:40]), _write(tmp_path / "b.mp4", video[40:], fps=24)
    err = _fails(["stitch", a, b, "--overlap", "8", "--resize", "--out", str(tmp_path / "out.mp4")], capsys)
    assert "frame rate" in err and f"{a} is 64x48 at 16 fps" in err and f"{b} is 64x48 at 24 fps" in err


def test_clip_shorter_than_its_overlaps_is_an_error(tmp_path, video, capsys):
    clips = [_write(tmp_path / f"{i}.mp4", video[i * 20: i * 20 + n]) for i, n in enumerate([30, 10, 30])]
    err = _fails(["stitch", *clips, "--overlap", "8", "--out", str(tmp_path / "out.mp4")], capsys)
    assert f"clip {clips[1]} is too short: overlaps 8+8 exceed the segment's 10 frames" in err
    assert not (tmp_path / "out.mp4").exists() and not (tmp_path / "out.mp4.partial").exists()


@pytest.mark.parametrize("argv, message", [
    (["--codec", "ffv1", "--out", "OUT/out.mp4"], "codec 'ffv1' cannot be written to a .mp4 file"),
    (["--out", "OUT/out.avi"], "must end in one of .mp4, .mov, .mkv"),
    (["--overlap", "-1", "--out", "OUT/out.mp4"], "overlap must be >= 0 frames, got -1"),
])
def test_bad_arguments_exit_2_with_one_line(tmp_path, video, capsys, argv, message):
    a = _write(tmp_path / "a.mp4", video[:40])
    argv = [arg.replace("OUT", str(tmp_path)) for arg in argv]
    overlap = [] if "--overlap" in argv else ["--overlap", "4"]
    assert message in _fails(["stitch", a, a, *overlap, *argv], capsys)


def test_missing_clip_exits_2(tmp_path, capsys):
    err = _fails(["stitch", str(tmp_path / "nope.mp4"), "--overlap", "0", "--out", str(tmp_path / "o.mp4")], capsys)
    assert "nope.mp4' cannot be read as video" in err


def test_lossless_stitch_corrects_drift_unless_told_not_to(tmp_path, video):
    drifted = np.clip(video[52:].astype(int) + 30, 0, 255).astype(np.uint8)
    a, b = _write(tmp_path / "a.mkv", video[:60], codec="ffv1"), _write(tmp_path / "b.mkv", drifted, codec="ffv1")
    errors = {}
    for flag in ([], ["--no-color-correction"]):
        out = tmp_path / f"out{len(flag)}.mkv"
        assert main(["stitch", a, b, "--overlap", "8", "--codec", "ffv1", "--out", str(out), *flag]) == 0
        frames, info = read_video(out)
        assert (info.frames, info.codec) == (100, "ffv1")
        errors[bool(flag)] = np.abs(frames.astype(int) - video).mean()
    assert errors[False] < 1 and errors[True] > 10, errors
