"""Run RenderPlans on a WorkerPool as DAGs.

A `PlanRun` is one plan's execution: which keyframes and segments are ready (the frames they are
conditioned on exist), what finished, and its OutputSink, which joins finished segments into pieces
encoded where they were rendered and the pieces into the video. With a job directory, every finished
keyframe and segment is saved before it counts, and a run started on a partly rendered job renders
only what is missing.

A `Dispatcher` runs the tasks of any number of PlanRuns on one pool: each idle shard group takes
the next ready task of the next run in turn, so concurrent jobs share the pool fairly.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import ray

from actors.pool import WorkerPool
from actors.shard import RenderCancelled, ShardGroup, last_line
from orchestrator.graph import Task, TaskGraph
from orchestrator.images import load_keyframe_image
from orchestrator.jobs import Job, JobProgress
from orchestrator.plan import RenderPlan
from orchestrator.sink import OutputSink, SegmentOutput
from orchestrator.transport import LocalFrames
from pipeline.pieces import PieceFormat
from pipeline.requests import SegmentRequest
from pipeline.seams import SeamMeter
from pipeline.stitch import OverlapStitcher

logger = logging.getLogger(__name__)


_run_ids = itertools.count()


class PlanRun:
    """One plan's execution state (driver side): its TaskGraph (orchestrator.graph: what is pending, what is ready
    because the frames it is conditioned on exist, the conditioning-frame cache) and its OutputSink, which saves,
    joins and has pieces encoded on its own thread. The Dispatcher drives the graph; `fail` may come from any
    thread. `transport` says where segment frames stay and pieces are encoded (orchestrator.transport; default
    LocalFrames); `prefix` gives frames that open the video before the plan's own (a continued video)."""

    def __init__(self, plan: RenderPlan, fmt: PieceFormat, out: Path, stitcher: OverlapStitcher,
                 job: Job | None = None, on_progress: Callable[[JobProgress], None] = lambda progress: None,
                 on_stitching: Callable[[], None] = lambda: None,
                 prefix: Callable[[], Iterable[np.ndarray]] | None = None, transport=None):
        self.id = next(_run_ids)
        self.plan, self.job = plan, job
        self.progress = JobProgress(keyframes_total=len(plan.keyframes), segments_total=len(plan.segments),
                                    frames_total=plan.total_frames, steps=plan.steps)
        self.rendered = {"keyframe": 0, "segment": 0}  # tasks rendered by this run (not resumed)
        self.error: BaseException | None = None
        self.finished = threading.Event()
        self._lock = threading.Lock()  # the graph and the end of the run, shared with the sink's thread
        self.attempts: dict[str, int] = {}
        self.transport = transport if transport is not None else LocalFrames()
        self.graph, saved_segments, saved_edges = self._resume()
        self.sink = OutputSink(plan, fmt, out, stitcher, self.transport, job, self.progress, saved_segments,
                               on_progress, on_stitching, self._sink_ended, self._lost, prefix, saved_edges)
        self._edges = {layout.index: layout.edges for layout in self.sink.layouts}

    # -- state ---------------------------------------------------------------------------------

    def _resume(self) -> tuple[TaskGraph, set[int], dict[int, dict[int, np.ndarray]]]:
        """The task graph after loading user images and whatever the job directory already holds, the saved
        segments and the saved edges (the sink joins from the same, not read again)."""
        keyframes = {}
        saved_keyframes = self.job.saved("keyframes") if self.job else set()
        for spec in self.plan.keyframes:
            if spec.index in saved_keyframes:
                keyframes[spec.index] = self.job.load_frames("keyframes", spec.index)
            elif spec.source == "image":
                keyframes[spec.index] = load_keyframe_image(spec.image, self.plan.width, self.plan.height)
        self.progress.keyframes_done += len(keyframes)
        saved_segments = self.job.saved("segments") if self.job else set()
        self.progress.segments_done += len(saved_segments)
        # What other segments need, even from a segment whose piece is missing (it renders again).
        edges = {index: self.job.load_edges(index) for index in (self.job.saved("edges") if self.job else ())}
        return TaskGraph(self.plan, self.id, keyframes, saved_segments, edges), saved_segments, edges

    @property
    def pending(self) -> list[Task]:
        """Tasks not yet taken (a copy)."""
        with self._lock:
            return list(self.graph.pending)

    @property
    def seams(self) -> SeamMeter:
        return self.sink.seams

    @property
    def segments_in_memory(self) -> int:
        """Finished segments whose frames this process holds for their piece (with RayFrames: none)."""
        return self.sink.segments_in_memory

    @property
    def active(self) -> bool:
        return not self.finished.is_set()

    # -- tasks ---------------------------------------------------------------------------------

    def take_ready(self) -> Task | None:
        """The next task whose inputs exist, removed from pending; None if none is ready."""
        with self._lock:
            return self.graph.take_ready()

    def has_ready(self) -> bool:
        with self._lock:
            return self.graph.has_ready()

    def retry(self, task: Task) -> None:
        """Put `task` back at the front of pending (its group failed)."""
        with self._lock:
            if self.active:
                self.graph.again(task)

    def submit(self, task: Task, group: ShardGroup) -> ray.ObjectRef:
        """Start rendering `task` on `group`; the ref resolves to its frames."""
        plan, spec = self.plan, task.spec
        if task.kind == "keyframe":
            return group.render_keyframe(spec.prompt, spec.seed, plan.width, plan.height, plan.keyframe_steps,
                                         plan.keyframe_guidance)
        request = SegmentRequest(
            prompt=spec.prompt, seed=spec.seed, num_frames=spec.num_frames, width=plan.width, height=plan.height,
            first=self.graph.frame(spec.first), last=self.graph.frame(spec.last) if spec.last else None,
            steps=plan.steps, guidance=plan.guidance,
        )
        return self.transport.track(task.task_id, group.render_segment(request, task.task_id), self._edges[spec.index],
                                    group)

    def complete(self, task: Task, result: np.ndarray) -> None:
        """Record a finished task: its frames condition what depends on them at once; the sink saves, counts,
        joins and encodes them on its own thread. `result`: what the ref `submit` returned gave."""
        kind, index = task.kind, task.spec.index
        self.rendered[kind] += 1
        if kind == "keyframe":
            with self._lock:
                self.graph.done(task, result)
            self.sink.put(kind, index, result)
            return
        edges, body = self.transport.received(task.task_id, result, self._edges[index])
        with self._lock:
            self.graph.done(task, edges)
        self.sink.put(kind, index, SegmentOutput(edges, body))

    def _lost(self, index: int) -> None:
        """The sink lost segment `index`'s frames (their node died) before its piece was made: render it again."""
        with self._lock:
            if self.active:
                self.graph.again(self.graph.segment_task(index))

    def start(self) -> None:
        """Start the sink: it stitches what a resumed job already holds and ends the run if nothing is left."""
        self.sink.start()

    def _sink_ended(self, error: BaseException | None) -> None:
        if error is not None:
            self.fail(error)
            return
        with self._lock:
            if self.error is None:
                self.finished.set()

    def fail(self, error: BaseException) -> None:
        """Stop the run: drop pending work, remove the partial output, remember why."""
        with self._lock:
            if not self.active or self.error is not None:
                return
            self.error = error
            self.graph.pending.clear()
        self.transport.forget_run(self.id)
        self.sink.abort()
        self.finished.set()

    def wait(self) -> JobProgress:
        """Block until the run ends; raise its error if it failed."""
        self.finished.wait()
        if self.error is not None:
            raise self.error
        return self.progress


