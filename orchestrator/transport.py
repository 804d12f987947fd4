"""Where a segment's frames stay and where its piece is encoded.

`RayFrames` (the engine's): a rendered segment stays in the object store of the node that rendered it. Only its
edges (orchestrator.sink: the few raw frames the head needs) travel, taken beside the frames by that node's
PieceWorker, which also encodes the body's piece there: only the piece's bytes travel. `LocalFrames`: the frames come to
this process and pieces are encoded on its threads (runs without Ray, e.g. unit tests).
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.pieces import Piece, PieceFormat, encode_piece


class LocalFrames:
    """Frames in this process, pieces encoded by `workers` threads (ffmpeg does the work in its own process)."""

    def __init__(self, workers: int = 2):
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="piece-encoder")

    def track(self, task_id: str, ref: Any, indices: list[int], group=None) -> Any:
        """What to wait on for a segment render `ref` (on `group`) whose edges are frames `indices`."""
        return ref

    def received(self, task_id: str, result: np.ndarray, indices: list[int]) -> tuple[dict[int, np.ndarray], Any]:
        """The edges and the body handle of a finished segment, from what the waited-on ref gave."""
        return {i: np.array(result[i]) for i in indices}, result

    def forget_run(self, run_id: int) -> None:
        """Drop what `track` kept for the tasks of run `run_id`, which ended before they came back."""

    def encode(self, fmt: PieceFormat, start: int, lead: np.ndarray, body: Any, lo: int, hi: int,
               lut: np.ndarray | None) -> Future:
        """Encode frames [lo, hi) of `body` after `lead` (see pipeline.pieces.encode_piece); a Future of the Piece."""
        return self._pool.submit(encode_piece, fmt, start, lead, body[lo:hi], lut)

    @staticmethod
    def lost(err: BaseException) -> bool:
        """Whether `err` from `encode` means the body is gone (its node died): the segment is rendered again."""
        return False


class PieceWorker:
    """One per node (a Ray actor holding no CPU slot): takes segments' edges and encodes their bodies beside the
    frames, in long-lived threads, so no Ray worker process is started per piece. Edges have their own thread:
    a chain waits on them, never behind an encode."""

    def edges(self, frames: np.ndarray, indices: list[int]) -> dict[int, np.ndarray]:
        # Views: returning them copies each frame once, into the object store (a copy here would be a second).
        return {i: frames[i] for i in indices}

    def encode(self, fmt: PieceFormat, start: int, lead: np.ndarray, frames: np.ndarray, lo: int, hi: int,
               lut: np.ndarray | None) -> Piece:
        return encode_piece(fmt, start, lead, frames[lo:hi], lut)


@dataclass(frozen=True)
class RayBody:
    """A segment's frames in the object store of `node`."""

    ref: Any
    node: str


class RayFrames:
    """Frames stay on the node that rendered them; see the module docstring. `worker_class`: the per-node actor's
    class (a subclass injects faults in tests)."""

    def __init__(self, worker_class: type[PieceWorker] = PieceWorker):
        import ray

        self._ray = ray
        self._worker_class = worker_class
        self._bodies: dict[str, RayBody] = {}
        self._workers: dict[str, Any] = {}  # node id -> its PieceWorker

    def prepare(self, groups: list) -> None:
        """Start the PieceWorkers of the nodes `groups` render on now, not at their first segment."""
        for group in groups:
            self._worker(group.node())

    def _worker(self, node: str):
        if node not in self._workers:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            cpus = next((n["Resources"].get("CPU", 1) for n in self._ray.nodes() if n["NodeID"] == node), 1)
            actor = self._ray.remote(concurrency_groups={"edges": 1, "encode": max(1, int(cpus))})(self._worker_class)
            # Named per node and per owning process: the engines of this driver (tests make many) share one while
            # any holds it; it ends with its last handle or with this driver. A name without the owner would be
            # shared by every driver on the cluster: a second command would encode on the first's, and lose it
            # mid-piece when the first command ended.
            owner = self._ray.get_runtime_context().get_worker_id()
            self._workers[node] = actor.options(
                name=f"minutereel-{self._worker_class.__name__}-{node}-{owner}", namespace="minutereel",
                get_if_exists=True, num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False),
            ).remote()
        return self._workers[node]

    def track(self, task_id: str, ref: Any, indices: list[int], group=None) -> Any:
        node = group.node()
        self._bodies[task_id] = RayBody(ref, node)
        return self._worker(node).edges.options(concurrency_group="edges").remote(ref, indices)

    def received(self, task_id: str, result: dict[int, np.ndarray], indices: list[int]) -> tuple[dict, Any]:
        return result, self._bodies.pop(task_id)

    def forget_run(self, run_id: int) -> None:
        # Shared by every run of an engine: a cancelled or failed run's frames must not stay pinned.
        for task_id in [t for t in self._bodies if t.startswith(f"{run_id}:")]:
            del self._bodies[task_id]

    def encode(self, fmt: PieceFormat, start: int, lead: np.ndarray, body: RayBody, lo: int, hi: int,
               lut: np.ndarray | None) -> Future:
        call = self._worker(body.node).encode.options(concurrency_group="encode")
        return call.remote(fmt, start, lead, body.ref, lo, hi, lut).future()

    def lost(self, err: BaseException) -> bool:
        exceptions = self._ray.exceptions
        lost = isinstance(err, exceptions.RayError) and not isinstance(err, exceptions.RayTaskError)
        if lost:  # a node (or its PieceWorker) is gone: the next call there starts a fresh one
            self._forget_dead(err)
        return lost

    def _forget_dead(self, err: BaseException) -> None:
        """Drop the handles of the workers `err` says are gone: the one that died, those of nodes that left. A live
        worker's handle stays: dropping the last handle of an actor that is not detached ends it, and with it the
        edges and encodes it is running (clearing them all once turned one lost worker into a cascade of them)."""
        actor_id = getattr(err, "actor_id", None)
        alive = {n["NodeID"] for n in self._ray.nodes() if n["Alive"]}
        gone = [node for node, worker in self._workers.items()
                if node not in alive or (actor_id is not None and worker._actor_id.hex() == actor_id)]
        if not gone and actor_id is None:  # nothing says which: look them all up again
            gone = list(self._workers)
        for node in gone:
            del self._workers[node]

    def shutdown(self) -> None:
        """Drop this engine's handles: a worker ends once no engine of this process holds it."""
        self._workers.clear()
