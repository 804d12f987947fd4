"""End to end through Ray actors: plan -> shard groups -> stitcher -> ffmpeg -> decoded MP4."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from actors.config import ParallelConfig
from orchestrator.config import EngineConfig
from orchestrator.jobs import JobStore
from orchestrator.plan import RenderPlan
from orchestrator.request import RenderRequest
from pipeline.config import ModelConfig
from pipeline.video_io import read_video


@pytest.fixture(scope="module")
def engine(ray_cluster, tiny_cache):
    from orchestrator.engine import RenderEngine

    engine = RenderEngine(EngineConfig(model=ModelConfig(cache_dir=tiny_cache), parallel=ParallelConfig(workers=2)))
    yield engine
    engine.shutdown()


def _variation(frames):
    spatial = frames.reshape(len(frames), -1).astype(float).std(axis=1)
    temporal = np.abs(np.diff(frames.astype(int), axis=0)).mean(axis=(1, 2, 3))
    return spatial, temporal


@pytest.mark.parametrize("mode", ["chain", "bridge", "keyframes"])
def test_render_gives_exact_frames_rate_and_size(engine, tmp_path, mode):
    events = []
    result = engine.render(RenderRequest(prompt="a fox", duration_s=7.5, mode=mode), tmp_path / "out.mp4",
                           on_progress=lambda p: events.append((p.keyframes_done, p.segments_done, p.frames_written)))
    frames, info = read_video(result.path)
    assert (info.frames, info.fps, info.width, info.height, info.codec) == (120, 16, 128, 128, "h264")
    assert len(result.plan.segments) >= 2
    assert events == sorted(events) and events[-1] == (len(result.plan.keyframes), len(result.plan.segments), 120)
    spatial, temporal = _variation(frames)
    assert spatial.min() > 10 and temporal.min() > 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


@pytest.mark.parametrize("mode", ["keyframes", "bridge"])
def test_keyframes_land_on_their_planned_frames(engine, tmp_path, mode):
    """The decoded MP4's frame at each planned keyframe position is that keyframe (PSNR), and the frames
    two or more away from every keyframe are not (the video is not a still, the match is not luck)."""
    request = RenderRequest(prompt="a fox", duration_s=7.5, mode=mode, segment_frames=33)
    job = JobStore(tmp_path / "jobs").create(request)
    result = engine.render(request, tmp_path / "out.mp4", job=job)
    frames, info = read_video(result.path)
    assert info.frames == 120
    keyframes = [k for k in result.plan.keyframes if k.frame < info.frames]
    assert len(keyframes) >= (4 if mode == "keyframes" else 2)
    for k in keyframes:
        image = job.load_frames("keyframes", k.index)
        assert _psnr(frames[k.frame], image) >= 33, f"keyframe {k.index} at frame {k.frame}"
        for frame in (k.frame - 1, k.frame + 1):  # an off-by-one placement would fail the bar above
            if 0 <= frame < info.frames:
                assert _psnr(frames[frame], image) < 30
    away = [i for i in range(info.frames) if all(abs(i - k.frame) >= 2 for k in keyframes)]
    assert max(_psnr(frames[i], job.load_frames("keyframes", k.index)) for i in away for k in keyframes) < 30


def test_a_job_resumes_only_under_the_weights_it_was_rendered_with(engine, tmp_path):
    request = RenderRequest(prompt="a fox", duration_s=1.0, mode="chain")
    job = JobStore(tmp_path).create(request)
    plan = engine.plan(request)
    assert plan.weights.endswith("quantize=none") and "embedded://tiny/i2v@v" in plan.weights
    shown = subprocess.run([sys.executable, "-m", "orchestrator.cli", "plan", "--prompt", "a fox", "--duration", "1",
                            "--mode", "chain", "--json"], capture_output=True, text=True, check=True).stdout
    assert RenderPlan.model_validate_json(shown) == plan  # `minutereel plan --json` shows what render saves
    job.save_plan(plan.model_copy(update={"weights": plan.weights.replace("quantize=none", "quantize=int8")}))
    with pytest.raises(ValueError, match=r"rendered with .*quantize=int8, but .*quantize=none is loaded now"):
        engine.job_plan(job, request)
    job.save_plan(plan.model_copy(update={"weights": None}))  # saved before plans carried their weights
    assert engine.job_plan(job, request) == plan


def test_pool_loads_once_across_renders(engine, tmp_path):
    for name in ("a", "b"):
        engine.render(RenderRequest(prompt="a fox", duration_s=1.0, mode="chain"), tmp_path / f"{name}.mp4")
    ranks = [rank for group in engine.pool.health() for rank in group["ranks"]]
    assert len(ranks) == 2
    assert {r["load_count"] for r in ranks} == {1}
    assert all(r["device"] == "cpu" and r["cpus"] == 1 for r in ranks)
    assert sum(r["segments_rendered"] for r in ranks) >= 2


def test_bad_request_fails_before_any_file(engine, tmp_path):
    with pytest.raises(ValueError, match="width 120"):
        engine.render(RenderRequest(prompt="a fox", duration_s=1.0, width=120, mode="chain"), tmp_path / "x.mp4")
    assert list(tmp_path.iterdir()) == []


def test_storyboard_with_three_prompts_and_an_image_renders(engine, tmp_path):
    from PIL import Image

    from orchestrator.request import load_storyboard

    Image.fromarray(np.full((64, 64, 3), (200, 40, 40), np.uint8)).save(tmp_path / "red.png")
    (tmp_path / "story.yaml").write_text(
        "- {at_s: 0, prompt: a calm sea}\n"
        "- {at_s: 3, prompt: a storm gathers, image: red.png}\n"
        "- {at_s: 6, prompt: lightning over the waves}\n"
    )
    request = RenderRequest(storyboard=load_storyboard(tmp_path / "story.yaml"), duration_s=9.0, mode="bridge",
                            segment_frames=33)
    result = engine.render(request, tmp_path / "story.mp4")
    plan = result.plan
    assert read_video(result.path)[1].frames == 144
    images = [(k.frame, Path(k.image).name) for k in plan.keyframes if k.source == "image"]
    assert len(images) == 1 and images[0][1] == "red.png" and abs(images[0][0] - 48) <= 16
    prompts = [s.prompt for s in plan.segments]
    assert prompts[0] == "a calm sea" and prompts[-1] == "lightning over the waves" and "a storm gathers" in prompts
