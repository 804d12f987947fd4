"""JobRunner: the long-lived owner of a RenderEngine that serves many jobs at once.

It runs as one Ray actor (see `start_runner`): the Serve ingress and the batch driver submit jobs,
read their state and cancel them; a background thread drives the engine's Dispatcher, which shares
the worker pool among all active jobs. Every job lives in a job directory (orchestrator/jobs.py),
so a restarted runner resumes unfinished jobs where they stopped.
"""

from __future__ import annotations

import io
import logging
import threading
import time

import ray
from PIL import Image

from orchestrator.config import EngineConfig
from orchestrator.jobs import TERMINAL, Job, JobProgress, JobStore
from orchestrator.request import RenderRequest
from orchestrator.scheduler import PlanRun
from pipeline.presets import load_preset

logger = logging.getLogger(__name__)


MAX_IMAGE_PIXELS = 4096 * 4096
FIRST_IMAGE = "first_image"  # an uploaded first keyframe, inside its job directory
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


class JobRunner:
    """Jobs in, videos out. Methods are safe to call from several threads (a threaded Ray actor)."""

    def __init__(self, config: EngineConfig, jobs_root: str, max_active_jobs: int = 8):
        from orchestrator.engine import RenderEngine

        self._settings = _runner_settings(config, jobs_root, max_active_jobs)
        self.engine = RenderEngine(config)
        self.store = JobStore(jobs_root)
        self.max_active_jobs = max_active_jobs
        self._runs: dict[str, PlanRun] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._resume_unfinished()
        self._thread = threading.Thread(target=self._loop, name="dispatcher", daemon=True)
        self._thread.start()

    # -- API -------------------------------------------------------------------------------------

    def submit(self, request: RenderRequest, job_id: str | None = None, image: bytes | None = None) -> str:
        """Plan and queue a render; returns its job id. `image` (PNG/JPEG bytes) is the first
        keyframe. ValueError for a request that cannot be planned or an unusable image,
        QueueFull when `max_active_jobs` are unfinished."""
        job_id = job_id or self.store.new_id()
        files = {}
        if image is not None:
            check_image(image)
            files[FIRST_IMAGE] = image
            request = request.model_copy(update={"image": str(Job(self.store.root, job_id).dir / FIRST_IMAGE)})
        plan = self.engine.plan(request)  # raises ValueError before anything is written
        with self._lock:
            if len(self._runs) >= self.max_active_jobs:
                raise QueueFull(f"{len(self._runs)} jobs are unfinished (the limit is {self.max_active_jobs})")
            job = self.store.create(request, job_id, files)
            self._start(job, plan)
        return job.id

    def resume(self, job_id: str) -> str:
        """Start an unfinished job again from what its directory holds (batch re-runs)."""
        job = self.store.open(job_id)
        with self._lock:
            if job_id not in self._runs and job.state().state != "done":
                self._start(job, self.engine.job_plan(job))
        return job_id

    def status(self, job_id: str) -> dict:
        """state.json of `job_id`, with the denoising step of a running segment; KeyError if unknown."""
        state = self.store.open(job_id).state()
        run = self._runs.get(job_id)
        if run is not None:
            for group, _task in self.engine.dispatcher.running_tasks(run):
                ready, _ = ray.wait([ref := group.ranks[0].progress.remote()], timeout=1.0)
                try:
                    current = ray.get(ref) if ready else None
                except ray.exceptions.RayError:  # the group just died; the dispatcher rebuilds it
                    current = None
                if current:
                    state.progress.step, state.progress.steps = current["step"], current["steps"]
                    break
        return state.model_dump()

    def cancel(self, job_id: str) -> dict:
        """Stop `job_id`: its running segments stop at their next denoising step; KeyError if unknown."""
        job = self.store.open(job_id)
        with self._lock:
            run = self._runs.get(job_id)
        if run is not None:
            self.engine.dispatcher.cancel(run, JobCancelled(f"job {job_id} was cancelled"))
        elif job.state().state not in TERMINAL:
            job.update(state="cancelled", error="cancelled before it started")
        return self.status(job_id)

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
        return {"groups": len(self.engine.pool.groups), "busy": busy, "active_jobs": len(self._runs)}

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

    def _start(self, job: Job, plan) -> None:
        """Open the job's run and hand it to the dispatcher (caller holds the lock)."""
        job.update(state="planning", error=None)
        job.save_plan(plan)
        run = self.engine.open_run(
            plan, job.output, job,
            on_progress=lambda progress: self._record(job, progress),
            on_stitching=lambda: job.update(state="stitching"),
        )
        self._runs[job.id] = run
        job.update(state="rendering", progress=run.progress.model_copy())
        self.engine.dispatcher.add(run)

    @staticmethod
    def _record(job: Job, progress: JobProgress) -> None:
        job.update(progress=progress.model_copy())

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.engine.dispatcher.step(timeout=0.1)
            except Exception:  # keep serving other jobs; the failing run was already failed
                logger.exception("dispatcher step failed")
            self._finish_ended()

    def _finish_ended(self) -> None:
        with self._lock:
            ended = [(job_id, run) for job_id, run in self._runs.items() if not run.active]
            for job_id, _ in ended:
                del self._runs[job_id]
        for job_id, run in ended:
            job = self.store.open(job_id)
            progress = run.progress.model_copy()
            if run.error is None:
                job.update(state="done", progress=progress)
            elif isinstance(run.error, JobCancelled):
                job.update(state="cancelled", error=str(run.error), progress=progress)
            else:
                job.update(state="failed", error=f"{type(run.error).__name__}: {run.error}", progress=progress)

    def _resume_unfinished(self) -> None:
        for folder in sorted(self.store.root.iterdir()):
            try:
                job = self.store.open(folder.name)
            except KeyError:  # not a job directory
                continue
            if job.state().state in TERMINAL:
                continue
            logger.info("resuming job %s", job.id)
            try:
                with self._lock:
                    self._start(job, self.engine.job_plan(job))
            except Exception as err:
                job.update(state="failed", error=f"could not resume: {err}")

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
