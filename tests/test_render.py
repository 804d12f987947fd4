"""End to end through Ray actors: plan -> shard groups -> stitcher -> ffmpeg -> decoded MP4. The same request
gives the same frames whatever the worker count, in every mode, and a worker killed mid-render changes none."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import ray

from actors.config import ParallelConfig
from orchestrator.config import EngineConfig
from orchestrator.jobs import JobStore
from orchestrator.plan import RenderPlan
from orchestrator.request import RenderRequest
from pipeline import world
from pipeline.config import ModelConfig
from pipeline.video_io import read_video

RED_RIGHT = "a red ball moving right on a blue background"  # a combination held out of training


MODES = ("chain", "keyframes", "bridge")
SAME = {"prompt": "a fox", "duration_s": 5.0, "segment_frames": 33, "seed": 7}  # one request, rendered in every mode


def _render_modes(engine, out_dir):
    return {mode: read_video(engine.render(RenderRequest(mode=mode, **SAME), out_dir / f"{mode}.mp4").path)[0]
            for mode in MODES}


@pytest.fixture(scope="module")
def one_worker(ray_cluster, tiny_cache, tmp_path_factory):
    """SAME in every mode on one worker: what two workers must give frame for frame. Rendered before `engine`
    starts: its two workers take both of the cluster's CPU slots."""
    from orchestrator.engine import RenderEngine

    engine = RenderEngine(EngineConfig(model=ModelConfig(cache_dir=tiny_cache), parallel=ParallelConfig(workers=1)))
    try:
        return _render_modes(engine, tmp_path_factory.mktemp("one-worker"))
    finally:
        engine.shutdown()


@pytest.fixture(scope="module")
def engine(one_worker, tiny_cache):
    from orchestrator.engine import RenderEngine

    engine = RenderEngine(EngineConfig(model=ModelConfig(cache_dir=tiny_cache), parallel=ParallelConfig(workers=2)))
    yield engine
    engine.shutdown()


@pytest.fixture(scope="module")
def two_workers(engine, tmp_path_factory):
    return _render_modes(engine, tmp_path_factory.mktemp("two-workers"))


@pytest.mark.parametrize("mode", MODES)
def test_one_and_two_workers_give_identical_frames(one_worker, two_workers, mode):
    one, two = one_worker[mode], two_workers[mode]
    assert one.shape == two.shape == (80, 128, 128, 3)
    np.testing.assert_array_equal(one, two)


def test_modes_differ(two_workers):
    assert not np.array_equal(two_workers["chain"], two_workers["bridge"])


def _variation(frames):
    spatial = frames.reshape(len(frames), -1).astype(float).std(axis=1)
    temporal = np.abs(np.diff(frames.astype(int), axis=0)).mean(axis=(1, 2, 3))
    return spatial, temporal


@pytest.mark.parametrize("mode", ["chain", "bridge", "keyframes"])
def test_render_gives_exact_frames_rate_and_size(engine, tmp_path, mode):
    events = []
    result = engine.render(RenderRequest(prompt=RED_RIGHT, duration_s=7.5, mode=mode), tmp_path / "out.mp4",
                           on_progress=lambda p: events.append((p.keyframes_done, p.segments_done, p.frames_written)))
    frames, info = read_video(result.path)
    assert (info.frames, info.fps, info.width, info.height, info.codec) == (120, 16, 128, 128, "h264")
    assert len(result.plan.segments) >= 2
    assert events == sorted(events) and events[-1] == (len(result.plan.keyframes), len(result.plan.segments), 120)
    spatial, temporal = _variation(frames)
    assert spatial.min() > 10 and (temporal > 0).mean() > 0.9  # a picture, and one that moves
    assert world.background_colour(frames[0]) == "blue"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


