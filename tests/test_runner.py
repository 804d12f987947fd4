"""The detached JobRunner across redeploys: same settings keep it, new settings replace it and resume jobs."""

import contextlib
import json
import os
import time
from pathlib import Path

import pytest
import ray
from ray.util.state import get_actor

from actors.config import ParallelConfig
from orchestrator.config import EngineConfig
from orchestrator.request import RenderRequest
from pipeline.config import ModelConfig, StitchConfig
from pipeline.video_io import read_video


def _wait(predicate, timeout_s):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def test_new_settings_replace_the_runner_and_it_resumes_unfinished_jobs(ray_cluster, tiny_cache, tmp_path):
    from orchestrator.runner import start_runner

    name, jobs = "test-redeploy-runner", str(tmp_path / "jobs")
    model, parallel = ModelConfig(cache_dir=tiny_cache), ParallelConfig(workers=1)
    runners = [start_runner(EngineConfig(model=model, parallel=parallel), jobs, 4, name=name)]
    try:
        first = runners[0]
        # Pinned to the head node, where the jobs root is (this test cluster has one node: check the request).
        actor = get_actor(first._actor_id.hex(), address=os.environ["RAY_JOB_ADDRESS"])  # this session's cluster
        assert "node:__internal_head__" in actor.required_resources
        assert start_runner(EngineConfig(model=model, parallel=parallel), jobs, 4, name=name) == first  # unchanged
        unknown = model.model_copy(update={"preset": "nope"})
        with pytest.raises(ValueError, match="known presets"):  # refused before the running runner is touched
            start_runner(EngineConfig(model=unknown, parallel=parallel), jobs, 4, name=name)
        assert ray.get(first.settings.remote(), timeout=30)["engine"]["model"]["preset"] == "tiny"
        # No mode: one worker plans chain; the replacement's two workers would plan bridge.
        request = RenderRequest(prompt="a fox", duration_s=8.0, segment_frames=33)  # 5 segments
        job_id = ray.get(first.submit.remote(request))
        folder = Path(jobs) / job_id
        _wait(lambda: any((folder / "pieces").glob("[0-9]*.json")), 120)

        more = ParallelConfig(workers=2)
        runners.append(start_runner(EngineConfig(model=model, parallel=more, stitch=StitchConfig(crf=23)),
                                    jobs, 4, name=name))
        second = runners[1]
        assert second != first
        assert ray.get(second.settings.remote())["engine"]["stitch"]["crf"] == 23
        kept = {p.name: p.stat().st_mtime_ns for p in (folder / "pieces").glob("[0-9]*.json")}
        planned = json.loads((folder / "plan.json").read_text())
        assert planned["mode"] == "chain" and len(kept) < len(planned["segments"])  # replaced mid-job
        _wait(lambda: ray.get(second.status.remote(job_id))["state"] == "done", 180)
        # The job kept its plan and what the first runner saved was resumed, not rendered again.
        assert json.loads((folder / "plan.json").read_text()) == planned
        assert read_video(ray.get(second.output_path.remote(job_id)))[1].frames == 128
        assert {p.name: p.stat().st_mtime_ns for p in (folder / "pieces").glob("[0-9]*.json") if p.name in kept} == kept
    finally:
        for runner in runners:
            with contextlib.suppress(ray.exceptions.RayError):
                ray.get(runner.shutdown.remote(), timeout=60)
            ray.kill(runner)
