"""Shard groups on devices Ray assigns, a dead rank, group rebuild, and renders that survive it."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import ray

from actors.config import ParallelConfig
from actors.pool import GroupStart, WorkerPool
from actors.shard import ShardGroup, ShardRank
from orchestrator.config import EngineConfig
from orchestrator.request import RenderRequest
from pipeline.config import ModelConfig, SequenceParallelConfig
from pipeline.generate import SegmentRequest
from pipeline.video_io import read_video

ROOT = Path(__file__).resolve().parents[2]


def test_logical_gpus_give_each_rank_its_own_gpu_cuda_device_and_nccl():
    done = subprocess.run([sys.executable, str(Path(__file__).with_name("logical_gpus.py"))], cwd=ROOT,
                          env={**os.environ, "RAY_ADDRESS": ""}, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["use_gpu"] is True and report["groups"] == 1
    ranks = report["ranks"]
    assert sorted(g for r in ranks for g in r["gpu_ids"]) == ["0", "1"]
    for rank, visible in zip(ranks, report["visible"], strict=True):
        assert rank["gpu_ids"] == [visible]  # Ray pinned CUDA_VISIBLE_DEVICES to this rank's GPU
        assert (rank["device"], rank["backend"], rank["cpus"]) == ("cuda:0", "nccl", 1)


def _pids(pool):
    return [rank.pid for group in pool.health() for rank in group.ranks]


def test_killed_rank_fails_the_group_call_within_timeout_and_group_is_rebuilt(ray_cluster, tiny_cache):
    timeout_s = 20.0
    parallel = ParallelConfig(workers=1, sequence=SequenceParallelConfig(degree=2, collective_timeout_s=timeout_s))
    pool = WorkerPool(ModelConfig(cache_dir=tiny_cache), parallel)
    try:
        group = pool.groups[0]
        first = np.zeros((128, 128, 3), np.uint8)
        request = SegmentRequest("a fox", 1, 81, 128, 128, first, steps=12)  # 11 steps left when killed
        victim = _pids(pool)[1]
        ref = group.render_segment(request, "t0")
        deadline = time.monotonic() + 60
        while (current := ray.get(group.progress())) is None:  # kill mid-denoise, not on a timer
            assert time.monotonic() < deadline, "the segment never reported a denoising step"
            time.sleep(0.01)
        os.kill(victim, signal.SIGKILL)
        assert current.task_id == "t0" and current.step < current.steps
        started = time.monotonic()
        with pytest.raises(ray.exceptions.RayError) as failure:
            ray.get(ref, timeout=timeout_s + 30)
        assert time.monotonic() - started < timeout_s + 10
        message, broken = group.diagnose(failure.value)
        assert broken and "rank(s) 1 died" in message and "shard group 0" in message

        fresh = pool.rebuild(group)
        assert pool.groups == [fresh] and victim not in _pids(pool)
        frames = ray.get(fresh.render_segment(SegmentRequest("a fox", 1, 9, 64, 64, first[:64, :64])))
        assert frames.shape == (9, 64, 64, 3)
        assert {r.load_count for g in pool.health() for r in g.ranks} == {1}
    finally:
        pool.shutdown()


def test_int8_render_through_ray(ray_cluster, tiny_cache, tmp_path):
    from orchestrator.engine import RenderEngine

    config = EngineConfig(model=ModelConfig(cache_dir=tiny_cache, quantize="int8"), parallel=ParallelConfig(workers=1))
    engine = RenderEngine(config)
    try:
        result = engine.render(RenderRequest(prompt="a fox", duration_s=2.0, mode="chain"), tmp_path / "q.mp4")
        (rank,) = engine.pool.health()[0].ranks
    finally:
        engine.shutdown()
    frames, info = read_video(result.path)
    assert info.frames == 32 and frames.reshape(32, -1).std(axis=1).min() > 10
    assert rank.quantize == "int8" and rank.quantized_components == ("transformer", "text_encoder")


def test_pool_start_survives_a_rank_killed_in_every_phase(ray_cluster, tiny_cache, tmp_path):
    from faults import deaths, rank_dying_in

    # One group of two ranks, started five times: each start loses a rank one phase further on.
    phases = [("init_device", 1), ("init_distributed", 0), ("load", 1), ("warmup", 0)]
    rank_class, armed_by = ShardRank, None
    for phase, rank in phases:
        rank_class = rank_dying_in(phase, rank, tmp_path / phase, base=rank_class, armed_by=armed_by)
        armed_by = tmp_path / f"{phase}.0"
    parallel = ParallelConfig(workers=1, group_restarts=len(phases),
                              sequence=SequenceParallelConfig(degree=2, collective_timeout_s=30))
    pool = WorkerPool(ModelConfig(cache_dir=tiny_cache), parallel, rank_class)
    try:
        victims = [pid for phase, _ in phases for pid in deaths(tmp_path / phase)]
        ranks = pool.health()[0].ranks
    finally:
        pool.shutdown()
    assert len(victims) == len(phases) and not set(victims) & {r.pid for r in ranks}
    assert [(r.rank, r.load_count) for r in ranks] == [(0, 1), (1, 1)]


def test_pool_whose_group_never_starts_fails_with_the_cause(ray_cluster, tiny_cache, tmp_path):
    from faults import deaths, rank_dying_in

    parallel = ParallelConfig(workers=1, group_restarts=1)
    marker = tmp_path / "killed"
    with pytest.raises(RuntimeError, match=r"no shard group could start: group 0: .*(died|exited)") as failure:
        WorkerPool(ModelConfig(cache_dir=tiny_cache), parallel, rank_dying_in("load", 0, marker, times=5))
    assert len(deaths(marker)) == 2, failure.value  # the first start and one restart


def rank_hanging_in_load(marker: Path, times: int) -> type[ShardRank]:
    """A ShardRank whose load hangs (the rank stays alive and answers health probes) the first `times` times any
    rank gets there; each hang writes `marker`.N."""

    def load(self) -> None:
        for n in range(times):
            try:
                os.close(os.open(f"{marker}.{n}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                continue
            time.sleep(3600)
        ShardRank.load(self)

    return type("HangingRank", (ShardRank,), {"load": load})


class _StartingGroup:
    """What GroupStart needs of a ShardGroup: its start-up refs (resolved, but settled only when a test says)."""

    group_id, ranks, bundle = 3, [None], {"CPU": 1}
    placement_error, load_error = ShardGroup.placement_error, ShardGroup.load_error

    def start(self) -> list:
        return [ray.put(None) for _ in range(3)]


def test_group_start_times_out_its_placement_then_its_load_and_warmup(ray_cluster):
    now = [100.0]
    start = GroupStart(_StartingGroup(), 1, placement_timeout_s=10, load_timeout_s=60, clock=lambda: now[0])
    assert start.deadline == 110 and start.overdue(109.9) is None
    assert "within 10s; check `ray status`" in str(start.overdue(110))
    now[0] = 105.0
    start.settle(start.placement_ref)  # placed at 105: initialised, loaded and warm by 165
    assert start.deadline == 165 and start.overdue(164.9) is None
    assert "did not initialise, load and warm up within 60s" in str(start.overdue(165))
    assert not start.settle(start.refs[1]) and start.settle(start.refs[2])
    assert start.deadline is None and start.overdue(1e9) is None


def test_pool_start_restarts_a_group_whose_rank_hangs_in_load(ray_cluster, tiny_cache, tmp_path):
    load_timeout_s = 12.0  # well over the tiny model's initialisation, load and warm-up here (3-5 s)
    parallel = ParallelConfig(workers=1, group_restarts=1, load_timeout_s=load_timeout_s)
    started = time.monotonic()
    pool = WorkerPool(ModelConfig(cache_dir=tiny_cache), parallel, rank_hanging_in_load(tmp_path / "hung", times=1))
    try:
        waited = time.monotonic() - started
        (group,) = pool.health()
    finally:
        pool.shutdown()
    assert (tmp_path / "hung.0").exists() and load_timeout_s <= waited < 3 * load_timeout_s
    assert [(r.rank, r.load_count) for r in group.ranks] == [(0, 1)]


def test_pool_whose_group_never_gets_warm_fails_with_the_timeout_in_bounded_time(ray_cluster, tiny_cache, tmp_path):
    # 2 s from placement: each of the two starts times out in whichever phase it is (initialising, or hung in load).
    parallel = ParallelConfig(workers=1, group_restarts=1, load_timeout_s=2.0)
    started = time.monotonic()
    with pytest.raises(RuntimeError, match=r"no shard group could start: group 0: shard group 0 did not initialise, "
                                           r"load and warm up within 2s"):
        WorkerPool(ModelConfig(cache_dir=tiny_cache), parallel, rank_hanging_in_load(tmp_path / "hung", times=5))
    assert time.monotonic() - started < 30
