"""OutputSink: one run's output, on its own thread, so no lock is held while frames are saved or encoded.

Frames in (each finished keyframe and segment, in any order), a video file out. In order of arrival the sink
saves each one to the job directory (when there is one) and only then counts it; segments wait in a reorder
buffer (with a job directory, on disk: only the next one to stitch is held in memory) until every segment
before them arrived, then go through the stitcher and the seam meter into the writer, which is opened at the
first frame (no ffmpeg process for a job still waiting for a worker). When the last segment is written the
writer is closed and the run ends.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

import numpy as np

from orchestrator.jobs import Job, JobProgress
from orchestrator.plan import RenderPlan
from pipeline.seams import SeamMeter
from pipeline.stitch import OverlapStitcher
from pipeline.video_io import VideoWriter

logger = logging.getLogger(__name__)


class OutputSink:
    """Stitches and writes one plan's video from frames handed over by `put`; see the module docstring.

    `progress` is the run's: the sink alone advances its done counts after start. `on_end(error)` is called on
    the sink's thread once the video is complete (error None) or the sink failed (an encoder or disk error);
    after `abort` it is not called."""

    def __init__(self, plan: RenderPlan, open_writer: Callable[[], VideoWriter], stitcher: OverlapStitcher,
                 job: Job | None, progress: JobProgress, saved_segments: set[int],
                 on_progress: Callable[[JobProgress], None], on_stitching: Callable[[], None],
                 on_end: Callable[[BaseException | None], None], prefix: Callable[[VideoWriter], None] | None = None):
        self.plan, self.job, self.progress, self.stitcher = plan, job, progress, stitcher
        self.seams = SeamMeter()
        self._open_writer, self._prefix = open_writer, prefix
        self._on_progress, self._on_stitching, self._on_end = on_progress, on_stitching, on_end
        self._writer: VideoWriter | None = None
        self._held: dict[int, np.ndarray] = {}
        self._spilled = set(saved_segments)  # finished segments waiting on disk for their turn
        self._next = 0
        self._stitching = False  # on_stitching was called
        self._queue: queue.Queue = queue.Queue()
        self._aborted = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="output-sink", daemon=True)

    @property
    def segments_in_memory(self) -> int:
        """Finished segments held in memory for the stitcher (with a job directory they wait on disk)."""
        return len(self._held)

    def start(self) -> None:
        """Start the thread; it first stitches what a resumed job already holds (and ends if that is all)."""
        self._thread.start()
        self._queue.put(("flush", -1, None))

    def put(self, kind: str, index: int, frames: np.ndarray) -> None:
        """Hand over a finished keyframe or segment (returns at once)."""
        self._queue.put((kind, index, frames))

    def drain(self) -> None:
        """Wait until everything handed over so far is handled (or the sink stopped)."""
        while self._queue.unfinished_tasks and self._thread.is_alive():
            self._aborted.wait(0.005)

    def abort(self) -> None:
        """Stop: drop what is queued, kill the encoder and remove the partial output. Waits for the thread
        unless called from it."""
        self._aborted.set()
        self._queue.put(None)
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join()
        elif not self._thread.is_alive():
            self._close_writer(abort=True)

    def _loop(self) -> None:
        try:
            while not self._aborted.is_set():
                item = self._queue.get()
                try:
                    if item is None or self._aborted.is_set():
                        break
                    self._handle(*item)
                    if self._complete():
                        self._finish()
                        self._on_end(None)
                        return
                finally:
                    self._queue.task_done()
        except Exception as err:  # an encoder or disk failure ends this run
            logger.exception("output of a %d-frame run failed", self.plan.total_frames)
            self._close_writer(abort=True)
            self._on_end(err)
            return
        self._close_writer(abort=True)

    def _handle(self, kind: str, index: int, frames: np.ndarray | None) -> None:
        if kind != "flush":
            if self.job:  # persisted before it counts
                self.job.save_frames("keyframes" if kind == "keyframe" else "segments", index, frames)
            if kind == "keyframe":
                self.progress.keyframes_done += 1
            else:
                if self.job is None or index == self._next:
                    self._held[index] = frames
                else:  # saved above: read back when the stitcher reaches it, not held in memory
                    self._spilled.add(index)
                self.progress.segments_done += 1
            self._on_progress(self.progress)  # counted: reported before the stitcher runs
        if not self._stitching and self._all_rendered():  # from now on the sink alone has work left
            self._stitching = True
            self._on_stitching()
        written = self.progress.frames_written
        self._stitch_ready()
        if self.progress.frames_written != written:
            self._on_progress(self.progress)

    def _stitch_ready(self) -> None:
        while self._next < len(self.plan.segments):
            index = self._next
            if index in self._held:
                frames = self._held.pop(index)
            elif index in self._spilled:
                frames = self.job.load_frames("segments", index)
            else:
                return
            spec = self.plan.segments[index]
            frames = self.stitcher.add(frames, spec.overlap_prev, spec.overlap_next)
            frames = frames[:self.plan.total_frames - self.progress.frames_written]
            self._write(frames)
            self.seams.begin_segment(spec.overlap_prev)
            self.seams.add(frames)
            self.progress.frames_written += len(frames)
            self._next += 1

    def _write(self, frames: np.ndarray) -> None:
        if self._writer is None:
            self._writer = self._open_writer()
            if self._prefix is not None:
                self._prefix(self._writer)
        self._writer.write(frames)

    def _all_rendered(self) -> bool:
        progress = self.progress
        return progress.segments_done == progress.segments_total and progress.keyframes_done == progress.keyframes_total

    def _complete(self) -> bool:
        return self._next == len(self.plan.segments) and self._all_rendered()

    def _finish(self) -> None:
        if self.progress.frames_written != self.plan.total_frames:
            raise RuntimeError(f"wrote {self.progress.frames_written} of {self.plan.total_frames} frames")
        writer, self._writer = self._writer, None
        writer.close()

    def _close_writer(self, abort: bool) -> None:
        writer, self._writer = self._writer, None
        if writer is not None and abort:
            writer.abort()
