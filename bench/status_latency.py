"""Status latency while a run saves, stitches and encodes 1280x720 frames: the output sink's thread against the
old behaviour (all of that under the dispatcher lock).

    python -m bench.status_latency

A keyframes-mode plan at 1280x720, 16 fps, 33-frame segments (8-frame overlaps), with a job directory (so every
segment's edges are saved, and its pieces encoded with libx264 crf 18 in this process: LocalFrames). The shard
groups are in-process stand-ins that return a pre-made 720p segment (a moving test pattern) RENDER_S seconds
after it was asked for, so the measurement is the driver's output path alone. A second thread asks for the job's
status every POLL_S seconds the way `JobRunner.status` does (state.json, then the dispatcher's running tasks,
which takes the dispatcher lock; the HTTP hop and the Ray progress probe are the same in both modes and left
out) and records how long each answer took. `locked` is the old path, kept reachable here only: after each
segment is handed over, the dispatcher holds its lock until the sink has saved, stitched and encoded it, as
`PlanRun.complete` did under the lock before the sink existed. Baseline: `locked`.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from actors.config import ParallelConfig
from bench.machine import describe_machine
from orchestrator.jobs import JobStore
from orchestrator.planner import plan_render
from orchestrator.request import RenderRequest
from orchestrator.scheduler import Dispatcher, PlanRun
from pipeline.pieces import PieceFormat
from pipeline.presets import load_preset
from pipeline.stitch import OverlapStitcher
from pipeline.testsrc import moving_pattern
from pipeline.video_io import ffmpeg_version

RESULTS = Path(__file__).resolve().parent / "results"
WIDTH, HEIGHT, SECONDS, WORKERS = 1280, 720, 12.0, 2
RENDER_S = 0.4  # what a stand-in group takes per keyframe or segment
POLL_S = 0.01


class Ref:
    def __init__(self, value, ready_at: float):
        self.value, self.ready_at = value, ready_at


class Futures:
    """Refs of the stand-in groups: ready at their time; waiting sleeps until the first one is."""

    @staticmethod
    def wait(refs: list, timeout: float | None) -> list:
        first = min(refs, key=lambda ref: ref.ready_at)
        delay = first.ready_at - time.monotonic()
        if delay > 0:
            time.sleep(delay if timeout is None else min(delay, timeout))
        return [first] if first.ready_at <= time.monotonic() else []

    @staticmethod
    def get(ref):
        return ref.value


class Group:
    """A stand-in shard group: returns pre-made frames of the asked size after RENDER_S."""

    def __init__(self, group_id: int, segment: np.ndarray):
        self.group_id, self.segment, self.ranks = group_id, segment, []

    def render_keyframe(self, *args) -> Ref:
        return Ref(self.segment[0], time.monotonic() + RENDER_S)

    def render_segment(self, request, task_id: str = "") -> Ref:
        return Ref(self.segment[:request.num_frames], time.monotonic() + RENDER_S)

    def cancel(self, task_id: str) -> None:
        pass


class Pool:
    def __init__(self, segment: np.ndarray):
        self.parallel = ParallelConfig(workers=WORKERS)
        self.groups = [Group(i, segment) for i in range(WORKERS)]


class LockedDispatcher(Dispatcher):
    """The old behaviour: each collected segment is saved, stitched and encoded while the dispatcher lock is held."""

    def _collect(self, ref) -> None:
        run = self._running[ref][1]
        super()._collect(ref)
        with self._lock:
            run.sink.drain()


def _measure(mode: str, segment: np.ndarray, root: Path) -> dict:
    request = RenderRequest(prompt="a fox", duration_s=SECONDS, mode="keyframes", segment_frames=33,
                            overlap_frames=8)
    plan = plan_render(request, load_preset("tiny")).model_copy(update={"width": WIDTH, "height": HEIGHT})
    job = JobStore(root / mode).create(request, job_id="bench")
    out = job.output
    run = PlanRun(plan, PieceFormat(WIDTH, HEIGHT, plan.fps, crf=18), out, OverlapStitcher(), job)
    dispatcher = (LockedDispatcher if mode == "locked" else Dispatcher)(Pool(segment), futures=Futures)
    latencies, stop = [], threading.Event()

    def poll() -> None:
        while not stop.is_set():
            started = time.perf_counter()
            job.state()
            dispatcher.running_tasks(run)
            latencies.append(time.perf_counter() - started)
            stop.wait(POLL_S)

    poller = threading.Thread(target=poll)
    started = time.perf_counter()
    poller.start()
    dispatcher.drive(run)
    wall = time.perf_counter() - started
    stop.set()
    poller.join()
    ms = np.array(latencies) * 1000
    return {"mode": mode, "frames": plan.total_frames, "segments": len(plan.segments), "wall_s": round(wall, 2),
            "polls": len(ms), "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2), "max_ms": round(float(ms.max()), 2)}


def main() -> None:
    segment = moving_pattern(0, 33, HEIGHT, WIDTH)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("locked", "sink"):
            rows.append(_measure(mode, segment, Path(tmp)))
            print(json.dumps(rows[-1]))
    RESULTS.mkdir(exist_ok=True)
    record = {"benchmark": "status_latency", "command": "python -m bench.status_latency",
              "machine": describe_machine(numpy=np.__version__, ffmpeg=ffmpeg_version()),
              "render_s": RENDER_S, "poll_s": POLL_S, "rows": rows}
    (RESULTS / "status_latency.json").write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
