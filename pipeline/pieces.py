"""Video pieces: one independently decodable encode per segment, joined by stream copy.

A segment's piece is its *lead* (the crossfaded overlap with the previous segment, made on the head
from the few frames both segments share) followed by its *body* (its own frames up to the overlap with
the next, mapped through the segment's colour lookup table), encoded where the segment was rendered.
Every piece starts with an IDR frame and is made with identical encoder settings, its timestamps
continuing the video's, so the final file is a stream-copy concat (`concat_pieces`: O(bytes), no
re-encode) and the same pieces are an HLS event playlist while the video is still being made
(`playlist`).
"""

from __future__ import annotations

import math
import subprocess
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import ffmpeg
import numpy as np

from pipeline.seams import thumbnail
from pipeline.stitch import IDENTITY_LUT, apply_color_match
from pipeline.video_io import CODEC_PIX_FMTS, ffmpeg_binary, output_format

# Pieces of these codecs are MPEG-TS (what HLS plays); others (FFV1) go in Matroska and have no preview.
TS_CODECS = ("libx264", "libx265")
PIECE_CHUNK = 8  # body frames mapped and piped at a time: memory stays a few frames above the body itself
# Bodies of at least this many pixels are colour-mapped by ffmpeg (lutrgb: ~2 ns a pixel, ~40 ms to set up its
# expressions); smaller ones by numpy (~7 ns a pixel), which is cheaper below it (e.g. a 128x128 segment).
LUTRGB_MIN_PIXELS = 8_000_000


@dataclass(frozen=True)
class PieceFormat:
    """Encoder settings shared by every piece of one video (pieces only concatenate if these match).

    `threads` is fixed, not taken from the machine, so a piece is the same bytes on whichever node encodes it; one
    thread is x264's most efficient use of a core (two threads encode 720p only ~1.4x faster), and pieces are
    encoded side by side, one per finished segment."""

    width: int
    height: int
    fps: Fraction | int
    codec: str = "libx264"
    crf: int = 18
    threads: int = 1

    @property
    def suffix(self) -> str:
        return ".ts" if self.codec in TS_CODECS else ".mkv"

    @property
    def container(self) -> str:
        return "mpegts" if self.codec in TS_CODECS else "matroska"

    @property
    def previewable(self) -> bool:
        """Whether the pieces can be served as an HLS playlist."""
        return self.codec == "libx264"


@dataclass(frozen=True)
class Piece:
    """An encoded piece: its bytes, frame count, and the steps (see pipeline.seams) between consecutive body
    frames, measured while encoding so the head's seam meter never sees the body."""

    data: bytes
    frames: int
    body_steps: tuple[float, ...]


def lut_expression(table: np.ndarray) -> str:
    """An ffmpeg expression of `val` (0..255) whose value is exactly `table[val]` (uint8 (256,)): a binary search
    over the levels, each run of equal entries one leaf (for ffmpeg's lutrgb filter)."""

    def node(lo: int, hi: int) -> str:
        if (table[lo:hi] == table[lo]).all():
            return str(int(table[lo]))
        mid = (lo + hi) // 2
        return f"if(lt(val,{mid}),{node(lo, mid)},{node(mid, hi)})"

    return node(0, 256)


