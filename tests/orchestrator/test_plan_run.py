"""PlanRun and its OutputSink on the driver, without Ray: out-of-order segments wait on disk when there is a job
directory; the encoder starts at the first frame."""

import numpy as np
import pytest

from orchestrator.jobs import JobStore
from orchestrator.planner import plan_render
from orchestrator.request import RenderRequest
from orchestrator.scheduler import PlanRun
from pipeline.presets import load_preset
from pipeline.stitch import OverlapStitcher
from pipeline.video_io import VideoWriter, read_video

REQUEST = RenderRequest(prompt="a fox", duration_s=6.0, mode="keyframes", segment_frames=33)


def _frames(spec):
    """A segment of `spec.num_frames` random frames, the same for the same segment."""
    rng = np.random.default_rng(spec.index)
    return rng.integers(0, 256, (spec.num_frames, 64, 64, 3), dtype=np.uint8)


def _run(tmp_path, name, with_job):
    plan = plan_render(REQUEST, load_preset("tiny")).model_copy(update={"width": 64, "height": 64})
    job = JobStore(tmp_path / "jobs").create(REQUEST, job_id=name) if with_job else None
    run = PlanRun(plan, lambda: VideoWriter(tmp_path / f"{name}.mkv", 64, 64, plan.fps, codec="ffv1"),
                  OverlapStitcher(), job)
    run.start()
    for task in [run.take_ready() for _ in plan.keyframes]:
        assert task.kind == "keyframe"
        run.complete(task, np.zeros((64, 64, 3), np.uint8))
    # Taken as the Dispatcher takes them: every segment is ready once the keyframes exist (keyframes mode).
    tasks = {task.spec.index: task for task in iter(run.take_ready, None)}
    assert sorted(tasks) == [s.index for s in plan.segments]
    return run, plan, tasks


@pytest.mark.parametrize("with_job", [False, True])
def test_out_of_order_segments_wait_on_disk_with_a_job(tmp_path, with_job):
    run, plan, tasks = _run(tmp_path, f"job{int(with_job)}", with_job)
    segments = plan.segments
    assert len(segments) >= 3
    for spec in reversed(segments[1:]):  # every segment but the first, last to first
        run.complete(tasks[spec.index], _frames(spec))
    run.sink.drain()
    assert run.segments_in_memory == (0 if with_job else len(segments) - 1)
    assert run.progress.frames_written == 0
    assert not list(tmp_path.glob("*.mkv*")), "the encoder starts at the first frame, not before"
    run.complete(tasks[0], _frames(segments[0]))
    assert run.finished.wait(30) and run.error is None and run.segments_in_memory == 0
    frames, info = read_video(tmp_path / f"job{int(with_job)}.mkv")
    assert info.frames == plan.total_frames
    # The first segment's frames before its seam are written as rendered (lossless), whichever path fed them.
    first = segments[0]
    np.testing.assert_array_equal(frames[:first.num_frames - first.overlap_next], _frames(first)[:-first.overlap_next])


def test_job_and_memory_paths_write_the_same_video(tmp_path):
    videos = []
    for with_job in (False, True):
        run, plan, tasks = _run(tmp_path, f"same{int(with_job)}", with_job)
        for spec in reversed(plan.segments):
            run.complete(tasks[spec.index], _frames(spec))
        run.wait()
        videos.append(read_video(tmp_path / f"same{int(with_job)}.mkv")[0])
    np.testing.assert_array_equal(videos[0], videos[1])
