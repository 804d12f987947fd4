"""Faults: a dead piece encoder or a segment over budget ends the job with a reason and no output; a worker killed while
the pool loads, while it renders or while the video is stitched does not change the video; lost groups are
rebuilt, or the job fails naming the cause."""

import contextlib
import os
import signal
import time

import numpy as np
import psutil
import pytest
import ray

from actors.config import ParallelConfig
from orchestrator.config import EngineConfig
from orchestrator.request import RenderRequest
from pipeline.config import ModelConfig


def _wait(predicate, timeout_s):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def _kill_piece_encoders() -> int:
    """Kill every ffmpeg that encodes a piece (they run beside the Ray workers that rendered the frames)."""
    killed = 0
    for proc in psutil.process_iter(["name", "cmdline"]):
        if "ffmpeg" in (proc.info["name"] or "") and "mpegts" in (proc.info["cmdline"] or []):
            with contextlib.suppress(psutil.Error):
                proc.kill()
                killed += 1
    return killed


def test_an_encoder_dying_mid_piece_fails_the_job_with_no_output(ray_cluster, tiny_cache, tmp_path):
    from orchestrator.runner import JobRunner

    runner = JobRunner(EngineConfig(model=ModelConfig(cache_dir=tiny_cache), parallel=ParallelConfig(workers=2)),
                       str(tmp_path), max_active_jobs=1)
    try:
        job_id = runner.submit(RenderRequest(prompt="a fox", duration_s=20.0, mode="bridge", segment_frames=33))
        _wait(lambda: runner.status(job_id)["progress"]["segments_done"] > 0, 120)
        killed = 0
        while runner.status(job_id)["state"] not in ("failed", "done"):  # the rest of the pieces are encoded now
            killed += _kill_piece_encoders()
            time.sleep(0.005)
        state = runner.status(job_id)
    finally:
        runner.shutdown()
    assert killed and state["state"] == "failed"
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
        segments = tmp_path / "jobs" / job_id / "pieces"
        _wait(lambda: len(list(segments.glob("[0-9]*.json"))) >= 2, 120)
    finally:
        runner.shutdown()  # a server going down mid-render
    kept = {p.name: p.stat().st_mtime_ns for p in segments.glob("[0-9]*.json")}
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


def test_render_survives_a_worker_killed_while_the_pool_loads_and_while_it_stitches(ray_cluster, tiny_cache, tmp_path):
    from faults import deaths, rank_dying_in

    from orchestrator.engine import RenderEngine
    from pipeline.video_io import read_video

    config = EngineConfig(model=ModelConfig(cache_dir=tiny_cache), parallel=ParallelConfig(workers=2))
    request = RenderRequest(prompt="a fox", duration_s=4.0, mode="bridge", segment_frames=21, overlap_frames=4)
    marker = tmp_path / "killed"
    engine = RenderEngine(config, rank_class=rank_dying_in("load", 0, marker))
    try:
        # The pool returned with the group that loaded; the one whose rank died starts again meanwhile and joins.
        assert len(deaths(marker)) == 1 and engine.startup["groups_ready"] == 1 and len(engine.pool.groups) == 1
        survived = read_video(engine.render(request, tmp_path / "survived.mp4").path)[0]
        assert engine.wait_for_pool(60) == 2
        victim, killed = ray.get(engine.pool.groups[0].call("health")[0]).pid, []

        def kill_once_stitching(progress):  # every segment is rendered: only the sink has work left
            if not killed and progress.segments_done == progress.segments_total:
                os.kill(victim, signal.SIGKILL)
                killed.append(progress.frames_written)

        stitched = engine.render(request, tmp_path / "stitched.mp4", on_progress=kill_once_stitching)
        assert killed and killed[0] < stitched.plan.total_frames  # it died while frames were still to be written
        # The reference: a render with no fault, once the killed rank's group is rebuilt (fresh processes).
        assert engine.wait_for_pool(60) == 2
        clean = read_video(engine.render(request, tmp_path / "clean.mp4").path)[0]
    finally:
        engine.shutdown()
    np.testing.assert_array_equal(survived, clean)
    np.testing.assert_array_equal(read_video(stitched.path)[0], clean)


def _rebuilds_fail(tmp_path):
    """Ranks whose first segment kills rank 0, and whose every later model load (the rebuild's) dies too."""
    from faults import rank_dying_in

    segment_death = tmp_path / "segment"
    killed_in_segment = rank_dying_in("segment", 0, segment_death)
    return rank_dying_in("load", 0, tmp_path / "load", times=5, base=killed_in_segment,
                         armed_by=tmp_path / "segment.0")


def test_a_group_whose_rebuild_fails_is_given_up_while_the_other_renders_the_video(ray_cluster, tiny_cache, tmp_path):
    from faults import deaths

    from orchestrator.engine import RenderEngine
    from pipeline.video_io import read_video

    parallel = ParallelConfig(workers=2, group_restarts=1)
    engine = RenderEngine(EngineConfig(model=ModelConfig(cache_dir=tiny_cache), parallel=parallel),
                          rank_class=_rebuilds_fail(tmp_path))
    request = RenderRequest(prompt="a fox", duration_s=4.0, mode="bridge", segment_frames=21, overlap_frames=4)
    try:
        # Both groups loaded before the render: the loads this test kills are the rebuild's, armed by the first
        # segment's death (a group still starting when it dies would die in its own first load instead).
        assert engine.wait_for_pool() == 2
        result = engine.render(request, tmp_path / "out.mp4")
        live = len(engine.pool.groups)  # the video was finished by the other group, not after a rebuild
        engine.wait_for_pool(120)  # the rebuild runs out of attempts (TimeoutError: it neither succeeded nor gave up)
        lost = dict(engine.dispatcher.recovery.lost)
    finally:
        engine.shutdown()
    assert len(deaths(tmp_path / "segment")) == 1 and len(deaths(tmp_path / "load")) == 2
    assert live == 1 and len(lost) == 1
    assert "could not be rebuilt in 2 attempt(s)" in next(iter(lost.values()))
    assert read_video(result.path)[1].frames == result.plan.total_frames


def test_no_capacity_left_fails_the_job_naming_the_cause(ray_cluster, tiny_cache, tmp_path):
    from orchestrator.runner import JobRunner

    parallel = ParallelConfig(workers=1, group_restarts=1)
    runner = JobRunner(EngineConfig(model=ModelConfig(cache_dir=tiny_cache), parallel=parallel), str(tmp_path / "jobs"),
                       max_active_jobs=2, rank_class=_rebuilds_fail(tmp_path))
    try:
        assert runner.workers()["groups"] == 1
        job_id = runner.submit(RenderRequest(prompt="a fox", duration_s=2.0, mode="chain"))
        _wait(lambda: runner.status(job_id)["state"] in ("failed", "done"), 120)  # never a hang
        state, workers = runner.status(job_id), runner.workers()
    finally:
        runner.shutdown()
    assert state["state"] == "failed"
    assert "no shard group is left to render on: shard group 0 could not be rebuilt in 2 attempt(s)" in state["error"]
    assert workers == {"groups": 0, "busy": 0, "active_jobs": 0}  # /healthz reports the live capacity
