"""The job directory: everything one render needs to be inspected, resumed or served.

    <jobs_root>/<job_id>/request.json   validated request
                         plan.json      the plan
                         state.json     state, progress, error (written atomically)
                         keyframes/     one lossless .npy per keyframe
                         edges/         per segment, the raw frames others need: its overlaps, the first and
                                        last of its body, the frames that condition other segments (.npz)
                         pieces/        per segment, its encoded piece (.ts, or .mkv for FFV1) and a .json
                                        saying its frame count and body steps; a segment counts as saved
                                        once its .json exists (resume is identical: pieces are kept as is)
                         preview.m3u8   HLS event playlist of the pieces so far (H.264 only)
                         output.mp4     appears only when complete: the pieces joined by stream copy

Job ids are generated here (or given by a batch spec entry) and must match `JOB_ID`; anything
else, including paths, is an unknown job.
"""

from __future__ import annotations

import io
import json
import os
import re
import reprlib
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from orchestrator.plan import RenderPlan
from orchestrator.request import RenderRequest

JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
JobStatus = Literal["queued", "planning", "rendering", "stitching", "done", "failed", "cancelled"]
TERMINAL: frozenset[str] = frozenset({"done", "failed", "cancelled"})
# The one job lifecycle, shared by the CLI, the server and batch; each state is written when it becomes true:
#   queued     accepted, waiting for a worker (a restarted runner's or a re-run's unfinished job waits again)
#   planning   the planner runs, or a resumed job's saved plan is checked
#   rendering  the run holds the pool's groups
#   stitching  every keyframe and segment is rendered; the output sink writes the rest of the video
#   done | failed | cancelled
TRANSITIONS: dict[str, frozenset[str]] = {
    "queued": frozenset({"planning", "failed", "cancelled"}),
    "planning": frozenset({"rendering", "queued", "failed", "cancelled"}),
    "rendering": frozenset({"stitching", "queued", "failed", "cancelled"}),
    "stitching": frozenset({"done", "queued", "failed", "cancelled"}),
    "done": frozenset({"queued"}),  # the CLI's --resume of a finished job writes its video again
    "failed": frozenset({"queued"}),
    "cancelled": frozenset({"queued"}),
}
# Request fields that may be left unset for the engine to choose, each also a field of the plan.
PLANNED_FIELDS = ("mode", "fps", "width", "height", "steps", "guidance")


class JobProgress(BaseModel):
    """Finished work so far (counts) and the denoising step of the latest running segment."""

    keyframes_done: int = 0
    keyframes_total: int = 0
    segments_done: int = 0
    segments_total: int = 0
    frames_written: int = 0
    frames_total: int = 0
    step: int | None = Field(None, description="Denoising step of the most recently reported segment (1-based).")
    steps: int | None = Field(None, description="Denoising steps per segment.")


