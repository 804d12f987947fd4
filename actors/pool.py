"""WorkerPool: K shard groups, started once and reused across renders and jobs."""

from __future__ import annotations

import logging
import time

import ray

from actors.config import ParallelConfig
from actors.shard import ShardGroup
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


class WorkerPool:
    """Shard groups holding the same preset; the scheduler hands each idle group one task."""

    def __init__(self, model: ModelConfig, parallel: ParallelConfig):
        self.model, self.parallel = model, parallel
        self.use_gpu, fit = cluster_devices(parallel)
        self.size = parallel.workers or max(1, fit)
        if self.size > max(fit, 0):
            raise ValueError(
                f"workers {self.size} x sp_degree {parallel.sp_degree} needs more "
                f"{'GPUs' if self.use_gpu else 'CPUs'} than the cluster has (room for {fit}); "
                "lower --workers or --sp-degree, or check `ray status`"
            )
        started = time.perf_counter()
        self.groups: list[ShardGroup] = []
        try:
            for i in range(self.size):
                self.groups.append(ShardGroup(i, model, parallel, self.use_gpu))
            ray.get([ref for group in self.groups for ref in group.start()])
        except Exception:
            self.shutdown()  # free the devices of the groups that did start
            raise
        logger.info("pool of %d group(s) ready in %.1fs", self.size, time.perf_counter() - started)

    def rebuild(self, group: ShardGroup) -> ShardGroup:
        """Replace a failed group with a fresh one (new actors, new process group), loaded and warm."""
        index = self.groups.index(group)
        group.shutdown()
        fresh = ShardGroup(group.group_id, self.model, self.parallel, self.use_gpu)
        try:
            ray.get(fresh.start())
        except Exception:
            fresh.shutdown()
            raise
        self.groups[index] = fresh
        logger.warning("rebuilt shard group %d", group.group_id)
        return fresh

    def health(self) -> list[dict]:
        """Every rank's health report, grouped by shard group."""
        return [dict(group=g.group_id, ranks=ray.get(g.call("health"))) for g in self.groups]

    def shutdown(self) -> None:
        for group in self.groups:
            group.shutdown()
        self.groups = []
