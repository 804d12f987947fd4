"""A killed render resumes from its job directory, renders only what is missing, and produces
the same video as an uninterrupted run."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from pipeline.video_io import read_video

ROOT = Path(__file__).resolve().parents[1]
# No --mode: one worker plans chain. The resume runs on two workers, which would plan bridge.
FLAGS = ["--prompt", "a fox", "--duration", "8", "--segment-frames", "21", "--overlap", "4"]


def _cli(env, *args, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "render", *FLAGS, *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def test_killed_render_resumes_with_only_missing_segments(ray_cluster, tiny_cache, tmp_path):
    env = {**os.environ, "RAY_ADDRESS": ray_cluster, "MINUTEREEL_CACHE": str(tiny_cache)}
    job_dir = tmp_path / "job1"
    segments = job_dir / "pieces"  # a segment is saved once its piece is

    first = _cli(env, "--job-dir", str(job_dir), "--workers", "1")
    # The uninterrupted reference renders meanwhile, on the cluster's other CPU slot.
    clean = _cli(env, "--out", str(tmp_path / "clean.mp4"), "--workers", "1")
    try:
        deadline = time.monotonic() + 180
        while len(list(segments.glob("[0-9]*.json"))) < 2:
            assert first.poll() is None, first.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no segments appeared"
            time.sleep(0.1)
    except BaseException:
        clean.kill()
        raise
    first.send_signal(signal.SIGKILL)
    first.wait()
    kept = len(list(segments.glob("[0-9]*.json")))
    assert not (job_dir / "output.mp4").exists()
    _, clean_err = clean.communicate(timeout=300)  # before the resume: its two workers need both slots
    assert clean.returncode == 0, clean_err[-3000:]

    resumed = _cli(env, "--job-dir", str(job_dir), "--resume", "--workers", "2")
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-3000:]
    total = len(list(segments.glob("[0-9]*.json")))
    assert f"rendered {total - kept} of {total} segments" in out and "(chain, 2 worker(s))" in out
    np.testing.assert_array_equal(read_video(job_dir / "output.mp4")[0], read_video(tmp_path / "clean.mp4")[0])


def test_job_dir_without_resume_refuses_to_overwrite(ray_cluster, tiny_cache, tmp_path):
    from orchestrator.cli import main
    from orchestrator.jobs import JobStore
    from orchestrator.request import RenderRequest

    JobStore(tmp_path).create(RenderRequest(prompt="a fox"), job_id="taken")
    assert main(["render", "--prompt", "a fox", "--job-dir", str(tmp_path / "taken")]) == 2
