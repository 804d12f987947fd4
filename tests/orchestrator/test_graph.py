"""TaskGraph, pure: keyframes first, a segment ready once its conditioning frames exist, resumed work skipped."""

import numpy as np

from orchestrator.graph import TaskGraph
from orchestrator.planner import plan_render
from orchestrator.request import RenderRequest
from pipeline.presets import load_preset


def _plan(mode):
    return plan_render(RenderRequest(prompt="a fox", duration_s=8.0, mode=mode, segment_frames=21, overlap_frames=4),
                       load_preset("tiny"))


def test_a_chain_is_taken_one_segment_at_a_time_as_each_frame_it_needs_exists():
    plan = _plan("chain")
    graph = TaskGraph(plan)
    keyframe = graph.take_ready()
    assert keyframe.kind == "keyframe" and graph.take_ready() is None  # segment 0 waits on the keyframe
    graph.done(keyframe, np.zeros((4, 4, 3), np.uint8))
    order = []
    while (task := graph.take_ready()) is not None:
        assert graph.take_ready() is None  # the next segment waits on this one's last frame
        order.append(task.spec.index)
        frames = np.full((task.spec.num_frames, 4, 4, 3), task.spec.index, np.uint8)
        graph.done(task, frames)
        ref = plan.segments[task.spec.index + 1].first if task.spec.index + 1 < len(plan.segments) else None
        if ref is not None:
            assert graph.frame(ref)[0, 0, 0] == task.spec.index  # exactly the frame it is conditioned on
    assert order == [s.index for s in plan.segments] and not graph.pending


def test_keyframes_mode_frees_every_segment_at_once_and_resumed_work_is_skipped():
    plan = _plan("keyframes")
    keyframes = {k.index: np.zeros((4, 4, 3), np.uint8) for k in plan.keyframes}
    graph = TaskGraph(plan, run_id=7, keyframes=keyframes, done={0})
    ready = list(iter(graph.take_ready, None))
    assert [t.spec.index for t in ready] == [s.index for s in plan.segments[1:]]
    assert ready[0].task_id == f"7:segment:{ready[0].spec.index}"
    graph.again(ready[1])
    assert graph.take_ready() is ready[1]
