"""Shard ranks and shard groups: the Ray actors that hold a pipeline and render on it.

A `ShardGroup` is `sp_degree` `ShardRank` actors in one STRICT_PACK placement group. The driver
calls each lifecycle phase on every rank (init_device -> load -> warmup -> render -> health);
rank 0 returns the frames.
"""

from __future__ import annotations

import logging
import os
import time

import numpy as np
import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from actors.config import ParallelConfig
from pipeline.config import ModelConfig
from pipeline.generate import SegmentRequest

logger = logging.getLogger(__name__)


class ShardRank:
    """One rank of a shard group: one device, one copy (or shard) of the pipeline."""

    def __init__(self, rank: int, world_size: int, model: ModelConfig):
        self.rank, self.world_size, self.model = rank, world_size, model
        self.device = "unassigned"
        self.cpus = 0
        self.generator = None
        self.load_count = 0
        self.segments_rendered = 0
        self.keyframes_rendered = 0

    def init_device(self) -> dict:
        """Take the device and CPU allotment Ray assigned to this actor; size torch's threads to it."""
        import torch

        context = ray.get_runtime_context()
        gpu_ids = context.get_accelerator_ids().get("GPU", [])
        self.cpus = int(context.get_assigned_resources().get("CPU", 1)) or 1
        torch.set_num_threads(self.cpus)
        # Ray sets CUDA_VISIBLE_DEVICES to the assigned GPUs, so the local index is 0.
        self.device = "cuda:0" if gpu_ids else "cpu"
        return {"rank": self.rank, "device": self.device, "gpu_ids": list(gpu_ids), "cpus": self.cpus,
                "node": context.get_node_id(), "pid": os.getpid()}

    def load(self) -> None:
        import torch

        from pipeline.generate import SegmentGenerator

        started = time.perf_counter()
        self.generator = SegmentGenerator(self.model, torch.device(self.device))
        self.load_count += 1
        logger.info("rank %d loaded %s in %.1fs", self.rank, self.model.preset, time.perf_counter() - started)

    def warmup(self) -> None:
        preset = self._loaded().preset
        self.generator.keyframe("warmup", 0, preset.spatial_multiple * 2, preset.spatial_multiple * 2, steps=1)

    def keyframe(self, prompt: str, seed: int, width: int, height: int, steps: int, guidance: float) -> np.ndarray:
        frame = self._loaded().keyframe(prompt, seed, width, height, steps=steps, guidance=guidance)
        self.keyframes_rendered += 1
        return frame

    def segment(self, request: SegmentRequest) -> np.ndarray:
        frames = self._loaded().segment(request)
        self.segments_rendered += 1
        return frames

    def health(self) -> dict:
        return {
            "rank": self.rank, "device": self.device, "cpus": self.cpus, "pid": os.getpid(),
            "preset": self.model.preset if self.generator else None, "quantize": self.model.quantize,
            "quantized_components": self.generator.quantized if self.generator else [],
            "load_count": self.load_count, "segments_rendered": self.segments_rendered,
            "keyframes_rendered": self.keyframes_rendered,
        }

    def _loaded(self):
        if self.generator is None:
            raise RuntimeError(f"rank {self.rank} has no pipeline loaded; call load() first")
        return self.generator


class ShardGroup:
    """`sp_degree` ShardRank actors placed together and driven in lockstep."""

    def __init__(self, group_id: int, model: ModelConfig, parallel: ParallelConfig, use_gpu: bool):
        if parallel.sp_degree != 1:
            raise ValueError(f"sp_degree {parallel.sp_degree} is not supported yet; use --sp-degree 1")
        self.group_id = group_id
        bundle = {"CPU": parallel.cpus_per_rank, **({"GPU": 1} if use_gpu else {})}
        self.placement = placement_group([bundle] * parallel.sp_degree, strategy="STRICT_PACK")
        ready, _ = ray.wait([self.placement.ready()], timeout=parallel.placement_timeout_s)
        if not ready:
            remove_placement_group(self.placement)
            raise RuntimeError(
                f"shard group {group_id} could not get {parallel.sp_degree} x {bundle} on one node within "
                f"{parallel.placement_timeout_s:.0f}s; check `ray status` for free resources"
            )
        actor_cls = ray.remote(ShardRank)
        self.ranks = [
            actor_cls.options(
                num_cpus=parallel.cpus_per_rank, num_gpus=1 if use_gpu else 0,
                scheduling_strategy=PlacementGroupSchedulingStrategy(self.placement, placement_group_bundle_index=r),
            ).remote(r, parallel.sp_degree, model)
            for r in range(parallel.sp_degree)
        ]

    def call(self, method: str, *args) -> list[ray.ObjectRef]:
        """Start `method` on every rank (SPMD); returns one ref per rank."""
        return [getattr(rank, method).remote(*args) for rank in self.ranks]

    def start(self) -> list[ray.ObjectRef]:
        """Refs that resolve once every rank has its device, its pipeline and a warm first call."""
        # An actor runs its calls in order, so each rank's phases follow one another.
        return [ref for phase in ("init_device", "load", "warmup") for ref in self.call(phase)]

    def submit(self, method: str, *args) -> ray.ObjectRef:
        """Run a render phase on every rank; the returned ref is rank 0's result (the frames)."""
        return self.call(method, *args)[0]

    def shutdown(self) -> None:
        for rank in self.ranks:
            ray.kill(rank)
        remove_placement_group(self.placement)