class RayFutures:
    """How the dispatcher waits on and reads object refs (unit tests swap in fake refs and a fake clock)."""

    @staticmethod
    def wait(refs: list, timeout: float | None) -> list:
        return ray.wait(refs, num_returns=1, timeout=timeout)[0]

    @staticmethod
    def get(ref):
        return ray.get(ref)


class Recovery:
    """The policy for broken shard groups: rebuild each one asynchronously, with bounded attempts.

    A rebuild is a GroupStart whose refs join the dispatcher's wait set (`refs`); the group rejoins the pool
    when all of them resolve (`settle` returns it). A start that fails (a rank died, the load raised, no
    placement within `placement_timeout_s`) is started again up to `parallel.group_restarts` times in a row;
    after that the slot is given up and `lost` says why. A group the pool was still starting when it returned
    (`WorkerPool.starting`) is adopted the same way and joins when ready.
    """

    def __init__(self, pool: WorkerPool, clock: Callable[[], float] = time.monotonic):
        self.pool, self.clock = pool, clock
        self._starts: dict = {}  # ref -> the GroupStart it belongs to
        self._joining: set[int] = set()  # slots on their first start (adopted), not a rebuild
        self.lost: dict[int, str] = {}

    @property
    def refs(self) -> list:
        return list(self._starts)

    @property
    def rebuilding(self) -> int:
        return len({id(start) for start in self._starts.values()})

    def deadline(self) -> float | None:
        """When the earliest rebuild times out in the phase it waits on (placement, then load and warm-up)."""
        starts = {id(s): s for s in self._starts.values()}.values()
        deadlines = [d for s in starts if (d := s.deadline) is not None]
        return min(deadlines) if deadlines else None

    def adopt(self, start) -> None:
        """Follow a first start the pool left running (`WorkerPool.starting`); its group joins when ready."""
        self._joining.add(start.group.group_id)
        self._track(start)

    def rebuild(self, group: ShardGroup, cause: str) -> None:
        """Take broken `group` out of the pool, shut it down and start a fresh one in its slot (returns at once)."""
        logger.warning("%s; rebuilding it", cause)
        if group in self.pool.groups:
            self.pool.groups.remove(group)
        group.shutdown()
        self._track(self.pool.begin_start(group.group_id))

    def settle(self, ref) -> ShardGroup | None:
        """Record a resolved start-up ref; the rebuilt group once its last ref resolved, else None."""
        start = self._starts.pop(ref)
        try:
            if not start.settle(ref):
                return None
        except ray.exceptions.RayError as err:
            self._failed(start, err)
            return None
        self.pool.groups.append(start.group)
        if start.group.group_id in self._joining:
            self._joining.discard(start.group.group_id)
            logger.info("shard group %d ready: it joins the pool", start.group.group_id)
        else:
            logger.warning("rebuilt shard group %d", start.group.group_id)
        return start.group

    def expire(self, now: float) -> None:
        """Fail the rebuilds whose placement group did not come within its timeout."""
        for start in list({id(s): s for s in self._starts.values()}.values()):
            if (err := start.overdue(now)) is not None:
                self._failed(start, err)

    def _track(self, start) -> None:
        # Only the refs still pending: an adopted start's first phases may have resolved in the pool's own wait,
        # and a resolved ref seen again after the last one would make the group join twice.
        for ref in start.refs:
            if ref in start.pending:
                self._starts[ref] = start

    def _failed(self, start, err: Exception) -> None:
        for ref in start.refs:
            self._starts.pop(ref, None)
        fresh = self.pool.restart(start, err)
        if fresh is None:
            slot = start.group.group_id
            verb = "started" if slot in self._joining else "rebuilt"
            self._joining.discard(slot)
            self.lost[slot] = (f"shard group {slot} could not be {verb} in {start.attempt} attempt(s): "
                               f"{last_line(err)}")
        else:
            self._track(fresh)


