"""Sequence parallelism across Ray actors (two gloo ranks) matches one rank."""

import sys

import numpy as np
import pytest
import ray
from ray import cloudpickle

from actors.config import ParallelConfig
from actors.shard import ShardGroup
from orchestrator.config import EngineConfig
from orchestrator.request import RenderRequest
from pipeline.config import ModelConfig, SequenceParallelConfig
from pipeline.parallel import probe_transformer
from pipeline.video_io import read_video

# Ray workers cannot import test modules: ship this module's functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _probe(rank, seed):
    return probe_transformer(rank.generator.i2v.transformer, seed, latent_frames=6, latent_height=32, latent_width=32)


def _group(cache, degree, attention="ulysses"):
    parallel = ParallelConfig(sequence=SequenceParallelConfig(degree=degree, attention=attention,
                                                              collective_timeout_s=30))
    group = ShardGroup(0, ModelConfig(cache_dir=cache), parallel, use_gpu=False)
    try:
        ray.get(group.start())
    except Exception:
        group.shutdown()
        raise
    return group


@pytest.fixture(scope="module")
def reference(ray_cluster, tiny_cache):
    group = _group(tiny_cache, 1)
    try:
        return ray.get(group.call("execute", _probe, 11)[0])
    finally:
        group.shutdown()


def test_degree_two_matches_degree_one(reference, tiny_cache):
    group = _group(tiny_cache, 2)
    try:
        health = ray.get(group.call("health"))
        assert [(h["rank"], h["world_size"], h["backend"], h["device"], h["keyframe_pipeline"]) for h in health] == [
            (0, 2, "gloo", "cpu", True), (1, 2, "gloo", "cpu", False)]
        outputs = ray.get(group.call("execute", _probe, 11))
    finally:
        group.shutdown()
    for out in outputs:
        assert out.shape == reference.shape
        assert (out - reference).abs().max().item() <= 1e-5


def test_ring_attention_on_cpu_fails_with_reason(ray_cluster, tiny_cache):
    with pytest.raises(ray.exceptions.RayTaskError, match="ring attention needs .* use attention 'ulysses' on CPU"):
        _group(tiny_cache, 2, "ring")


def _psnr(a, b):
    mse = np.mean((a.astype(float) - b.astype(float)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def test_render_with_sp_degree_two_matches_degree_one(ray_cluster, tiny_cache, tmp_path):
    from orchestrator.engine import RenderEngine

    request = RenderRequest(prompt="a fox", duration_s=3.0, mode="chain", segment_frames=33)
    frames = {}
    for degree in (1, 2):
        config = EngineConfig(model=ModelConfig(cache_dir=tiny_cache),
                              parallel=ParallelConfig(workers=1, sequence=SequenceParallelConfig(degree=degree)))
        engine = RenderEngine(config)
        try:
            frames[degree] = read_video(engine.render(request, tmp_path / f"sp{degree}.mp4").path)[0]
        finally:
            engine.shutdown()
    assert frames[1].shape == frames[2].shape == (48, 128, 128, 3)
    worst = min(_psnr(a, b) for a, b in zip(frames[1], frames[2], strict=True))
    assert worst >= 40, f"lowest per-frame PSNR {worst:.1f} dB"
