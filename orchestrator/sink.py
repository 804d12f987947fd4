"""OutputSink: one run's output, on its own thread, so no lock is held while frames are saved or encoded.

Keyframes and segments come in any order. A segment arrives as its *edges* (the raw frames the head needs:
its overlaps, the first and last frame of its body, the frames that condition other segments) and a handle
to its *body*, which stays where it was rendered (orchestrator.transport). In order of arrival the sink saves
keyframes and edges to the job directory (when there is one) and only then counts them. In segment order it
*joins* each segment from its edges alone (OverlapStitcher.join): the crossfaded *lead* (its overlap with the
previous segment), encoded here as a small piece of its own, and the colour lookup table of its body. The
body's piece is encoded where the body is (pipeline.pieces) as soon as its lookup table is known: at once
without colour correction (keyframes and bridge modes, whose segments finish out of order), after the join
with it (chain mode, whose segments finish in order). Pieces land in any order; in order each is saved,
measured by the seam meter and added to the preview playlist. When every piece has landed they are joined by
stream copy into the output and the run ends.

A body lost with its node is rendered again (`on_lost`): its edges are the same, so what was joined for it
still holds and only its body's piece is encoded again.
"""

from __future__ import annotations

import json
import logging
import queue
import shutil
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from orchestrator.jobs import Job, JobProgress, atomic_write
from orchestrator.plan import RenderPlan, SegmentSpec
from pipeline.pieces import Piece, PieceFormat, concat_pieces, encode_piece, playlist
from pipeline.seams import SeamMeter
from pipeline.stitch import IDENTITY_LUT, OverlapStitcher, apply_color_match

logger = logging.getLogger(__name__)

PREFIX = "prefix"  # the piece name of a continued video's opening (a source video, encoded once on the head)


@dataclass(frozen=True)
class PieceLayout:
    """Where segment `index`'s piece sits: output frames [start, start + keep) are its lead (the first
    `overlap_prev` frames, crossfaded with the previous segment) and its body, segment frames [overlap_prev,
    keep); its last `overlap_next` frames belong to the next piece's lead. `conditioning`: frames of it that
    condition other segments."""

    index: int
    start: int
    num_frames: int
    overlap_prev: int
    overlap_next: int
    keep: int
    conditioning: tuple[int, ...] = ()

    @property
    def body(self) -> tuple[int, int]:
        return self.overlap_prev, max(self.keep, self.overlap_prev)

    @property
    def edges(self) -> list[int]:
        """Segment frames the head needs (see the module docstring), in order."""
        lo, hi = self.body
        frames = set(range(self.overlap_prev)) | set(range(self.num_frames - self.overlap_next, self.num_frames))
        frames |= {lo, hi - 1} if hi > lo else set()
        return sorted(frames | set(self.conditioning))


def piece_layouts(plan: RenderPlan) -> list[PieceLayout]:
    needed: dict[int, set[int]] = {}
    for spec in plan.segments:
        for ref in spec.dependencies():
            if ref.source == "segment":
                needed.setdefault(ref.index, set()).add(ref.frame)

    def layout(spec: SegmentSpec) -> PieceLayout:
        keep = min(spec.num_frames - spec.overlap_next, plan.total_frames - spec.start_frame)
        if keep <= 0:
            raise ValueError(f"segment {spec.index} starts at frame {spec.start_frame}, past the video's end")
        return PieceLayout(spec.index, spec.start_frame, spec.num_frames, spec.overlap_prev, spec.overlap_next,
                           keep, tuple(sorted(needed.get(spec.index, ()))))

    return [layout(spec) for spec in plan.segments]


@dataclass(frozen=True)
class SegmentOutput:
    """A finished segment as the sink gets it: its edge frames by segment frame, and a handle to all its frames."""

    edges: dict[int, np.ndarray]
    body: Any


@dataclass
class _Joined:
    """A segment joined from its edges: what its piece is made of, and what the seam meter needs of it."""

    layout: PieceLayout
    lead: np.ndarray
    lut: np.ndarray
    first: np.ndarray | None  # the body's first and last frames, colour-mapped (None: no body)
    last: np.ndarray | None

    @property
    def frames_in_body(self) -> int:
        lo, hi = self.layout.body
        return hi - lo

    @property
    def frames(self) -> int:
        return len(self.lead) + self.frames_in_body


