"""A PNG contact sheet of a video: frames at even times, each labelled with its time in seconds.

    python scripts/frame_strip.py minute.mp4 --out docs/demo_strip.png [--every 2.0] [--columns 10]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.video_io import iter_frames, probe_video  # noqa: E402

LABEL = 12  # pixels of caption under each frame


def frame_strip(video: Path, every_s: float, columns: int) -> Image.Image:
    """Frames at 0, every_s, 2 * every_s, ... seconds, tiled `columns` to a row, labelled under each."""
    info = probe_video(video)
    step = max(1, round(every_s * float(info.fps)))
    picked = [(index, frame) for index, frame in enumerate(f for chunk in iter_frames(video) for f in chunk)
              if index % step == 0]
    rows = -(-len(picked) // columns)
    sheet = Image.new("RGB", (columns * info.width, rows * (info.height + LABEL)), "black")
    draw = ImageDraw.Draw(sheet)
    for n, (index, frame) in enumerate(picked):
        x, y = (n % columns) * info.width, (n // columns) * (info.height + LABEL)
        sheet.paste(Image.fromarray(np.asarray(frame)), (x, y))
        draw.text((x + 3, y + info.height), f"{index / float(info.fps):.1f}s", fill="white")
    return sheet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("video", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--every", type=float, default=2.0, help="Seconds between frames.")
    parser.add_argument("--columns", type=int, default=10)
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    frame_strip(args.video, args.every, args.columns).save(args.out)
    print(args.out)


if __name__ == "__main__":
    main()
