"""Where a segment's frames stay and where its piece is encoded.

`RayFrames` (the engine's): a rendered segment stays in the object store of the node that rendered it. Only its
edges (pipeline.pieces: the few raw frames the head needs) travel, taken by a small task beside the frames; the
piece is encoded by a task on the frames' node, and only its bytes travel. `LocalFrames`: the frames come to
this process and pieces are encoded on its threads (runs without Ray, e.g. unit tests).
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from pipeline.pieces import Piece, PieceFormat, encode_piece


class LocalFrames:
    """Frames in this process, pieces encoded by `workers` threads (ffmpeg does the work in its own process)."""

    def __init__(self, workers: int = 2):
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="piece-encoder")

    def track(self, task_id: str, ref: Any, indices: list[int]) -> Any:
        """What to wait on for a segment render `ref` whose edges are frames `indices`."""
        return ref

    def received(self, task_id: str, result: np.ndarray, indices: list[int]) -> tuple[dict[int, np.ndarray], Any]:
        """The edges and the body handle of a finished segment, from what the waited-on ref gave."""
        return {i: np.array(result[i]) for i in indices}, result

    def forget(self, task_id: str) -> None:
        """Drop what `track` kept for a task that failed."""

    def encode(self, fmt: PieceFormat, start: int, lead: np.ndarray, body: Any, lo: int, hi: int,
               lut: np.ndarray | None) -> Future:
        """Encode frames [lo, hi) of `body` after `lead` (see pipeline.pieces.encode_piece); a Future of the Piece."""
        return self._pool.submit(encode_piece, fmt, start, lead, body[lo:hi], lut)

    @staticmethod
    def lost(err: BaseException) -> bool:
        """Whether `err` from `encode` means the body is gone (its node died): the segment is rendered again."""
        return False


def _take_edges(frames: np.ndarray, indices: list[int]) -> dict[int, np.ndarray]:
    return {i: np.array(frames[i]) for i in indices}


def _encode_body(fmt: PieceFormat, start: int, lead: np.ndarray, frames: np.ndarray, lo: int, hi: int,
                 lut: np.ndarray | None) -> Piece:
    return encode_piece(fmt, start, lead, frames[lo:hi], lut)


class RayFrames:
    """Frames stay on the node that rendered them; see the module docstring."""

    def __init__(self):
        import ray

        self._ray = ray
        # No CPU slot: the tasks are small or mostly ffmpeg, and must not wait behind the ranks that hold the
        # node's slots. Without a resource ask, Ray's default scheduling runs them where their frames are.
        self._edges = ray.remote(num_cpus=0)(_take_edges)
        self._encode = ray.remote(num_cpus=0)(_encode_body)
        self._bodies: dict[str, Any] = {}

    def track(self, task_id: str, ref: Any, indices: list[int]) -> Any:
        self._bodies[task_id] = ref
        return self._edges.remote(ref, indices)

    def received(self, task_id: str, result: dict[int, np.ndarray], indices: list[int]) -> tuple[dict, Any]:
        return result, self._bodies.pop(task_id)

    def forget(self, task_id: str) -> None:
        self._bodies.pop(task_id, None)

    def encode(self, fmt: PieceFormat, start: int, lead: np.ndarray, body: Any, lo: int, hi: int,
               lut: np.ndarray | None) -> Future:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        options = {}
        nodes = self._ray.experimental.get_object_locations([body]).get(body, {}).get("node_ids") or []
        if nodes:  # pinned beside the frames (soft: if that node is gone the task fails as lost, not hangs)
            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(nodes[0], soft=True)
        return self._encode.options(**options).remote(fmt, start, lead, body, lo, hi, lut).future()

    def lost(self, err: BaseException) -> bool:
        exceptions = self._ray.exceptions
        return isinstance(err, exceptions.RayError) and not isinstance(err, exceptions.RayTaskError)
