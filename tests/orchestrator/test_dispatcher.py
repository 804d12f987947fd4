"""Dispatcher and Recovery with fake shard groups, fake refs and a fake clock: assignment, asynchronous
rebuilds, bounded attempts and failing when no capacity is left. Nothing here waits; time passes only when the
dispatcher would have waited. The real-Ray counterparts are in tests/test_failures.py."""

from __future__ import annotations

import itertools
import tempfile
from pathlib import Path

import numpy as np
import pytest
import ray

from actors.config import ParallelConfig
from actors.pool import GroupStart, WorkerPool
from actors.shard import ShardGroup
from orchestrator.planner import plan_render
from orchestrator.request import RenderRequest
from orchestrator.scheduler import Dispatcher, PlanRun
from pipeline.pieces import PieceFormat
from pipeline.presets import load_preset
from pipeline.stitch import OverlapStitcher


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Ref:
    _ids = itertools.count()

    def __init__(self, what: str):
        self.what = f"{what}#{next(self._ids)}"

    def __repr__(self) -> str:
        return self.what


class Futures:
    """Refs resolve when the test (or a fake group) says; waiting on none resolved moves the clock instead."""

    def __init__(self, clock: Clock):
        self.clock, self.values = clock, {}

    def wait(self, refs, timeout):
        ready = [ref for ref in refs if ref in self.values]
        if not ready:
            self.clock.now += 1.0 if timeout is None else timeout
        return ready[:1]

    def get(self, ref):
        value = self.values[ref]
        if isinstance(value, BaseException):
            raise value
        return value


def died(what: str) -> ray.exceptions.RayActorError:
    return ray.exceptions.RayActorError(error_msg=f"{what}: the actor died")


class FakeGroup:
    """A shard group whose calls resolve at once with frames of the right shape, die, or hang (`behaviour`)."""

    def __init__(self, group_id: int, futures: Futures, start: str):
        self.group_id, self.futures, self.start_outcome = group_id, futures, start
        self.behaviour, self.closed, self.ranks, self.submitted = "render", False, [None], []
        self.bundle = {"CPU": 1}

    placement_error = ShardGroup.placement_error  # the real message

    def start(self) -> list[Ref]:
        placed, loaded = Ref(f"g{self.group_id}.placement"), Ref(f"g{self.group_id}.load")
        if self.start_outcome != "unplaced":
            self.futures.values[placed] = True
            self.futures.values[loaded] = died("load") if self.start_outcome == "dies" else None
        return [placed, loaded]

    def render_keyframe(self, prompt, seed, width, height, steps, guidance) -> Ref:
        return self._render("keyframe", (height, width, 3))

    def render_segment(self, request, task_id="") -> Ref:
        return self._render("segment", (request.num_frames, request.height, request.width, 3))

    def _render(self, kind: str, shape: tuple) -> Ref:
        ref = Ref(f"g{self.group_id}.{kind}")
        self.submitted.append(kind)
        if self.behaviour == "dies":
            self.futures.values[ref] = died(kind)
        elif self.behaviour == "render":
            self.futures.values[ref] = np.zeros(shape, np.uint8)
        return ref

    def cancel(self, task_id: str) -> None:
        pass

    def breaks_on(self, err: Exception) -> bool:
        return isinstance(err, ray.exceptions.RayActorError)

    def died_elsewhere(self, err: Exception) -> bool:
        return False  # its failures are its own ranks'

    def describe_failure(self, err: Exception) -> str:
        return f"shard group {self.group_id} failed: {err}"

    def shutdown(self) -> None:
        self.closed = True


class FakeStart(GroupStart):
    def settle(self, ref) -> bool:
        self.pending.discard(ref)
        if ref == self.placement_ref:
            self.loaded_by = self.clock() + self.load_timeout_s
        self.group.futures.get(ref)
        return not self.pending