class Dispatcher:
    """Runs the tasks of many PlanRuns on one WorkerPool: assigns each idle group the next ready task of the
    next run in turn, and collects results. A broken group goes to `Recovery` and its task back to its run;
    the dispatcher never waits on a rebuild, so one failing group does not hold up the others. When no group
    is left and none is coming back, every active run fails with the reason."""

    def __init__(self, pool: WorkerPool, futures: type[RayFutures] = RayFutures,
                 clock: Callable[[], float] = time.monotonic):
        self.pool, self.futures, self.clock = pool, futures, clock
        self.recovery = Recovery(pool, clock)
        for start in pool.starting:  # groups still starting join when ready; the ready ones render meanwhile
            self.recovery.adopt(start)
        pool.starting = []
        self.runs: list[PlanRun] = []
        self._idle: list[ShardGroup] = list(pool.groups)
        self._running: dict[ray.ObjectRef, tuple[ShardGroup, PlanRun, Task]] = {}
        self._deadlines: dict[ray.ObjectRef, float] = {}
        self._started: dict[ray.ObjectRef, float] = {}
        self._lock = threading.Lock()
        self._turn = 0
        # Called with each task whose frames came back and its wall time in seconds (the runner's metrics).
        self.on_task_done: Callable[[Task, float], None] = lambda task, seconds: None
        # Called with each group that joins the pool (started late, or rebuilt), before it takes a task.
        self.on_group_ready: Callable[[ShardGroup], None] = lambda group: None

    def add(self, run: PlanRun) -> None:
        with self._lock:
            run.start()
            if run.active:
                self.runs.append(run)

    def cancel(self, run: PlanRun, reason: BaseException) -> None:
        """Fail `run` with `reason` and interrupt its running tasks at their next denoising step."""
        run.fail(reason)  # not under the lock: it waits for the run's sink to stop
        with self._lock:
            for group, owner, task in self._running.values():
                if owner is run:
                    group.cancel(task.task_id)

    def wants_work(self) -> bool:
        """Whether a group is idle with no ready task of any run (the runner then starts a queued job)."""
        with self._lock:
            return bool(self._idle) and not self._idle_has_work()

    def running_tasks(self, run: PlanRun) -> list[tuple[ShardGroup, Task]]:
        with self._lock:
            return [(group, task) for group, owner, task in self._running.values() if owner is run]

    def step(self, timeout: float | None = 0.2) -> None:
        """Start ready tasks on idle groups, then wait up to `timeout` s for a task or a rebuild to make
        progress and record it."""
        with self._lock:
            self.runs = [run for run in self.runs if run.active]
            self._assign()
            waiting = [*self.recovery.refs, *self._running]  # a group that is ready joins before the next task
            deadlines = list(self._deadlines.values())
            if (rebuild_deadline := self.recovery.deadline()) is not None:
                deadlines.append(rebuild_deadline)
        if not waiting:
            self._fail_waiting_runs()
            threading.Event().wait(timeout or 0.05)
            return
        limits = [max(0.0, min(deadlines) - self.clock())] if deadlines else []
        limits += [timeout] if timeout is not None else []
        done = self.futures.wait(waiting, min(limits) if limits else None)
        for ref in done:
            if ref in self._running:
                self._collect(ref)
            else:
                self._rejoin(ref)
        self._expire()

    def _fail_waiting_runs(self) -> None:
        """Nothing runs and nothing is being rebuilt: runs that still wait can never finish. Say why."""
        with self._lock:
            waiting = [run for run in self.runs if run.active and run.pending]  # not those the sink finishes
            if not waiting or (self._idle and self._idle_has_work()):
                return
            lost = "; ".join(self.recovery.lost[i] for i in sorted(self.recovery.lost)) or "the pool has none"
            no_capacity = not self._idle
        for run in waiting:
            run.fail(RuntimeError(f"no shard group is left to render on: {lost}") if no_capacity else
                     RuntimeError(f"plan is stuck: {len(run.pending)} task(s) wait on frames nothing renders"))

    def _rejoin(self, ref) -> None:
        with self._lock:
            group = self.recovery.settle(ref)
        if group is not None:
            try:
                self.on_group_ready(group)
            except Exception:  # e.g. its node went at once: its first task then finds that out
                logger.exception("preparing shard group %d failed", group.group_id)
            with self._lock:
                self._idle.append(group)

    def _expire(self) -> None:
        """Tasks past their time budget: their group is rebuilt (it may hang) and the task retried. Rebuilds
        past their placement timeout are started again or given up."""
        now = self.clock()
        with self._lock:
            self.recovery.expire(now)
            overdue = [ref for ref, deadline in self._deadlines.items() if deadline <= now and ref in self._running]
            expired = [(ref, *self._running.pop(ref)) for ref in overdue]
            for ref in overdue:
                del self._deadlines[ref]
                self._started.pop(ref, None)
        budget = self.pool.parallel.task_timeout_s
        for _ref, group, run, task in expired:
            err = TimeoutError(f"{task.kind} {task.spec.index} exceeded its time budget of {budget:g}s")
            self._recover(group, run, task, err, broken=True)

    def _idle_has_work(self) -> bool:
        return any(run.has_ready() for run in self.runs)

    def _assign(self) -> None:
        while self._idle:
            task, run = self._next_ready()
            if task is None:
                return
            group = self._idle.pop(0)
            ref = run.submit(task, group)
            self._running[ref] = (group, run, task)
            self._started[ref] = self.clock()
            self._deadlines[ref] = self._started[ref] + self.pool.parallel.task_timeout_s

    def _next_ready(self) -> tuple[Task | None, PlanRun | None]:
        for offset in range(len(self.runs)):
            run = self.runs[(self._turn + offset) % len(self.runs)]
            task = run.take_ready()
            if task is not None:
                self._turn = (self._turn + offset + 1) % len(self.runs)
                return task, run
        return None, None

    def _collect(self, ref: ray.ObjectRef) -> None:
        with self._lock:
            group, run, task = self._running.pop(ref)
            self._deadlines.pop(ref, None)
            started = self._started.pop(ref, None)
        try:
            result = self.futures.get(ref)
        except RenderCancelled:
            self._release(group)
            return
        except ray.exceptions.RayError as err:
            self._recover(group, run, task, err)
            return
        if started is not None:
            self.on_task_done(task, self.clock() - started)
        with self._lock:  # cancel() may fail the run from another thread
            self._idle.append(group)
            if run.active:
                run.complete(task, result)  # hands the frames to the run's sink: nothing is saved or encoded here

    def _release(self, group: ShardGroup) -> None:
        with self._lock:
            self._idle.append(group)

    def _recover(self, group: ShardGroup, run: PlanRun, task: Task, err: Exception, broken: bool = False) -> None:
        """After a failed task: hand a broken group to Recovery (it rebuilds without blocking) and retry the
        task on the next free group, or fail the run with the reason. Never waits on a rank."""
        if not broken and group.died_elsewhere(err) and run.transport.lost(err):
            # The node's PieceWorker died taking the segment's edges, not a rank: the group renders on, and the
            # retry goes to a fresh PieceWorker (the transport looks its workers up again).
            message, retry = f"the piece worker beside shard group {group.group_id} died: {last_line(err)}", True
        else:
            broken = retry = broken or group.breaks_on(err)
            message = group.describe_failure(err)
        attempts = run.attempts[task.task_id] = run.attempts.get(task.task_id, 0) + 1
        with self._lock:
            if broken:
                self.recovery.rebuild(group, message)
            else:
                self._idle.append(group)
        if not run.active:
            return
        if not retry or attempts > self.pool.parallel.task_retries:
            run.fail(RuntimeError(f"{task.kind} {task.spec.index} failed: {message}"))
            return
        logger.warning("%s %d: %s; retrying it", task.kind, task.spec.index, message)
        run.retry(task)

    def drive(self, run: PlanRun) -> JobProgress:
        """Run `run` to its end on this thread (the CLI's way); returns its progress or raises its error."""
        self.add(run)
        try:
            while run.active:
                self.step(timeout=None if self._running or self.recovery.refs else 0.05)
        except BaseException as err:  # e.g. KeyboardInterrupt: leave no partial output behind
            self.cancel(run, err)
            raise
        return run.wait()
