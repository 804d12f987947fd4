"""TaskGraph: one plan's keyframes and segments as tasks, pure (no Ray, no threads, no files).

What is still to render, which of it is ready (a keyframe always; a segment once the frames it is conditioned
on exist) and the cache of those conditioning frames. PlanRun drives one on the driver (under its lock);
bench.scaling replays plans through one to predict wall times.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from orchestrator.plan import FrameRef, KeyframeSpec, RenderPlan, SegmentSpec


@dataclass(frozen=True)
class Task:
    """One keyframe or segment of one run."""

    run_id: int
    kind: str
    spec: KeyframeSpec | SegmentSpec

    @property
    def task_id(self) -> str:
        return f"{self.run_id}:{self.kind}:{self.spec.index}"


class TaskGraph:
    """The tasks of `plan` not yet rendered, in the order they are taken: keyframes, then segments by wave and
    index. `keyframes`: keyframe frames that exist already (images, resumed); `done`: segments that need no
    render; `edges`: frames of segments rendered before ({segment: {frame: image}}, e.g. from a job directory)."""

    def __init__(self, plan: RenderPlan, run_id: int = 0, keyframes: Mapping[int, Any] | None = None,
                 done: set[int] = frozenset(), edges: Mapping[int, Mapping[int, Any]] | None = None):
        self.plan, self.run_id = plan, run_id
        self.keyframes: dict[int, Any] = dict(keyframes or {})
        self.conditioning: dict[tuple[int, int], Any] = {}
        self.needed = {(r.index, r.frame) for s in plan.segments for r in s.dependencies() if r.source == "segment"}
        for index, frames in (edges or {}).items():
            self.keep(index, frames)
        self.pending = [Task(run_id, "keyframe", k) for k in plan.keyframes if k.index not in self.keyframes]
        self.pending += [Task(run_id, "segment", s) for s in sorted(plan.segments, key=lambda s: (s.wave, s.index))
                         if s.index not in done]

    def frame(self, ref: FrameRef) -> Any | None:
        """The frame `ref` names, or None while it does not exist."""
        if ref.source == "keyframe":
            return self.keyframes.get(ref.index)
        return self.conditioning.get((ref.index, ref.frame))

    def ready(self, task: Task) -> bool:
        return task.kind == "keyframe" or all(self.frame(r) is not None for r in task.spec.dependencies())

    def take_ready(self) -> Task | None:
        """The next ready task, removed from pending; None if none is ready."""
        for task in self.pending:
            if self.ready(task):
                self.pending.remove(task)
                return task
        return None

    def has_ready(self) -> bool:
        return any(self.ready(task) for task in self.pending)

    def done(self, task: Task, frames: Any) -> None:
        """`task` rendered: a keyframe's frame, or a segment's frames (an array or {frame: image}), of which the
        ones that condition other segments are kept."""
        if task.kind == "keyframe":
            self.keyframes[task.spec.index] = frames
        else:
            self.keep(task.spec.index, frames)

    def keep(self, index: int, frames: Any) -> None:
        for segment, frame in self.needed:
            if segment == index:
                value = frames[frame]
                self.conditioning[(segment, frame)] = np.array(value) if isinstance(value, np.ndarray) else value

    def again(self, task: Task) -> None:
        """Render `task` again, before anything else (its group failed, or its frames were lost)."""
        self.pending.insert(0, task)

    def segment_task(self, index: int) -> Task:
        return Task(self.run_id, "segment", self.plan.segments[index])