class FakePool(WorkerPool):
    """WorkerPool's restart policy over fake groups; `starts[slot]` lists how that slot's next starts end."""

    def __init__(self, workers: int, clock: Clock, futures: Futures, starting: dict[int, str] | None = None,
                 **parallel):
        """`starting`: slots still on their way up when the pool returns (WorkerPool(ready=...)), by how their
        start goes; the other slots are ready."""
        self.parallel = ParallelConfig(workers=workers, **{"placement_timeout_s": 10.0, **parallel})
        self.clock, self.futures, self.size = clock, futures, workers
        self.starts: dict[int, list[str]] = {slot: [outcome] for slot, outcome in (starting or {}).items()}
        self.groups = [FakeGroup(i, futures, "ready") for i in range(workers) if i not in (starting or {})]
        self.starting = [self.begin_start(slot) for slot in sorted(starting or {})]

    def begin_start(self, group_id: int, attempt: int = 1) -> GroupStart:
        outcome = (self.starts.get(group_id) or ["ready"]).pop(0)
        return FakeStart(FakeGroup(group_id, self.futures, outcome), attempt, self.parallel.placement_timeout_s,
                         self.parallel.load_timeout_s, self.clock)


def _setup(workers: int, starting: dict[int, str] | None = None, **parallel):
    clock = Clock()
    futures = Futures(clock)
    pool = FakePool(workers, clock, futures, starting, **parallel)
    return clock, pool, Dispatcher(pool, futures=futures, clock=clock)


def _run(dispatcher: Dispatcher, mode: str = "bridge") -> PlanRun:
    request = RenderRequest(prompt="a fox", duration_s=4.0, mode=mode, segment_frames=21, overlap_frames=4,
                            width=64, height=64)
    plan = plan_render(request, load_preset("tiny"))
    out = Path(tempfile.mkdtemp(prefix="dispatcher-")) / "video.mkv"
    run = PlanRun(plan, PieceFormat(64, 64, plan.fps, codec="ffv1"), out, OverlapStitcher("linear", False))
    dispatcher.add(run)
    return run


def _steps(dispatcher: Dispatcher, until, limit: int = 200) -> int:
    for n in range(limit):
        if until():
            return n
        dispatcher.step(timeout=0.1)
        for run in dispatcher.runs:  # let each run's sink catch up: the fake clock moves only with the steps
            run.sink.drain()
    raise AssertionError("condition not reached")


def test_idle_groups_take_ready_tasks_in_turn_and_the_run_finishes():
    _clock, pool, dispatcher = _setup(2)
    run = _run(dispatcher)
    _steps(dispatcher, lambda: not run.active)
    assert run.error is None and run.progress.frames_written == run.plan.total_frames and run.sink.out.exists()
    assert all(group.submitted for group in pool.groups)  # both groups rendered


def test_rendering_starts_on_the_first_ready_group_and_a_late_one_joins_when_ready():
    _clock, pool, dispatcher = _setup(2, starting={1: "unplaced"}, placement_timeout_s=1e6)
    joined = []
    dispatcher.on_group_ready = joined.append
    (late,) = {id(s): s for s in dispatcher.recovery._starts.values()}.values()
    run = _run(dispatcher)
    _steps(dispatcher, lambda: run.progress.segments_done >= 2)  # rendered on group 0 alone meanwhile
    assert [g.group_id for g in pool.groups] == [0] and not late.group.submitted and joined == []
    dispatcher.futures.values.update({ref: None for ref in late.refs})  # its placement came; it loads
    _steps(dispatcher, lambda: not run.active)
    assert run.error is None and run.progress.frames_written == run.plan.total_frames
    assert joined == [late.group] and late.group.submitted  # it joined and took tasks of the same run
    assert sorted(g.group_id for g in pool.groups) == [0, 1] and dispatcher.recovery.rebuilding == 0


class NewestFirst(Futures):
    """Ray's wait does not promise the input order: this one hands back the last ready ref first."""

    def wait(self, refs, timeout):
        return super().wait(list(reversed(refs)), timeout)


def test_a_late_group_whose_placement_the_pool_saw_joins_once():
    clock = Clock()
    futures = NewestFirst(clock)
    pool = FakePool(2, clock, futures, starting={1: "ready"})
    (late,) = pool.starting
    late.settle(late.placement_ref)  # resolved in the pool's own wait before it returned, as WorkerPool._await does
    dispatcher = Dispatcher(pool, futures=futures, clock=clock)
    run = _run(dispatcher)
    _steps(dispatcher, lambda: not run.active and not dispatcher.recovery.refs)
    assert run.error is None and run.progress.frames_written == run.plan.total_frames
    assert sorted(g.group_id for g in pool.groups) == [0, 1] and dispatcher.recovery.rebuilding == 0


