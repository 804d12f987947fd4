"""RayFrames on the session's cluster: each process that renders has its own per-node PieceWorker, so one command
ending (or being killed) takes no other command's piece encoder with it."""

import sys

import numpy as np
import ray
from ray import cloudpickle
from ray.util.state import list_actors

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import tests/


class _OnNode:
    """Where a shard group renders: all RayFrames asks of one."""

    def __init__(self, node: str):
        self._node = node

    def node(self) -> str:
        return self._node


@ray.remote(num_cpus=0)
class _OtherOwner:
    """Another process rendering on the same cluster (a second CLI command, a JobRunner)."""

    def start(self, node: str, segment: np.ndarray) -> list[int]:
        from orchestrator.transport import RayFrames

        self.frames = RayFrames()
        return sorted(_edges(self.frames, segment, node))


def _piece_workers() -> int:
    alive = list_actors(filters=[("class_name", "=", "PieceWorker"), ("state", "=", "ALIVE")])
    return len(alive)


def _edges(frames, segment: np.ndarray, node: str) -> dict:
    return ray.get(frames.track("0:0", ray.put(segment), [0, 2], _OnNode(node)), timeout=60)


def test_each_owner_has_its_own_piece_worker_and_outlives_anothers_end(ray_cluster):
    from orchestrator.transport import RayFrames

    node = ray.get_runtime_context().get_node_id()
    segment = np.arange(3 * 4 * 4 * 3, dtype=np.uint8).reshape(3, 4, 4, 3)
    mine, before = RayFrames(), _piece_workers()
    assert sorted(_edges(mine, segment, node)) == [0, 2]
    other = _OtherOwner.remote()
    assert ray.get(other.start.remote(node, segment), timeout=60) == [0, 2]
    assert _piece_workers() == before + 2  # not one shared by both
    ray.kill(other)  # its owner gone, its PieceWorker goes with it
    edges = _edges(mine, segment, node)  # ours still answers
    np.testing.assert_array_equal(edges[2], segment[2])
    mine.shutdown()
