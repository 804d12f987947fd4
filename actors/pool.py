"""WorkerPool: K shard groups, started once and reused across renders and jobs."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import ray

from actors.config import ParallelConfig
from actors.shard import RankHealth, ShardGroup, ShardRank, last_line
from pipeline.config import ModelConfig

logger = logging.getLogger(__name__)


def cluster_devices(parallel: ParallelConfig) -> tuple[bool, int]:
    """(use_gpu, how many groups fit) for the connected Ray cluster."""
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    use_gpu = parallel.device == "cuda" or (parallel.device == "auto" and gpus >= parallel.sp_degree)
    if use_gpu:
        return True, gpus // parallel.sp_degree
    return False, int(resources.get("CPU", 1)) // (parallel.sp_degree * parallel.cpus_per_rank)


@dataclass(frozen=True)
class GroupHealth:
    """One shard group's health: its slot and each rank's report, in rank order."""

    group: int
    ranks: tuple[RankHealth, ...]

    def as_dict(self) -> dict:
        """JSON-ready: {"group": slot, "ranks": [each rank's fields]}."""
        return {"group": self.group, "ranks": [rank.as_dict() for rank in self.ranks]}


class GroupStart:
    """One shard group on its way up: the refs of its start-up phases (placement, init_device, rendezvous,
    load, warmup), polled without blocking. `attempt` counts the starts of this group slot in a row.

    Two deadlines: the placement group within `placement_timeout_s` of the start, then every rank's
    initialisation, load and warm-up within `load_timeout_s` of the placement (a rank that hangs without dying)."""

    def __init__(self, group: ShardGroup, attempt: int, placement_timeout_s: float, load_timeout_s: float,
                 clock=time.monotonic):
        self.group, self.attempt, self.clock = group, attempt, clock
        self.placement_timeout_s, self.load_timeout_s = placement_timeout_s, load_timeout_s
        self.started = clock()
        self.placed_by = self.started + placement_timeout_s
        self.loaded_by: float | None = None  # set once the placement group is ready
        self.refs = group.start()
        self.pending = set(self.refs)
        self.timeline: dict[str, float] = {}  # phase -> seconds from the start until its last ref resolved

    @property
    def placement_ref(self) -> ray.ObjectRef:
        return self.refs[0]

    @property
    def deadline(self) -> float | None:
        """When the phase this start waits on times out (placement, then load and warm-up); None once started."""
        if self.placement_ref in self.pending:
            return self.placed_by
        return self.loaded_by if self.pending else None

    def settle(self, ref: ray.ObjectRef) -> bool:
        """Record that `ref` resolved; raise its error (a rank died, its load failed); True once all did."""
        self.pending.discard(ref)
        if ref == self.placement_ref:
            self.loaded_by = self.clock() + self.load_timeout_s
        ray.get(ref)
        phase = getattr(self.group, "phases", {}).get(ref)
        if phase is not None:
            self.timeline[phase] = round(self.clock() - self.started, 3)
        return not self.pending

    def overdue(self, now: float) -> RuntimeError | None:
        """The error to fail this start with if the phase it waits on is past its deadline at `now`."""
        deadline = self.deadline
        if deadline is None or now < deadline:
            return None
        if self.placement_ref in self.pending:
            return self.group.placement_error(self.placement_timeout_s)
        return self.group.load_error(self.load_timeout_s)


class WorkerPool:
    """Shard groups holding the same preset; the scheduler hands each idle group one task.

    Start-up tolerates a rank dying in any phase: such a group is shut down and started again, up to
    `parallel.group_restarts` times in a row, like a group that breaks while rendering. `groups` holds the
    live groups only (the dispatcher removes one while it is rebuilt and puts it back when ready).

    `ready`: return once that many groups are ready (None: all of them). The groups still on their way up are
    left in `starting`, for the dispatcher to adopt: they join as they become ready (scheduler.Recovery), so
    rendering starts on the first group and one slow node (a cold disk, a long load) holds up nobody.
    """

    def __init__(self, model: ModelConfig, parallel: ParallelConfig, rank_class: type[ShardRank] = ShardRank,
                 ready: int | None = None):
        self.model, self.parallel, self.rank_class = model, parallel, rank_class
        self.use_gpu, fit = cluster_devices(parallel)
        self.size = parallel.workers or max(1, fit)
        if self.size > max(fit, 0):
            raise ValueError(
                f"workers {self.size} x sp_degree {parallel.sp_degree} needs more "
                f"{'GPUs' if self.use_gpu else 'CPUs'} than the cluster has (room for {fit}); "
                "lower --workers or --sp-degree, or check `ray status`"
            )
        started = time.perf_counter()
        # When each start-up phase ended (s from its start) for the last group ready before the pool returned.
        self.startup: dict = {}
        self.groups: list[ShardGroup] = []
        self._created: list[ShardGroup] = []  # every group made, so shutdown also stops those still starting
        self.starting: list[GroupStart] = []  # begun and not ready yet, when `ready` < size
        starts = [self.begin_start(i) for i in range(self.size)]
        try:
            self.groups = self._await(starts, min(ready or self.size, self.size))
        except BaseException:
            for start in starts:  # free the devices of every group, started or not
                start.group.shutdown()
            raise
        logger.info("pool: %d of %d group(s) ready in %.1fs", len(self.groups), self.size,
                    time.perf_counter() - started)

    def begin_start(self, group_id: int, attempt: int = 1) -> GroupStart:
        """Create group `group_id` and start its phases; nothing waits (poll the returned GroupStart)."""
        group = ShardGroup(group_id, self.model, self.parallel, self.use_gpu, self.rank_class)
        self._created = [g for g in self._created if not g.closed] + [group]
        return GroupStart(group, attempt, self.parallel.placement_timeout_s, self.parallel.load_timeout_s)

    def restart(self, start: GroupStart, err: Exception) -> GroupStart | None:
        """After `start` failed with `err`: shut its group down and begin the next attempt, or None when
        the slot has used its `group_restarts`."""
        start.group.shutdown()
        if start.attempt > self.parallel.group_restarts:
            logger.error("shard group %d did not start after %d attempt(s): %s", start.group.group_id,
                         start.attempt, last_line(err))
            return None
        logger.warning("shard group %d failed to start (attempt %d): %s; starting it again",
                       start.group.group_id, start.attempt, last_line(err))
        return self.begin_start(start.group.group_id, start.attempt + 1)

    def _await(self, starts: list[GroupStart], until: int | None = None) -> list[ShardGroup]:
        """Wait until every start is ready or out of attempts, or until `until` groups are ready (the starts
        still going are left in `self.starting`); the ready groups in slot order. A placement group that cannot
        be had is a RuntimeError at once (the cluster lacks the room; check `ray status`); a group that dies,
        fails or hangs past `load_timeout_s` in a later phase is started again; no group at all is a
        RuntimeError naming each slot's last failure."""
        live, failures, waiting = [], {}, {ref: s for s in starts for ref in s.refs}

        def failed(start: GroupStart, err: Exception) -> None:
            failures[start.group.group_id] = last_line(err)
            for other in start.refs:
                waiting.pop(other, None)
            if (fresh := self.restart(start, err)) is not None:
                starts.append(fresh)  # the caller shuts down every start if this raises
                waiting.update((r, fresh) for r in fresh.refs)

        while waiting and (until is None or len(live) < until):
            now = time.monotonic()
            for start in {id(s): s for s in waiting.values()}.values():
                if (err := start.overdue(now)) is not None:
                    if start.placement_ref in start.pending:
                        raise err
                    failed(start, err)
            if not waiting:
                break
            deadlines = [d for s in {id(s): s for s in waiting.values()}.values() if (d := s.deadline) is not None]
            timeout = max(min(deadlines) - now, 0.0) if deadlines else None
            for ref in ray.wait(list(waiting), num_returns=1, timeout=timeout)[0]:
                start = waiting.pop(ref, None)
                if start is None:
                    continue
                try:
                    if start.settle(ref):
                        live.append(start.group)
                        self.startup = {"group": start.group.group_id, **start.timeline}  # the last to be ready
                except ray.exceptions.RayError as err:
                    failed(start, err)
        if not live:
            raise RuntimeError("no shard group could start: " + "; ".join(
                f"group {i}: {cause}" for i, cause in sorted(failures.items())))
        self.starting = list({id(s): s for s in waiting.values()}.values())
        return sorted(live, key=lambda g: g.group_id)

    def rebuild(self, group: ShardGroup) -> ShardGroup:
        """Replace a failed group with a fresh one (new actors, new process group), loaded and warm; blocks
        (the dispatcher rebuilds asynchronously with `begin_start` instead)."""
        index = self.groups.index(group)
        group.shutdown()
        fresh = self._await([self.begin_start(group.group_id)])[0]
        self.groups[index] = fresh
        logger.warning("rebuilt shard group %d", group.group_id)
        return fresh

    def health(self) -> list[GroupHealth]:
        """Every live group's ranks' health reports."""
        return [GroupHealth(g.group_id, tuple(ray.get(g.health()))) for g in self.groups]

    def shutdown(self) -> None:
        """Stop every group, live or still starting."""
        for group in self._created:
            group.shutdown()
        self.groups = []
