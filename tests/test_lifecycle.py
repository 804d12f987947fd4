"""One job lifecycle for the server, the CLI and batch: a job waiting for a worker is `queued`, and every front end
writes the same states in the same order (batch's are checked in tests/test_batch.py)."""

import os
import time

from actors.config import ParallelConfig
from orchestrator.config import EngineConfig
from orchestrator.jobs import JobStore
from orchestrator.request import RenderRequest
from pipeline.config import ModelConfig

LIFECYCLE = ["queued", "planning", "rendering", "stitching", "done"]


def test_waiting_jobs_are_queued_and_every_front_end_writes_the_same_states(ray_cluster, tiny_cache, tmp_path,
                                                                             monkeypatch):
    from orchestrator.cli import main
    from orchestrator.runner import JobRunner

    config = EngineConfig(model=ModelConfig(cache_dir=tiny_cache), parallel=ParallelConfig(workers=1))
    runner = JobRunner(config, str(tmp_path / "jobs"), max_active_jobs=3)
    seen = []
    try:
        ids = [runner.submit(RenderRequest(prompt=f"a fox {n}", duration_s=1.0, mode="chain")) for n in range(3)]
        deadline = time.monotonic() + 180
        while (states := tuple(runner.status(i)["state"] for i in ids)) != ("done",) * 3:
            assert time.monotonic() < deadline, f"jobs did not finish: {states}"
            seen.append(states)
            time.sleep(0.02)
        histories = [runner.status(i)["history"] for i in ids]
    finally:
        runner.shutdown()
    assert ("rendering", "queued", "queued") in seen  # the one worker renders the first; the others wait, queued
    assert not [s for s in seen if s[2] != "queued" and s[0] not in ("stitching", "done")]  # the last waits its turn
    assert histories == [LIFECYCLE] * 3

    monkeypatch.setenv("RAY_ADDRESS", ray_cluster)
    monkeypatch.setenv("MINUTEREEL_CACHE", str(tiny_cache))
    job_dir = tmp_path / "cli-job"
    assert main(["render", "--prompt", "a fox", "--duration", "1", "--workers", "1", "--mode", "chain",
                 "--job-dir", str(job_dir)]) == 0
    assert JobStore(job_dir.parent).open(job_dir.name).state().history == LIFECYCLE
    assert os.path.exists(job_dir / "output.mp4")
