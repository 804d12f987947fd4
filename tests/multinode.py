"""A two-node Ray cluster on this machine (ray.cluster_utils.Cluster): a render whose groups sit on both nodes
loses the second node mid-render, while the second node encodes the piece of a segment it rendered (its
PieceWorker holds that encode until the node is gone), so that segment's frames are lost with the node after
they were rendered. Run by tests/test_multinode.py in its own process (the test process is attached to the
session's cluster). Prints one JSON line."""

from __future__ import annotations

import json
import logging
import socket
import sys
import threading
import time
from pathlib import Path

import numpy as np
import ray
from ray.cluster_utils import Cluster

from actors.config import ParallelConfig
from orchestrator.config import EngineConfig
from orchestrator.engine import RenderEngine
from orchestrator.jobs import JobStore
from orchestrator.request import RenderRequest
from orchestrator.transport import PieceWorker, RayFrames
from pipeline.config import ModelConfig
from pipeline.video_io import read_video


class HeldOffHead(PieceWorker):
    """A PieceWorker that, on any node but the head, marks `marker` and holds its first body encode (until its
    node is removed): a segment rendered there is then lost with the node before its piece exists."""

    head = marker = None  # set before the actors are made (the class travels by value)

    def encode(self, *args):
        if ray.get_runtime_context().get_node_id() != self.head and not Path(self.marker).exists():
            Path(self.marker).write_text(str(args[1]))  # the piece's first frame
            time.sleep(120)
        return super().encode(*args)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main(cache: Path, out: Path) -> None:
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "gcs_server_port": _free_port(), "ray_client_server_port": _free_port(),
        "include_dashboard": False, "dashboard_agent_listen_port": _free_port(), "metrics_export_port": _free_port()})
    second = cluster.add_node(num_cpus=1, dashboard_agent_listen_port=_free_port(), metrics_export_port=_free_port())
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level=logging.WARNING)
    try:
        parallel = ParallelConfig(workers=2, placement_timeout_s=5.0, group_restarts=1)
        HeldOffHead.head, HeldOffHead.marker = cluster.head_node.node_id, str(out / "encoding-off-head")
        engine = RenderEngine(EngineConfig(model=ModelConfig(cache_dir=cache), parallel=parallel),
                              frames=RayFrames(HeldOffHead))
        request = RenderRequest(prompt="a fox", duration_s=4.0, mode="bridge", segment_frames=21, overlap_frames=4)
        try:
            engine.wait_for_pool()  # both groups before the render, so the second node renders some of it
            nodes = sorted({r.node for g in engine.pool.health() for r in g.ranks})
            job = JobStore(out / "jobs").create(request, job_id="multinode")
            progress_at_removal = []

            def remove_second_node_while_it_encodes():
                while not Path(HeldOffHead.marker).exists():
                    time.sleep(0.02)
                progress_at_removal.append(engine_progress())  # before: removing a node takes seconds
                cluster.remove_node(second, allow_graceful=False)

            def engine_progress():
                runs = engine.dispatcher.runs
                return runs[0].progress.segments_total - runs[0].progress.segments_done if runs else None

            watcher = threading.Thread(target=remove_second_node_while_it_encodes, daemon=True)
            watcher.start()
            survived = engine.render(request, job.output, job=job)
            watcher.join(timeout=60)  # the node is gone (the render finished without it)
            clean = engine.render(request, out / "clean.mp4")
            same = bool(np.array_equal(read_video(survived.path)[0], read_video(clean.path)[0]))
            files = sorted(str(p.relative_to(job.dir)) for p in job.dir.rglob("*") if p.is_file())
            report = {"nodes": len(nodes), "removed_with_segments_left": progress_at_removal,
                      "lost_while_encoding": int(Path(HeldOffHead.marker).read_text()), "same_video": same,
                      "segments_rendered": survived.rendered["segment"],
                      "state": job.state().state, "groups_left": len(engine.pool.groups), "job_files": files,
                      "driver_on_head": ray.get_runtime_context().get_node_id() == cluster.head_node.node_id}
        finally:
            engine.shutdown()
    finally:
        ray.shutdown()
        cluster.shutdown()
    print(json.dumps(report))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