@pytest.mark.parametrize("mode", ["keyframes", "bridge"])
def test_keyframes_land_on_their_planned_frames(engine, tmp_path, mode):
    """The decoded MP4's frame at each planned keyframe position is that keyframe (PSNR), and its
    neighbours match it clearly less well (an off-by-one placement would fail). Every keyframe is a
    storyboard image with the ball somewhere else, so the frames around a keyframe differ from it."""
    from PIL import Image

    from orchestrator.request import StoryboardEntry

    request = RenderRequest(prompt=RED_RIGHT, duration_s=7.5, mode=mode, segment_frames=33)
    story, images, plan = [], {}, engine.plan(request)
    for k in plan.keyframes:
        if k.frame >= plan.total_frames:
            continue
        place = (20.0 + 36.0 * (k.index % 3), 40.0 + 24.0 * (k.index % 2))
        scene = world.Scene("blue", (world.Thing("red", "ball", "right", start=place),))
        images[k.index] = world.as_cells(world.render_clip(scene, 1)[0])
        Image.fromarray(images[k.index]).save(tmp_path / f"k{k.index}.png")
        image = str(tmp_path / f"k{k.index}.png")
        story.append(StoryboardEntry(at_s=k.frame / plan.fps, prompt=RED_RIGHT, image=image))
    request = RenderRequest(storyboard=story, duration_s=7.5, mode=mode, segment_frames=33)
    result = engine.render(request, tmp_path / "out.mp4")
    frames, info = read_video(result.path)
    assert info.frames == 120
    keyframes = [k for k in result.plan.keyframes if k.frame < info.frames]
    assert len(keyframes) >= (4 if mode == "keyframes" else 2) and all(k.source == "image" for k in keyframes)
    for k in keyframes:
        image = images[k.index]
        at = _psnr(frames[k.frame], image)
        assert at >= 33, f"keyframe {k.index} at frame {k.frame}: {at:.1f} dB"
        for frame in (k.frame - 1, k.frame + 1):
            if 0 <= frame < info.frames:
                assert _psnr(frames[frame], image) < at - 3, f"keyframe {k.index}: frame {frame} matches as well"


@pytest.mark.parametrize(("prompt", "colour", "background", "axis", "sign"), [
    (RED_RIGHT, "red", "blue", 0, 1),
    ("a yellow square moving down on a purple background", "yellow", "purple", 1, 1),
    ("a small white triangle moving left on a green background", "white", "green", 0, -1),
    ("a big orange ball moving up on a white background", "orange", "white", 1, -1),
])
def test_chain_render_moves_the_prompts_object_the_prompts_way(engine, tmp_path, prompt, colour, background,
                                                                axis, sign):
    """3 s in chain mode from the prompt alone (the model's own keyframe first): the background and the object
    have the prompt's colours, and the object's centre moves at least 10 pixels in the prompt's direction
    (the first three are combinations held out of training)."""
    request = RenderRequest(prompt=prompt, duration_s=3.0, mode="chain")
    result = engine.render(request, tmp_path / "out.mp4")
    assert [k.source for k in result.plan.keyframes] == ["t2i"]
    frames, _ = read_video(result.path)
    assert world.background_colour(frames[0]) == background
    start, end = world.locate(frames[0], colour, background), world.locate(frames[-1], colour, background)
    assert start is not None and end is not None, f"no {colour} object"
    moved = world.torus_delta(start[axis], end[axis]) * sign
    assert moved >= 10, f"moved {moved:.1f} px the prompt's way"