def test_a_joining_group_whose_preparation_fails_still_renders():
    _clock, pool, dispatcher = _setup(2, starting={1: "ready"})

    def prepare(group):
        raise RuntimeError("its node is gone")

    dispatcher.on_group_ready = prepare
    (late,) = {id(s): s for s in dispatcher.recovery._starts.values()}.values()
    run = _run(dispatcher)
    _steps(dispatcher, lambda: not run.active)
    assert run.error is None and run.progress.frames_written == run.plan.total_frames and late.group.submitted


def test_a_late_group_that_never_starts_is_given_up_while_the_ready_one_renders():
    _clock, pool, dispatcher = _setup(2, starting={1: "dies"}, group_restarts=1)
    pool.starts[1] = ["dies"]  # its one restart dies too
    run = _run(dispatcher)
    _steps(dispatcher, lambda: not run.active)
    assert run.error is None and run.progress.frames_written == run.plan.total_frames
    assert [g.group_id for g in pool.groups] == [0]
    assert dispatcher.recovery.lost[1].startswith("shard group 1 could not be started in 2 attempt(s)")


def test_a_broken_group_is_rebuilt_asynchronously_while_the_other_finishes_the_run():
    _clock, pool, dispatcher = _setup(2, placement_timeout_s=1e6)
    broken = pool.groups[0]
    broken.behaviour = "dies"
    pool.starts[0] = ["unplaced"]  # its rebuild waits for a placement group that has not come yet
    run = _run(dispatcher)
    _steps(dispatcher, lambda: not run.active)
    assert run.error is None and run.progress.frames_written == run.plan.total_frames
    assert broken.closed and dispatcher.recovery.rebuilding == 1 and pool.groups == [dispatcher._idle[0]]
    (start,) = {id(s): s for s in dispatcher.recovery._starts.values()}.values()
    dispatcher.futures.values.update({ref: None for ref in start.refs})  # the placement came; it loads
    _steps(dispatcher, lambda: dispatcher.recovery.rebuilding == 0)
    assert sorted(g.group_id for g in pool.groups) == [0, 1] and len(dispatcher._idle) == 2


def test_rebuilds_that_keep_failing_are_bounded_then_the_run_fails_naming_the_cause():
    _clock, pool, dispatcher = _setup(1, group_restarts=1)
    pool.groups[0].behaviour = "dies"
    pool.starts[0] = ["dies", "dies", "ready"]
    run = _run(dispatcher, mode="chain")
    _steps(dispatcher, lambda: not run.active)
    assert pool.starts[0] == ["ready"]  # one start and one restart, then the slot was given up
    assert pool.groups == [] and run.progress.frames_written == 0 and not run.sink.out.exists()
    with pytest.raises(RuntimeError, match=r"no shard group is left to render on: shard group 0 could not be "
                                           r"rebuilt in 2 attempt\(s\): load: the actor died"):
        run.wait()


def test_a_rebuild_without_a_placement_gives_up_on_the_clock():
    clock, pool, dispatcher = _setup(1, group_restarts=2)
    pool.groups[0].behaviour = "dies"
    pool.starts[0] = ["unplaced"] * 3
    run = _run(dispatcher, mode="chain")
    _steps(dispatcher, lambda: not run.active, limit=1000)
    assert 30.0 <= clock.now <= 31.0  # three placement timeouts of 10 s, then the job fails: never a hang
    with pytest.raises(RuntimeError, match=r"could not be rebuilt in 3 attempt\(s\): shard group 0 could not get "
                                           r".*check `ray status`"):
        run.wait()


def test_a_task_over_its_budget_is_retried_on_another_group():
    clock, pool, dispatcher = _setup(2, task_timeout_s=5.0)
    pool.groups[0].behaviour = "hangs"
    run = _run(dispatcher)
    _steps(dispatcher, lambda: not run.active, limit=1000)
    assert run.error is None and run.progress.frames_written == run.plan.total_frames
    assert clock.now >= 5.0 and pool.groups[0].behaviour == "render"  # the hung group was replaced
    assert "hangs" not in [group.behaviour for group in pool.groups]
