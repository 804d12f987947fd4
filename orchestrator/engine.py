"""RenderEngine: a Ray connection and a worker pool that render many requests, one plan at a time."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray

from actors.pool import WorkerPool
from actors.shard import ShardRank
from orchestrator.config import EngineConfig
from orchestrator.jobs import Job, JobProgress
from orchestrator.plan import RenderPlan
from orchestrator.planner import default_mode, plan_render
from orchestrator.request import RenderRequest
from orchestrator.scheduler import Dispatcher, PlanRun
from orchestrator.transport import RayFrames
from pipeline.checkpoints import checkpoint_paths
from pipeline.loras import check_loras
from pipeline.parallel import check_sequence_parallel
from pipeline.pieces import PieceFormat
from pipeline.presets import checkpoint_kind, load_preset, preset_path, weights_id
from pipeline.seams import SeamReport
from pipeline.stitch import OverlapStitcher
from pipeline.video_io import CODEC_PIX_FMTS, output_format

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RenderResult:
    """A finished render: the file, the plan it followed, the wall time in seconds, and how visible each seam is."""

    path: Path
    plan: RenderPlan
    progress: JobProgress
    seconds: float
    seams: SeamReport
    rendered: dict[str, int]  # keyframes and segments rendered by this call (the rest were resumed)


def connect_ray(address: str | None) -> None:
    """Attach to `address`, or start a local cluster with one CPU slot per core. No-op if connected."""
    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
    else:
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, logging_level=logging.WARNING)


def preflight(config: EngineConfig) -> None:
    """Check on this machine what the ranks will load, before Ray starts: that the preset can shard its transformer
    as asked, the checkpoints (building embedded ones
    once, not raced by every rank) and every LoRA (present, readable, fitting its transformer), so a missing or
    broken one is one clear ValueError. A remote cluster's ranks look on their own nodes."""
    preset = load_preset(config.model.preset)
    check_sequence_parallel(preset.name, preset.sp_backend, config.parallel.sp_degree)
    if config.ray_address is None or checkpoint_kind(preset.i2v_model) == "embedded":
        i2v, _ = checkpoint_paths(preset, config.model.cache_dir, preset_path(config.model.preset))
        check_loras((*preset.loras, *config.model.loras), preset.i2v_pipeline, i2v)