def test_storyboard_images_land_on_their_frames_and_the_object_travels_between(engine, tmp_path):
    """Images at 0 s and 4 s in keyframes mode are the frames at 0 s and 4 s, and between them the ball lies
    between its two places. (At 20 fps 4 s is 80 frames, one 81-frame segment; at 16 fps 64 frames need two
    segments under the tiny preset's 12k + 9 rule, with a keyframe of the model's own between them.)"""
    from PIL import Image

    from orchestrator.request import StoryboardEntry

    start, end = (30.0, 64.0), (98.0, 64.0)
    clip = world.render_clip(world.Scene("blue", (world.Thing("red", "ball", "right", start=start, end=end),)), 81)
    Image.fromarray(clip[0]).save(tmp_path / "start.png")
    Image.fromarray(clip[-1]).save(tmp_path / "end.png")
    story = [StoryboardEntry(at_s=0, prompt=RED_RIGHT, image=str(tmp_path / "start.png")),
             StoryboardEntry(at_s=4, prompt=RED_RIGHT, image=str(tmp_path / "end.png"))]
    request = RenderRequest(storyboard=story, duration_s=4.05, fps=20, mode="keyframes", segment_frames=81)
    frames, info = read_video(engine.render(request, tmp_path / "story.mp4").path)
    assert info.frames == 81
    assert _psnr(frames[0], clip[0]) >= 24 and _psnr(frames[80], clip[-1]) >= 24
    xs = [world.locate(frame, "red", "blue") for frame in frames[1:80]]
    assert all(x is not None for x in xs), "the ball vanished between the keyframes"
    assert all(start[0] - 6 <= x <= end[0] + 6 and abs(y - 64) <= 12 for x, y in xs)
    assert start[0] + 10 < xs[39][0] < end[0] - 10, f"mid-way the ball is at x={xs[39][0]:.1f}"


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
    ranks = [rank for group in engine.pool.health() for rank in group.ranks]
    assert len(ranks) == 2
    assert {r.load_count for r in ranks} == {1}
    assert all(r.device == "cpu" and r.cpus == 1 for r in ranks)
    assert sum(r.segments_rendered for r in ranks) >= 2


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


def _rank_pids(engine) -> list[int]:
    return [rank.pid for group in engine.pool.health() for rank in group.ranks]


def test_render_survives_its_piece_worker_killed_with_identical_output(engine, one_worker, tmp_path):
    """The per-node actor that takes segments' edges and encodes their bodies dies mid-render (alone: its node
    lives): a fresh one takes over, no shard group is rebuilt for it, and no frame changes."""
    from ray.util.state import list_actors

    engine.wait_for_pool()
    ranks = set(_rank_pids(engine))
    mine = ray.get_runtime_context().get_worker_id()  # this driver's PieceWorkers: their names end with our id

    def piece_workers(state):
        return [a.pid for a in list_actors(filters=[("class_name", "=", "PieceWorker"), ("state", "=", state)],
                                           limit=10_000) if a.name.endswith(mine)]

    (victim,), ended = piece_workers("ALIVE"), len(piece_workers("DEAD"))
    killed = []

    def kill_after_the_first_segment(progress):
        if not killed and progress.segments_done >= 1:
            os.kill(victim, signal.SIGKILL)
            killed.append(progress.segments_total - progress.segments_done)

    survived = engine.render(RenderRequest(mode="keyframes", **SAME), tmp_path / "killed.mp4",
                             on_progress=kill_after_the_first_segment)
    assert killed and killed[0] >= 1
    np.testing.assert_array_equal(read_video(survived.path)[0], one_worker["keyframes"])
    assert set(_rank_pids(engine)) == ranks
    assert len(piece_workers("DEAD")) == ended + 1  # the one killed, not its replacement too


def test_render_survives_a_killed_worker_with_identical_output(engine, one_worker, tmp_path):
    """Last in this module: it costs the engine a group rebuild."""
    engine.wait_for_pool()
    victim, killed = _rank_pids(engine)[0], []

    def kill_once_segments_are_due(progress):  # mid-render by construction, not by a timer
        if not killed and progress.keyframes_done == progress.keyframes_total:
            os.kill(victim, signal.SIGKILL)
            killed.append(progress.segments_total - progress.segments_done)

    survived = engine.render(RenderRequest(mode="bridge", **SAME), tmp_path / "killed.mp4",
                             on_progress=kill_once_segments_are_due)
    assert len(killed) == 1 and killed[0] >= 2
    assert victim not in _rank_pids(engine)
    np.testing.assert_array_equal(read_video(survived.path)[0], one_worker["bridge"])