class JobState(BaseModel):
    """What state.json holds."""

    id: str
    state: JobStatus = "queued"
    progress: JobProgress = Field(default_factory=JobProgress)
    error: str | None = None
    history: list[str] = Field(default_factory=lambda: ["queued"], description="Every state the job has been in.")
    created_at: float = Field(default_factory=time.time)
    updated_at: float = Field(default_factory=time.time)


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` via a temporary sibling and a rename: readers see old or new, never half."""
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Job:
    """One job directory."""

    def __init__(self, root: Path, job_id: str):
        self.id = job_id
        self.dir = root / job_id

    @property
    def output(self) -> Path:
        return self.dir / "output.mp4"

    def request(self) -> RenderRequest:
        return RenderRequest.model_validate_json((self.dir / "request.json").read_text())

    def resume_request(self, request: RenderRequest, fix: str) -> RenderRequest:
        """`request` as this job resumes it. Fields it leaves unset keep the job's values, including what
        the job's plan chose (a default mode follows the worker count, which may have changed); a field
        set to something else is a ValueError naming each such field and ending with `fix`."""
        stored, plan = self.request(), self.plan()
        if plan is not None:
            stored = stored.model_copy(update={name: getattr(plan, name) for name in PLANNED_FIELDS
                                               if getattr(stored, name) is None})
        request = request.model_copy(update={name: getattr(stored, name) for name in PLANNED_FIELDS
                                             if getattr(request, name) is None})
        kept, given = stored.model_dump(mode="json"), request.model_dump(mode="json")
        changed = [_difference(name, kept[name], given[name]) for name in kept if kept[name] != given[name]]
        if changed:
            raise ValueError(f"{self.dir} holds a job for a different request: {'; '.join(changed)}. {fix}")
        return request

    def plan(self) -> RenderPlan | None:
        path = self.dir / "plan.json"
        return RenderPlan.model_validate_json(path.read_text()) if path.exists() else None

    def save_plan(self, plan: RenderPlan) -> None:
        atomic_write(self.dir / "plan.json", plan.model_dump_json(indent=2).encode())

    def state(self) -> JobState:
        return JobState.model_validate_json((self.dir / "state.json").read_text())

    def update(self, **changes) -> JobState:
        """Change fields of state.json atomically; returns the new state. A new `state` must be one TRANSITIONS
        allows from the current one (RuntimeError otherwise)."""
        state = self.state()
        if changes.get("state", state.state) != state.state:
            if changes["state"] not in TRANSITIONS[state.state]:
                raise RuntimeError(f"job {self.id} cannot go from {state.state} to {changes['state']}")
            changes["history"] = [*state.history, changes["state"]]
        state = state.model_copy(update={**changes, "updated_at": time.time()})
        atomic_write(self.dir / "state.json", state.model_dump_json(indent=2).encode())
        return state

    def requeue(self) -> None:
        """An unfinished or ended job waits for a worker again (resume); a queued one stays as it is."""
        if self.state().state != "queued":
            self.update(state="queued", error=None)

    def end(self, error: BaseException | None, progress: JobProgress | None = None, cancelled: bool = False) -> str:
        """Write how the run ended (done, or failed/cancelled with the error's text); returns the state."""
        state = "done" if error is None else "cancelled" if cancelled else "failed"
        changes = {"progress": progress.model_copy()} if progress is not None else {}
        message = None if error is None else str(error) if cancelled else f"{type(error).__name__}: {error}"
        self.update(state=state, error=message, **changes)
        return state

    @property
    def pieces(self) -> Path:
        return self.dir / "pieces"

    @property
    def playlist(self) -> Path:
        return self.dir / "preview.m3u8"

    def save_edges(self, index: int, edges: dict[int, np.ndarray]) -> None:
        """Persist segment `index`'s edge frames ({frame in segment: uint8 (h, w, 3)}) losslessly, atomically."""
        path = self.dir / "edges" / f"{index:05d}.npz"
        path.parent.mkdir(exist_ok=True)
        order = sorted(edges)
        buffer = io.BytesIO()
        np.savez_compressed(buffer, index=np.array(order, dtype=np.int64), frames=np.stack([edges[i] for i in order]))
        atomic_write(path, buffer.getvalue())

    def load_edges(self, index: int) -> dict[int, np.ndarray]:
        with np.load(self.dir / "edges" / f"{index:05d}.npz") as data:
            return dict(zip(data["index"].tolist(), data["frames"], strict=True))

    def save_piece(self, index: int, suffix: str, data: bytes, meta: dict) -> Path:
        """Persist segment `index`'s encoded piece, then its meta (which makes it count as saved)."""
        self.pieces.mkdir(exist_ok=True)
        path = self.pieces / f"{index:05d}{suffix}"
        atomic_write(path, data)
        atomic_write(path.with_suffix(".json"), json.dumps(meta).encode())
        return path

    def piece(self, index: int) -> tuple[Path, dict]:
        """A saved piece's file and meta."""
        meta_path = self.pieces / f"{index:05d}.json"
        meta = json.loads(meta_path.read_text())
        return meta_path.with_suffix(meta["suffix"]), meta

    def _array_path(self, kind: str, index: int) -> Path:
        return self.dir / kind / f"{index:05d}.npy"

    def save_frames(self, kind: Literal["keyframes"], index: int, frames: np.ndarray) -> None:
        """Persist a keyframe (uint8 RGB) losslessly, atomically."""
        path = self._array_path(kind, index)
        path.parent.mkdir(exist_ok=True)
        buffer = io.BytesIO()
        np.save(buffer, frames)
        atomic_write(path, buffer.getvalue())

    def saved(self, kind: Literal["keyframes", "edges", "segments"]) -> set[int]:
        """Indices saved: keyframes, segments' edges, or segments (whose piece is encoded)."""
        folder, pattern = {"keyframes": ("keyframes", "*.npy"), "edges": ("edges", "*.npz"),
                           "segments": ("pieces", "[0-9]*.json")}[kind]
        folder = self.dir / folder
        return {int(p.stem) for p in folder.glob(pattern)} if folder.exists() else set()

    def load_frames(self, kind: Literal["keyframes"], index: int, mmap: bool = False) -> np.ndarray:
        return np.load(self._array_path(kind, index), mmap_mode="r" if mmap else None)


def _difference(name: str, here: Any, given: Any) -> str:
    """`name (here-value here, given-value given)`, narrowed to the first differing list item, key or
    stretch of text, so a long prompt or storyboard shows where it changed."""
    if isinstance(here, list) and isinstance(given, list):
        if len(here) != len(given):
            return f"{name} ({len(here)} entries here, {len(given)} given)"
        i = next(i for i, (a, b) in enumerate(zip(here, given, strict=True)) if a != b)
        return _difference(f"{name}[{i}]", here[i], given[i])
    if isinstance(here, dict) and isinstance(given, dict) and here.keys() == given.keys():
        key = next(k for k in here if here[k] != given[k])
        return _difference(f"{name}.{key}", here[key], given[key])
    if isinstance(here, str) and isinstance(given, str) and max(len(here), len(given)) > 40:
        at = next((i for i, (a, b) in enumerate(zip(here, given, strict=False)) if a != b), min(len(here), len(given)))
        start = max(0, at - 10)
        return f"{name} from character {at} ({_excerpt(here, start)} here, {_excerpt(given, start)} given)"
    return f"{name} ({_shown(here)} here, {_shown(given)} given)"


def _shown(value: Any) -> str:
    return "unset" if value is None else repr(value) if isinstance(value, str) else reprlib.repr(value)


def _excerpt(text: str, start: int) -> str:
    return ("..." if start else "") + repr(text[start:start + 30]) + ("..." if len(text) > start + 30 else "")


class JobStore:
    """Creates and opens job directories under one root."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def new_id() -> str:
        """A fresh job id (what `create` uses when given none)."""
        return uuid.uuid4().hex

    def create(self, request: RenderRequest, job_id: str | None = None, files: dict[str, bytes] | None = None) -> Job:
        """A new job directory holding `files` (an uploaded image), then request.json and a queued state:
        a request is never on disk before the files it names."""
        job_id = job_id or self.new_id()
        if not JOB_ID.match(job_id):
            raise ValueError(f"job id {job_id!r} must be 1-64 letters, digits, '-' or '_', starting alphanumeric")
        job = Job(self.root, job_id)
        job.dir.mkdir(parents=True, exist_ok=False)
        for name, data in (files or {}).items():
            atomic_write(job.dir / name, data)
        atomic_write(job.dir / "request.json", request.model_dump_json(indent=2).encode())
        atomic_write(job.dir / "state.json", JobState(id=job_id).model_dump_json(indent=2).encode())
        return job

    def open(self, job_id: str) -> Job:
        """The existing job `job_id`; KeyError for anything that is not one of this store's jobs."""
        if not isinstance(job_id, str) or not JOB_ID.match(job_id):
            raise KeyError(job_id)
        job = Job(self.root, job_id)
        if not (job.dir / "state.json").is_file():
            raise KeyError(job_id)
        return job

    def exists(self, job_id: str) -> bool:
        try:
            self.open(job_id)
        except KeyError:
            return False
        return True
