"""Run a RenderPlan on a WorkerPool as a DAG: each keyframe and segment starts on an idle shard
group as soon as the frames it is conditioned on exist; finished segments stream, in order,
through the stitcher into the video writer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import ray
from PIL import Image

from actors.pool import WorkerPool
from orchestrator.plan import FrameRef, KeyframeSpec, RenderPlan, SegmentSpec
from pipeline.generate import SegmentRequest
from pipeline.seams import SeamMeter
from pipeline.stitch import OverlapStitcher
from pipeline.video_io import VideoWriter

logger = logging.getLogger(__name__)


@dataclass
class Progress:
    """Counts of finished work, reported after every change."""

    keyframes_done: int = 0
    keyframes_total: int = 0
    segments_done: int = 0
    segments_total: int = 0
    frames_written: int = 0
    frames_total: int = 0


def load_keyframe_image(path: str, width: int, height: int) -> np.ndarray:
    """A user's keyframe image as uint8 (height, width, 3), resized to the plan's size."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB").resize((width, height), Image.Resampling.LANCZOS))
    except (OSError, ValueError) as err:
        raise ValueError(f"image {path!r} cannot be read as a keyframe: {err}") from err


@dataclass
class _Task:
    kind: str
    spec: KeyframeSpec | SegmentSpec


@dataclass
class PlanRun:
    """The state of one plan's execution (driver side)."""

    plan: RenderPlan
    pool: WorkerPool
    writer: VideoWriter
    stitcher: OverlapStitcher
    on_progress: Callable[[Progress], None] = lambda progress: None
    seams: SeamMeter = field(default_factory=SeamMeter)
    keyframes: dict[int, np.ndarray] = field(default_factory=dict)
    finished: dict[int, np.ndarray] = field(default_factory=dict)
    conditioning: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)
    next_to_stitch: int = 0
    attempts: dict[tuple[str, int], int] = field(default_factory=dict)

    def __post_init__(self):
        self.progress = Progress(
            keyframes_total=len(self.plan.keyframes), segments_total=len(self.plan.segments),
            frames_total=self.plan.total_frames,
        )
        self._needed = {
            (ref.index, ref.frame) for s in self.plan.segments for ref in s.dependencies() if ref.source == "segment"
        }

    def _frame(self, ref: FrameRef) -> np.ndarray | None:
        if ref.source == "keyframe":
            return self.keyframes.get(ref.index)
        return self.conditioning.get((ref.index, ref.frame))

    def _ready(self, segment: SegmentSpec) -> bool:
        return all(self._frame(ref) is not None for ref in segment.dependencies())

    def _start(self, group, task: _Task) -> ray.ObjectRef:
        plan, spec = self.plan, task.spec
        if task.kind == "keyframe":
            return group.submit("keyframe", spec.prompt, spec.seed, plan.width, plan.height, plan.steps, plan.guidance)
        request = SegmentRequest(
            prompt=spec.prompt, seed=spec.seed, num_frames=spec.num_frames, width=plan.width, height=plan.height,
            first=self._frame(spec.first), last=self._frame(spec.last) if spec.last else None,
            steps=plan.steps, guidance=plan.guidance,
        )
        return group.submit("segment", request)

    def _finish(self, task: _Task, result: np.ndarray) -> None:
        if task.kind == "keyframe":
            self.keyframes[task.spec.index] = result
            self.progress.keyframes_done += 1
        else:
            index = task.spec.index
            for seg, frame in self._needed:
                if seg == index:
                    self.conditioning[(seg, frame)] = result[frame]
            self.finished[index] = result
            self.progress.segments_done += 1
            self._stitch_ready()
        self.on_progress(self.progress)

    def _stitch_ready(self) -> None:
        while self.next_to_stitch in self.finished:
            spec = self.plan.segments[self.next_to_stitch]
            frames = self.stitcher.add(self.finished.pop(self.next_to_stitch), spec.overlap_prev, spec.overlap_next)
            remaining = self.plan.total_frames - self.progress.frames_written
            frames = frames[:remaining]
            self.writer.write(frames)
            self.seams.begin_segment(spec.overlap_prev)
            self.seams.add(frames)
            self.progress.frames_written += len(frames)
            self.next_to_stitch += 1

    def _recover(self, group, task: _Task, err: Exception):
        """After a failed task: rebuild its group and allow a retry, or raise with the reason."""
        message, broken = group.diagnose(err)
        key = (task.kind, task.spec.index)
        self.attempts[key] = self.attempts.get(key, 0) + 1
        if not broken or self.attempts[key] > self.pool.parallel.task_retries:
            raise RuntimeError(f"{task.kind} {task.spec.index} failed: {message}") from err
        logger.warning("%s %d: %s; retrying on a rebuilt group", task.kind, task.spec.index, message)
        return self.pool.rebuild(group)

    def run(self) -> Progress:
        """Render every keyframe and segment, writing frames as they become final."""
        for spec in self.plan.keyframes:
            if spec.source == "image":
                self.keyframes[spec.index] = load_keyframe_image(spec.image, self.plan.width, self.plan.height)
                self.progress.keyframes_done += 1
        pending = [_Task("keyframe", k) for k in self.plan.keyframes if k.index not in self.keyframes]
        pending += [_Task("segment", s) for s in sorted(self.plan.segments, key=lambda s: (s.wave, s.index))]
        idle = list(self.pool.groups)
        running: dict[ray.ObjectRef, tuple[object, _Task]] = {}
        while pending or running:
            for task in [t for t in pending if t.kind == "keyframe" or self._ready(t.spec)]:
                if not idle:
                    break
                group = idle.pop(0)
                running[self._start(group, task)] = (group, task)
                pending.remove(task)
            if not running:
                raise RuntimeError(f"plan is stuck: {len(pending)} task(s) wait on frames that nothing renders")
            (done,), _ = ray.wait(list(running), num_returns=1)
            group, task = running.pop(done)
            try:
                result = ray.get(done)
            except ray.exceptions.RayError as err:
                idle.append(self._recover(group, task, err))
                pending.insert(0, task)
                continue
            idle.append(group)
            self._finish(task, result)
        if self.progress.frames_written != self.plan.total_frames:
            raise RuntimeError(f"wrote {self.progress.frames_written} of {self.plan.total_frames} frames")
        return self.progress
