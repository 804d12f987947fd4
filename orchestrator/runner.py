"""JobRunner: the long-lived owner of a RenderEngine that serves many jobs at once.

It runs as one Ray actor (see `start_runner`): the Serve ingress and the batch driver submit jobs,
read their state and cancel them; a background thread drives the engine's Dispatcher, which shares
the worker pool among all active jobs. Every job lives in a job directory (orchestrator/jobs.py),
so a restarted runner resumes unfinished jobs where they stopped.
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import ray
from PIL import Image

from orchestrator.config import EngineConfig
from orchestrator.images import load_keyframe_image
from orchestrator.jobs import TERMINAL, Job, JobProgress, JobStore
from orchestrator.metrics import RunnerGauges, RunnerMetrics
from orchestrator.request import RenderRequest
from pipeline.presets import load_preset
from pipeline.video_io import iter_frames

if TYPE_CHECKING:  # the engine, scheduler and models load in the runner's actor only (JobRunner.__init__)
    from orchestrator.scheduler import PlanRun

logger = logging.getLogger(__name__)


MAX_IMAGE_PIXELS = 4096 * 4096
FIRST_IMAGE = "first_image"  # an uploaded first keyframe, inside its job directory
PREFIX_VIDEO = "prefix.mp4"  # a continued job's source video: its frames, but the last, open the output
PREFIX_INFO = "prefix.json"  # {"frames": frames of prefix.mp4 in the output, "source": job id or None}
ANNOTATIONS = "annotations.json"  # what the HTTP API records about a job (e.g. the video it remixes)
# The jobs root is a directory on the head node (ray_cluster.yaml): the runner that writes it and the Serve
# ingress that reads videos from it run there. Their actors reserve no CPU, so without this Ray could place
# them on any node, a GPU node's disk included.
ON_HEAD_NODE = {"node:__internal_head__": 0.001}


def check_image(data: bytes) -> None:
    """Reject what is not a PNG or JPEG, or decodes to more than MAX_IMAGE_PIXELS (a decompression
    bomb), reading only the header."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            kind, (width, height) = image.format, image.size
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise ValueError(f"image is not a readable PNG or JPEG: {err}") from err
    if kind not in ("PNG", "JPEG"):
        raise ValueError(f"image is {kind}; send a PNG or JPEG")
    if width * height > MAX_IMAGE_PIXELS:
        raise ValueError(f"image is {width}x{height} pixels; the limit is {MAX_IMAGE_PIXELS} pixels")


class QueueFull(Exception):
    """Too many unfinished jobs; try again later."""


class JobCancelled(Exception):
    """The job was cancelled by a user."""


class NotFinished(Exception):
    """The job has no finished video (yet)."""


