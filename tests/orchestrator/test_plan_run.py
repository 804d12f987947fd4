"""PlanRun and its OutputSink on the driver, without Ray (LocalFrames): segments become pieces (a lead crossfaded
on the head, a body encoded where it was rendered) that land in any order and join by stream copy into exactly the
frames the whole-segment stitcher makes."""

from concurrent.futures import Future

import numpy as np
import pytest

from orchestrator.jobs import JobStore
from orchestrator.planner import plan_render
from orchestrator.request import RenderRequest
from orchestrator.scheduler import PlanRun
from orchestrator.transport import LocalFrames
from pipeline.pieces import PieceFormat
from pipeline.presets import load_preset
from pipeline.stitch import OverlapStitcher
from pipeline.video_io import read_video

REQUEST = RenderRequest(prompt="a fox", duration_s=6.0, mode="keyframes", segment_frames=33)


def _frames(spec):
    """A segment of `spec.num_frames` random frames, the same for the same segment."""
    rng = np.random.default_rng(spec.index)
    return rng.integers(0, 256, (spec.num_frames, 64, 64, 3), dtype=np.uint8)


def _run(tmp_path, name, with_job, mode="keyframes"):
    request = REQUEST.model_copy(update={"mode": mode})
    plan = plan_render(request, load_preset("tiny")).model_copy(update={"width": 64, "height": 64})
    job = JobStore(tmp_path / "jobs").create(request, job_id=name) if with_job else None
    run = PlanRun(plan, PieceFormat(64, 64, plan.fps, codec="ffv1"), tmp_path / f"{name}.mkv",
                  OverlapStitcher(color_correction=mode == "chain"), job)
    run.start()
    for task in [run.take_ready() for _ in plan.keyframes]:
        assert task.kind == "keyframe"
        run.complete(task, np.zeros((64, 64, 3), np.uint8))
    return run, plan, job


def _whole_segment_video(plan, color_correction):
    stitcher = OverlapStitcher(color_correction=color_correction)
    out = [stitcher.add(_frames(s), s.overlap_prev, s.overlap_next) for s in plan.segments]
    return np.concatenate(out)[:plan.total_frames]


@pytest.mark.parametrize("with_job", [False, True])
def test_out_of_order_bodies_are_encoded_at_once_and_the_video_is_the_stitchers(tmp_path, with_job):
    run, plan, job = _run(tmp_path, f"job{int(with_job)}", with_job)
    # Taken as the Dispatcher takes them: every segment is ready once the keyframes exist (keyframes mode).
    tasks = {task.spec.index: task for task in iter(run.take_ready, None)}
    segments = plan.segments
    assert sorted(tasks) == [s.index for s in segments] and len(segments) >= 3
    for spec in reversed(segments[1:]):  # every segment but the first, last to first
        run.complete(tasks[spec.index], _frames(spec))
    run.sink.drain()
    pieces = job.pieces if job else tmp_path / "job0.mkv.pieces"
    # No colour correction in keyframes mode: each body is encoded as it comes, before the first segment exists.
    assert sorted(p.name for p in pieces.glob("?????.mkv")) == [f"{s.index:05d}.mkv" for s in segments[1:]]
    assert run.progress.frames_written == 0 and run.segments_in_memory == 0
    assert not list(tmp_path.glob("*.mkv")), "nothing is joined before every piece exists"
    run.complete(tasks[0], _frames(segments[0]))
    assert run.finished.wait(30) and run.error is None
    frames, info = read_video(tmp_path / f"job{int(with_job)}.mkv")
    assert info.frames == plan.total_frames
    np.testing.assert_array_equal(frames, _whole_segment_video(plan, False))  # FFV1: lossless, frame for frame
    assert len(run.seams.report().seams) == len(segments) - 1
    if job:  # only edges and pieces are kept, far less than the raw segments
        edges = sum(p.stat().st_size for p in (job.dir / "edges").iterdir())
        assert edges < 0.5 * sum(s.num_frames for s in segments) * 64 * 64 * 3
        assert job.playlist.exists() is False  # FFV1 pieces are not a preview
    else:
        assert not pieces.exists(), "a run without a job directory removes its pieces"


def test_chain_pieces_compose_colour_correction_and_resume_keeps_what_was_encoded(tmp_path):
    run, plan, job = _run(tmp_path, "chain", True, mode="chain")
    segments = plan.segments
    for spec in segments[:2]:  # a chain: each segment is ready once the one before it finished
        task = run.take_ready()
        assert task.spec.index == spec.index
        run.complete(task, _frames(spec))
    run.sink.drain()
    assert job.saved("segments") == {0, 1}
    kept = {p.name: p.stat().st_mtime_ns for p in job.pieces.iterdir()}
    run.fail(RuntimeError("stopped"))  # as a killed driver would leave it
    again = PlanRun(plan, PieceFormat(64, 64, plan.fps, codec="ffv1"), tmp_path / "chain.mkv",
                    OverlapStitcher(color_correction=True), job)
    again.start()
    assert [task.spec.index for task in again.pending] == [s.index for s in segments[2:]]
    while (task := again.take_ready()) is not None:
        again.complete(task, _frames(task.spec))
    again.wait()
    assert {p.name: p.stat().st_mtime_ns for p in job.pieces.iterdir() if p.name in kept} == kept
    frames, _ = read_video(tmp_path / "chain.mkv")
    np.testing.assert_array_equal(frames, _whole_segment_video(plan, True))


class LosingFrames(LocalFrames):
    """LocalFrames whose first encode of segment 1's body fails as if its node died with the frames."""

    def __init__(self):
        super().__init__()
        self.failed = False

    def encode(self, fmt, start, lead, body, lo, hi, lut):
        if not self.failed and start > 0:
            self.failed = True
            future = Future()
            future.set_exception(ConnectionError("the node holding the frames died"))
            return future
        return super().encode(fmt, start, lead, body, lo, hi, lut)

    @staticmethod
    def lost(err):
        return isinstance(err, ConnectionError)


def test_a_body_lost_before_its_piece_is_rendered_again_and_the_video_is_unchanged(tmp_path):
    run, plan, job = _run(tmp_path, "lost", True)
    run.transport = run.sink.transport = LosingFrames()
    tasks = {task.spec.index: task for task in iter(run.take_ready, None)}
    for spec in plan.segments:
        run.complete(tasks[spec.index], _frames(spec))
    run.sink.drain()
    (again,) = run.pending  # the lost segment is back in the run's tasks, at once ready
    assert again.spec.index != 0 and run.take_ready() is again and run.progress.segments_done == len(plan.segments)
    run.complete(again, _frames(again.spec))
    assert run.finished.wait(30) and run.error is None
    np.testing.assert_array_equal(read_video(tmp_path / "lost.mkv")[0], _whole_segment_video(plan, False))


def test_a_failed_run_leaves_nothing_pinned_in_its_transport(tmp_path):
    class Keeping(LocalFrames):
        def __init__(self):
            super().__init__()
            self.kept = {}

        def track(self, task_id, ref, indices, group=None):
            self.kept[task_id] = ref
            return ref

        def forget_run(self, run_id):
            self.kept = {t: r for t, r in self.kept.items() if not t.startswith(f"{run_id}:")}

    run, plan, _ = _run(tmp_path, "failed", False)
    run.transport = Keeping()
    task = run.take_ready()
    run.submit(task, type("Group", (), {"render_segment": lambda self, request, task_id: "frames"})())
    assert list(run.transport.kept) == [task.task_id]
    run.fail(RuntimeError("cancelled"))
    assert run.transport.kept == {}
