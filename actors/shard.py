"""Shard ranks and shard groups: the Ray actors that hold a pipeline and render on it.

A `ShardGroup` is `sp_degree` `ShardRank` actors in one STRICT_PACK placement group, joined in
one torch.distributed process group (nccl on GPU, gloo on CPU). The driver calls each lifecycle
phase on every rank (init_device -> init_distributed -> load -> warmup -> segment -> health);
every rank runs the same segment call (SPMD) and rank 0 returns the frames.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from actors.config import ParallelConfig
from pipeline.config import ModelConfig, SequenceParallelConfig
from pipeline.parallel import Rendezvous, collective_backend, free_port, init_process_group
from pipeline.requests import SegmentRequest

logger = logging.getLogger(__name__)

HEALTH_PROBE_S = 5.0


@dataclass(frozen=True)
class StepProgress:
    """The denoising step of the segment a rank renders now (1-based, of `steps`)."""

    task_id: str
    step: int
    steps: int


@dataclass(frozen=True)
class RankHealth:
    """What one rank reports about itself: where it runs (device, CPU slots, collective backend, process, Ray node),
    what it holds (preset, quantization, whether the T2I pipeline is loaded) and what it has done (counts)."""

    rank: int
    world_size: int
    device: str
    gpu_ids: tuple[str, ...]
    cpus: int
    backend: str | None
    pid: int
    node: str
    preset: str | None
    quantize: str
    quantized_components: tuple[str, ...]
    keyframe_pipeline: bool
    load_count: int
    segments_rendered: int
    keyframes_rendered: int

    def as_dict(self) -> dict:
        """The record as JSON-ready fields (lists for tuples)."""
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}


class RenderCancelled(Exception):
    """A render call stopped at a denoising step because its task was cancelled."""


class ShardRank:
    """One rank of a shard group: one device, one copy of the pipeline (its attention sharded)."""

    def __init__(self, rank: int, model: ModelConfig, sequence: SequenceParallelConfig):
        self.rank, self.model, self.sequence = rank, model, sequence
        self.device = "unassigned"
        self.backend: str | None = None  # collective backend for this rank's device
        self.cpus = 0
        self.gpu_ids: list[str] = []
        self.generator = None
        self.load_count = 0
        self.segments_rendered = 0
        self.keyframes_rendered = 0
        self.current_step: StepProgress | None = None
        self._cancelled: set[str] = set()

    def init_device(self) -> RankHealth:
        """Take the device and CPU allotment Ray assigned to this actor; size torch's threads to it."""
        import torch

        context = ray.get_runtime_context()
        self.gpu_ids = [str(i) for i in context.get_accelerator_ids().get("GPU", [])]
        self.cpus = int(context.get_assigned_resources().get("CPU", 1)) or 1
        torch.set_num_threads(self.cpus)
        # Ray sets CUDA_VISIBLE_DEVICES to this actor's GPU, so its local index is 0.
        self.device = "cuda:0" if self.gpu_ids else "cpu"
        self.backend = collective_backend(self.device)
        return self.health()

    def rendezvous(self) -> Rendezvous:
        """Rank 0 names the address and a free port where the group's ranks meet."""
        address = ray.util.get_node_ip_address()
        return Rendezvous(address, free_port(address))

    def init_distributed(self, rendezvous: Rendezvous) -> None:
        init_process_group(rendezvous, self.rank, self.sequence.degree, self.device,
                           self.sequence.collective_timeout_s)

    def load(self) -> None:
        import torch

        from pipeline.generate import SegmentGenerator

        started = time.perf_counter()
        # Keyframes run on rank 0 alone (ShardGroup.submit), so only rank 0 holds the T2I pipeline.
        self.generator = SegmentGenerator(self.model, torch.device(self.device), self.sequence,
                                          keyframes=self.rank == 0)
        self.load_count += 1
        logger.info("rank %d loaded %s in %.1fs", self.rank, self.model.preset, time.perf_counter() - started)

    def warmup(self) -> None:
        """One denoising step of the shortest segment longer than a frame (on every rank together: the transformer
        is sharded), then of a keyframe on rank 0 (which alone holds the T2I pipeline), both at twice the spatial
        multiple, so the first real task does not pay the pipelines' one-time costs."""
        generator = self._loaded()
        preset = generator.preset
        size = preset.spatial_multiple * 2
        frames = next(n for n in range(2, preset.max_frames + 1) if preset.is_valid_length(n))
        first = np.zeros((size, size, 3), np.uint8)
        generator.segment(SegmentRequest("warmup", 0, frames, size, size, first,
                                         last=first if preset.requires_last_frame else None, steps=1))
        if generator.t2i is not None:
            generator.keyframe("warmup", 0, size, size, steps=1)

    def keyframe(self, prompt: str, seed: int, width: int, height: int, steps: int, guidance: float) -> np.ndarray:
        frame = self._loaded().keyframe(prompt, seed, width, height, steps=steps, guidance=guidance)
        self.keyframes_rendered += 1
        return frame

    def segment(self, request: SegmentRequest, task_id: str = "") -> np.ndarray | None:
        """Every rank runs this together; rank 0 returns the frames, the others None.

        Raises RenderCancelled at the first denoising step after `cancel(task_id)`.
        """
        try:
            frames = self._loaded().segment(request, on_step=lambda step, total: self._on_step(task_id, step, total))
        finally:
            self._cancelled.discard(task_id)
            self.current_step = None
        self.segments_rendered += 1
        return frames if self.rank == 0 else None

    @ray.method(concurrency_group="control")
    def cancel(self, task_id: str) -> None:
        """Ask the running `task_id` to stop at its next denoising step (answered while it renders)."""
        self._cancelled.add(task_id)

    @ray.method(concurrency_group="control")
    def progress(self) -> StepProgress | None:
        """The step of the segment rendering now, or None."""
        return self.current_step

    def _on_step(self, task_id: str, step: int, steps: int) -> None:
        self.current_step = StepProgress(task_id, step, steps)
        stop = task_id in self._cancelled
        if self.sequence.degree > 1:
            import torch

            # Every rank must stop at the same step, or the others would wait in a collective.
            flag = torch.tensor([int(stop)], device=self.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            stop = bool(flag.item())
        if stop:
            raise RenderCancelled(f"task {task_id} cancelled at step {step} of {steps}")

    def execute(self, fn: Callable[..., Any], *args) -> Any:
        """Run `fn(self, *args)` on this rank (driver-side diagnostics and tests)."""
        return fn(self, *args)

    @ray.method(concurrency_group="control")
    def health(self) -> RankHealth:
        return RankHealth(
            rank=self.rank, world_size=self.sequence.degree, device=self.device, gpu_ids=tuple(self.gpu_ids),
            cpus=self.cpus, backend=self.backend, pid=os.getpid(), node=ray.get_runtime_context().get_node_id(),
            preset=self.model.preset if self.generator else None, quantize=self.model.quantize,
            quantized_components=tuple(self.generator.quantized) if self.generator else (),
            keyframe_pipeline=self.generator is not None and self.generator.t2i is not None,
            load_count=self.load_count, segments_rendered=self.segments_rendered,
            keyframes_rendered=self.keyframes_rendered,
        )

    def _loaded(self):
        if self.generator is None:
            raise RuntimeError(f"rank {self.rank} has no pipeline loaded; call load() first")
        return self.generator


class ShardGroup:
    """`sp_degree` ShardRank actors placed together and driven in lockstep."""

    def __init__(self, group_id: int, model: ModelConfig, parallel: ParallelConfig, use_gpu: bool,
                 rank_class: type[ShardRank] = ShardRank):
        """Reserve the placement group and create the ranks; nothing waits here (see `start`).
        `rank_class`: ShardRank or a subclass (tests inject faults at a lifecycle phase with one)."""
        self.group_id, self.closed = group_id, False
        self._node: str | None = None
        degree = parallel.sp_degree
        self.bundle = {"CPU": parallel.cpus_per_rank, **({"GPU": 1} if use_gpu else {})}
        self.placement = placement_group([self.bundle] * degree, strategy="STRICT_PACK")
        # Lifecycle and render calls run one at a time, in order (the default group); cancel,
        # progress and health answer from the "control" group's threads while a segment renders.
        actor_cls = ray.remote(concurrency_groups={"control": 2})(rank_class)
        self.ranks = [
            actor_cls.options(
                num_cpus=parallel.cpus_per_rank, num_gpus=1 if use_gpu else 0,
                scheduling_strategy=PlacementGroupSchedulingStrategy(self.placement, placement_group_bundle_index=r),
            ).remote(r, model, parallel.sequence)
            for r in range(degree)
        ]

    def node(self) -> str:
        """The id of the node rank 0 runs on, where the group's frames are made (asked of the GCS once)."""
        if self._node is None:
            self._node = ray.util.placement_group_table(self.placement)["bundles_to_node_id"][0]
        return self._node

    def call(self, method: str, *args) -> list[ray.ObjectRef]:
        """Start `method` on every rank (SPMD); returns one ref per rank."""
        return [getattr(rank, method).remote(*args) for rank in self.ranks]

    def start(self) -> list[ray.ObjectRef]:
        """Refs that resolve once the placement group is ready and every rank has its device, its process
        group, its pipeline and a warm first call. Nothing blocks: rank 0's rendezvous address reaches the
        other ranks as a ref, and each actor runs its calls in order, so each rank's phases follow one another."""
        phases = {"placement": [self.placement.ready()], "init_device": self.call("init_device")}
        if len(self.ranks) > 1:
            phases["init_distributed"] = self.call("init_distributed", self.ranks[0].rendezvous.remote())
        phases["load"] = self.call("load")
        phases["warmup"] = self.call("warmup")
        self.phases = {ref: name for name, refs in phases.items() for ref in refs}  # which phase each ref ends
        return [ref for refs in phases.values() for ref in refs]

    def placement_error(self, waited_s: float) -> RuntimeError:
        degree = len(self.ranks)
        return RuntimeError(
            f"shard group {self.group_id} could not get {degree} x {self.bundle} on one node within "
            f"{waited_s:.0f}s; check `ray status` for free resources"
        )

    def load_error(self, waited_s: float) -> RuntimeError:
        return RuntimeError(
            f"shard group {self.group_id} did not initialise, load and warm up within {waited_s:.0f}s of its "
            "placement (a rank hangs?); check the ranks' logs, or raise load_timeout_s for a slow model store"
        )

    def render_keyframe(self, prompt: str, seed: int, width: int, height: int, steps: int,
                        guidance: float) -> ray.ObjectRef:
        """A T2I keyframe, on rank 0 alone (only it holds the T2I pipeline); resolves to uint8 (height, width, 3)."""
        return self.ranks[0].keyframe.remote(prompt, seed, width, height, steps, guidance)

    def render_segment(self, request: SegmentRequest, task_id: str = "") -> ray.ObjectRef:
        """A segment, on every rank (the transformer is sharded); resolves to rank 0's frames, uint8
        (num_frames, height, width, 3). `cancel(task_id)` stops it at its next denoising step."""
        return self.call("segment", request, task_id)[0]

    def cancel(self, task_id: str) -> None:
        self.call("cancel", task_id)

    def progress(self) -> ray.ObjectRef:
        """Resolves to rank 0's StepProgress, or None when no segment renders (answered while one does)."""
        return self.ranks[0].progress.remote()

    def health(self) -> list[ray.ObjectRef]:
        """One ref per rank, resolving to its RankHealth."""
        return self.call("health")

    def dead_ranks(self) -> list[int]:
        """Ranks whose actor no longer answers a health probe."""
        probes = self.health()
        ready, _ = ray.wait(probes, num_returns=len(probes), timeout=HEALTH_PROBE_S)
        dead = []
        for rank, probe in enumerate(probes):
            try:
                if probe not in ready:
                    raise TimeoutError
                ray.get(probe)
            except (ray.exceptions.RayActorError, TimeoutError):
                dead.append(rank)
        return dead

    def breaks_on(self, err: Exception) -> bool:
        """Whether `err` from one of this group's calls leaves it unusable (it must be rebuilt), decided
        without waiting on the ranks: a dead rank does, and so does any failure once ranks share a process
        group (the survivors' collectives can no longer be trusted to line up)."""
        return isinstance(err, ray.exceptions.RayActorError) or len(self.ranks) > 1

    def _dead_rank(self, err: Exception) -> int | None:
        """The rank whose actor `err` says died, if it names one of this group's."""
        actor_id = getattr(err, "actor_id", None)
        return next((r for r, rank in enumerate(self.ranks) if actor_id and rank._actor_id.hex() == actor_id), None)

    def died_elsewhere(self, err: Exception) -> bool:
        """Whether `err` says an actor died that is none of this group's ranks (one its call's result went to)."""
        return (isinstance(err, ray.exceptions.RayActorError) and getattr(err, "actor_id", None) is not None
                and self._dead_rank(err) is None)

    def describe_failure(self, err: Exception) -> str:
        """A one-line message naming the group, the rank whose actor died (when `err` says) and the cause."""
        dead = self._dead_rank(err)
        who = f" (rank {dead} died)" if dead is not None else ""
        return f"shard group {self.group_id} failed{who}: {last_line(err)}"

    def diagnose(self, err: Exception) -> tuple[str, bool]:
        """(a message naming the dead ranks, whether the group is broken and must be rebuilt), probing every
        rank's health for up to HEALTH_PROBE_S (blocks: diagnostics and tests, not the dispatcher)."""
        dead = self.dead_ranks()
        who = f"rank(s) {', '.join(map(str, dead))} died" if dead else "no rank died"
        return f"shard group {self.group_id} failed ({who}): {last_line(err)}", bool(dead) or self.breaks_on(err)

    def shutdown(self) -> None:
        """Kill the ranks and free the placement group (a second call does nothing)."""
        if self.closed:
            return
        self.closed = True
        for rank in self.ranks:
            ray.kill(rank)
        remove_placement_group(self.placement)


def last_line(err: BaseException) -> str:
    """The last line of an error's text (a remote traceback ends with the cause), or its type's name."""
    text = str(err).strip()
    return text.splitlines()[-1] if text else type(err).__name__