class JobRunner:
    """Jobs in, videos out. Methods are safe to call from several threads (a threaded Ray actor)."""

    def __init__(self, config: EngineConfig, jobs_root: str, max_active_jobs: int = 8, rank_class=None):
        """`rank_class`: the pool's ShardRank class, None for ShardRank (a subclass injects faults in tests)."""
        from orchestrator.engine import RenderEngine

        self._settings = _runner_settings(config, jobs_root, max_active_jobs)
        self.engine = RenderEngine(config) if rank_class is None else RenderEngine(config, rank_class)
        self.store = JobStore(jobs_root)
        self.max_active_jobs = max_active_jobs
        self._runs: dict[str, PlanRun] = {}
        self._queued: list[str] = []  # jobs waiting for a worker, oldest first; planned and started by _admit
        self._encoded: dict[str, int] = {}  # frames of each active job counted in the metrics so far
        self._lock = threading.Lock()
        self.metrics = RunnerMetrics(RunnerGauges(self._jobs_by_state, self.workers, self._tasks_waiting))
        self.engine.dispatcher.on_task_done = lambda task, seconds: self.metrics.task_done(task.kind, seconds)
        self._stop = threading.Event()
        self._resume_unfinished()
        self._thread = threading.Thread(target=self._loop, name="dispatcher", daemon=True)
        self._thread.start()

    # -- API -------------------------------------------------------------------------------------

    def submit(self, request: RenderRequest, job_id: str | None = None, image: bytes | None = None,
               continues: str | bytes | None = None, annotations: dict | None = None) -> str:
        """Plan and queue a render; returns its job id. `image` (PNG/JPEG bytes) is the first
        keyframe. `continues`: a finished job's id, or a video file's bytes, that opens this job's
        output, its last frame this job's first keyframe (give `request` that video's size and fps,
        and one frame more than the seconds to add: the shared frame appears once). `annotations`:
        JSON-able notes kept with the job (`describe` returns them). ValueError for a request that
        cannot be planned or an unusable image or video, KeyError for an unknown `continues`,
        NotFinished if it has no video, QueueFull when `max_active_jobs` are unfinished."""
        job_id = job_id or self.store.new_id()
        files = {ANNOTATIONS: json.dumps(annotations or {}).encode()}
        if continues is not None:
            files[PREFIX_VIDEO], image, frames = self._continuation(continues)
            source = continues if isinstance(continues, str) else None
            files[PREFIX_INFO] = json.dumps({"frames": frames - 1, "source": source}).encode()
        if image is not None:
            check_image(image)
            files[FIRST_IMAGE] = image
            request = request.model_copy(update={"image": str(Job(self.store.root, job_id).dir / FIRST_IMAGE)})
        plan = self.engine.plan(request)  # raises ValueError before anything is written
        with self._lock:
            unfinished = len(self._runs) + len(self._queued)
            if unfinished >= self.max_active_jobs:
                raise QueueFull(f"{unfinished} jobs are unfinished (the limit is {self.max_active_jobs})")
            job = self.store.create(request, job_id, files)
            job.save_plan(plan)  # describe() shows its shape while it waits; planning checks it again
            self._queued.append(job.id)
        return job.id

    def resume(self, job_id: str) -> str:
        """Start an unfinished job again from what its directory holds (batch re-runs)."""
        job = self.store.open(job_id)
        with self._lock:
            if job_id not in self._runs and job_id not in self._queued and job.state().state != "done":
                job.requeue()
                self._queued.append(job_id)
        return job_id

    def status(self, job_id: str) -> dict:
        """state.json of `job_id`, with the denoising step of a running segment; KeyError if unknown."""
        state = self.store.open(job_id).state()
        run = self._runs.get(job_id)
        if run is not None:
            for group, _task in self.engine.dispatcher.running_tasks(run):
                ready, _ = ray.wait([ref := group.progress()], timeout=1.0)
                try:
                    current = ray.get(ref) if ready else None
                except ray.exceptions.RayError:  # the group just died; the dispatcher rebuilds it
                    current = None
                if current is not None:
                    state.progress.step, state.progress.steps = current.step, current.steps
                    break
        return state.model_dump()

    def cancel(self, job_id: str) -> dict:
        """Stop `job_id`: its running segments stop at their next denoising step; KeyError if unknown."""
        job = self.store.open(job_id)
        with self._lock:
            run = self._runs.get(job_id)
            if job_id in self._queued:
                self._queued.remove(job_id)
        if run is not None:
            self.engine.dispatcher.cancel(run, JobCancelled(f"job {job_id} was cancelled"))
        elif job.state().state not in TERMINAL:
            job.update(state="cancelled", error="cancelled before it started")
            self.metrics.jobs_ended.labels(state="cancelled").inc()
        return self.status(job_id)

    def describe(self, job_id: str) -> dict:
        """`status` with the job's request, its plan's shape (None until planned), its annotations and, for a
        continued job, its prefix ({"frames": output frames before its own, "source": job id or None})."""
        job = self.store.open(job_id)
        try:
            state, request, plan = self.status(job_id), job.request(), job.plan()
            annotations, prefix = (json.loads(path.read_text()) if path.exists() else None
                                   for path in (job.dir / ANNOTATIONS, job.dir / PREFIX_INFO))
        except FileNotFoundError as err:  # deleted while being read
            raise KeyError(job_id) from err
        shape = None if plan is None else {name: getattr(plan, name) for name in (
            "preset", "mode", "width", "height", "fps", "total_frames")}
        return {"state": state, "request": request.model_dump(mode="json"), "plan": shape,
                "annotations": annotations or {}, "prefix": prefix}

    def list_jobs(self, after: str | None = None, limit: int = 20, order: str = "desc") -> dict:
        """One page of `describe`s ordered by creation time (`order` asc or desc), starting after the job
        `after` (KeyError if unknown): {"data": [...], "has_more": bool}."""
        jobs = []
        for folder in self.store.root.iterdir():
            try:
                jobs.append((self.store.open(folder.name).state().created_at, folder.name))
            except (KeyError, OSError):  # not a job directory, or deleted meanwhile
                continue
        ids = [job_id for _, job_id in sorted(jobs, reverse=order == "desc")]
        if after is not None and after not in ids:
            raise KeyError(after)
        start = ids.index(after) + 1 if after is not None else 0
        page = []
        for job_id in ids[start:]:
            if len(page) == limit:
                break
            try:
                page.append(self.describe(job_id))
            except KeyError:  # deleted meanwhile
                continue
        return {"data": page, "has_more": start + len(page) < len(ids)}

    def delete(self, job_id: str) -> None:
        """Cancel `job_id` if it runs, then remove its directory; KeyError if unknown."""
        job = self.store.open(job_id)
        with self._lock:
            run = self._runs.pop(job_id, None)
            self._encoded.pop(job_id, None)
            if job_id in self._queued:
                self._queued.remove(job_id)
        if run is not None:  # after this, nothing of the run writes to the job directory
            self.engine.dispatcher.cancel(run, JobCancelled(f"job {job_id} was deleted"))
            self.metrics.jobs_ended.labels(state="cancelled").inc()
        shutil.rmtree(job.dir, ignore_errors=True)

    def stills(self, job_id: str) -> list[np.ndarray]:
        """The frames the job's segments start from, in time order, as uint8 (height, width, 3): its keyframes
        and, in chain mode, each segment's first frame; only those that exist yet. KeyError if unknown."""
        job = self.store.open(job_id)
        plan = job.plan()
        if plan is None:
            return []
        stills: dict[int, np.ndarray] = {}
        saved_keyframes, saved_edges = job.saved("keyframes"), job.saved("edges")
        for spec in plan.keyframes:
            if spec.index in saved_keyframes:
                stills[spec.frame] = job.load_frames("keyframes", spec.index)
            elif spec.source == "image":
                stills[spec.frame] = load_keyframe_image(spec.image, plan.width, plan.height)
        for segment in plan.segments:
            ref = segment.first
            if ref.source == "segment" and ref.index in saved_edges and segment.start_frame not in stills:
                stills[segment.start_frame] = job.load_edges(ref.index)[ref.frame]
        return [stills[frame] for frame in sorted(stills)]

    def task_states(self, job_id: str) -> dict | None:
        """The job's plan (JSON data) and, in plan order, each keyframe's and segment's state: done (its frames
        exist), running (on a worker) or waiting; None until planned. KeyError if unknown."""
        job = self.store.open(job_id)
        try:
            plan = job.plan()
            done = {"keyframe": job.saved("keyframes"), "segment": job.saved("segments")}
        except FileNotFoundError as err:  # deleted while being read
            raise KeyError(job_id) from err
        if plan is None:
            return None
        done["keyframe"] |= {spec.index for spec in plan.keyframes if spec.source == "image"}
        run = self._runs.get(job_id)
        tasks = self.engine.dispatcher.running_tasks(run) if run is not None else []
        running = {(task.kind, task.spec.index) for _, task in tasks}

        def state(kind: str, index: int) -> str:
            return "done" if index in done[kind] else "running" if (kind, index) in running else "waiting"

        return {"plan": plan.model_dump(mode="json"),
                "keyframes": [state("keyframe", spec.index) for spec in plan.keyframes],
                "segments": [state("segment", spec.index) for spec in plan.segments]}

    def first_image(self, job_id: str) -> bytes | None:
        """The first keyframe image uploaded with `job_id`, if any; KeyError if unknown."""
        path = self.store.open(job_id).dir / FIRST_IMAGE
        return path.read_bytes() if path.exists() else None

    def metrics_text(self) -> bytes:
        """The runner's metrics in the Prometheus text format."""
        return self.metrics.exposition()

    def output_path(self, job_id: str) -> str | None:
        """The finished video's path, or None while the job is not done; KeyError if unknown."""
        job = self.store.open(job_id)
        return str(job.output) if job.state().state == "done" and job.output.exists() else None

    def settings(self) -> dict:
        """What this runner was started with (engine config, jobs root, queue limit), as JSON-able data."""
        return self._settings

    def workers(self) -> dict:
        """Pool occupancy: groups rendering now, groups in all, jobs unfinished."""
        busy = len({id(group) for run in list(self._runs.values())
                    for group, _ in self.engine.dispatcher.running_tasks(run)})
        active = len(self._runs) + len(self._queued)
        return {"groups": len(self.engine.pool.groups), "busy": busy, "active_jobs": active}

    def shutdown(self) -> None:
        """Stop serving. Unfinished jobs keep their state and saved work: the next runner on the
        same jobs root resumes them."""
        self._stop.set()
        self._thread.join(timeout=10)
        self._finish_ended()  # record runs that ended (a user's cancel) since the thread last looked
        with self._lock:  # forgotten first, so the dispatcher thread, if still stitching, cannot mark them failed
            runs = list(self._runs.values())
            self._runs.clear()
        for run in runs:  # through the dispatcher's lock: a stitch in progress ends before the encoder closes
            self.engine.dispatcher.cancel(run, RuntimeError("the job runner stopped"))
        self.engine.shutdown()

    # -- internals -------------------------------------------------------------------------------

    def _start(self, job: Job) -> None:
        """Plan the queued `job` and hand its run to the dispatcher (caller holds the lock)."""
        prefix = job.dir / PREFIX_VIDEO
        run = self.engine.start_job(
            job, on_progress=lambda progress: self._record(job, progress),
            prefix=(lambda: self._prefix_frames(run.plan, prefix)) if prefix.exists() else None,
        )
        self._runs[job.id] = run
        self._encoded[job.id] = 0
        self.engine.dispatcher.add(run)

    def _admit(self) -> None:
        """Start queued jobs, oldest first, while the pool has a group with nothing to do: a job waits `queued`
        until a worker can take it."""
        while self.engine.dispatcher.wants_work():
            with self._lock:
                if not self._queued:
                    return
                job_id = self._queued.pop(0)
                try:
                    job = self.store.open(job_id)
                except KeyError:  # deleted while it waited
                    continue
                try:
                    self._start(job)
                except Exception as err:  # e.g. a saved plan for another preset: this job ends, the others go on
                    logger.exception("job %s could not start", job_id)
                    job.end(RuntimeError(f"could not resume: {err}"))
                    self.metrics.jobs_ended.labels(state="failed").inc()

    def _prefix_frames(self, plan, path) -> Iterator[np.ndarray]:
        """The video a run continues, less its last frame (the run's first keyframe), in batches: what opens the
        run's output (its sink encodes it once as the first piece)."""
        last = None
        for batch in iter_frames(path, size=(plan.width, plan.height)):
            frames = batch if last is None else np.concatenate([last[None], batch])
            if len(frames) > 1:
                yield frames[:-1]
                self.metrics.frames_encoded(len(frames) - 1)
            last = frames[-1]

    def _continuation(self, source: str | bytes) -> tuple[bytes, bytes, int]:
        """A video to continue (a finished job's, or a file's bytes): its bytes, its last frame as a PNG, its
        frame count."""
        if isinstance(source, str):
            job = self.store.open(source)
            if job.state().state != "done" or not job.output.exists():
                raise NotFinished(f"video {source} is {job.state().state}; only a finished video can be continued")
            source = job.output.read_bytes()
        with tempfile.NamedTemporaryFile(suffix=".mp4") as handle:
            handle.write(source)
            handle.flush()
            frames, last = 0, None
            for batch in iter_frames(Path(handle.name)):
                frames, last = frames + len(batch), batch[-1]
        if last is None:
            raise ValueError("the video to continue has no frames")
        buffer = io.BytesIO()
        Image.fromarray(last).save(buffer, format="PNG")
        return source, buffer.getvalue(), frames

    def _record(self, job: Job, progress: JobProgress) -> None:
        job.update(progress=progress.model_copy())
        self._count_frames(job.id, progress.frames_written)

    def _count_frames(self, job_id: str, frames_written: int) -> None:
        """Add the frames encoded since the job last reported to the metrics."""
        seen = self._encoded.get(job_id)
        if seen is not None:
            self.metrics.frames_encoded(frames_written - seen)
            self._encoded[job_id] = frames_written

    def _jobs_by_state(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for folder in self.store.root.iterdir():
            try:
                state = self.store.open(folder.name).state().state
            except (KeyError, OSError, ValueError):  # not a job directory, or deleted or rewritten meanwhile
                continue
            counts[state] = counts.get(state, 0) + 1
        return counts

    def _tasks_waiting(self) -> int:
        return sum(len(run.pending) for run in list(self._runs.values()))

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.engine.dispatcher.step(timeout=0.1)
                self._admit()
            except Exception:  # keep serving other jobs; the failing run was already failed
                logger.exception("dispatcher step failed")
            self._finish_ended()

    def _finish_ended(self) -> None:
        with self._lock:
            ended = [(job_id, run) for job_id, run in self._runs.items() if not run.active]
            for job_id, _ in ended:
                del self._runs[job_id]
        for job_id, run in ended:
            progress = run.progress.model_copy()
            self._count_frames(job_id, progress.frames_written)
            self._encoded.pop(job_id, None)
            try:
                state = self.store.open(job_id).end(run.error, progress, isinstance(run.error, JobCancelled))
            except (KeyError, FileNotFoundError):  # deleted as it ended
                logger.info("job %s ended after it was deleted", job_id)
                continue
            self.metrics.jobs_ended.labels(state=state).inc()

    def _resume_unfinished(self) -> None:
        """Queue every unfinished job of the jobs root again (oldest name first); `_admit` starts them."""
        for folder in sorted(self.store.root.iterdir()):
            try:
                job = self.store.open(folder.name)
            except KeyError:  # not a job directory
                continue
            if job.state().state in TERMINAL:
                continue
            logger.info("resuming job %s", job.id)
            job.requeue()
            self._queued.append(job.id)

def _runner_settings(config: EngineConfig, jobs_root: str, max_active_jobs: int) -> dict:
    return {"engine": config.model_dump(mode="json"), "jobs_root": str(jobs_root), "max_active_jobs": max_active_jobs}


def start_runner(config: EngineConfig, jobs_root: str, max_active_jobs: int, name: str = "minutereel-runner",
                 replace_timeout_s: float = 60.0):
    """The named JobRunner actor, created if absent. It reserves no CPU: its pool's ranks do.

    The actor is detached, so it outlives a Serve redeploy. If the running one was started with other
    settings (a new worker count, jobs root, encoder settings in serve.yaml), it is shut down and
    replaced: its unfinished jobs keep their saved keyframes and segments, and the new runner resumes
    them on the plans they were made with. Jobs planned for another preset fail with that reason.
    Settings that cannot work (an unknown preset) raise before the running runner is touched, and a
    replacement that cannot start raises its reason here rather than behind a healthy-looking ingress.
    """
    load_preset(config.model.preset)  # an unknown preset: ValueError listing the known ones
    actor = ray.remote(JobRunner).options(
        name=name, get_if_exists=True, num_cpus=0, resources=ON_HEAD_NODE, max_concurrency=16, lifetime="detached",
    )
    runner = actor.remote(config, jobs_root, max_active_jobs)
    wanted = _runner_settings(config, jobs_root, max_active_jobs)
    try:
        current = ray.get(runner.settings.remote())
    except (AttributeError, ray.exceptions.RayError):  # a runner from an older minutereel, or a dead one
        current = None
    if current == wanted:
        return runner
    logger.warning("job runner %r runs with other settings; replacing it (its unfinished jobs resume)", name)
    try:
        ray.get(runner.shutdown.remote(), timeout=replace_timeout_s)
    except (AttributeError, ray.exceptions.RayError) as err:  # dead, stuck or too old to shut down: kill it
        logger.warning("job runner %r did not shut down cleanly (%s); killing it", name, err)
    finally:
        ray.kill(runner)
    deadline = time.monotonic() + replace_timeout_s
    while True:  # the name is released once the killed actor is gone, or taken by a concurrent caller's runner
        try:
            if ray.get_actor(name) != runner:
                break
        except ValueError:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"job runner {name!r} did not stop within {replace_timeout_s:.0f}s")
        time.sleep(0.2)
    runner = actor.remote(config, jobs_root, max_active_jobs)  # get_if_exists: a concurrent caller's, or ours
    if ray.get(runner.settings.remote()) != wanted:  # waits for its engine; raises why it could not start
        logger.warning("job runner %r was just replaced by a caller with other settings; using it", name)
    return runner