def _mapped(frame: np.ndarray, lut: np.ndarray) -> np.ndarray:
    return frame if lut is IDENTITY_LUT else apply_color_match(frame[None], lut)[0]


class OutputSink:
    """Joins, encodes (through `transport`) and writes one plan's video from what `put` hands over; see the module
    docstring.

    `progress` is the run's: the sink alone advances its done counts after start. `on_end(error)` is called on the
    sink's thread once the video is complete (error None) or the sink failed (an encoder or disk error); after
    `abort` it is not called. `on_lost(index)` asks the run to render segment `index` again. `prefix`: frames
    (batches) that open the video before the plan's own (a continued video). `saved_edges`: the edges a resumed
    job holds, by segment, as the run loaded them (read once, for the task graph and the joins)."""

    def __init__(self, plan: RenderPlan, fmt: PieceFormat, out: Path, stitcher: OverlapStitcher, transport,
                 job: Job | None, progress: JobProgress, saved_segments: set[int],
                 on_progress: Callable[[JobProgress], None], on_stitching: Callable[[], None],
                 on_end: Callable[[BaseException | None], None], on_lost: Callable[[int], None],
                 prefix: Callable[[], Iterable[np.ndarray]] | None = None,
                 saved_edges: dict[int, dict[int, np.ndarray]] | None = None):
        self.plan, self.fmt, self.out, self.job, self.progress = plan, fmt, Path(out), job, progress
        self.stitcher, self.transport = stitcher, transport
        self.layouts = piece_layouts(plan)
        self.seams = SeamMeter()
        self._prefix = prefix
        self._on_progress, self._on_stitching, self._on_end, self._on_lost = on_progress, on_stitching, on_end, on_lost
        self.pieces_dir = job.pieces if job else self.out.with_name(self.out.name + ".pieces")
        self._saved = set(saved_segments)  # pieces a resumed job holds
        self._saved_edges = dict(saved_edges or {})  # edges a resumed job holds, as the run loaded them
        self._counted = set(saved_segments)  # segments counted in progress.segments_done
        self._edges: dict[int, dict[int, np.ndarray]] = {}
        self._bodies: dict[int, Any] = {}
        self._joined: dict[int, _Joined] = {}
        self._encoding: set[tuple[str, int]] = set()  # ("lead" | "body", index) being encoded
        # Body lookup tables known so far: all identity at once without colour correction, else from the join.
        self._luts: dict[int, np.ndarray] = ({} if stitcher.color_correction else
                                             {layout.index: IDENTITY_LUT for layout in self.layouts})
        self._leads: set[int] = set()  # segments whose lead piece is written (or that have none)
        self._local = ThreadPoolExecutor(1, thread_name_prefix="lead-encoder")
        self._no_lead = np.zeros((0, fmt.height, fmt.width, 3), np.uint8)
        self._landed: dict[int, tuple[Path, int, tuple[float, ...]]] = {}
        self._playlist: list[tuple[str, int]] = []
        self._prefix_frames = 0
        self._next_join = self._next_land = 0
        self._stitching = False  # on_stitching was called
        self._queue: queue.Queue = queue.Queue()
        self._aborted = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="output-sink", daemon=True)

    @property
    def segments_in_memory(self) -> int:
        """Finished segments whose frames this process holds for their piece (with RayFrames: none)."""
        return sum(isinstance(body, np.ndarray) for body in self._bodies.values())

    def start(self) -> None:
        """Start the thread; it first joins what a resumed job already holds (and ends if that is all)."""
        self._thread.start()
        self._queue.put(("start", -1, None))

    def put(self, kind: str, index: int, item: np.ndarray | SegmentOutput) -> None:
        """Hand over a finished keyframe (frames) or segment (SegmentOutput); returns at once."""
        self._queue.put((kind, index, item))

    def drain(self) -> None:
        """Wait until everything handed over so far is handled, pieces encoding included (or the sink stopped)."""
        while (self._queue.unfinished_tasks or self._encoding) and self._thread.is_alive():
            self._aborted.wait(0.005)

    def abort(self) -> None:
        """Stop: drop what is queued and remove the partial output. Waits for the thread unless called from it."""
        self._aborted.set()
        self._queue.put(None)
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join()
        self._remove_partial()

    # -- the thread -----------------------------------------------------------------------------

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
            self._remove_partial()
            self._on_end(err)
        finally:  # the lead encoder's thread ends with the run (a server runs many)
            self._local.shutdown(wait=False, cancel_futures=True)

    def _handle(self, kind: str, index: int, item) -> None:
        if kind == "start":
            self._open()
        elif kind == "keyframe":
            if self.job:  # persisted before it counts
                self.job.save_frames("keyframes", index, item)
            self.progress.keyframes_done += 1
            self._on_progress(self.progress)
        elif kind == "segment":
            if index not in self._counted:
                if self.job:
                    self.job.save_edges(index, item.edges)
                self._counted.add(index)
                self.progress.segments_done += 1
                self._on_progress(self.progress)
            if index >= self._next_join:  # else joined already (rendered again after its body was lost)
                self._edges[index] = item.edges
            self._bodies[index] = item.body
        elif kind == "piece":
            self._piece_done(index, item)
        elif kind == "lead":
            self._lead_done(index, item)
        if not self._stitching and self._all_rendered():  # from now on the sink alone has work left
            self._stitching = True
            self._on_stitching()
        self._join_ready()
        self._encode_ready()
        written = self.progress.frames_written
        self._land_ready()
        if self.progress.frames_written != written:
            self._on_progress(self.progress)

    def _open(self) -> None:
        self.pieces_dir.mkdir(parents=True, exist_ok=True)
        if self._prefix is None:
            return
        path = self.pieces_dir / f"{PREFIX}{self.fmt.suffix}"
        meta = path.with_suffix(".json")
        if not meta.exists():  # encoded once: a resumed continuation keeps it
            piece = encode_piece(self.fmt, 0, self._no_lead, self._prefix())
            atomic_write(path, piece.data)
            atomic_write(meta, json.dumps({"frames": piece.frames}).encode())
        self._prefix_frames = json.loads(meta.read_text())["frames"]
        self._playlist.append((f"pieces/{path.name}", self._prefix_frames))

    def _join_ready(self) -> None:
        """Join segments in order while their edges exist (here or saved); encode each lead."""
        while self._next_join < len(self.layouts):
            index = self._next_join
            edges = self._edges.pop(index, None)
            if edges is None:
                edges = self._saved_edges.pop(index, None)
            if edges is None:
                return
            layout = self.layouts[index]
            n, p, q = layout.num_frames, layout.overlap_prev, layout.overlap_next
            shape = next(iter(edges.values())).shape
            head = np.stack([edges[i] for i in range(p)]) if p else np.zeros((0, *shape), np.uint8)
            tail = np.stack([edges[i] for i in range(n - q, n)]) if q else head[:0]
            lead, lut = self.stitcher.join(head, tail)
            lead = lead[:layout.keep]
            lo, hi = layout.body
            ends = [_mapped(edges[lo], lut), _mapped(edges[hi - 1], lut)] if hi > lo else [None, None]
            self._joined[index] = _Joined(layout, lead, lut, *ends)
            self._luts.setdefault(index, lut)
            if index in self._saved:
                path, meta = self.job.piece(index)
                self._landed[index] = (path, meta["frames"], tuple(meta["body_steps"]))
            lead_path = self._lead_path(index)
            if not len(lead) or lead_path.exists():  # a resumed job's lead is kept as it is
                self._leads.add(index)
            else:
                future = self._local.submit(encode_piece, self.fmt, self._prefix_frames + layout.start, lead,
                                            lead[:0])
                self._encoding.add(("lead", index))
                future.add_done_callback(lambda done, index=index: self._queue.put(("lead", index, done)))
            self._next_join += 1

    def _lead_path(self, index: int) -> Path:
        return self.pieces_dir / f"{index:05d}-lead{self.fmt.suffix}"

    def _encode_ready(self) -> None:
        """Encode the bodies whose frames are here and whose lookup table is known."""
        for index, body in self._bodies.items():
            lut = self._luts.get(index)
            if lut is None or index in self._landed or ("body", index) in self._encoding:
                continue
            layout = self.layouts[index]
            lo, hi = layout.body
            if hi == lo:  # all of it is overlap: nothing to encode where it was rendered
                continue
            future = self.transport.encode(self.fmt, self._prefix_frames + layout.start + layout.overlap_prev,
                                           self._no_lead, body, lo, hi,
                                           None if lut is IDENTITY_LUT else lut)
            self._encoding.add(("body", index))
            future.add_done_callback(lambda done, index=index: self._queue.put(("piece", index, done)))

    def _lead_done(self, index: int, future) -> None:
        self._encoding.discard(("lead", index))
        atomic_write(self._lead_path(index), future.result().data)
        self._leads.add(index)

    def _piece_done(self, index: int, future) -> None:
        self._encoding.discard(("body", index))
        body = self._bodies.pop(index, None)
        try:
            piece: Piece = future.result()
        except Exception as err:
            if not self.transport.lost(err):
                raise
            logger.warning("segment %d's frames were lost before its piece was encoded (%s); rendering it again",
                           index, err)
            del body
            self._on_lost(index)
            return
        meta = {"suffix": self.fmt.suffix, "frames": piece.frames, "body_steps": list(piece.body_steps)}
        if self.job:
            path = self.job.save_piece(index, self.fmt.suffix, piece.data, meta)
        else:
            path = self.pieces_dir / f"{index:05d}{self.fmt.suffix}"
            atomic_write(path, piece.data)
        self._landed[index] = (path, piece.frames, piece.body_steps)

    def _land_ready(self) -> None:
        """Pieces in order: measured, counted and added to the preview."""
        while (self._next_land < self._next_join and self._next_land in self._leads
               and (self._next_land in self._landed or not self._joined[self._next_land].frames_in_body)):
            index = self._next_land
            joined = self._joined.pop(index)
            self.seams.begin_segment(joined.layout.overlap_prev)
            shown = [joined.lead] + ([joined.first[None]] if joined.first is not None else [])
            self.seams.add(np.concatenate(shown))
            if len(joined.lead):
                self._playlist.append((f"pieces/{self._lead_path(index).name}", len(joined.lead)))
            if joined.frames_in_body:
                path, frames, steps = self._landed[index]
                if frames != joined.frames_in_body:
                    raise RuntimeError(f"piece {index} holds {frames} frames, its layout {joined.frames_in_body}")
                self.seams.add_measured(steps, joined.last)
                self._playlist.append((f"pieces/{path.name}", frames))
            self.progress.frames_written += joined.frames
            self._write_playlist(ended=False)
            self._next_land += 1

    def _write_playlist(self, ended: bool) -> None:
        if self.job and self.fmt.previewable:
            atomic_write(self.job.playlist, playlist(self._playlist, self.fmt.fps, ended).encode())

    def _all_rendered(self) -> bool:
        progress = self.progress
        return progress.segments_done == progress.segments_total and progress.keyframes_done == progress.keyframes_total

    def _complete(self) -> bool:
        return self._next_land == len(self.layouts) and self._all_rendered()

    def _finish(self) -> None:
        if self.progress.frames_written != self.plan.total_frames:
            raise RuntimeError(f"wrote {self.progress.frames_written} of {self.plan.total_frames} frames")
        pieces = [(self.pieces_dir / uri.removeprefix("pieces/"), frames) for uri, frames in self._playlist]
        concat_pieces(pieces, self.out, self.fmt.codec, self.fmt.fps)
        self._write_playlist(ended=True)
        if self.job is None:
            shutil.rmtree(self.pieces_dir, ignore_errors=True)

    def _remove_partial(self) -> None:
        self.out.with_name(self.out.name + ".partial").unlink(missing_ok=True)
        if self.job is None:
            shutil.rmtree(self.pieces_dir, ignore_errors=True)
