"""Failures end jobs with a reason and leave no output: a dead encoder, a segment over budget."""

import time

import numpy as np
import psutil
import pytest

from actors.config import ParallelConfig
from orchestrator.config import EngineConfig
from orchestrator.request import RenderRequest
from pipeline.config import ModelConfig


def _wait(predicate, timeout_s):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def _ffmpeg_children():
    return [p for p in psutil.Process().children(recursive=True) if "ffmpeg" in p.name()]


def test_ffmpeg_dying_mid_encode_fails_the_job_with_no_output(ray_cluster, tiny_cache, tmp_path):
    from orchestrator.runner import JobRunner

    runner = JobRunner(EngineConfig(model=ModelConfig(cache_dir=tiny_cache), parallel=ParallelConfig(workers=2)),
                       str(tmp_path), max_active_jobs=1)
    try:
        job_id = runner.submit(RenderRequest(prompt="a fox", duration_s=20.0, mode="bridge", segment_frames=33))
        _wait(lambda: runner.status(job_id)["progress"]["frames_written"] > 0, 120)
        for proc in _ffmpeg_children():
            proc.kill()
        _wait(lambda: runner.status(job_id)["state"] in ("failed", "done"), 120)
        state = runner.status(job_id)
    finally:
        runner.shutdown()
    assert state["state"] == "failed"
    assert "ffmpeg" in state["error"]
    assert not [p.name for p in (tmp_path / job_id).iterdir() if p.name.startswith("output")]


def test_segment_over_its_time_budget_is_retried_then_fails_the_render(ray_cluster, tiny_cache, tmp_path):
    from orchestrator.engine import RenderEngine

    parallel = ParallelConfig(workers=1, task_timeout_s=0.5, task_retries=1)
    engine = RenderEngine(EngineConfig(model=ModelConfig(cache_dir=tiny_cache), parallel=parallel))
    try:
        with pytest.raises(RuntimeError, match=r"segment 0 failed: .*exceeded its time budget of 0.5s|"
                                               r"keyframe 0 failed: .*exceeded its time budget"):
            engine.render(RenderRequest(prompt="a fox", duration_s=5.0, mode="chain"), tmp_path / "x.mp4")
    finally:
        engine.shutdown()
    assert list(tmp_path.iterdir()) == []


def test_restarted_runner_resumes_unfinished_jobs(ray_cluster, tiny_cache, tmp_path):
    from orchestrator.runner import JobRunner
    from pipeline.video_io import read_video

    config = EngineConfig(model=ModelConfig(cache_dir=tiny_cache), parallel=ParallelConfig(workers=2))
    request = RenderRequest(prompt="a fox", duration_s=8.0, mode="bridge", segment_frames=21, overlap_frames=4)
    runner = JobRunner(config, str(tmp_path / "jobs"), max_active_jobs=2)
    try:
        job_id = runner.submit(request)
        segments = tmp_path / "jobs" / job_id / "segments"
        _wait(lambda: len(list(segments.glob("*.npy"))) >= 2, 120)
    finally:
        runner.shutdown()  # a server going down mid-render
    kept = {p.name: p.stat().st_mtime_ns for p in segments.glob("*.npy")}
    assert runner.status(job_id)["state"] == "rendering"

    restarted = JobRunner(config, str(tmp_path / "jobs"), max_active_jobs=2)
    try:
        _wait(lambda: restarted.status(job_id)["state"] == "done", 180)
        clean_id = restarted.submit(request)
        _wait(lambda: restarted.status(clean_id)["state"] == "done", 180)
    finally:
        restarted.shutdown()
    assert {name: (segments / name).stat().st_mtime_ns for name in kept} == kept  # saved work was not redone
    resumed, clean = (read_video(tmp_path / "jobs" / j / "output.mp4")[0] for j in (job_id, clean_id))
    np.testing.assert_array_equal(resumed, clean)


def test_render_survives_a_worker_killed_while_the_pool_loads(ray_cluster, tiny_cache, tmp_path):
    from faults import deaths, rank_dying_in

    from orchestrator.engine import RenderEngine
    from pipeline.video_io import read_video

    config = EngineConfig(model=ModelConfig(cache_dir=tiny_cache), parallel=ParallelConfig(workers=2))
    request = RenderRequest(prompt="a fox", duration_s=4.0, mode="bridge", segment_frames=21, overlap_frames=4)
    marker = tmp_path / "killed"
    engine = RenderEngine(config, rank_class=rank_dying_in("load", 0, marker))
    try:
        assert len(deaths(marker)) == 1 and len(engine.pool.groups) == 2
        survived = read_video(engine.render(request, tmp_path / "survived.mp4").path)[0]
    finally:
        engine.shutdown()
    clean_engine = RenderEngine(config)
    try:
        clean = read_video(clean_engine.render(request, tmp_path / "clean.mp4").path)[0]
    finally:
        clean_engine.shutdown()
    np.testing.assert_array_equal(survived, clean)