def encode_piece(fmt: PieceFormat, start_frame: int, lead: np.ndarray, body: np.ndarray | Iterable[np.ndarray],
                 lut: np.ndarray | None = None) -> Piece:
    """Encode `lead` then `body` mapped through `lut` as one piece whose timestamps start at output frame
    `start_frame`. Frames are uint8 (n, h, w, 3); `body` may also be an iterable of such batches (read once).

    A large body alone (no lead, as the nodes encode them; LUTRGB_MIN_PIXELS) is mapped by ffmpeg (lutrgb, exact:
    the table itself), in C as it is converted for the encoder, not in numpy here; the seam steps are then
    measured on mapped subsamples."""
    if isinstance(body, np.ndarray):
        batches = (body[i:i + PIECE_CHUNK] for i in range(0, len(body), PIECE_CHUNK))
    else:
        batches = iter(body)
    mapped = lut is not None and lut is not IDENTITY_LUT
    in_ffmpeg = mapped and not len(lead) and isinstance(body, np.ndarray) and body.size // 3 >= LUTRGB_MIN_PIXELS
    pix_fmt = CODEC_PIX_FMTS.get(fmt.codec, "yuv420p")
    stream = ffmpeg.input("pipe:", format="rawvideo", pix_fmt="rgb24", s=f"{fmt.width}x{fmt.height}", r=str(fmt.fps))
    if in_ffmpeg:
        stream = stream.filter("lutrgb", **{c: lut_expression(lut[i]) for i, c in enumerate("rgb")})
    args = dict(vcodec=fmt.codec, pix_fmt=pix_fmt, r=str(fmt.fps), format=fmt.container, threads=fmt.threads,
                output_ts_offset=f"{float(Fraction(start_frame) / Fraction(fmt.fps)):.6f}")
    if fmt.codec in TS_CODECS:
        args["crf"] = fmt.crf
    cmd = ffmpeg.output(stream, "pipe:", **args).global_args("-loglevel", "error").compile(cmd=ffmpeg_binary())
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    steps: list[float] = []
    count = [0]
    failure: list[BaseException] = []

    def write(batch: np.ndarray) -> None:
        if batch.dtype != np.uint8 or batch.shape[1:] != (fmt.height, fmt.width, 3):
            raise ValueError(f"frames must be uint8 (n, {fmt.height}, {fmt.width}, 3), got {batch.dtype} {batch.shape}")
        proc.stdin.write(np.ascontiguousarray(batch).data)
        count[0] += len(batch)

    def feed() -> None:
        previous = None
        try:
            if len(lead):
                write(lead)
            for batch in batches:
                batch = apply_color_match(batch, lut) if mapped and not in_ffmpeg else batch
                for frame in batch:
                    thumb = thumbnail(frame, lut=lut if in_ffmpeg else None)
                    if previous is not None:
                        steps.append(float(np.abs(thumb - previous).mean()))
                    previous = thumb
                write(batch)
        except BaseException as err:  # a bad frame or a broken pipe (then ffmpeg's own error says why)
            failure.append(err)
        finally:
            proc.stdin.close()

    writer = threading.Thread(target=feed, name="piece-feed", daemon=True)
    writer.start()
    data = proc.stdout.read()
    writer.join()
    error = proc.stderr.read().decode(errors="replace").strip()
    if failure and isinstance(failure[0], ValueError):  # bad frames: the caller's error, not ffmpeg's
        proc.wait()
        raise failure[0]
    if proc.wait() != 0 or failure:
        raise RuntimeError(f"ffmpeg failed encoding a piece at frame {start_frame}: {error or failure[0]}")
    if not count[0]:
        raise ValueError("a piece needs at least one frame")
    return Piece(data, count[0], tuple(steps))


def concat_pieces(pieces: list[tuple[Path, int]], out: Path, codec: str, fps: Fraction | int) -> Path:
    """Join `pieces` ((path, frames) in order) into `out` by stream copy, through `out`.partial; returns `out`.

    Each piece's duration is given to the concat demuxer (frames / fps): it cannot tell a one-frame piece's."""
    container = output_format(out, codec)
    out = Path(out)
    partial = out.with_name(out.name + ".partial")
    listing = out.with_name(out.name + ".pieces.txt")
    listing.write_text("".join(f"file '{Path(p).resolve()}'\nduration {float(Fraction(n) / Fraction(fps)):.9f}\n"
                               for p, n in pieces))
    args = dict(c="copy", format=container)
    if container in ("mp4", "mov"):
        args["movflags"] = "+faststart"
    cmd = (ffmpeg.input(str(listing), format="concat", safe=0).output(str(partial), **args)
           .overwrite_output().global_args("-loglevel", "error").compile(cmd=ffmpeg_binary()))
    try:
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            partial.unlink(missing_ok=True)
            raise RuntimeError(f"ffmpeg failed joining {len(pieces)} pieces into {out}: {done.stderr.strip()}")
        partial.replace(out)
    finally:
        listing.unlink(missing_ok=True)
    return out


def playlist(pieces: list[tuple[str, int]], fps: Fraction | int, ended: bool) -> str:
    """The HLS event playlist of `pieces` ((uri, frames) in order); `ended` closes it (#EXT-X-ENDLIST)."""
    durations = [frames / float(fps) for _, frames in pieces]
    lines = ["#EXTM3U", "#EXT-X-VERSION:3", "#EXT-X-PLAYLIST-TYPE:EVENT",
             f"#EXT-X-TARGETDURATION:{max(1, math.ceil(max(durations, default=1.0)))}", "#EXT-X-MEDIA-SEQUENCE:0"]
    for (uri, _), seconds in zip(pieces, durations, strict=True):
        lines += [f"#EXTINF:{seconds:.6f},", uri]
    if ended:
        lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"
