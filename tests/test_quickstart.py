"""The README's first command, as written: a 60 s, 960-frame H.264 MP4 from the tiny preset, in which the
prompt's ball moves the prompt's way all minute and keeps its size; its job directory is a fraction of the video's
raw size."""

import os
import subprocess
from pathlib import Path

import numpy as np

from pipeline import world
from pipeline.video_io import read_video

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_renders_one_minute(ray_cluster, tiny_cache, tmp_path):
    out = tmp_path / "minute.mp4"
    # Attach to the session's cluster (one cluster per test session) and reuse its checkpoints.
    env = {**os.environ, "RAY_ADDRESS": ray_cluster, "MINUTEREEL_CACHE": str(tiny_cache)}
    # With a job directory (render.sh passes extra flags on), to measure what a minute keeps on disk.
    job = tmp_path / "job"
    done = subprocess.run(["bash", "scripts/render.sh", str(out), "--job-dir", str(job)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "960 frames" in done.stdout
    frames, info = read_video(out)
    assert (info.frames, info.fps, info.duration_s, info.codec, info.pix_fmt) == (960, 16, 60.0, "h264", "yuv420p")
    assert (info.width, info.height) == (128, 128)
    # The job directory holds pieces, keyframes and edge frames, not raw segments: under a quarter of the raw video.
    kept = sum(path.stat().st_size for path in job.rglob("*") if path.is_file())
    raw = frames.nbytes
    assert kept <= raw / 4, f"the job directory holds {kept / 1e6:.1f} MB, the video {raw / 1e6:.1f} MB raw"
    # "a big yellow ball moving right on a blue background"
    assert world.background_colour(frames[0]) == "blue"
    places = [world.locate(frame, "yellow", "blue") for frame in frames[::16]]  # once a second
    assert sum(p is not None for p in places) >= 0.9 * len(places), "the yellow ball is missing"
    steps = [world.torus_delta(a[0], b[0]) for a, b in zip(places, places[1:], strict=False) if a and b]
    assert sum(steps) >= 300, f"the yellow ball moved {sum(steps):.0f} px to the right in a minute"
    assert np.mean(np.array(steps) > 0) >= 0.8, "the yellow ball often moves the wrong way"
    # No drift: chained segments once widened the ball to nearly three times its size by the end of the minute.
    truth = world.render_clip(world.scene_from_prompt("a big yellow ball moving right on a blue background"), 1)[0]
    size = world.object_mask(truth, "yellow", "blue").sum()
    last = np.median([world.object_mask(frame, "yellow", "blue").sum() for frame in frames[-160::16]])
    assert 0.5 * size <= last <= 1.6 * size, f"the ball covers {last:.0f} px in the last 10 s, {size} px drawn true"
