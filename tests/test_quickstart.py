"""The README's first command, as written: a 60 s, 960-frame H.264 MP4 from the tiny preset."""

import os
import subprocess
from pathlib import Path

import numpy as np

from pipeline.video_io import read_video

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_renders_one_minute(ray_cluster, tiny_cache, tmp_path):
    out = tmp_path / "minute.mp4"
    # Attach to the session's cluster (one cluster per test session) and reuse its checkpoints.
    env = {**os.environ, "RAY_ADDRESS": ray_cluster, "MINUTEREEL_CACHE": str(tiny_cache)}
    done = subprocess.run(["bash", "scripts/render.sh", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "960 frames" in done.stdout
    frames, info = read_video(out)
    assert (info.frames, info.fps, info.duration_s, info.codec, info.pix_fmt) == (960, 16, 60.0, "h264", "yuv420p")
    assert (info.width, info.height) == (128, 128)
    spatial = frames.reshape(960, -1).astype(float).std(axis=1)
    temporal = np.abs(np.diff(frames.astype(int), axis=0)).mean(axis=(1, 2, 3))
    assert spatial.min() > 10, "a frame is nearly flat"
    assert temporal.min() > 1, "two consecutive frames are nearly identical"