class RenderEngine:
    """Holds a started WorkerPool for one preset; `render` runs requests on it."""

    def __init__(self, config: EngineConfig, rank_class: type[ShardRank] = ShardRank,
                 frames: RayFrames | None = None):
        """`rank_class`: the pool's ShardRank class, `frames`: where segments stay and pieces are encoded (default
        RayFrames(); subclasses inject faults in tests)."""
        self.config = config
        self.preset = load_preset(config.model.preset)
        self.weights = weights_id(self.preset, config.model.quantize, config.model.loras)
        started = time.perf_counter()
        preflight(config)
        connect_ray(config.ray_address)
        connected = time.perf_counter()
        # Rendering starts once the first group is ready; the others join as they come (Dispatcher, Recovery).
        self.pool = WorkerPool(config.model, config.parallel, rank_class, ready=1)
        self.frames = frames or RayFrames()  # where every run's segments stay and their pieces are encoded
        self.frames.prepare(self.pool.groups)
        self.dispatcher = Dispatcher(self.pool)
        self.dispatcher.on_group_ready = lambda group: self.frames.prepare([group])
        # Where start-up went (s): checks and Ray, then the pool (the first ready group's phases, from its start).
        self.startup = {"preflight_and_ray_s": round(connected - started, 2),
                        "pool_s": round(time.perf_counter() - connected, 2), "pool_phases_s": self.pool.startup,
                        "groups_ready": len(self.pool.groups), "groups": self.pool.size}

    def resolve(self, request: RenderRequest) -> RenderRequest:
        """The request with engine defaults filled in (mode from the pool size, the engine's LoRAs)."""
        if request.preset not in (self.config.model.preset, self.preset.name):
            load_preset(request.preset)  # an unknown preset: ValueError listing the known ones
            raise ValueError(f"preset {request.preset!r} is not loaded by this engine (it holds {self.preset.name!r})")
        loaded = self.config.model.loras
        if request.loras is None:
            request = request.model_copy(update={"loras": loaded})
        elif request.loras != loaded:
            named = ", ".join(lora.label for lora in loaded) or "none"
            raise ValueError(f"loras {', '.join(lora.label for lora in request.loras) or 'none'} are not the ones "
                             f"this engine loaded ({named})")
        if request.mode is None:
            request = request.model_copy(update={"mode": default_mode(self.preset, self.pool.size)})
        return request

    def plan(self, request: RenderRequest) -> RenderPlan:
        """The planner's plan, stamped with the weights this engine renders it with."""
        return plan_render(self.resolve(request), self.preset).model_copy(update={"weights": self.weights})

    def open_run(self, plan: RenderPlan, out: Path, job: Job | None = None,
                 on_progress: Callable[[JobProgress], None] = lambda progress: None,
                 on_stitching: Callable[[], None] = lambda: None,
                 prefix: Callable[[], Iterable[np.ndarray]] | None = None) -> PlanRun:
        """A PlanRun writing `out` (as out.partial until complete: its pieces, encoded on the nodes that rendered
        them, joined by stream copy; opened by the frames `prefix` gives, if any), saving its work in `job` if
        given."""
        stitch = self.config.stitch
        # Colour drift builds up along a chain, each segment rendered from the last. In `keyframes` and `bridge`
        # modes every segment is at most one step from a keyframe, so nothing accumulates; the correction, which
        # composes from seam to seam, would instead carry one seam's mismatch onto every keyframe after it.
        stitcher = OverlapStitcher(stitch.curve, stitch.color_correction and plan.mode == "chain")
        output_format(out, stitch.codec)  # refuse a codec the container cannot hold now, not at the first frame
        if CODEC_PIX_FMTS.get(stitch.codec, "yuv420p") == "yuv420p" and (plan.width % 2 or plan.height % 2):
            raise ValueError(f"width and height must be even for yuv420p, got {plan.width}x{plan.height}")
        fmt = PieceFormat(plan.width, plan.height, plan.fps, codec=stitch.codec, crf=stitch.crf)
        return PlanRun(plan, fmt, out, stitcher, job, on_progress, on_stitching, prefix, self.frames)

    def job_plan(self, job: Job, request: RenderRequest | None = None) -> RenderPlan:
        """The plan `job` renders: the one it saved, if any (its saved frames belong to that plan, even
        when this engine's worker count or planner would choose another), else a new one for `request`
        (default: the job's own). ValueError if the job was made for another request, preset or weights."""
        plan = job.plan()
        if plan is None:
            return self.plan(request or job.request())
        if request is not None:
            job.resume_request(request, "Use a new job directory for a new request.")
        if plan.preset != self.preset.name:
            raise ValueError(f"job {job.id} was planned for preset {plan.preset!r}, "
                             f"but this engine holds {self.preset.name!r}")
        plan.require_weights(self.weights, job.id)
        if plan.keyframe_steps is None:  # saved before plans carried their keyframe sampling: what it was then
            steps, guidance = self.preset.keyframe_sampling(plan.steps, plan.guidance)
            plan = plan.model_copy(update={"keyframe_steps": steps, "keyframe_guidance": guidance})
        if plan.weights is None:  # saved before plans carried their weights: from now on they are these
            if job.saved("keyframes") or job.saved("edges"):
                logger.warning("job %s saved frames before plans named their weights; assuming %s", job.id,
                               self.weights)
            plan = plan.model_copy(update={"weights": self.weights})
        return plan

    def start_job(self, job: Job, out: Path | None = None, request: RenderRequest | None = None,
                  on_progress: Callable[[JobProgress], None] = lambda progress: None,
                  prefix: Callable[[], Iterable[np.ndarray]] | None = None) -> PlanRun:
        """The job lifecycle's middle, the same for the CLI, the server and batch: `planning` while the plan is
        made (or the saved one checked: see `job_plan`; `request` None skips the request check, for a caller that
        made it), then `rendering` as the run is returned for the dispatcher; its sink writes `stitching` once
        everything is rendered. The caller adds the run to the dispatcher and ends the job with `Job.end`."""
        job.update(state="planning", error=None)
        plan = self.job_plan(job, request)
        job.save_plan(plan)
        run = self.open_run(plan, out or job.output, job, on_progress, lambda: job.update(state="stitching"), prefix)
        job.update(state="rendering", progress=run.progress.model_copy())
        return run

    def render(self, request: RenderRequest, out: Path, on_progress: Callable[[JobProgress], None] = lambda p: None,
               job: Job | None = None, plan: RenderPlan | None = None, check_request: bool = True) -> RenderResult:
        """Render `request` to the video file at `out` on this thread; with `job`, save every keyframe and segment
        there, render only what the job does not hold yet and write its lifecycle (`start_job`, then `Job.end`).
        `plan`: the plan to render without a job. `check_request` False: the caller already checked `request`
        against the job's (one resume check)."""
        started = time.perf_counter()
        run = None
        try:
            if job is None:
                run = self.open_run(plan or self.plan(request), out, None, on_progress)
            else:
                run = self.start_job(job, out, request if check_request else None, on_progress)
            progress = self.dispatcher.drive(run)
        except BaseException as err:  # a plan refused at planning ends the job too, not only a failed run
            if job is not None:
                job.end(err, run.progress if run is not None else None)
            raise
        if job is not None:
            job.end(None, progress)
        return RenderResult(Path(out), run.plan, progress, time.perf_counter() - started, run.seams.report(),
                            dict(run.rendered))

    def wait_for_pool(self, timeout_s: float = 120.0) -> int:
        """Wait until every group still starting (or being rebuilt) has joined or been given up, stepping the
        dispatcher as a render would; the live groups. For callers that want the whole pool before they go on
        (diagnostics, tests); a render does not wait: it starts on the first ready group. Not while a JobRunner
        drives this engine's dispatcher (it steps it on its own thread)."""
        deadline = time.monotonic() + timeout_s
        while self.dispatcher.recovery.refs:
            if time.monotonic() > deadline:
                starting = self.dispatcher.recovery.rebuilding
                raise TimeoutError(f"{starting} group(s) still starting after {timeout_s:g}s")
            self.dispatcher.step(timeout=min(1.0, max(0.0, deadline - time.monotonic())))
        return len(self.pool.groups)

    def shutdown(self) -> None:
        self.frames.shutdown()
        self.pool.shutdown()
