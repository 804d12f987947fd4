"""Pieces: encoded apart, joined by stream copy, they are the frames fed in (FFV1 exactly, H.264 frame for frame
in count and time); the seam meter fed pieces' measured steps reports what it reports on the whole stream."""

import numpy as np
import pytest

from pipeline.pieces import PieceFormat, concat_pieces, encode_piece, lut_expression, playlist
from pipeline.seams import SeamMeter, thumbnail
from pipeline.stitch import apply_color_match, fit_color_match
from pipeline.video_io import read_video


def _frames(n, seed):
    """`n` frames of a smooth picture (what 4:2:0 H.264 keeps) that brightens frame by frame."""
    y, x = np.mgrid[0:32, 0:48]
    base = np.stack([x * 4, y * 6, (x + y) * 2 + seed * 40], axis=-1)[None]
    return np.clip(base + np.arange(n)[:, None, None, None] * 3, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("codec, suffix", [("ffv1", ".mkv"), ("libx264", ".mp4")])
def test_pieces_join_by_stream_copy_into_the_frames_fed(tmp_path, codec, suffix):
    fmt = PieceFormat(48, 32, 16, codec=codec)
    runs = [_frames(n, seed) for seed, n in enumerate((17, 5, 1, 30))]  # a one-frame piece too (a keyframe seam)
    lut = fit_color_match(runs[0], runs[1])  # the body of the second piece is mapped through a real table
    paths, start = [], 0
    for i, frames in enumerate(runs):
        lead = 3 if len(frames) > 3 else 0
        piece = encode_piece(fmt, start, frames[:lead], frames[lead:], lut if i == 1 else None)
        assert piece.frames == len(frames) and len(piece.body_steps) == len(frames) - lead - 1
        paths.append(tmp_path / f"{i}{fmt.suffix}")
        paths[-1].write_bytes(piece.data)
        start += piece.frames
    listed = list(zip(paths, [len(r) for r in runs], strict=True))
    frames, info = read_video(concat_pieces(listed, tmp_path / f"all{suffix}", codec, 16))
    assert info.frames == start and info.fps == 16 and abs(info.duration_s - start / 16) < 1e-9
    expected = np.concatenate([runs[0], runs[1][:3], apply_color_match(runs[1][3:], lut), *runs[2:]])
    if codec == "ffv1":
        np.testing.assert_array_equal(frames, expected)
    else:
        assert np.abs(frames.astype(int) - expected).mean() < 3
    assert not list(tmp_path.glob("*.partial")) and not list(tmp_path.glob("*.txt"))


def test_a_body_alone_is_mapped_by_ffmpeg_exactly_and_measured_as_mapped(tmp_path, monkeypatch):
    monkeypatch.setattr("pipeline.pieces.LUTRGB_MIN_PIXELS", 0)  # this small body too (in use: 720p bodies)
    frames = _frames(12, 1)
    lut = np.random.default_rng(0).integers(0, 256, (3, 256)).astype(np.uint8)  # any table, not just an affine fit
    for table in lut:  # the lutrgb expression is the table (evaluated here as ffmpeg reads it)
        value = {"if": lambda c, a, b: a if c else b, "lt": lambda a, b: a < b}
        expression = lut_expression(table).replace("if(", "IF(")
        assert [eval(expression, {"IF": value["if"], "lt": value["lt"], "val": v}) for v in range(256)] == list(table)
    piece = encode_piece(PieceFormat(48, 32, 16, codec="ffv1"), 0, frames[:0], frames, lut)
    path = tmp_path / "body.mkv"
    path.write_bytes(piece.data)
    expected = apply_color_match(frames, lut)
    np.testing.assert_array_equal(read_video(path)[0], expected)
    thumbs = [thumbnail(frame) for frame in expected]
    assert piece.body_steps == tuple(float(np.abs(b - a).mean()) for a, b in zip(thumbs, thumbs[1:], strict=False))


def test_a_broken_piece_fails_naming_ffmpeg(tmp_path):
    fmt = PieceFormat(48, 32, 16, codec="libx264")
    with pytest.raises(ValueError, match="uint8"):
        encode_piece(fmt, 0, np.zeros((0, 32, 48, 3), np.uint8), np.zeros((2, 30, 48, 3), np.uint8))
    with pytest.raises(ValueError, match="at least one frame"):
        encode_piece(fmt, 0, np.zeros((0, 32, 48, 3), np.uint8), np.zeros((0, 32, 48, 3), np.uint8))
    (tmp_path / "bad.ts").write_bytes(b"not a piece")
    with pytest.raises(RuntimeError, match="ffmpeg failed joining"):
        concat_pieces([(tmp_path / "bad.ts", 1)], tmp_path / "out.mp4", "libx264", 16)
    assert not (tmp_path / "out.mp4").exists()


def test_seam_meter_on_pieces_reports_what_it_reports_on_the_stream():
    segments = [_frames(20, seed) for seed in range(3)]
    whole, pieced = SeamMeter(), SeamMeter()
    for i, frames in enumerate(segments):
        lead, body = (frames[:4], frames[4:]) if i else (frames[:0], frames)
        whole.begin_segment(len(lead))
        whole.add(frames)
        pieced.begin_segment(len(lead))
        pieced.add(np.concatenate([lead, body[:1]]))
        piece = encode_piece(PieceFormat(48, 32, 16, codec="ffv1"), 0, lead, body)
        pieced.add_measured(piece.body_steps, body[-1])
    assert pieced.report() == whole.report() and len(whole.report().seams) == 2


def test_playlist_is_an_hls_event_playlist():
    text = playlist([("pieces/00000.ts", 40), ("pieces/00001-lead.ts", 8)], 16, ended=False)
    assert text.splitlines() == ["#EXTM3U", "#EXT-X-VERSION:3", "#EXT-X-PLAYLIST-TYPE:EVENT",
                                 "#EXT-X-TARGETDURATION:3", "#EXT-X-MEDIA-SEQUENCE:0", "#EXTINF:2.500000,",
                                 "pieces/00000.ts", "#EXTINF:0.500000,", "pieces/00001-lead.ts"]
    assert playlist([], 16, ended=True).endswith("#EXT-X-ENDLIST\n")
